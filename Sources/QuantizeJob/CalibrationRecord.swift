import Calibration
import Checkpoint
import Foundation
import NVFP4

/// Calibrators that hold scratch files until told to finish.
protocol Finishable: AnyObject { func finish() }
extension LayerStreamingCalibrator: Finishable {}

/// What `calibration.json` records, so a user can audit every activation scale.
public struct CalibrationRecord: Codable, Sendable, Equatable {
    public var source: String
    public var samples: Int
    public var tokens: Int
    /// SHA-256 of the selected token ids.
    public var contentHash: String
    public var device: String
    /// Linear module name → activation amax.
    public var activationAmax: [String: Float] = [:]

    public init(source: String, samples: Int, tokens: Int, contentHash: String, device: String,
                activationAmax: [String: Float] = [:]) {
        self.source = source
        self.samples = samples
        self.tokens = tokens
        self.contentHash = contentHash
        self.device = device
        self.activationAmax = activationAmax
    }

    /// Writes `calibration.json` (modules sorted, shortest round-tripping decimals).
    public func write(to url: URL, scheme: QuantizationScheme) throws {
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
