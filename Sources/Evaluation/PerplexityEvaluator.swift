import ComputeBackend
import Foundation
import JobModel
import LlamaModel
import Logging

/// One model to score: its weights and, for W4A4 emulation, the transform of its Linear inputs.
public struct EvaluationVariant {
    public let name: String
    public let weights: any WeightSource
    public let inputTransform: (any LinearInputTransform)?

    public init(name: String, weights: any WeightSource, inputTransform: (any LinearInputTransform)? = nil) {
        self.name = name
        self.weights = weights
        self.inputTransform = inputTransform
    }
}

/// How far an evaluation has come: `completedLayers` of `totalLayers` decoder layers for every model.
public struct EvaluationProgress: Sendable, Equatable {
    public let completedLayers: Int
    public let totalLayers: Int
}

/// Perplexity of the original model against the emulated quantized model, layer-streamed like calibration:
/// every sample is embedded, each decoder layer is loaded once per model and run over all samples, then
/// the final norm and LM head give the negative log-likelihood. Only one layer per model is in memory at a
/// time; the hidden states of all samples (one copy per model) are what grows with the data.
public struct PerplexityEvaluator<Backend: ComputeBackend> {
    public let backend: Backend
    public let logger: Logger
    /// Samples are grouped into batches of at most this many tokens (a longer sample is a batch of its own),
    /// which bounds the backend's per-forward scratch memory.
    public let maxTokensPerBatch: Int

    public init(backend: Backend, logger: Logger, maxTokensPerBatch: Int = 4096) {
        self.backend = backend
        self.logger = logger
        self.maxTokensPerBatch = max(1, maxTokensPerBatch)
    }

    /// Compares `original` (the unquantized weights, for `backend.config`) with `checkpoint`: dequantized
    /// weights plus, for W4A4, NVFP4 fake quantization of every Linear input. Each Linear's output error is measured
    /// on `outputErrorSamples` (the job's leading calibration samples) when given, riding on the original model's
    /// layers as they are loaded, and on the evaluation samples otherwise.
    public func evaluate(original: some WeightSource, checkpoint: QuantizedCheckpoint, samples: [[Int]],
                         outputErrorSamples: [[Int]]? = nil,
                         progress: ((EvaluationProgress) -> Void)? = nil) throws -> QualityReport {
        guard checkpoint.config.allLinears == backend.config.allLinears else {
            throw EvaluationError(checkpoint.directory.path, "was opened against another config than the backend's")
        }
        try validateWeights(config: backend.config, source: original)
        let quantized = EvaluationVariant(
            name: "quantized", weights: DequantizedWeightSource(base: original, checkpoint: checkpoint),
            inputTransform: try NVFP4InputFakeQuantization(checkpoint: checkpoint))
        let probe = try LinearOutputErrorProbe(config: backend.config, original: original, checkpoint: checkpoint)
        let started = ContinuousClock.now
        let onCalibration = !(outputErrorSamples ?? []).isEmpty
        if let outputErrorSamples, onCalibration {
            let tokens = outputErrorSamples.reduce(0) { $0 + $1.count }
            guard tokens <= LinearOutputErrorProbe.rowLimit else {
                throw EvaluationError("output-error samples", "\(tokens) tokens, where at most \(LinearOutputErrorProbe.rowLimit) are measured")
            }
            try validateTokenIDs(outputErrorSamples, what: "output-error sample")
        }
        let results = try negativeLogLikelihoods(
            samples: samples,
            variants: [EvaluationVariant(name: "original", weights: original, inputTransform: onCalibration ? nil : probe), quantized],
            sidePass: onCalibration ? SidePass(samples: outputErrorSamples ?? [], variant: 0, inputTransform: probe) : nil,
            progress: progress)
        var report = QualityReport(
            samples: samples.count, tokens: samples.reduce(0) { $0 + $1.count }, predictedTokens: results[0].count,
            originalPerplexity: results[0].perplexity, quantizedPerplexity: results[1].perplexity,
            scheme: checkpoint.scheme, layout: checkpoint.layout, excludedLinears: checkpoint.excludedModules.count)
        report.linearOutputRelativeError = try probe.relativeErrors()
        report.linearOutputErrorInputs = report.linearOutputRelativeError.isEmpty ? nil : onCalibration ? .calibration : .heldOut
        let total = ContinuousClock.now - started
        logger.info("per-Linear output errors measured", metadata: [
            "probe_seconds": "\(String(format: "%.2f", probe.secondsSpent))",
            "report_seconds": "\(String(format: "%.2f", Double(total.components.seconds) + Double(total.components.attoseconds) * 1e-18))",
        ])
        logger.info("evaluation done", metadata: [
            "original_ppl": "\(report.originalPerplexity)", "quantized_ppl": "\(report.quantizedPerplexity)",
            "verdict": "\(report.verdict.rawValue)",
        ])
        return report
    }

    /// Other samples that go through one variant's layers beside the scored ones, for what `inputTransform` observes
    /// (no likelihood is computed for them): each layer is loaded once whatever rides on it.
    public struct SidePass {
        public let samples: [[Int]]
        /// Index of the variant whose weights it runs on.
        public let variant: Int
        public let inputTransform: any LinearInputTransform

        public init(samples: [[Int]], variant: Int, inputTransform: any LinearInputTransform) {
            self.samples = samples
            self.variant = variant
            self.inputTransform = inputTransform
        }
    }

    /// The summed NLL of every variant over `samples` (each at least 2 tokens), all variants streamed
    /// through the layers together.
    public func negativeLogLikelihoods(samples: [[Int]], variants: [EvaluationVariant], sidePass: SidePass? = nil,
                                       progress: ((EvaluationProgress) -> Void)? = nil) throws -> [NegativeLogLikelihood] {
        guard !samples.isEmpty else { throw EvaluationError("evaluation samples", "none given") }
        if let short = samples.firstIndex(where: { $0.count < 2 }) {
            throw EvaluationError("evaluation sample \(short)",
                                  "has \(samples[short].count) token(s); perplexity needs at least 2")
        }
        let batches = try makeBatches(samples)
        let layers = backend.config.numHiddenLayers
        logger.info("evaluating perplexity", metadata: [
            "samples": "\(samples.count)", "tokens": "\(samples.reduce(0) { $0 + $1.count })",
            "batches": "\(batches.count)", "models": "\(variants.map(\.name).joined(separator: ", "))",
        ])
        // hidden[variant][batch]
        var hidden: [[HiddenStates]] = try variants.map { variant in
            try batches.map { try backend.embed($0.tokenIDs, from: variant.weights) }
        }
        let sideBatches = try sidePass.map { try makeBatches($0.samples) } ?? []
        var sideSeconds = Duration.zero
        var sideHidden: [HiddenStates] = try sidePass.map { pass in
            try sideBatches.map { try backend.embed($0.tokenIDs, from: variants[pass.variant].weights) }
        } ?? []
        for layer in 0..<layers {
            for (index, variant) in variants.enumerated() {
                let loaded = try backend.loadLayer(layer, from: variant.weights)
                for (batchIndex, batch) in batches.enumerated() {
                    _ = try backend.forward(layer: loaded, hidden: &hidden[index][batchIndex], batch: batch.batch,
                                            inputTransform: variant.inputTransform)
                }
                if let sidePass, sidePass.variant == index {
                    let started = ContinuousClock.now
                    for (batchIndex, batch) in sideBatches.enumerated() {
                        _ = try backend.forward(layer: loaded, hidden: &sideHidden[batchIndex], batch: batch.batch,
                                                inputTransform: sidePass.inputTransform)
                    }
                    sideSeconds += ContinuousClock.now - started
                }
            }
            logger.debug("layer done", metadata: ["layer": "\(layer)"])
            progress?(EvaluationProgress(completedLayers: layer + 1, totalLayers: layers))
        }
        if let sidePass {
            // Its cost beside the report's (the transform's own time is logged by its owner).
            logger.info("side pass done", metadata: [
                "tokens": "\(sidePass.samples.reduce(0) { $0 + $1.count })", "model": "\(variants[sidePass.variant].name)",
                "seconds": "\(String(format: "%.2f", Double(sideSeconds.components.seconds) + Double(sideSeconds.components.attoseconds) * 1e-18))",
            ])
        }
        var results: [NegativeLogLikelihood] = []
        for (index, variant) in variants.enumerated() {
            let head = try backend.loadOutputHead(from: variant.weights)
            var total = NegativeLogLikelihood()
            for (batchIndex, batch) in batches.enumerated() {
                total = total + (try backend.negativeLogLikelihood(hidden[index][batchIndex], batch: batch.batch,
                                                                   tokenIDs: batch.tokenIDs, head: head))
            }
            hidden[index] = []
            logger.info("perplexity", metadata: ["model": "\(variant.name)", "value": "\(total.perplexity)"])
            results.append(total)
        }
        return results
    }

    /// Every id of `samples` within the vocabulary, or an error naming the sample (they may come over the network).
    func validateTokenIDs(_ samples: [[Int]], what: String) throws {
        let vocabulary = 0..<backend.config.vocabSize
        for (index, sample) in samples.enumerated() {
            if let outside = sample.first(where: { !vocabulary.contains($0) }) {
                throw EvaluationError("\(what) \(index)",
                                      "token id \(outside) is outside the vocabulary (0..<\(vocabulary.upperBound))")
            }
        }
    }

    struct Batch {
        let batch: SequenceBatch
        let tokenIDs: [Int]
    }

    /// Consecutive samples, up to `maxTokensPerBatch` tokens per batch.
    func makeBatches(_ samples: [[Int]]) throws -> [Batch] {
        var batches: [Batch] = []
        var pending: [[Int]] = []
        var pendingTokens = 0
        func flush() throws {
            guard !pending.isEmpty else { return }
            batches.append(Batch(batch: try SequenceBatch(tokenCounts: pending.map(\.count)), tokenIDs: pending.flatMap { $0 }))
            pending = []
            pendingTokens = 0
        }
        for sample in samples {
            if pendingTokens + sample.count > maxTokensPerBatch { try flush() }
            pending.append(sample)
            pendingTokens += sample.count
        }
        try flush()
        return batches
    }
}
