import CPUBackend
import CUDABackend
import CUDARuntime
import Calibration
import Checkpoint
import ComputeBackend
import Evaluation
import Foundation
import LlamaModel
import Logging
import NVFP4
import SafeTensors
import Tokenizer

/// Calibrators that hold scratch files until told to finish.
protocol Finishable: AnyObject { func finish() }
extension LayerStreamingCalibrator: Finishable {}

/// What `calibration.json` records, so a user can audit every activation scale.
public struct CalibrationRecord: Sendable {
    public var source: String
    public var samples: Int
    public var tokens: Int
    /// SHA-256 of the selected token ids.
    public var contentHash: String
    public var device: String
    public var activationAmax: [String: Float] = [:]

    func write(to url: URL, scheme: QuantizationScheme) throws {
        let modules = activationAmax.keys.sorted()
        func entries(_ value: (Float) -> Float) -> String {
            modules.map { "    \"\($0)\": \(jsonNumber(value(activationAmax[$0]!)))" }.joined(separator: ",\n")
        }
        let text = """
            {
              "tool": "NVFP4Cluster \(NVFP4ClusterVersion.current)",
              "scheme": "\(scheme.rawValue)",
              "calibration_source": \(jsonString(source)),
              "samples": \(samples),
              "tokens": \(tokens),
              "calibration_set_sha256": "\(contentHash)",
              "device": "\(device)",
              "activation_amax": {
            \(entries { $0 })
              },
              "input_scale": {
            \(entries { FusedScales.inputScale(activationAmax: $0) })
              }
            }

            """
        try Data(text.utf8).write(to: url)
    }
}

/// Shortest decimal that reads back as the same Float.
func jsonNumber(_ value: Float) -> String { "\(value)" }

func jsonString(_ value: String) -> String {
    let data = try? JSONSerialization.data(withJSONObject: [value], options: [])
    let array = data.flatMap { String(data: $0, encoding: .utf8) } ?? "[\"\"]"
    return String(array.dropFirst().dropLast())
}

extension QuantizeJob {
    /// Chooses the device, loads the calibration set and builds the layer-streaming calibrator.
    func makeCalibrator(inputs: Inputs) throws -> (ActivationCalibrator, CalibrationRecord) {
        let calibration = options.calibration
        let device = try ComputeDevice.select(calibration.device, logger: logger)
        let tokenizer: BPETokenizer?
        do {
            tokenizer = try BPETokenizer.load(modelDirectory: options.modelDirectory.path)
        } catch {
            // Token-id calibration files need no tokenizer; text ones fail below with the reason.
            logger.warning("no usable tokenizer: \(error)")
            tokenizer = nil
        }
        let vocabSize = inputs.config.vocabSize
        let set: CalibrationSet
        let source: String
        if let path = calibration.dataPath {
            set = try CalibrationData.load(path: path, tokenizer: tokenizer, vocabSize: vocabSize,
                                           options: calibration.selection)
            source = path
        } else {
            guard let tokenizer else {
                throw QuantizeJobError("the built-in calibration set is text and needs the model's tokenizer.json; "
                                       + "pass --calib with input_ids records instead")
            }
            set = try CalibrationData.loadDefault(tokenizer: tokenizer, vocabSize: vocabSize, options: calibration.selection)
            source = "built-in default set (\(CalibrationData.defaultCalibrationURL.lastPathComponent))"
        }
        logger.info("calibration data: \(set.summary)")
        let model = inputs.source
        let calibrator = try device.makeCalibrator(config: inputs.config, precision: calibration.activationPrecision) { backend in
            func streaming<Backend: ComputeBackend>(_ backend: Backend) throws -> ActivationCalibrator {
                try LayerStreamingCalibrator(
                    backend: backend, weights: inputs.source, calibrationSet: set,
                    chunkTokens: calibration.chunkTokens, activationMemoryBudget: calibration.activationMemoryBudget,
                    scratchDirectory: calibration.scratchDirectory, logger: logger,
                    releaseWeights: { names in for name in names { try? model.releasePages(name) } },
                    progress: { [progress] in progress.calibration($0) })
            }
            return try streaming(backend)
        }
        let record = CalibrationRecord(source: source, samples: set.samples.count, tokens: set.tokenTotal,
                                       contentHash: set.contentHash,
                                       device: "\(device) (\(device.activationLabel(calibration.activationPrecision)) activations)")
        return (calibrator, record)
    }
}

/// Where calibration runs.
public enum ComputeDevice: CustomStringConvertible {
    case cpu
    /// An opened GPU (kernels compiled, cuBLASLt loaded).
    case cuda(CUDADevice)

    public var description: String {
        switch self {
        case .cpu: "cpu"
        case .cuda(let device): "cuda:\(device.context.ordinal) (\(device.context.name), \(device.context.architecture))"
        }
    }

    /// `cpu`, `cuda`, `cuda:N` or `auto`. `auto` opens GPU 0 when one is usable and otherwise says in one log line why
    /// it uses the CPU; an explicit `cuda` that cannot be opened fails at once with the reason.
    static func select(_ name: String, logger: Logger, locator: CUDALibraryLocator = CUDALibraryLocator()) throws -> ComputeDevice {
        switch name {
        case "cpu": return .cpu
        case "auto":
            do {
                return .cuda(try CUDADevice(ordinal: 0, locator: locator, logger: logger))
            } catch {
                logger.info("device auto: no usable CUDA GPU (\(error)); using the CPU")
                return .cpu
            }
        default:
            guard name == "cuda" || name.hasPrefix("cuda:") else {
                throw QuantizeJobError("--device \(name): expected cpu, cuda, cuda:N or auto")
            }
            do {
                return .cuda(try CUDADevice(ordinal: try cudaDeviceOrdinal(from: name), locator: locator, logger: logger))
            } catch {
                throw QuantizeJobError("--device \(name): no usable GPU here: \(error)")
            }
        }
    }

    /// The layer-streaming calibrator over this device's backend.
    func makeCalibrator(config: LlamaConfig, precision: CPUBackend.ActivationPrecision,
                        build: (any ComputeBackend) throws -> ActivationCalibrator) throws -> ActivationCalibrator {
        switch self {
        case .cpu: try build(CPUBackend(config: config, activationPrecision: precision))
        case .cuda(let device): try build(CUDABackend(config: config, device: device))
        }
    }

    /// What the activations are rounded to: the GPU always computes in BF16.
    func activationLabel(_ precision: CPUBackend.ActivationPrecision) -> String {
        switch self {
        case .cpu: precision.rawValue
        case .cuda: CPUBackend.ActivationPrecision.bfloat16.rawValue
        }
    }
}


extension QuantizeJob {
    /// Perplexity of the original model against the written checkpoint (W4A4 emulated, or dequantized weights for
    /// weight-only) on held-out text that calibration never saw.
    func qualityReport(inputs: Inputs) throws -> QualityReport {
        let tokenizer = try BPETokenizer.load(modelDirectory: options.modelDirectory.path)
        let set = try CalibrationData.loadHeldOutEvaluation(
            tokenizer: tokenizer, vocabSize: inputs.config.vocabSize,
            options: CalibrationOptions(samples: options.evaluationSamples, minTokens: 1,
                                        maxTokens: options.evaluationMaxTokens))
        logger.info("quality report: perplexity on \(set.samples.count) held-out samples (\(set.tokenTotal) tokens)")
        let checkpoint = try QuantizedCheckpoint(directory: options.outputDirectory, originalConfig: inputs.config)
        let evaluator = PerplexityEvaluator(backend: CPUBackend(config: inputs.config), logger: logger)
        return try evaluator.evaluate(original: inputs.source, checkpoint: checkpoint,
                                      samples: set.samples.map { $0.tokens.map(Int.init) })
    }
}
