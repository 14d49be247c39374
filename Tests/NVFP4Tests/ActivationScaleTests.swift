import NVFP4
import Testing

/// The activation amax and the input scale are different quantities; these pin the one conversion between them
/// to spec §4 (`Sx = f32(amax / 2688)`, stored as `1/Sx` in compressed-tensors).
@Suite struct ActivationScaleTests {
    @Test(arguments: [Float(11.0625), 0.5, 1, 2688, 3.0e-5, 65504, 1.0e30])
    func inputScaleIsAmaxOver2688InF32(amax: Float) {
        let scale = InputScale(ActivationAmax(amax))
        #expect(scale.value.bitPattern == (amax / 2688).bitPattern)
        #expect(scale.globalScale.bitPattern == (1 / (amax / 2688)).bitPattern)
    }

    /// The example of the W4A4 bug report: SmolLM2 `layers.0.mlp.down_proj`, amax 11.0625. Its
    /// `input_global_scale` is about 243; dividing by 2688 twice gave 653138.
    @Test func downProjExampleGivesAGlobalScaleOf243() {
        let scale = InputScale(ActivationAmax(11.0625))
        #expect(abs(scale.globalScale - 243) < 0.1)
        #expect(scale.value < 0.005 && scale.value > 0.004)
    }

    @Test func amaxJudgesUsability() {
        #expect(ActivationAmax(1).isUsable)
        for bad: Float in [0, -1, .nan, .infinity] { #expect(!ActivationAmax(bad).isUsable, "\(bad)") }
    }
}
