import Foundation
import StrictJSON

/// A model directory: either a single `model.safetensors`, or `model.safetensors.index.json` whose
/// `weight_map` names the shard holding each tensor. Shards are opened (and their headers validated) eagerly.
// @unchecked: every stored property is set once in init; the files are safe to read from any thread.
public final class SafeTensorsModel: @unchecked Sendable {
    public static let singleFileName = "model.safetensors"
    public static let indexFileName = "model.safetensors.index.json"

    public let directory: String
    /// Each shard once, in file-name order.
    public let files: [SafeTensorsFile]
    /// All tensor names, sorted.
    public let tensorNames: [String]
    /// The index file's path, or nil for a single-file model.
    public let indexPath: String?
    /// The index's `weight_map` (tensor name to shard file name), or nil for a single-file model.
    public let weightMap: [String: String]?

    private let fileIndexByTensor: [String: Int]

    public init(directory: String) throws {
        self.directory = directory
        let indexPath = Self.join(directory, Self.indexFileName)
        let singlePath = Self.join(directory, Self.singleFileName)
        let fileManager = FileManager.default

        if fileManager.fileExists(atPath: indexPath) {
            let weightMap = try Self.readWeightMap(indexPath: indexPath)
            // Group tensors by shard, then open each shard once.
            var tensorsByShard: [String: [String]] = [:]
            for (tensor, shard) in weightMap { tensorsByShard[shard, default: []].append(tensor) }
            var files: [SafeTensorsFile] = []
            var fileIndexByTensor: [String: Int] = [:]
            for shard in tensorsByShard.keys.sorted() {
                let tensors = tensorsByShard[shard]!.sorted()
                let shardPath = Self.join(directory, shard)
                guard fileManager.fileExists(atPath: shardPath) else {
                    throw SafeTensorsError(
                        path: indexPath, tensor: tensors[0],
                        message: "weight_map names shard '\(shard)' (for \(tensors.count) tensor(s)), which does not "
                            + "exist in \(directory)",
                        kind: .missingShard)
                }
                let file = try SafeTensorsFile(path: shardPath)
                for tensor in tensors {
                    guard file.contains(tensor) else {
                        throw SafeTensorsError(
                            path: indexPath, tensor: tensor,
                            message: "weight_map maps it to '\(shard)', which does not contain it",
                            kind: .shardMissingTensor)
                    }
                    fileIndexByTensor[tensor] = files.count
                }
                files.append(file)
            }
            self.indexPath = indexPath
            self.weightMap = weightMap
            self.files = files
            self.fileIndexByTensor = fileIndexByTensor
            self.tensorNames = weightMap.keys.sorted()
        } else if fileManager.fileExists(atPath: singlePath) {
            let file = try SafeTensorsFile(path: singlePath)
            self.indexPath = nil
            self.weightMap = nil
            self.files = [file]
            self.fileIndexByTensor = Dictionary(uniqueKeysWithValues: file.tensorNames.map { ($0, 0) })
            self.tensorNames = file.tensorNames.sorted()
        } else {
            throw SafeTensorsError(
                path: directory, message: "no \(Self.singleFileName) or \(Self.indexFileName) in \(directory)",
                kind: .noModel)
        }
    }

    /// Throws ``SafeTensorsError/Kind/changedOnDisk`` naming the first shard that changed since it was opened.
    public func checkUnchanged() throws {
        for file in files { try file.checkUnchanged() }
    }

    public func contains(_ name: String) -> Bool {
        fileIndexByTensor[name] != nil
    }

    /// The shard holding `name`; an unknown name is an error naming the index (or the single file) and the tensor.
    public func file(containing name: String) throws -> SafeTensorsFile {
        guard let index = fileIndexByTensor[name] else {
            throw SafeTensorsError(
                path: indexPath ?? files[0].path, tensor: name, message: "no such tensor in this model",
                kind: .unknownTensor)
        }
        return files[index]
    }

    public func info(_ name: String) throws -> TensorInfo {
        try file(containing: name).info(name)
    }

    public func withBytes<R>(_ name: String, _ body: (UnsafeRawBufferPointer) throws -> R) throws -> R {
        try file(containing: name).withBytes(name, body)
    }

    public func data(_ name: String) throws -> Data {
        try file(containing: name).data(name)
    }

    /// See ``SafeTensorsFile/releasePages(_:)``.
    public func releasePages(_ name: String) throws {
        try file(containing: name).releasePages(name)
    }

    public func floats(_ name: String) throws -> [Float] {
        try file(containing: name).floats(name)
    }

    public func int64s(_ name: String) throws -> [Int64] {
        try file(containing: name).int64s(name)
    }

    static func join(_ directory: String, _ name: String) -> String {
        directory.hasSuffix("/") ? directory + name : directory + "/" + name
    }

    /// Reads `weight_map` from an index file: an object of tensor name to a plain shard file name.
    private static func readWeightMap(indexPath: String) throws -> [String: String] {
        func failure(_ message: String, tensor: String? = nil) -> SafeTensorsError {
            SafeTensorsError(path: indexPath, tensor: tensor, message: message, kind: .index)
        }
        let contents: Data
        do {
            contents = try Data(contentsOf: URL(fileURLWithPath: indexPath))
        } catch {
            throw SafeTensorsError(path: indexPath, message: "cannot read: \(error.localizedDescription)", kind: .io)
        }
        let root: JSONNode = try contents.withUnsafeBytes { (bytes: UnsafeRawBufferPointer) throws -> JSONNode in
            guard isValidUTF8(bytes) else { throw failure("index is not valid UTF-8") }
            do throws(JSONParseError) {
                return try StrictJSONParser.parse(bytes)
            } catch {
                throw failure("index is not valid JSON: \(error.description)")
            }
        }
        guard case .object(let members) = root else { throw failure("index is \(root.kindName), not a JSON object") }
        guard let weightMapValue = members.first(where: { $0.key == "weight_map" })?.value else {
            throw failure("index has no 'weight_map'")
        }
        guard case .object(let entries) = weightMapValue else {
            throw failure("'weight_map' is \(weightMapValue.kindName), not an object")
        }
        var weightMap: [String: String] = [:]
        weightMap.reserveCapacity(entries.count)
        for member in entries {
            let (tensor, value) = (member.key, member.value)
            guard case .string(let shard) = value else {
                throw failure("'weight_map' value is \(value.kindName), not a file name", tensor: tensor)
            }
            // Shards live next to the index; a path could reach outside the model directory.
            guard !shard.isEmpty, shard != ".", shard != "..", !shard.contains("/") else {
                throw failure("'weight_map' names '\(shard)', which is not a plain file name", tensor: tensor)
            }
            guard weightMap.updateValue(shard, forKey: tensor) == nil else {
                throw failure("tensor appears twice in 'weight_map'", tensor: tensor)
            }
        }
        return weightMap
    }
}
