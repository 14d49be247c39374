import Foundation

/// A Hugging Face model directory (the source model, or a checkpoint we write): where its `config.json` is, and
/// reading it. The one place that spells the file's name.
public struct ModelDirectory: Sendable, Equatable {
    public static let configFileName = "config.json"

    public let url: URL

    public init(_ url: URL) { self.url = url }

    public init(path: String) { url = URL(fileURLWithPath: path) }

    public var configURL: URL { url.appendingPathComponent(Self.configFileName) }

    public var hasConfig: Bool { FileManager.default.fileExists(atPath: configURL.path) }

    /// The parsed Llama-family config; errors name the file and field.
    public func loadConfig() throws -> LlamaConfig { try LlamaConfig.load(path: configURL.path) }
}
