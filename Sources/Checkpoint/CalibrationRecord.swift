import Foundation
import JobModel
import LlamaModel
import NVFP4

/// What `calibration.json` records, so a user can audit every activation scale.
public struct CalibrationRecord: Codable, Sendable, Equatable {
    public var source: String
    public var samples: Int
    public var tokens: Int
    /// SHA-256 of the selected token ids.
    public var contentHash: String
    public var device: String
    /// Layer → fused group → activation amax: one value per observed input. Expanded to Linear names only when
    /// written.
    public var activationAmax: [Int: [FusedGroup: ActivationAmax]] = [:]
    /// Module name → its weight amax and relative quantization error, as the export measured them, and its output
    /// error once the quality report has measured it.
    public var linearQuality: [String: LinearQuality] = [:]
    /// What the output errors were measured on; nil until they are.
    public var outputErrorInputs: LinearOutputErrorInputs?
    /// GPTQ's parameters when the weights were rounded with GPTQ; nil for round-to-nearest.
    public var gptq: GPTQSettings?
    /// How the block scales were chosen.
    public var scaleSearch: ScaleSearch = .off

    public init(source: String, samples: Int, tokens: Int, contentHash: String, device: String,
                activationAmax: [Int: [FusedGroup: ActivationAmax]] = [:]) {
        self.source = source
        self.samples = samples
        self.tokens = tokens
        self.contentHash = contentHash
        self.device = device
        self.activationAmax = activationAmax
    }

    /// Each Linear of `config` with its group's amax (Linears of layers without statistics are left out).
    public func linearAmax(config: LlamaConfig) -> [(linear: LinearSpec, amax: ActivationAmax)] {
        (0..<config.numHiddenLayers).flatMap { layer in
            config.linears(layer: layer).compactMap { linear in
                activationAmax[layer]?[linear.kind.group].map { (linear, $0) }
            }
        }
    }

    /// Writes `calibration.json`: per Linear module (sorted by name) its amax and `input_scale`, in shortest
    /// round-tripping decimals. The `excluded` modules (kept unquantized) have an amax, since calibration still
    /// observes their input, but no `input_scale`, as the checkpoint has none for them.
    public func write(to url: URL, scheme: QuantizationScheme, config: LlamaConfig, excluded: Set<String> = []) throws {
        let modules = linearAmax(config: config).sorted { $0.linear.name < $1.linear.name }
        func entries(_ value: (ActivationAmax) -> Float, skippingExcluded: Bool = false) -> String {
            modules.filter { !skippingExcluded || !excluded.contains($0.linear.name) }
                .map { "    \"\($0.linear.name)\": \(jsonNumber(value($0.amax)))" }.joined(separator: ",\n")
        }
        let measured = linearQuality.values.sorted { $0.name < $1.name }
        func quality(_ value: (LinearQuality) -> String) -> String {
            measured.map { "    \"\($0.name)\": \(value($0))" }.joined(separator: ",\n")
        }
        // How the weights were rounded, and with what parameters.
        let algorithmJSON = gptq.map {
            "{\"name\": \"gptq\", \"block_size\": \($0.blockSize), \"dampening\": \($0.dampening), "
                + "\"activation_order\": \($0.activationOrder), \"hessian\": \"one per shared input, 2/n Σ xᵀx over every "
                + "calibration token, in float64\", \"scales\": \"round-to-nearest's block and global scales\", "
                + "\"propagation\": \"\($0.propagation.rawValue)\"}"
        } ?? "{\"name\": \"rtn\"}"
        // Present once the quality report has measured every Linear's output error.
        var outputErrors = ""
        if let outputErrorInputs, !measured.isEmpty, measured.allSatisfy({ $0.outputRelativeError != nil }) {
            outputErrors = "  \"output_relative_error\": {\n" + quality { "\($0.outputRelativeError ?? 0)" } + "\n  },\n"
                + "  \"output_error_inputs\": \"\(outputErrorInputs.rawValue)\",\n"
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
              "algorithm": \(algorithmJSON),
              "scale_search": "\(scaleSearch.rawValue)",
              "activation_amax": {
            \(entries { $0.value })
              },
              "input_scale": {
            \(entries({ InputScale($0).value }, skippingExcluded: true))
              },
              "weight_amax": {
            \(quality { jsonNumber($0.weightAmax) })
              },
              "weight_relative_error": {
            \(quality { "\($0.weightRelativeError)" })
              },
            \(outputErrors)  "kept_unquantized": [\(excluded.sorted().map { jsonString($0) }.joined(separator: ", "))]
            }

            """
        try DurableFile.write(Data(text.utf8), to: url)
    }
}

/// Shortest decimal that reads back as the same Float.
func jsonNumber(_ value: Float) -> String { "\(value)" }

func jsonString(_ value: String) -> String {
    let data = try? JSONSerialization.data(withJSONObject: [value], options: [])
    let array = data.flatMap { String(data: $0, encoding: .utf8) } ?? "[\"\"]"
    return String(array.dropFirst().dropLast())
}
