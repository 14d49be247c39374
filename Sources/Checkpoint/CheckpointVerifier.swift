import Foundation
import LlamaModel
import NVFP4
import SafeTensors

/// What a verification pass looked at.
public struct VerificationReport: Sendable, Equatable {
    public var files: Int = 0
    public var tensors: Int = 0
    public var quantizedLinears: Int = 0
    /// Linears kept unquantized (`--exclude`), checked to be the source's bytes.
    public var excludedLinears: Int = 0
    public var bytes: Int = 0
}

/// Re-reads a written checkpoint and enforces every rule of spec §10. The first violation is thrown, naming the
/// tensor or file; a job that gets an error must not call its output complete. Linears the layout excludes
/// (`--exclude`) must be their source weight, byte for byte, with no scale tensor, each fused group excluded whole,
/// and the config's ignore / exclude_modules lists must name exactly them besides the fixed entries.
public struct CheckpointVerifier {
    public let config: LlamaConfig
    public let layout: LinearTensorLayout
    /// The source model, to check that unquantized tensors were copied byte for byte. Optional.
    public let source: SafeTensorsModel?
    /// The job's own calibration result (layer → fused group → amax). When given for a W4A4 checkpoint, every stored
    /// activation scale must be exactly the one this amax gives, bit for bit; the written tensors are read, not a
    /// record beside them.
    public let activationAmax: [Int: [FusedGroup: ActivationAmax]]?

    public init(config: LlamaConfig, layout: LinearTensorLayout, source: SafeTensorsModel?,
                activationAmax: [Int: [FusedGroup: ActivationAmax]]? = nil) {
        self.config = config
        self.layout = layout
        self.source = source
        self.activationAmax = activationAmax
    }

    public func verify(directory: URL) throws -> VerificationReport {
        var report = VerificationReport()
        try verifyConfig(directory: directory)
        let model: SafeTensorsModel
        do {
            model = try SafeTensorsModel(directory: directory.path)
        } catch {
            throw CheckpointError(directory.path, "the written checkpoint does not read back: \(error)")
        }
        // Rule 11: every header parses and its offsets tile the file exactly.
        for file in model.files {
            try file.validateTiling()
            report.bytes += file.fileSize
        }
        report.files = model.files.count
        try verifyIndex(directory: directory, model: model)

        // Rule 1: exactly the expected names.
        var expected: [String: (SafeTensorsDType?, [Int])] = [:]
        for spec in config.nonQuantizedTensors { expected[spec.name] = (nil, spec.shape) }
        for linear in config.allLinears {
            for tensor in layout.plannedTensors(for: linear) { expected[tensor.name] = (tensor.dtype, tensor.shape) }
        }
        let actual = Set(model.tensorNames)
        if let missing = expected.keys.filter({ !actual.contains($0) }).sorted().first {
            throw CheckpointError(missing, "is missing from the written checkpoint")
        }
        if let extra = actual.subtracting(expected.keys).sorted().first {
            let file = (try? model.file(containing: extra).path) ?? directory.path
            throw CheckpointError(extra, "in \(file) is not part of a \(layout.layout.rawValue) checkpoint of this model")
        }
        report.tensors = actual.count

        // Rules 2 and 3: dtypes and shapes.
        for (name, (dtype, shape)) in expected {
            let info = try model.info(name)
            let file = try model.file(containing: name).path
            if let dtype, info.dtype != dtype {
                throw CheckpointError(name, "in \(file) has dtype \(info.dtype.rawValue), expected \(dtype.rawValue)")
            }
            if info.shape != shape {
                throw CheckpointError(name, "in \(file) has shape \(info.shape), expected \(shape)")
            }
        }
        try verifyUnquantizedCopies(model: model)
        report.excludedLinears = try verifyExcludedLinears(model: model)

        // Rules 4 and 5: scales finite and positive; fused groups equal.
        for layer in 0..<config.numHiddenLayers {
            let linears = config.linears(layer: layer)
            for linear in linears where !layout.isExcluded(linear) {
                try verifyScales(of: linear, model: model)
                if let activationAmax, layout.scheme.quantizesActivations {
                    try verifyInputScale(of: linear, against: activationAmax[layer]?[linear.kind.group], model: model)
                }
                report.quantizedLinears += 1
            }
            for group in FusedGroup.allCases where group.members.count > 1 {
                let members = linears.filter { group.members.contains($0.kind) }
                let excludedMembers = members.filter(layout.isExcluded)
                if !excludedMembers.isEmpty {
                    guard excludedMembers.count == members.count else {
                        throw CheckpointError(excludedMembers[0].name, "is kept unquantized but \(members.filter { !layout.isExcluded($0) }.map(\.name).joined(separator: ", ")) "
                                              + "of its fused group \(group.rawValue) is quantized; vLLM needs one scheme per fused GEMM")
                    }
                    continue
                }
                for role in layout.roles where role == .weightGlobalScale || role == .inputScale {
                    let values = try members.map { try scalar(layout.tensorName(role, of: $0), model: model).bitPattern }
                    if Set(values).count != 1 {
                        throw CheckpointError(layout.tensorName(role, of: members[0]),
                                              "fused group \(group.rawValue) of layer \(layer) has unequal \(layout.suffix(role)) values")
                    }
                }
            }
        }
        return report
    }

    func scalar(_ name: String, model: SafeTensorsModel) throws -> Float {
        try model.withBytes(name) { Float(bitPattern: UInt32(littleEndian: $0.loadUnaligned(as: UInt32.self))) }
    }

    func verifyScales(of linear: LinearSpec, model: SafeTensorsModel) throws {
        for role in layout.roles where role == .weightGlobalScale || role == .inputScale {
            let name = layout.tensorName(role, of: linear)
            let value = try scalar(name, model: model)
            if !value.isFinite || value <= 0 {
                throw CheckpointError(name, "in \(try model.file(containing: name).path) is \(value); every global scale must be finite and > 0")
            }
        }
        let scalesName = layout.tensorName(.blockScales, of: linear)
        try model.withBytes(scalesName) { bytes in
            if let bad = bytes.firstIndex(where: { $0 == 0 || $0 >= 0x7F }) {
                throw CheckpointError(scalesName, String(format: "block scale byte %d is 0x%02X; block scales must be in 0x01...0x7E", bad, bytes[bad]))
            }
        }
        try model.releasePages(scalesName)
    }

    /// The stored activation scale is `f32(amax / 2688)` of the calibrated amax (or its f32 reciprocal in
    /// compressed-tensors), bit for bit.
    func verifyInputScale(of linear: LinearSpec, against amax: ActivationAmax?, model: SafeTensorsModel) throws {
        let name = layout.tensorName(.inputScale, of: linear)
        guard let amax else {
            throw CheckpointError(name, "has no calibrated activation amax for group \(linear.kind.group.rawValue) of layer "
                                  + "\(linear.layer) to check against")
        }
        let stored = try scalar(name, model: model)
        let expected = layout.storedValue(InputScale(amax))
        guard stored.bitPattern == expected.bitPattern else {
            throw CheckpointError(name, "in \(try model.file(containing: name).path) is \(stored), but the calibrated "
                                  + "activation amax \(amax) of \(linear.kind.group.rawValue) gives \(expected) "
                                  + "(\(layout.layout == .compressedTensors ? "1 / (amax / 2688)" : "amax / 2688")); "
                                  + "the checkpoint's activation scales do not come from its calibration")
        }
    }

    /// Each excluded Linear is its source weight: same dtype and bytes (its shape was checked with the others).
    func verifyExcludedLinears(model: SafeTensorsModel) throws -> Int {
        let excluded = config.allLinears.filter(layout.isExcluded)
        guard let source else { return excluded.count }
        for linear in excluded {
            let name = linear.weightName
            let sourceInfo = try source.info(name)
            let info = try model.info(name)
            if info.dtype != sourceInfo.dtype {
                throw CheckpointError(name, "is excluded from quantization and must keep the source dtype \(sourceInfo.dtype.rawValue), "
                                      + "but is \(info.dtype.rawValue)")
            }
            let equal = try model.withBytes(name) { written in
                try source.withBytes(name) { original in
                    written.count == original.count && memcmp(written.baseAddress!, original.baseAddress!, written.count) == 0
                }
            }
            if !equal { throw CheckpointError(name, "is excluded from quantization but differs from the source weight") }
            try model.releasePages(name)
            try source.releasePages(name)
        }
        return excluded.count
    }

    func verifyUnquantizedCopies(model: SafeTensorsModel) throws {
        guard let source else { return }
        for spec in config.nonQuantizedTensors {
            let sourceInfo = try source.info(spec.name)
            let info = try model.info(spec.name)
            if info.dtype != sourceInfo.dtype {
                throw CheckpointError(spec.name, "has dtype \(info.dtype.rawValue) but the source has \(sourceInfo.dtype.rawValue)")
            }
            let equal = try model.withBytes(spec.name) { written in
                try source.withBytes(spec.name) { original in
                    written.count == original.count && memcmp(written.baseAddress!, original.baseAddress!, written.count) == 0
                }
            }
            if !equal { throw CheckpointError(spec.name, "differs from the source; unquantized tensors must be copied verbatim") }
            try model.releasePages(spec.name)
            try source.releasePages(spec.name)
        }
    }

    /// Rule 7: index integrity.
    func verifyIndex(directory: URL, model: SafeTensorsModel) throws {
        let onDisk = Set(try FileManager.default.contentsOfDirectory(atPath: directory.path).filter { $0.hasSuffix(".safetensors") })
        let indexURL = directory.appendingPathComponent(SafeTensorsModel.indexFileName)
        guard FileManager.default.fileExists(atPath: indexURL.path) else {
            if onDisk != [SafeTensorsModel.singleFileName] {
                throw CheckpointError(directory.path, "has shards \(onDisk.sorted()) but no \(SafeTensorsModel.indexFileName)")
            }
            return
        }
        guard let index = try JSONSerialization.jsonObject(with: Data(contentsOf: indexURL)) as? [String: Any],
              let metadata = index["metadata"] as? [String: Any], let totalSize = metadata["total_size"] as? Int,
              let map = index["weight_map"] as? [String: String] else {
            throw CheckpointError(indexURL.path, "lacks metadata.total_size or weight_map")
        }
        let mapped = Set(map.values)
        if let unmapped = onDisk.subtracting(mapped).sorted().first {
            throw CheckpointError(unmapped, "is on disk but not in the index; vLLM would silently skip it")
        }
        if let absent = mapped.subtracting(onDisk).sorted().first {
            throw CheckpointError(indexURL.path, "maps tensors to \(absent), which does not exist")
        }
        // Each tensor must sit in exactly the shard the map names: a tensor present in a shard but absent from the
        // map, or present twice, would still be loaded by vLLM from every mapped file.
        var seen: [String: String] = [:]
        for file in model.files {
            let fileName = URL(fileURLWithPath: file.path).lastPathComponent
            for tensor in file.tensorNames {
                if let other = seen[tensor] {
                    throw CheckpointError(tensor, "appears in both \(other) and \(fileName)")
                }
                seen[tensor] = fileName
                if map[tensor] != fileName {
                    throw CheckpointError(tensor, "is in \(fileName) but the index maps it to \(map[tensor] ?? "nothing")")
                }
            }
        }
        if let unbacked = map.keys.filter({ seen[$0] == nil }).sorted().first {
            throw CheckpointError(unbacked, "is in the index but in none of the shards")
        }
        let actualSize = model.files.reduce(0) { total, file in total + file.tensors.reduce(0) { $0 + $1.byteCount } }
        if totalSize != actualSize {
            throw CheckpointError(indexURL.path, "metadata.total_size is \(totalSize) but the tensors hold \(actualSize) bytes")
        }
    }

    /// Rules 6 and 8: config and exclusion lists.
    func verifyConfig(directory: URL) throws {
        let configURL = ModelDirectory(directory).configURL
        guard let written = try? JSONSerialization.jsonObject(with: Data(contentsOf: configURL)) as? [String: Any] else {
            throw CheckpointError(configURL.path, "is missing or not a JSON object")
        }
        guard let original = try JSONSerialization.jsonObject(with: config.raw) as? [String: Any] else {
            throw CheckpointError(configURL.path, "source config is not a JSON object")
        }
        for (key, originalValue) in original {
            guard let value = written[key], canonicalJSON(value) == canonicalJSON(originalValue) else {
                throw CheckpointError(configURL.path, "field '\(key)' changed or disappeared; the source config must be kept intact")
            }
        }
        guard let quantization = written["quantization_config"] as? [String: Any] else {
            throw CheckpointError(configURL.path, "has no quantization_config")
        }
        let ignore = quantization["ignore"] as? [String] ?? []
        switch layout.layout {
        case .compressedTensors:
            guard quantization["quant_method"] as? String == "compressed-tensors",
                  quantization["format"] as? String == "nvfp4-pack-quantized" else {
                throw CheckpointError(configURL.path, "quantization_config must have quant_method compressed-tensors and format nvfp4-pack-quantized")
            }
            guard ignore.contains("lm_head") else {
                throw CheckpointError(configURL.path, "quantization_config.ignore must contain lm_head")
            }
            try verifyExclusionList(ignore, fixed: ["lm_head"], field: "quantization_config.ignore", file: configURL.path)
            let group = (quantization["config_groups"] as? [String: Any])?["group_0"] as? [String: Any]
            let weights = group?["weights"] as? [String: Any]
            guard weights?["group_size"] as? Int == 16, weights?["num_bits"] as? Int == 4 else {
                throw CheckpointError(configURL.path, "quantization_config weights must have group_size 16 and num_bits 4")
            }
            let activations = group?["input_activations"]
            if layout.scheme.quantizesActivations {
                guard (activations as? [String: Any])?["dynamic"] as? String == "local" else {
                    throw CheckpointError(configURL.path, "W4A4 input_activations.dynamic must be \"local\"")
                }
            } else if !(activations is NSNull) {
                throw CheckpointError(configURL.path, "weight-only checkpoint must have input_activations null")
            }
        case .modelopt:
            guard quantization["quant_method"] as? String == "modelopt", quantization["quant_algo"] as? String == "NVFP4" else {
                throw CheckpointError(configURL.path, "quantization_config must have quant_method modelopt and quant_algo NVFP4")
            }
            guard ignore.contains("lm_head"), ignore.contains("model.embed_tokens") else {
                throw CheckpointError(configURL.path, "quantization_config.ignore must contain lm_head and model.embed_tokens")
            }
            try verifyExclusionList(ignore, fixed: ["lm_head", "model.embed_tokens"], field: "quantization_config.ignore",
                                    file: configURL.path)
            let hfURL = directory.appendingPathComponent("hf_quant_config.json")
            guard let hf = try? JSONSerialization.jsonObject(with: Data(contentsOf: hfURL)) as? [String: Any],
                  let nested = hf["quantization"] as? [String: Any] else {
                throw CheckpointError(hfURL.path, "is missing or has no quantization object")
            }
            for key in ["quant_algo", "kv_cache_quant_algo", "group_size", "exclude_modules"] where nested[key] == nil {
                throw CheckpointError(hfURL.path, "quantization.\(key) is missing")
            }
            let excluded = nested["exclude_modules"] as? [String] ?? []
            guard nested["group_size"] as? Int == 16, excluded.contains("lm_head"), excluded.contains("model.embed_tokens") else {
                throw CheckpointError(hfURL.path, "needs group_size 16 and exclude_modules with lm_head and model.embed_tokens")
            }
            try verifyExclusionList(excluded, fixed: ["lm_head", "model.embed_tokens"], field: "quantization.exclude_modules",
                                    file: hfURL.path)
        }
    }
}

extension CheckpointVerifier {
    /// Besides its `fixed` entries, a loader's exclusion list names exactly the excluded Linears: a missing name
    /// would make vLLM expect packed tensors that are not there, an extra one would leave a quantized Linear's
    /// tensors unread.
    func verifyExclusionList(_ list: [String], fixed: Set<String>, field: String, file: String) throws {
        let listed = Set(list).subtracting(fixed)
        let excluded = Set(layout.excluded.keys)
        if let missing = config.allLinears.map(\.name).first(where: { excluded.contains($0) && !listed.contains($0) }) {
            throw CheckpointError(file, "\(field) lacks \(missing), which is kept unquantized; vLLM would look for its packed weight")
        }
        if let extra = listed.subtracting(excluded).sorted().first {
            throw CheckpointError(file, "\(field) lists \(extra), which is not an unquantized Linear of this checkpoint")
        }
    }
}

/// A canonical serialization for comparing JSON values regardless of key order.
func canonicalJSON(_ value: Any) -> Data? {
    try? JSONSerialization.data(withJSONObject: [value], options: [.sortedKeys, .fragmentsAllowed])
}
