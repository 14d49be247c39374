import ComputeBackend
import Testing

/// `--device`, parsed once for coordctl, workerd and the engine.
@Suite struct DeviceChoiceTests {
    @Test func acceptedSpellings() throws {
        #expect(try DeviceChoice(parsing: "cpu") == .cpu)
        #expect(try DeviceChoice(parsing: "auto") == .auto)
        #expect(try DeviceChoice(parsing: "cuda") == .cuda(ordinal: 0))
        #expect(try DeviceChoice(parsing: "cuda:3") == .cuda(ordinal: 3))
        #expect(try DeviceChoice(parsing: "cuda:3").description == "cuda:3")
    }

    @Test(arguments: ["cuda:", "cuda:-1", "cuda:x", "gpu", "cuda1", "cudafoo", "CPU", ""])
    func otherSpellingsAreRefusedNamingTheOption(text: String) {
        #expect(throws: DeviceChoiceError(text: text)) { _ = try DeviceChoice(parsing: text) }
        #expect(DeviceChoiceError(text: text).description.contains("--device"))
    }
}
