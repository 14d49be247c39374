import ArgumentParser
import CommandLineOptions
import ClusterProtocol
import Calibration
import CPUBackend
import Evaluation
import Foundation
import LlamaModel
import Logging
import SafeTensors
import Tokenizer

/// `coordctl eval`: perplexity of the original model against the W4A4-emulated NVFP4 checkpoint.
struct Eval: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Check whether a quantized checkpoint is usable: compare its perplexity with the original model's.",
        discussion: """
            Runs the original model and an emulation of the NVFP4 checkpoint on the CPU (f32): the Linear weights \
            are dequantized from the checkpoint and, for W4A4, every Linear input is rounded to NVFP4 with dynamic \
            per-16 block scales under the calibrated activation scale, as the NVFP4 GEMM does when served. A \
            weight-only (nvfp4a16) checkpoint is evaluated with dequantized weights only.

            The default evaluation text is the built-in held-out set, which is not part of the calibration set. \
            The verdict thresholds (fine < +5%, noticeable < +15%, degraded otherwise) are heuristics.
            """)

    @Option(name: .long, help: "The original model directory (Hugging Face layout) the checkpoint was made from.")
    var original: String

    @Option(name: .long, help: "The NVFP4 checkpoint directory (compressed-tensors or modelopt layout).")
    var quantized: String

    @Option(name: .long, help: "Evaluation text: a .jsonl (text or input_ids per line), .txt/.md file, or a directory of them. Default: the built-in held-out set.")
    var data: String?

    @Option(name: .long, help: "Number of evaluation samples.")
    var samples: Int = 16

    @Option(name: .long, help: "Records shorter than this many tokens are skipped.")
    var minTokens: Int = 150

    @Option(name: .long, help: "Records longer than this are truncated.")
    var maxTokens: Int = 1200

    @Option(name: .long, help: "Write the token ids evaluated to this .jsonl file (one {\"input_ids\": [...]} per line), e.g. for Scripts/reference/torch_w4a4_eval.py.")
    var dumpSamples: String?

    @OptionGroup var logging: LoggingOptions

    func validate() throws {
        if samples < 1 { throw ValidationError("--samples must be at least 1") }
        if minTokens < 2 { throw ValidationError("--min-tokens must be at least 2 (perplexity needs a next token)") }
        if maxTokens < minTokens { throw ValidationError("--max-tokens (\(maxTokens)) must be >= --min-tokens (\(minTokens))") }
    }

    func run() throws {
        logging.bootstrap()
        let logger = Logger(label: "coordctl.eval")
        let originalDirectory = URL(fileURLWithPath: original)
        let modelDirectory = ModelDirectory(originalDirectory)
        guard modelDirectory.hasConfig else {
            throw ValidationError("\(modelDirectory.configURL.path): not found; --original must be a Hugging Face model directory")
        }
        let config = try modelDirectory.loadConfig()
        let model = try SafeTensorsModel(directory: original)
        try validateWeights(config: config, model: model)
        // Check the checkpoint before tokenizing anything.
        let checkpoint = try QuantizedCheckpoint(directory: URL(fileURLWithPath: quantized), originalConfig: config)
        logger.info("checkpoint", metadata: ["layout": "\(checkpoint.layout.rawValue)", "scheme": "\(checkpoint.scheme.rawValue)"])

        let tokenizer = try BPETokenizer.load(modelDirectory: original)
        let dataPath = data ?? CalibrationData.heldOutEvaluationURL.path
        let set = try CalibrationData.load(
            path: dataPath, tokenizer: tokenizer, vocabSize: config.vocabSize,
            options: CalibrationOptions(samples: samples, minTokens: minTokens, maxTokens: maxTokens))
        logger.info("\(set.summary)", metadata: ["data": "\(dataPath)"])
        if set.samples.count < samples {
            let note = "only \(set.samples.count) of the \(samples) requested samples could be used "
                + "(the data has no more records of at least --min-tokens \(minTokens) tokens)"
            logger.warning("\(note)")
        }
        let tokenIDs = set.samples.map { $0.tokens.map(Int.init) }
        if let dumpSamples { try Self.writeSamples(tokenIDs, to: dumpSamples) }

        let evaluator = PerplexityEvaluator(backend: CPUBackend(config: config), logger: logger)
        let report = try evaluator.evaluate(original: model, checkpoint: checkpoint, samples: tokenIDs) { progress in
            logger.info("layer \(progress.completedLayers)/\(progress.totalLayers) done")
        }
        print(report.description)
    }

    /// One `{"input_ids": [...]}` line per sample.
    static func writeSamples(_ samples: [[Int]], to path: String) throws {
        var text = ""
        for sample in samples {
            text += "{\"input_ids\": [" + sample.map(String.init).joined(separator: ", ") + "]}\n"
        }
        do {
            try Data(text.utf8).write(to: URL(fileURLWithPath: path))
        } catch {
            throw ValidationError("--dump-samples \(path): cannot write: \(error.localizedDescription)")
        }
    }
}
