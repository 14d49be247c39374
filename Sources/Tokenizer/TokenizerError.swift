/// A typed failure while loading a `tokenizer.json`; the description names the file and the field at fault.
public struct TokenizerError: Error, CustomStringConvertible, Equatable, Sendable {
    public enum Kind: String, Sendable, Equatable {
        /// The file or directory could not be read.
        case unreadableFile
        /// The file is not valid JSON, or a field has the wrong JSON type.
        case malformedJSON
        /// A required field is absent.
        case missingField
        /// A field has a value this tokenizer rejects (unknown token in a merge, negative id, ...).
        case invalidValue
        /// The model is not BPE (Unigram, WordPiece, WordLevel, ...).
        case unsupportedModelType
        /// The directory holds only a SentencePiece `tokenizer.model`.
        case sentencePieceOnly
        /// A normalizer, pre-tokenizer, post-processor or option this implementation does not reproduce.
        case unsupportedComponent
    }

    public let kind: Kind
    /// The file at fault.
    public let file: String
    /// What is wrong, naming the field.
    public let message: String

    public init(_ kind: Kind, file: String, _ message: String) {
        self.kind = kind
        self.file = file
        self.message = message
    }

    public var description: String { "\(file): \(message)" }
}
