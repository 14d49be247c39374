import Foundation
import NVFP4
import SafeTensors
import Testing

/// Bit-exact comparison with modelopt's `NVFP4QTensor.quantize` on every golden case.
@Suite struct GoldenVectorTests {
    static let fixture = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures/nvfp4-golden.safetensors").path

    static let caseNames: [String] = {
        guard let file = try? SafeTensorsFile(path: fixture) else { return [] }
        return file.tensorNames.filter { $0.hasSuffix(".input") }.map { String($0.dropLast(".input".count)) }.sorted()
    }()

    @Test func fixtureHasEveryDocumentedCase() throws {
        #expect(Self.caseNames == ["huge_16x32", "llama_like_96x160", "normal_64x128", "outliers_32x256",
                                   "ties_8x16", "tiny_16x32", "wide_range_8x64", "zero_blocks_16x64"])
    }

    @Test(arguments: caseNames)
    func matchesModelopt(caseName: String) async throws {
        let file = try SafeTensorsFile(path: Self.fixture)
        let info = try file.info("\(caseName).input")
        let rows = info.shape[0], cols = info.shape[1]
        let input: [UInt16] = try file.withBytes("\(caseName).input") { Array($0.bindMemory(to: UInt16.self)) }

        let amax = try input.withUnsafeBufferPointer {
            try NVFP4Quantizer.amax(bf16: $0, cols: cols, tensor: caseName)
        }
        let s2 = NVFP4Quantizer.weightScale2(amax: amax)
        let expectedS2: Float = try file.withBytes("\(caseName).weight_scale_2") { $0.load(as: Float.self) }
        #expect(s2.bitPattern == expectedS2.bitPattern, "weight_scale_2 of \(caseName)")

        let parallel = try input.withUnsafeBufferPointer {
            try NVFP4Quantizer.quantize(bf16: $0, rows: rows, cols: cols, weightScale2: s2, parallelism: 3)
        }
        let serial = try input.withUnsafeBufferPointer {
            try NVFP4Quantizer.quantizeSync(bf16: $0, rows: rows, cols: cols, weightScale2: s2)
        }
        #expect(parallel == serial)

        let expectedPacked = [UInt8](try file.data("\(caseName).weight"))
        let expectedScales = [UInt8](try file.data("\(caseName).weight_scale"))
        // Compare whole arrays, but report only a count and the first difference to keep failures readable.
        #expect(firstDifference(parallel.packed, expectedPacked) == nil, "packed nibbles of \(caseName)")
        #expect(firstDifference(parallel.blockScales, expectedScales) == nil, "block scales of \(caseName)")

        let expectedDequant = try file.floats("\(caseName).dequantized")
        let dequant = NVFP4Quantizer.dequantize(parallel)
        #expect(firstDifference(dequant.map(\Float.bitPattern), expectedDequant.map(\Float.bitPattern)) == nil,
                "dequantized \(caseName)")
    }
}

/// `nil` when equal, otherwise a short description of how the arrays differ.
func firstDifference<T: Equatable>(_ actual: [T], _ expected: [T]) -> String? {
    if actual.count != expected.count { return "count \(actual.count) != \(expected.count)" }
    let differing = zip(actual, expected).enumerated().filter { $0.element.0 != $0.element.1 }
    guard let first = differing.first else { return nil }
    return "\(differing.count) differ; first at \(first.offset): \(first.element.0) != \(first.element.1)"
}
