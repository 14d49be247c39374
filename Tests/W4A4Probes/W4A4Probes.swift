/// # W4A4Probes
///
/// What a written W4A4 checkpoint holds, read from its bytes on disk (never from the writer's own records), and how
/// far its activation scales are from a reference: the checks that the end-to-end tests of `coordctl quantize` and
/// of coordd + workerd share. Test support only; no product links it.
import Foundation
import SafeTensors

/// The activation scales a W4A4 checkpoint stores, in modelopt's `input_scale` terms, with the bits as stored, and
/// the amax its `calibration.json` records.
public struct StoredActivationScales {
    /// `compressed-tensors` (stores `input_global_scale = 1/Sx`) or `modelopt` (stores `input_scale = Sx`).
    public let layout: String
    /// Linear module name → `Sx` (for compressed-tensors, `1 / stored`).
    public let inputScale: [String: Float]
    /// Linear module name → the f32 exactly as stored.
    public let stored: [String: Float]
    /// Linear module name → `activation_amax` of calibration.json.
    public let recordedAmax: [String: Float]

    public init(directory: URL) throws {
        let model = try SafeTensorsModel(directory: directory.path)
        var stored: [String: Float] = [:]
        var layout = ""
        for name in model.tensorNames {
            for (suffix, kind) in [(".input_global_scale", "compressed-tensors"), (".input_scale", "modelopt")]
            where name.hasSuffix(suffix) {
                layout = kind
                let value = try model.withBytes(name) { bytes -> Float in
                    guard bytes.count == 4 else { throw ProbeError("\(name) holds \(bytes.count) bytes, expected one f32") }
                    return Float(bitPattern: UInt32(littleEndian: bytes.loadUnaligned(as: UInt32.self)))
                }
                stored[String(name.dropLast(suffix.count))] = value
            }
        }
        guard !stored.isEmpty else { throw ProbeError("\(directory.path) holds no activation scales: not a W4A4 checkpoint") }
        self.layout = layout
        self.stored = stored
        inputScale = layout == "compressed-tensors" ? stored.mapValues { 1 / $0 } : stored
        let record = directory.appendingPathComponent("calibration.json")
        let json = try JSONSerialization.jsonObject(with: Data(contentsOf: record)) as? [String: Any]
        guard let amax = json?["activation_amax"] as? [String: Any] else {
            throw ProbeError("\(record.path) has no activation_amax object")
        }
        recordedAmax = try amax.mapValues { value in
            guard let number = value as? NSNumber else { throw ProbeError("\(record.path): \(value) is not a number") }
            return number.floatValue
        }
    }

    /// The Linears whose stored scale is not exactly `f32(amax / 2688)` of the amax calibration.json records (for
    /// compressed-tensors `f32(1 / f32(amax / 2688))`), each with what was stored and what was expected.
    public func mismatchesWithRecordedAmax() -> [String] {
        var mismatches: [String] = []
        for (module, value) in stored.sorted(by: { $0.key < $1.key }) {
            guard let amax = recordedAmax[module] else {
                mismatches.append("\(module): calibration.json records no amax")
                continue
            }
            let sx = amax / 2688
            let expected = layout == "compressed-tensors" ? 1 / sx : sx
            if value.bitPattern != expected.bitPattern {
                mismatches.append("\(module): stored \(value), amax \(amax) gives \(expected)")
            }
        }
        if Set(recordedAmax.keys) != Set(stored.keys) { mismatches.append("calibration.json and the tensors name different Linears") }
        return mismatches
    }
}

/// `input_scale` of each Linear in a modelopt export directory, or in a digest JSON of one
/// (`{"tensors": {"<module>.input_scale": {"value": …}}}`, Scripts/reference/modelopt_reference.py).
public func modeloptInputScales(_ url: URL) throws -> [String: Float] {
    if url.pathExtension == "json" {
        let json = try JSONSerialization.jsonObject(with: Data(contentsOf: url)) as? [String: Any]
        guard let tensors = json?["tensors"] as? [String: [String: Any]] else { throw ProbeError("\(url.path) has no tensors") }
        var result: [String: Float] = [:]
        for (name, entry) in tensors where name.hasSuffix(".input_scale") {
            guard let value = entry["value"] as? NSNumber else { throw ProbeError("\(url.path): \(name) has no value") }
            result[String(name.dropLast(".input_scale".count))] = value.floatValue
        }
        return result
    }
    let model = try SafeTensorsModel(directory: url.path)
    var result: [String: Float] = [:]
    for name in model.tensorNames where name.hasSuffix(".input_scale") {
        result[String(name.dropLast(".input_scale".count))] = try model.withBytes(name) {
            Float(bitPattern: UInt32(littleEndian: $0.loadUnaligned(as: UInt32.self)))
        }
    }
    return result
}

/// How far one set of activation scales is from another, Linear by Linear, as relative differences. The project
/// judges two BF16 forwards (ours against modelopt's, or two of our backends) by: median ≤ 0.5%, 90th percentile
/// ≤ 1%, worst ≤ 5% (two correct forwards whose GEMMs sum in different orders differ by up to a few percent on a
/// handful of Linears; a unit error such as a second division by 2688 is off by orders of magnitude).
public struct ScaleAgreement: CustomStringConvertible {
    public let count: Int
    public let median: Double
    public let percentile90: Double
    public let worst: Double
    public let worstModule: String
    /// Linears present in only one of the two sets.
    public let unmatched: [String]

    public init(_ ours: [String: Float], reference: [String: Float]) {
        var differences: [(String, Double)] = []
        for (module, value) in ours {
            guard let expected = reference[module] else { continue }
            differences.append((module, abs(Double(value) - Double(expected)) / abs(Double(expected))))
        }
        differences.sort { $0.1 < $1.1 }
        count = differences.count
        func at(_ fraction: Double) -> Double {
            differences.isEmpty ? .infinity : differences[min(differences.count - 1, Int((Double(differences.count - 1) * fraction).rounded()))].1
        }
        median = at(0.5)
        percentile90 = at(0.9)
        worst = differences.last?.1 ?? .infinity
        worstModule = differences.last?.0 ?? "none"
        unmatched = Array(Set(ours.keys).symmetricDifference(reference.keys)).sorted()
    }

    /// The decided bound for two BF16 forwards.
    public var withinBF16Noise: Bool {
        count > 0 && unmatched.isEmpty && median <= 0.005 && percentile90 <= 0.01 && worst <= 0.05
    }

    public var description: String {
        String(format: "%d Linears: median %.3f%%, 90th percentile %.3f%%, worst %.3f%% (%@)", count, median * 100,
               percentile90 * 100, worst * 100, worstModule)
            + (unmatched.isEmpty ? "" : "; unmatched: \(unmatched.prefix(4))")
    }
}

public struct ProbeError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}
