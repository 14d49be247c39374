import Foundation

/// # Tokenizer
///
/// A byte-level BPE tokenizer that reads a Hugging Face `tokenizer.json` and produces exactly the ids the
/// Hugging Face `tokenizers` library produces for the Llama-3, GPT-2 and SmolLM2 families.
///
/// `encode` runs the same stages as the reference:
/// 1. added tokens are cut out first (leftmost, longest) and map straight to their ids;
/// 2. each remaining run goes through the pre-tokenizer: hand-written scanners for the Llama-3 and GPT-2 split
///    patterns, `Digits`, and `ByteLevel` (whose byte-to-unicode map is folded into the vocabulary, so pieces stay
///    raw UTF-8 bytes);
/// 3. each piece is merged with BPE (merge ranks over token-id pairs, a heap over the piece's symbols, and a cache
///    of results per call);
/// 4. the post-processor's template adds BOS (and any other special tokens) when asked.
///
/// Anything outside this subset (another model type, a normalizer, an unknown split pattern) is refused at load
/// time with a ``TokenizerError`` naming the file and the field, rather than tokenizing differently.
public final class BPETokenizer: Sendable {
    /// The file this tokenizer was read from.
    public let path: String
    /// Max id + 1 over the vocabulary and the added tokens.
    public let vocabSize: Int
    /// Ids the post-processor puts before and after the text when `addSpecialTokens` is true.
    public let prefixTokenIDs: [Int]
    public let suffixTokenIDs: [Int]

    private let model: BytePairModel
    private let rawAddedTokens: AddedTokenMatcher
    private let normalizedAddedTokens: AddedTokenMatcher
    private let preTokenizer: PreTokenizerPipeline
    /// Bytes each id decodes to; nil for unused ids.
    private let bytesByID: [[UInt8]?]

    /// The largest token id accepted (2^24 - 1; real vocabularies stay below 2^20). The id table is as long as the
    /// largest id, so an unchecked id of 2^31 or 2^63 - 1 in a tokenizer.json made loading allocate tens of GiB or
    /// overflow (found by the TokenizerJSON fuzz target).
    static let maximumTokenID = (1 << 24) - 1

    /// The token the post-processor prepends (BOS), or nil when it prepends none. The first-release Llama-3
    /// `tokenizer.json` has none; Llama-3.1+ checkpoints prepend `<|begin_of_text|>` through `TemplateProcessing`.
    public var bosTokenID: Int? { prefixTokenIDs.first }

    /// Reads `tokenizer.json` at `path`.
    public convenience init(contentsOf path: String) throws {
        let data: Data
        do {
            data = try Data(contentsOf: URL(fileURLWithPath: path))
        } catch {
            throw TokenizerError(.unreadableFile, file: path, "cannot read tokenizer.json: \(error.localizedDescription)")
        }
        try self.init(json: data, path: path)
    }

    /// Reads tokenizer.json contents held in memory; `path` only names them in errors (the fuzz target's entry).
    package init(json data: Data, path: String) throws {
        self.path = path
        let parsed: JSONValue
        let parseResult = data.withUnsafeBytes { bytes in
            Result { () throws(JSONParseError) -> JSONValue in try JSONParser.parse(bytes) }
        }
        switch parseResult {
        case .success(let value): parsed = value
        case .failure(let error):
            throw TokenizerError(.malformedJSON, file: path, "not valid JSON at byte \(error.offset): \(error.message)")
        }
        let reader = JSONReader(file: path)
        let root = try reader.object(parsed, "top level")

        try Self.checkNormalizer(root["normalizer"], reader)
        let steps = try Self.preTokenizerSteps(root["pre_tokenizer"], field: "pre_tokenizer", reader)
        guard Self.hasByteLevel(root["pre_tokenizer"]) else {
            throw TokenizerError(.unsupportedComponent, file: path,
                                 "pre_tokenizer has no ByteLevel step; only byte-level BPE is supported")
        }
        preTokenizer = PreTokenizerPipeline(steps: steps)

        let modelObject = try reader.object(root["model"], "model")
        let loaded = try Self.loadModel(modelObject, reader)
        model = loaded.model

        var addedTokens: [AddedToken] = []
        if let list = root["added_tokens"], !JSONReader.isNull(list) {
            for (index, item) in try reader.array(list, "added_tokens").enumerated() {
                let field = "added_tokens[\(index)]"
                let entry = try reader.object(item, field)
                let id = try reader.int(entry["id"], "\(field).id")
                guard id >= 0 else { throw TokenizerError(.invalidValue, file: path, "\(field).id is negative (\(id))") }
                guard id <= Self.maximumTokenID else {
                    throw TokenizerError(.invalidValue, file: path, "\(field).id \(id) is above the largest id allowed, \(Self.maximumTokenID)")
                }
                let content = try reader.string(entry["content"], "\(field).content")
                addedTokens.append(AddedToken(
                    id: id, content: Array(content.utf8),
                    singleWord: try reader.bool(entry["single_word"], "\(field).single_word", default: false),
                    leftStrip: try reader.bool(entry["lstrip"], "\(field).lstrip", default: false),
                    rightStrip: try reader.bool(entry["rstrip"], "\(field).rstrip", default: false),
                    normalized: try reader.bool(entry["normalized"], "\(field).normalized", default: false),
                    special: try reader.bool(entry["special"], "\(field).special", default: false)))
            }
        }
        // Hugging Face first cuts out tokens matched on the raw text, then those matched on normalized text.
        rawAddedTokens = AddedTokenMatcher(addedTokens.filter { !$0.normalized })
        normalizedAddedTokens = AddedTokenMatcher(addedTokens.filter { $0.normalized })

        let template = try Self.postProcessorTemplate(root["post_processor"], field: "post_processor", reader)
        prefixTokenIDs = template.prefix
        suffixTokenIDs = template.suffix

        let size = max(loaded.bytesByID.count, (addedTokens.map(\.id).max() ?? -1) + 1)
        // The template's ids are emitted by encode(): each must be a token of this vocabulary.
        for id in template.prefix + template.suffix where id < 0 || id >= size {
            throw TokenizerError(.invalidValue, file: path,
                                 "post_processor adds token id \(id), outside the vocabulary [0, \(size))")
        }
        var decodeTable = loaded.bytesByID + [[UInt8]?](repeating: nil, count: size - loaded.bytesByID.count)
        for token in addedTokens { decodeTable[token.id] = token.content }
        bytesByID = decodeTable
        vocabSize = size
    }

    /// Loads `directory/tokenizer.json`; a directory with only a SentencePiece `tokenizer.model` is refused.
    public static func load(modelDirectory directory: String) throws -> BPETokenizer {
        let jsonPath = (directory as NSString).appendingPathComponent("tokenizer.json")
        let fileManager = FileManager.default
        if fileManager.fileExists(atPath: jsonPath) { return try BPETokenizer(contentsOf: jsonPath) }
        let sentencePiecePath = (directory as NSString).appendingPathComponent("tokenizer.model")
        if fileManager.fileExists(atPath: sentencePiecePath) {
            throw TokenizerError(.sentencePieceOnly, file: sentencePiecePath,
                                 "only a SentencePiece tokenizer.model is present; SentencePiece-only tokenizers are "
                                 + "not supported (a tokenizer.json with a byte-level BPE model is required)")
        }
        throw TokenizerError(.unreadableFile, file: jsonPath, "no tokenizer.json in \(directory)")
    }

    /// Token ids for `text`; with `addSpecialTokens`, the post-processor's BOS (and other template tokens) too.
    public func encode(_ text: String, addSpecialTokens: Bool = true) -> [Int] {
        let scalars = ScalarText(utf8: Array(text.utf8))
        var output: [Int] = []
        output.reserveCapacity(scalars.bytes.count / 3 + prefixTokenIDs.count + suffixTokenIDs.count + 4)
        if addSpecialTokens { output.append(contentsOf: prefixTokenIDs) }
        var scratch = EncodeScratch()
        let encodePlain: (Int, Int) -> Void = { lo, hi in
            self.preTokenizer.run(scalars, lo, hi) { piece in
                self.model.encode(piece, into: &output, scratch: &scratch)
            }
        }
        rawAddedTokens.split(scalars, 0, scalars.scalarCount, emitText: { lo, hi in
            if self.normalizedAddedTokens.isEmpty {
                encodePlain(lo, hi)
            } else {
                self.normalizedAddedTokens.split(scalars, lo, hi, emitText: encodePlain,
                                                 emitToken: { output.append($0) })
            }
        }, emitToken: { output.append($0) })
        if addSpecialTokens { output.append(contentsOf: suffixTokenIDs) }
        return output
    }

    /// The text that `ids` spell (byte-level decoding; added tokens give their content; invalid UTF-8 becomes
    /// U+FFFD; unknown ids are skipped). For debugging and round-trip checks.
    public func decode(_ ids: [Int]) -> String {
        var bytes: [UInt8] = []
        for id in ids where id >= 0 && id < bytesByID.count {
            if let tokenBytes = bytesByID[id] { bytes.append(contentsOf: tokenBytes) }
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// The id of a token given in its `tokenizer.json` spelling, if present.
    public func tokenID(forByteLevelToken token: String) -> Int? {
        guard let bytes = ByteLevelAlphabet.bytes(ofByteLevelString: token) else { return nil }
        let id = model.vocabulary.lookup(bytes)
        return id >= 0 ? Int(id) : nil
    }
}

// MARK: - Loading

extension BPETokenizer {
    private static func checkNormalizer(_ value: JSONValue?, _ reader: JSONReader) throws {
        if JSONReader.isNull(value) { return }
        let object = try reader.object(value, "normalizer")
        let type = try reader.string(object["type"], "normalizer.type")
        var named = type
        if type == "Sequence" {
            let inner = try reader.array(object["normalizers"], "normalizer.normalizers")
            if inner.isEmpty { return }
            let innerTypes = inner.map { item -> String in
                if case .object(let innerObject) = item, case .string(let innerType)? = innerObject["type"] {
                    return innerType
                }
                return "?"
            }
            named = "Sequence[\(innerTypes.joined(separator: ", "))]"
        }
        throw TokenizerError(.unsupportedComponent, file: reader.file,
                             "normalizer \"\(named)\" is not supported (only a null normalizer is)")
    }

    private static func hasByteLevel(_ value: JSONValue?) -> Bool {
        guard case .object(let object)? = value, case .string(let type)? = object["type"] else { return false }
        if type == "ByteLevel" { return true }
        if type == "Sequence", case .array(let list)? = object["pretokenizers"] {
            return list.contains { hasByteLevel($0) }
        }
        return false
    }

    private static func preTokenizerSteps(_ value: JSONValue?, field: String, _ reader: JSONReader) throws
        -> [PreTokenizerStep] {
        if JSONReader.isNull(value) { return [] }
        let object = try reader.object(value, field)
        let type = try reader.string(object["type"], "\(field).type")
        switch type {
        case "Sequence":
            let list = try reader.array(object["pretokenizers"], "\(field).pretokenizers")
            // Steps after ByteLevel would see byte-level characters, not the text; this implementation keeps raw
            // bytes throughout, so it accepts ByteLevel only as the last step.
            if let byteLevelIndex = list.firstIndex(where: { hasByteLevel($0) }), byteLevelIndex != list.count - 1 {
                throw TokenizerError(.unsupportedComponent, file: reader.file,
                                     "\(field).pretokenizers[\(byteLevelIndex)] is ByteLevel but is not the last step")
            }
            return try list.enumerated().flatMap { index, item in
                try preTokenizerSteps(item, field: "\(field).pretokenizers[\(index)]", reader)
            }
        case "ByteLevel":
            // Hugging Face's defaults when the fields are absent: add_prefix_space true, use_regex true.
            var steps: [PreTokenizerStep] = []
            if try reader.bool(object["add_prefix_space"], "\(field).add_prefix_space", default: true) {
                steps.append(.prefixSpace)
            }
            if try reader.bool(object["use_regex"], "\(field).use_regex", default: true) { steps.append(.gpt2Split) }
            return steps
        case "Digits":
            return [.digits(individual: try reader.bool(object["individual_digits"], "\(field).individual_digits",
                                                         default: false))]
        case "Split":
            let pattern = try reader.object(object["pattern"], "\(field).pattern")
            guard case .string(let regex)? = pattern["Regex"] else {
                throw TokenizerError(.unsupportedComponent, file: reader.file,
                                     "\(field).pattern must be a Regex; got \(pattern.members.map(\.key))")
            }
            let behavior = try reader.string(object["behavior"], "\(field).behavior")
            guard behavior == "Isolated" else {
                throw TokenizerError(.unsupportedComponent, file: reader.file,
                                     "\(field).behavior \"\(behavior)\" is not supported (only Isolated is)")
            }
            guard !(try reader.bool(object["invert"], "\(field).invert", default: false)) else {
                throw TokenizerError(.unsupportedComponent, file: reader.file, "\(field).invert true is not supported")
            }
            switch regex {
            case RegexScanners.llama3Pattern: return [.llama3Split]
            case RegexScanners.gpt2Pattern: return [.gpt2Split]
            default:
                throw TokenizerError(.unsupportedComponent, file: reader.file,
                                     "\(field).pattern regex is not one this tokenizer implements: \(regex)")
            }
        default:
            throw TokenizerError(.unsupportedComponent, file: reader.file,
                                 "\(field).type \"\(type)\" is not supported")
        }
    }

    private static func postProcessorTemplate(_ value: JSONValue?, field: String, _ reader: JSONReader) throws
        -> (prefix: [Int], suffix: [Int]) {
        if JSONReader.isNull(value) { return ([], []) }
        let object = try reader.object(value, field)
        let type = try reader.string(object["type"], "\(field).type")
        switch type {
        case "ByteLevel":
            // Only adjusts offsets; ids are unchanged.
            return ([], [])
        case "Sequence":
            var prefix: [Int] = []
            var suffix: [Int] = []
            for (index, item) in try reader.array(object["processors"], "\(field).processors").enumerated() {
                let inner = try postProcessorTemplate(item, field: "\(field).processors[\(index)]", reader)
                prefix = inner.prefix + prefix
                suffix += inner.suffix
            }
            return (prefix, suffix)
        case "TemplateProcessing":
            let specialTokens = try reader.object(object["special_tokens"] ?? .object(JSONObject(members: [])),
                                                  "\(field).special_tokens")
            var prefix: [Int] = []
            var suffix: [Int] = []
            var sawSequence = false
            for (index, item) in try reader.array(object["single"], "\(field).single").enumerated() {
                let itemField = "\(field).single[\(index)]"
                let piece = try reader.object(item, itemField)
                if piece["Sequence"] != nil {
                    sawSequence = true
                } else if let special = piece["SpecialToken"] {
                    let name = try reader.string(try reader.object(special, "\(itemField).SpecialToken")["id"],
                                                 "\(itemField).SpecialToken.id")
                    guard case .object(let entry)? = specialTokens[name] else {
                        throw TokenizerError(.invalidValue, file: reader.file,
                                             "\(itemField) names \"\(name)\", which \(field).special_tokens lacks")
                    }
                    let ids = try reader.array(entry["ids"], "\(field).special_tokens.\(name).ids").enumerated().map {
                        try reader.int($1, "\(field).special_tokens.\(name).ids[\($0)]")
                    }
                    if sawSequence { suffix += ids } else { prefix += ids }
                } else {
                    throw TokenizerError(.malformedJSON, file: reader.file,
                                         "\(itemField) is neither a Sequence nor a SpecialToken")
                }
            }
            return (prefix, suffix)
        default:
            throw TokenizerError(.unsupportedComponent, file: reader.file,
                                 "\(field).type \"\(type)\" is not supported")
        }
    }

    private static func loadModel(_ object: JSONObject, _ reader: JSONReader) throws
        -> (model: BytePairModel, bytesByID: [[UInt8]?]) {
        let file = reader.file
        let type: String
        if let declared = object["type"] {
            type = try reader.string(declared, "model.type")
        } else if object["merges"] != nil {
            type = "BPE" // Older files leave the type out; merges mark BPE.
        } else {
            throw TokenizerError(.missingField, file: file, "model.type is missing")
        }
        guard type == "BPE" else {
            throw TokenizerError(.unsupportedModelType, file: file,
                                 "model.type \"\(type)\" is not supported; only byte-level BPE is")
        }
        for option in ["continuing_subword_prefix", "end_of_word_suffix"] {
            if case .string(let value)? = object[option], !value.isEmpty {
                throw TokenizerError(.unsupportedComponent, file: file, "model.\(option) \"\(value)\" is not supported")
            }
        }
        if case .double(let dropout)? = object["dropout"], dropout > 0 {
            throw TokenizerError(.unsupportedComponent, file: file, "model.dropout \(dropout) is not supported")
        }

        // Keys are raw bytes, not Strings: hashing hundreds of thousands of non-ASCII Strings dominated loading.
        let vocabObject = try reader.object(object["vocab"], "model.vocab")
        var maxID = -1
        for (token, value) in vocabObject.members {
            guard case .int(let id) = value, id >= 0, id <= maximumTokenID else {
                throw TokenizerError(.invalidValue, file: file,
                                     "model.vocab[\"\(token)\"] is not an integer id in [0, \(maximumTokenID)]")
            }
            maxID = max(maxID, id)
        }
        var vocabulary = ByteStringTable(minimumCapacity: vocabObject.members.count)
        // Tokens not spelled in the byte-level alphabet: BPE never produces them, but merges may name them and
        // they still decode.
        var otherTokens: [String: Int32] = [:]
        var bytesByID = [[UInt8]?](repeating: nil, count: maxID + 1)
        for (token, value) in vocabObject.members {
            guard case .int(let id) = value else { continue }
            if let bytes = ByteLevelAlphabet.bytes(ofByteLevelString: token) {
                vocabulary.insert(bytes, value: Int32(id))
                bytesByID[id] = bytes
            } else {
                otherTokens[token] = Int32(id)
                bytesByID[id] = Array(token.utf8)
            }
        }
        func tokenID(_ token: String) -> Int32? {
            if let bytes = ByteLevelAlphabet.bytes(ofByteLevelString: token) {
                let id = vocabulary.lookup(bytes)
                return id >= 0 ? id : nil
            }
            return otherTokens[token]
        }

        let mergeList = try reader.array(object["merges"], "model.merges")
        var merges = MergeTable(capacityFor: mergeList.count)
        var buffer: [UInt8] = []
        for (rank, item) in mergeList.enumerated() {
            let left: Substring
            let right: Substring
            if case .string(let line) = item {
                let parts = line.split(separator: " ", omittingEmptySubsequences: false)
                guard parts.count == 2 else {
                    throw TokenizerError(.invalidValue, file: file, "model.merges[\(rank)] \"\(line)\" is not two tokens")
                }
                left = parts[0]
                right = parts[1]
            } else if case .array(let pair) = item, pair.count == 2, case .string(let a) = pair[0],
                      case .string(let b) = pair[1] {
                left = Substring(a)
                right = Substring(b)
            } else {
                throw TokenizerError(.malformedJSON, file: file,
                                     "model.merges[\(rank)] is neither \"a b\" nor [\"a\", \"b\"]")
            }
            var leftID: Int32 = -1
            var rightID: Int32 = -1
            var mergedID: Int32 = -1
            buffer.removeAll(keepingCapacity: true)
            if ByteLevelAlphabet.appendBytes(ofByteLevelString: left, to: &buffer) {
                let split = buffer.count
                if ByteLevelAlphabet.appendBytes(ofByteLevelString: right, to: &buffer) {
                    buffer.withUnsafeBytes { bytes in
                        leftID = vocabulary.lookup(UnsafeRawBufferPointer(rebasing: bytes[..<split]))
                        rightID = vocabulary.lookup(UnsafeRawBufferPointer(rebasing: bytes[split...]))
                        mergedID = vocabulary.lookup(bytes)
                    }
                }
            }
            if leftID < 0 || rightID < 0 || mergedID < 0 {
                guard let id = tokenID(String(left)) else {
                    throw TokenizerError(.invalidValue, file: file, "model.merges[\(rank)] names \"\(left)\", not in model.vocab")
                }
                leftID = id
                guard let id = tokenID(String(right)) else {
                    throw TokenizerError(.invalidValue, file: file, "model.merges[\(rank)] names \"\(right)\", not in model.vocab")
                }
                rightID = id
                guard let id = tokenID(String(left + right)) else {
                    throw TokenizerError(.invalidValue, file: file,
                                         "model.merges[\(rank)] makes \"\(left + right)\", not in model.vocab")
                }
                mergedID = id
            }
            merges.insert(left: leftID, right: rightID, rank: Int32(rank), merged: mergedID)
        }

        var unknownID: Int32?
        if case .string(let unknown)? = object["unk_token"] {
            guard let id = tokenID(unknown) else {
                throw TokenizerError(.invalidValue, file: file, "model.unk_token \"\(unknown)\" is not in model.vocab")
            }
            unknownID = id
        }
        let byteFallback = try reader.bool(object["byte_fallback"], "model.byte_fallback", default: false)
        var byteIDs = [Int32](repeating: -1, count: 256)
        for byte in 0..<256 {
            var id = vocabulary.lookup([UInt8(byte)])
            if id < 0 && byteFallback {
                id = tokenID(String(format: "<0x%02X>", byte)) ?? -1
            }
            byteIDs[byte] = id
        }
        let model = BytePairModel(
            vocabulary: vocabulary, merges: merges, byteIDs: byteIDs,
            ignoreMerges: try reader.bool(object["ignore_merges"], "model.ignore_merges", default: false),
            unknownID: unknownID,
            fuseUnknown: try reader.bool(object["fuse_unk"], "model.fuse_unk", default: false))
        return (model, bytesByID)
    }
}

/// Typed access to parsed JSON, with errors that name the file and field.
struct JSONReader {
    let file: String

    static func isNull(_ value: JSONValue?) -> Bool {
        guard let value else { return true }
        if case .null = value { return true }
        return false
    }

    private func present(_ value: JSONValue?, _ field: String) throws -> JSONValue {
        guard let value, !Self.isNull(value) else {
            throw TokenizerError(.missingField, file: file, "\(field) is missing")
        }
        return value
    }

    func object(_ value: JSONValue?, _ field: String) throws -> JSONObject {
        guard case .object(let object) = try present(value, field) else {
            throw TokenizerError(.malformedJSON, file: file, "\(field) is not a JSON object")
        }
        return object
    }

    func array(_ value: JSONValue?, _ field: String) throws -> [JSONValue] {
        guard case .array(let array) = try present(value, field) else {
            throw TokenizerError(.malformedJSON, file: file, "\(field) is not a JSON array")
        }
        return array
    }

    func string(_ value: JSONValue?, _ field: String) throws -> String {
        guard case .string(let string) = try present(value, field) else {
            throw TokenizerError(.malformedJSON, file: file, "\(field) is not a string")
        }
        return string
    }

    func int(_ value: JSONValue?, _ field: String) throws -> Int {
        guard case .int(let number) = try present(value, field) else {
            throw TokenizerError(.malformedJSON, file: file, "\(field) is not an integer")
        }
        return number
    }

    func bool(_ value: JSONValue?, _ field: String, default defaultValue: Bool) throws -> Bool {
        if Self.isNull(value) { return defaultValue }
        guard case .bool(let flag)? = value else {
            throw TokenizerError(.malformedJSON, file: file, "\(field) is not a boolean")
        }
        return flag
    }
}
