import Foundation
import JobModel
import LlamaModel
import Logging
import Tokenizer

extension JobSpec.Calibration {
    /// Why fewer samples than `--samples` asked for will calibrate, or nil when the data held enough.
    public func sampleShortfall(used: Int) -> String? {
        guard used < samples else { return nil }
        return "--samples \(samples) asked for more samples than \(dataPath ?? "the built-in set") holds at "
            + "--min-tokens \(minTokens): calibrating on \(used)"
    }

    /// How many samples of which lengths, in the order `seed` shuffles them to.
    public var selection: CalibrationOptions {
        CalibrationOptions(samples: samples, minTokens: minTokens, maxTokens: maxTokens, seed: seed)
    }
}

extension JobSpec {
    /// The calibration samples of this job, chunked: the same selection `coordctl quantize` makes (the model's
    /// tokenizer; the `--calib` data or the built-in set).
    public func makeCalibrationPlan(config: LlamaConfig, logger: Logger) throws -> CalibrationPlan {
        let tokenizer: BPETokenizer?
        do {
            tokenizer = try BPETokenizer.load(modelDirectory: modelPath)
        } catch {
            // Token-id calibration files need no tokenizer; text ones fail below with the reason.
            logger.warning("no usable tokenizer: \(error)")
            tokenizer = nil
        }
        let set: CalibrationSet
        let source: String
        if let path = calibration.dataPath {
            set = try CalibrationData.load(path: path, tokenizer: tokenizer, vocabSize: config.vocabSize,
                                           options: calibration.selection)
            source = path
        } else {
            guard let tokenizer else {
                throw CalibrationError.tokenizerRequired(model: modelPath)
            }
            set = try CalibrationData.loadDefault(tokenizer: tokenizer, vocabSize: config.vocabSize,
                                                  options: calibration.selection)
            source = "built-in default set (\(CalibrationData.defaultCalibrationURL.lastPathComponent))"
        }
        logger.info("calibration data: \(set.summary)")
        if let shortfall = calibration.sampleShortfall(used: set.recordsUsed) {
            logger.warning("\(shortfall)")
        }
        return try CalibrationPlan(set: set, source: source, chunkTokens: calibration.chunkTokens)
    }
}
