import Foundation
import JobModel
import SafeTensors

/// A model directory that is not the one the job was planned on.
public enum ModelCheckError: Error, CustomStringConvertible, Equatable, Sendable {
    case unreadable(path: String, reason: String)
    case configMismatch(path: String, expectedSHA256: String, actualSHA256: String)

    public var description: String {
        switch self {
        case .unreadable(let path, let reason):
            return "\(path): cannot read the model's config: \(reason)"
        case .configMismatch(let path, let expected, let actual):
            return "\(path) has SHA-256 \(actual), but the job was planned on a config.json with SHA-256 \(expected); "
                + "this machine holds a different model at the same path"
        }
    }
}

/// What a worker checks before it starts: its `<model>/config.json` is byte for byte the coordinator's.
public enum ModelCheck {
    /// SHA-256 (lower-case hex) of `<modelDirectory>/config.json`.
    public static func configSHA256(modelDirectory: URL) throws -> String {
        let path = ModelDirectory(modelDirectory).configURL.path
        do {
            return SHA256Hasher.hexDigest(of: try Data(contentsOf: URL(fileURLWithPath: path)))
        } catch {
            throw ModelCheckError.unreadable(path: path, reason: error.localizedDescription)
        }
    }

    /// Throws ``ModelCheckError/configMismatch(path:expectedSHA256:actualSHA256:)`` unless the config.json at the
    /// spec's model path hashes to `spec.configSHA256`.
    public static func verify(_ spec: JobSpec) throws {
        let path = ModelDirectory(spec.modelDirectory).configURL.path
        let actual = try configSHA256(modelDirectory: spec.modelDirectory)
        guard actual == spec.configSHA256 else {
            throw ModelCheckError.configMismatch(path: path, expectedSHA256: spec.configSHA256, actualSHA256: actual)
        }
    }
}
