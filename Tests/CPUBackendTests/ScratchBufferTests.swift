import Testing
@testable import CPUBackend

/// The forward's scratch arrays are reused, and chunks of growing sizes do not leave one array per size behind.
@Suite struct ScratchBufferTests {
    /// One forward's pattern of requests for a chunk of `tokens` tokens (SmolLM2's widths), all returned at the end.
    private func forward(_ scratch: ScratchBuffers, tokens: Int) {
        var normed = scratch.zeros(tokens * 576)
        var qkv = scratch.zeros(tokens * 960)
        var attention = scratch.zeros(tokens * 576)
        scratch.recycle(&qkv)
        var projected = scratch.zeros(tokens * 576)
        scratch.recycle(&attention)
        var gateUp = scratch.zeros(tokens * 3072)
        scratch.recycle(&normed)
        var activated = scratch.zeros(tokens * 1536)
        #expect(activated.allSatisfy { $0 == 0 } && gateUp.count == tokens * 3072)
        scratch.recycle(&gateUp)
        scratch.recycle(&activated)
        scratch.recycle(&projected)
    }

    @Test func chunksOfGrowingSizesKeepAboutOneForwardsWorthOfArrays() {
        let scratch = ScratchBuffers()
        // One forward of the largest chunk uses at most these floats at once, and kept arrays are sized by them.
        let largest = 4096
        let oneForward = largest * (576 + 960 + 576 + 576 + 3072 + 1536)
        for tokens in [1000, 2000, 3000, largest, 3500, 1200, largest] { forward(scratch, tokens: tokens) }
        #expect(scratch.keptCapacity <= oneForward, "kept \(scratch.keptCapacity) floats, one forward needs \(oneForward)")
        // Same sizes again: no array is allocated anew (the kept capacity does not change).
        let kept = scratch.keptCapacity
        forward(scratch, tokens: largest)
        #expect(scratch.keptCapacity == kept)
    }
}
