/// # CheckpointReport
///
/// `coordctl report OUT`: what a written checkpoint says about its own quality. It reads `calibration.json` (each
/// Linear's weight amax, relative weight quantization error and activation amax) and `quality.json` (the closing
/// perplexity report and the gate), ranks the Linears, and renders the text summary and a self-contained HTML page
/// (inline CSS and SVG, no script, no network). Reads files only: no engine, no network.
import Foundation
import JobModel

/// Why a checkpoint's report cannot be made, naming the file and field.
public enum CheckpointReportError: Error, CustomStringConvertible, Equatable {
    case missingFile(path: String, hint: String)
    case malformed(path: String, field: String, reason: String)

    public var description: String {
        switch self {
        case .missingFile(let path, let hint): "\(path): not found; \(hint)"
        case .malformed(let path, let field, let reason): "\(path): \(field): \(reason)"
        }
    }
}

/// One decoder layer's figures: the worst and mean weight error of its Linears and the largest activation amax.
public struct LayerQualitySummary: Sendable, Equatable {
    public var layer: Int
    public var maxWeightRelativeError: Double
    public var meanWeightRelativeError: Double
    public var maxActivationAmax: Float?
}

public struct CheckpointReport: Sendable {
    public let directory: URL
    public let scheme: String
    public let device: String?
    public let samples: Int?
    public let tokens: Int?
    /// Every Linear with figures, in layer order.
    public let linears: [LinearQuality]
    /// The closing quality report, when the job measured one.
    public let quality: JobQuality?

    public static let calibrationFile = "calibration.json"
    public static let qualityFile = "quality.json"
    public static let pageFile = "report.html"
    /// The member of quality.json with each Linear's output error.
    public static let outputErrorKey = "linear_output_relative_error"

    /// Reads `directory`'s `calibration.json` and, when present, `quality.json`.
    public init(directory: URL) throws {
        self.directory = directory
        let calibrationURL = directory.appendingPathComponent(Self.calibrationFile)
        guard FileManager.default.fileExists(atPath: calibrationURL.path) else {
            throw CheckpointReportError.missingFile(
                path: calibrationURL.path,
                hint: "the report needs the calibration.json of a W4A4 checkpoint written by this version of coordctl")
        }
        let root = try Self.object(at: calibrationURL)
        func table(_ field: String, required: Bool = true) throws -> [String: Double] {
            guard let value = root[field] else {
                if required {
                    throw CheckpointReportError.malformed(path: calibrationURL.path, field: field,
                                                          reason: "missing (written by an older coordctl? quantize again)")
                }
                return [:]
            }
            guard let numbers = value as? [String: Any] else {
                throw CheckpointReportError.malformed(path: calibrationURL.path, field: field, reason: "not an object")
            }
            return try numbers.mapValues { number in
                guard let number = number as? NSNumber, number.doubleValue.isFinite else {
                    throw CheckpointReportError.malformed(path: calibrationURL.path, field: field, reason: "holds a value that is not a finite number")
                }
                return number.doubleValue
            }
        }
        let errors = try table("weight_relative_error")
        let kept = Set(root["kept_unquantized"] as? [String] ?? [])
        let weightAmax = try table("weight_amax")
        let activationAmax = try table("activation_amax", required: false)
        var linears = try errors.map { name, error in
            guard let layer = Self.layerIndex(of: name) else {
                throw CheckpointReportError.malformed(path: calibrationURL.path, field: "weight_relative_error",
                                                      reason: "\(name) is not a decoder layer's Linear")
            }
            guard let amax = weightAmax[name] else {
                throw CheckpointReportError.malformed(path: calibrationURL.path, field: "weight_amax", reason: "has no entry for \(name)")
            }
            return LinearQuality(name: name, layer: layer, weightAmax: Float(amax), weightRelativeError: error,
                                 activationAmax: activationAmax[name].map(Float.init), keptUnquantized: kept.contains(name))
        }.sorted { ($0.layer, $0.name) < ($1.layer, $1.name) }
        scheme = root["scheme"] as? String ?? "unknown"
        device = root["device"] as? String
        samples = (root["samples"] as? NSNumber)?.intValue
        tokens = (root["tokens"] as? NSNumber)?.intValue

        let qualityURL = directory.appendingPathComponent(Self.qualityFile)
        var outputErrors: [String: Double] = [:]
        if FileManager.default.fileExists(atPath: qualityURL.path) {
            // Read once: the report is JobQuality's keys plus the per-Linear output errors.
            let data: Data
            do {
                data = try Data(contentsOf: qualityURL)
                quality = try JSONDecoder().decode(JobQuality.self, from: data)
            } catch {
                throw CheckpointReportError.malformed(path: qualityURL.path, field: "(document)", reason: "\(error)")
            }
            let object = try Self.object(from: data, path: qualityURL.path)
            if let errors = object[Self.outputErrorKey] {
                guard let errors = errors as? [String: NSNumber] else {
                    throw CheckpointReportError.malformed(path: qualityURL.path, field: Self.outputErrorKey, reason: "not an object of numbers")
                }
                outputErrors = errors.mapValues(\.doubleValue)
            }
        } else {
            quality = nil
        }
        linears = linears.map { var linear = $0; linear.outputRelativeError = outputErrors[linear.name]; return linear }
        self.linears = linears
    }

    /// What the output errors were measured on (a quality.json that does not say so predates calibration inputs).
    public var outputErrorInputs: LinearOutputErrorInputs { quality?.outputErrorInputs ?? .heldOut }

    /// What ``worst(_:)`` ranks by: the output error (on ``outputErrorInputs``) when the quality report measured every Linear's
    /// (it shows how much a Linear's output suffers, weights and activations together), else the weight error (NVFP4
    /// weight errors sit near 9.5% for every Linear and tell them apart less).
    public var ranksByOutputError: Bool { !linears.isEmpty && linears.allSatisfy { $0.outputRelativeError != nil } }

    /// The `count` Linears with the largest error (see ``ranksByOutputError``), worst first (ties by name).
    public func worst(_ count: Int) -> [LinearQuality] {
        let key: (LinearQuality) -> Double = ranksByOutputError ? { $0.outputRelativeError ?? 0 } : { $0.weightRelativeError }
        return Array(linears.sorted { (key($0), $1.name) > (key($1), $0.name) }.prefix(count))
    }

    /// Per decoder layer, in order.
    public var layers: [LayerQualitySummary] {
        Dictionary(grouping: linears, by: \.layer).map { layer, members in
            LayerQualitySummary(layer: layer, maxWeightRelativeError: members.map(\.weightRelativeError).max() ?? 0,
                                meanWeightRelativeError: members.map(\.weightRelativeError).reduce(0, +) / Double(members.count),
                                maxActivationAmax: members.compactMap(\.activationAmax).max())
        }.sorted { $0.layer < $1.layer }
    }

    /// `model.layers.12.mlp.down_proj` → 12.
    static func layerIndex(of name: String) -> Int? {
        let parts = name.split(separator: ".")
        guard parts.count > 3, parts[0] == "model", parts[1] == "layers" else { return nil }
        return Int(parts[2])
    }

    static func object(at url: URL) throws -> [String: Any] {
        let data: Data
        do {
            data = try Data(contentsOf: url)
        } catch {
            throw CheckpointReportError.missingFile(path: url.path, hint: "\(error.localizedDescription)")
        }
        return try object(from: data, path: url.path)
    }

    static func object(from data: Data, path: String) throws -> [String: Any] {
        guard let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else {
            throw CheckpointReportError.malformed(path: path, field: "(document)", reason: "not a JSON object")
        }
        return object
    }
}

/// `9.594%`.
func percent(_ value: Double) -> String { String(format: "%.3f%%", value * 100) }

/// `0.1973`, `12.5`: four significant digits.
func amaxText(_ value: Float?) -> String { value.map { String(format: "%.4g", $0) } ?? "-" }

extension CheckpointReport {
    /// The quality report in one sentence (perplexities, ratio, verdict, gate), or why there is none.
    public var qualitySentence: String {
        guard let quality else {
            return "no quality report was recorded (the job ran with --eval-samples 0, or before this version)"
        }
        return quality.sentence(withVerdict: true)
    }

    /// What `coordctl report` prints.
    public func text(worst count: Int = 10) -> String {
        let keptCount = linears.filter(\.keptUnquantized).count
        var lines = ["\(directory.path): \(scheme), \(linears.count - keptCount) quantized Linears"
                     + (keptCount > 0 ? " and \(keptCount) kept unquantized (--exclude)" : "") + " in \(layers.count) layers"
                     + (samples.map { ", calibrated on \($0) samples" } ?? "") + (tokens.map { " (\($0) tokens)" } ?? "")
                     + (device.map { ", \($0)" } ?? ""),
                     "quality: \(qualitySentence)",
                     "the \(min(count, linears.count)) Linears with the largest "
                        + (ranksByOutputError ? "output error on \(outputErrorInputs.phrase):" : "weight quantization error:"),
                     "  RANK  " + padded("LINEAR", 44) + padded("ERROR", 10) + padded("OUTPUT ERROR", 14) + padded("WEIGHT AMAX", 13)
                        + "ACTIVATION AMAX"]
        for (rank, linear) in worst(count).enumerated() {
            lines.append("  " + padded("\(rank + 1)", 6) + padded(linear.name + (linear.keptUnquantized ? " (kept)" : ""), 44) + padded(percent(linear.weightRelativeError), 10)
                         + padded(linear.outputRelativeError.map(percent) ?? "-", 14)
                         + padded(amaxText(linear.weightAmax), 13) + amaxText(linear.activationAmax))
        }
        lines.append("(ERROR: ‖W − Q(W)‖/‖W‖ of the weight; OUTPUT ERROR: ‖XWᵀ − X̃Q(W)ᵀ‖/‖XWᵀ‖ on \(outputErrorInputs.phrase), from the quality report)")
        return lines.joined(separator: "\n")
    }
}

