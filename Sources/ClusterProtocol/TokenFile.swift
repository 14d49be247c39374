import Foundation
import Transport

/// Reads a cluster token file: the secret is the file's content without surrounding whitespace. The file should be
/// readable by its owner only; a group- or world-readable file is refused, since anyone who can read it can join.
public enum TokenFile {
    public static func load(path: String) throws -> ClusterToken {
        let attributes: [FileAttributeKey: Any]
        do {
            attributes = try FileManager.default.attributesOfItem(atPath: path)
        } catch {
            throw TokenFileError(path: path, reason: "cannot be read (\(error.localizedDescription))")
        }
        if let permissions = (attributes[.posixPermissions] as? NSNumber)?.intValue, permissions & 0o077 != 0 {
            throw TokenFileError(path: path, reason: String(format: "has mode %o; other users could read the token. "
                                                            + "Run: chmod 600 %@", permissions, path))
        }
        guard let data = FileManager.default.contents(atPath: path),
              let text = String(data: data, encoding: .utf8) else {
            throw TokenFileError(path: path, reason: "is not readable UTF-8 text")
        }
        let secret = text.trimmingCharacters(in: .whitespacesAndNewlines)
        do {
            return try ClusterToken(secret)
        } catch {
            throw TokenFileError(path: path, reason: "holds an unusable token: \(error)")
        }
    }
}

public struct TokenFileError: Error, CustomStringConvertible, Sendable {
    public let path: String
    public let reason: String
    public var description: String { "token file \(path) \(reason)" }
}

