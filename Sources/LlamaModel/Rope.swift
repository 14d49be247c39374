import Foundation

extension RopeParameters {
    /// `inv_freq` for a head dimension `hd` (spec §11), computed in f32 step by step as transformers does,
    /// so that every backend rotates by the same angles.
    ///
    /// Default: `inv_freq[i] = 1 / theta^(2i/hd)` for `i = 0 ..< hd/2`.
    /// llama3: wavelengths `wl = 2π/inv_freq` shorter than `L0/hf` are kept, longer than `L0/lf` are divided by
    /// `factor`, and those in between (boundaries included) are blended with `sm = (L0/wl − lf)/(hf − lf)`.
    public func inverseFrequencies(headDim: Int) -> [Float] {
        precondition(headDim > 0 && headDim % 2 == 0, "head dimension must be positive and even")
        let base = Float(theta)
        let plain = (0..<(headDim / 2)).map { index -> Float in
            let exponent = Float(2 * index) / Float(headDim)
            return 1 / powf(base, exponent)
        }
        guard case .llama3(let scaling) = kind else { return plain }

        let factor = Float(scaling.factor)
        let low = Float(scaling.lowFreqFactor)
        let high = Float(scaling.highFreqFactor)
        let originalContext = Float(scaling.originalMaxPositionEmbeddings)
        let lowFreqWavelength = Float(Double(scaling.originalMaxPositionEmbeddings) / scaling.lowFreqFactor)
        let highFreqWavelength = Float(Double(scaling.originalMaxPositionEmbeddings) / scaling.highFreqFactor)
        return plain.map { frequency in
            let wavelength = Float(2 * Double.pi) / frequency
            if wavelength < highFreqWavelength { return frequency }
            if wavelength > lowFreqWavelength { return frequency / factor }
            let smooth = (originalContext / wavelength - low) / (high - low)
            return (1 - smooth) * frequency / factor + smooth * frequency
        }
    }
}

/// cos and sin of `f32(p) · inv_freq[i]` for positions `p < positions`, row-major `[positions, inv_freq.count]`: the
/// one RoPE table the backends share (the GPU rounds it to BF16 before upload, as transformers' BF16 forward does).
public struct RopeTable: Sendable, Equatable {
    public let positions: Int
    public let cosines: [Float]
    public let sines: [Float]

    public init(inverseFrequencies: [Float], positions: Int) {
        var cosines: [Float] = []
        var sines: [Float] = []
        cosines.reserveCapacity(positions * inverseFrequencies.count)
        sines.reserveCapacity(positions * inverseFrequencies.count)
        for position in 0..<positions {
            for frequency in inverseFrequencies {
                let angle = Float(position) * frequency
                cosines.append(cos(angle))
                sines.append(sin(angle))
            }
        }
        self.positions = positions
        self.cosines = cosines
        self.sines = sines
    }
}
