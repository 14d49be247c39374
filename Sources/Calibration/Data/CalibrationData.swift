import Foundation

/// Loads calibration text or token ids into a deterministic `CalibrationSet`. It only reads; nothing is written.
///
/// Inputs (`path`):
/// - `.jsonl`: one JSON object per line; blank lines are ignored. `input_ids` (an array of integers) is used
///   exactly as given; otherwise `text` (a string) is tokenized. When both are present `input_ids` wins. Other
///   keys are ignored.
/// - `.txt`, `.md`: paragraphs separated by one or more blank (empty or whitespace-only) lines; each paragraph,
///   its lines joined with `\n`, is one record, tokenized.
/// - A directory: its `.jsonl`, `.txt` and `.md` files (extension compared case-insensitively), NOT recursive,
///   in ascending order of file name (Unicode scalar order); hidden files and anything else are ignored.
///
/// Selection: records in input order (or shuffled, see `SplitMix64`, when `options.seed` is set); a record with
/// fewer than `minTokens` tokens is skipped, a longer one than `maxTokens` is cut to its first `maxTokens`
/// tokens; selection stops once `samples` records are used. Every line of every file is parsed and checked (so a
/// malformed line anywhere is an error), but `text` records after the last one used are never tokenized.
/// Files are UTF-8; a leading byte-order mark is dropped and `\r\n` line ends are accepted.
public enum CalibrationData {
    static let supportedExtensions: Set<String> = ["jsonl", "txt", "md"]

    /// Loads `path` (a file or a directory). Every error is a `CalibrationDataError` naming the file and line.
    public static func load(path: String, tokenizer: (any CalibrationTokenizer)?, vocabSize: Int,
                            options: CalibrationOptions = CalibrationOptions()) throws(CalibrationDataError)
        -> CalibrationSet
    {
        try validate(options: options, vocabSize: vocabSize)
        let files = try inputFiles(at: path)
        var records: [CalibrationRecord] = []
        for file in files {
            records += try readRecords(file: file, hasTokenizer: tokenizer != nil, vocabSize: vocabSize)
        }
        if let seed = options.seed {
            var generator = SplitMix64(seed: seed)
            generator.shuffle(&records)
        }
        return try select(records, tokenizer: tokenizer, vocabSize: vocabSize, options: options, path: path)
    }

    /// The shipped calibration set (public-domain English prose; see Resources/README.md).
    public static var defaultCalibrationURL: URL { resourceURL("default-calibration", "jsonl") }

    /// The shipped held-out evaluation text, from a novel not in the calibration set (for perplexity checks).
    public static var heldOutEvaluationURL: URL { resourceURL("heldout-eval", "jsonl") }

    /// Loads `defaultCalibrationURL`.
    public static func loadDefault(tokenizer: any CalibrationTokenizer, vocabSize: Int,
                                   options: CalibrationOptions = CalibrationOptions()) throws(CalibrationDataError)
        -> CalibrationSet
    {
        try load(path: defaultCalibrationURL.path, tokenizer: tokenizer, vocabSize: vocabSize, options: options)
    }

    /// Loads `heldOutEvaluationURL`.
    public static func loadHeldOutEvaluation(tokenizer: any CalibrationTokenizer, vocabSize: Int,
                                             options: CalibrationOptions = CalibrationOptions())
        throws(CalibrationDataError) -> CalibrationSet
    {
        try load(path: heldOutEvaluationURL.path, tokenizer: tokenizer, vocabSize: vocabSize, options: options)
    }

    private static func resourceURL(_ name: String, _ ext: String) -> URL {
        // If the bundle lacks the file, the load fails with "no such file" naming this path instead of crashing.
        Bundle.module.url(forResource: name, withExtension: ext, subdirectory: "Resources")
            ?? Bundle.module.bundleURL.appendingPathComponent("Resources/\(name).\(ext)")
    }

    // MARK: - Steps

    private static func validate(options: CalibrationOptions, vocabSize: Int) throws(CalibrationDataError) {
        func fail(_ message: String) -> CalibrationDataError { CalibrationDataError(path: nil, message: message) }
        guard options.samples >= 1 else { throw fail("samples must be at least 1, got \(options.samples)") }
        guard options.minTokens >= 1 else { throw fail("minTokens must be at least 1, got \(options.minTokens)") }
        guard options.maxTokens >= options.minTokens else {
            throw fail("maxTokens (\(options.maxTokens)) must be at least minTokens (\(options.minTokens))")
        }
        guard vocabSize >= 1, vocabSize <= Int(Int32.max) else {
            throw fail("vocabSize must be in 1...\(Int32.max), got \(vocabSize)")
        }
    }

    static func inputFiles(at path: String) throws(CalibrationDataError) -> [String] {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
            throw CalibrationDataError(path: path, message: "no such file or directory")
        }
        if !isDirectory.boolValue {
            let ext = (path as NSString).pathExtension.lowercased()
            guard supportedExtensions.contains(ext) else {
                throw CalibrationDataError(path: path, message: "unsupported file type '.\(ext)': expected .jsonl, .txt or .md")
            }
            return [path]
        }
        let names: [String]
        do {
            names = try FileManager.default.contentsOfDirectory(atPath: path)
        } catch {
            throw CalibrationDataError(path: path, message: "cannot list directory: \(error.localizedDescription)")
        }
        let selected = names
            .filter { !$0.hasPrefix(".") && supportedExtensions.contains(($0 as NSString).pathExtension.lowercased()) }
            .sorted { $0.unicodeScalars.lexicographicallyPrecedes($1.unicodeScalars) }
            .map { (path as NSString).appendingPathComponent($0) }
            .filter { file in
                var isDir: ObjCBool = false
                return FileManager.default.fileExists(atPath: file, isDirectory: &isDir) && !isDir.boolValue
            }
        guard !selected.isEmpty else {
            throw CalibrationDataError(path: path, message: "directory holds no .jsonl, .txt or .md files")
        }
        return selected
    }

    static func readRecords(file: String, hasTokenizer: Bool, vocabSize: Int) throws(CalibrationDataError)
        -> [CalibrationRecord]
    {
        let lines = try readLines(file)
        if (file as NSString).pathExtension.lowercased() == "jsonl" {
            return try jsonlRecords(file: file, lines: lines, hasTokenizer: hasTokenizer, vocabSize: vocabSize)
        }
        let paragraphs = paragraphRecords(file: file, lines: lines)
        if !hasTokenizer, let first = paragraphs.first {
            throw CalibrationDataError(path: file, line: first.line, message: "text needs a tokenizer, but none was given")
        }
        return paragraphs
    }

    /// The file's lines without their `\n` / `\r\n` ends.
    static func readLines(_ file: String) throws(CalibrationDataError) -> [Substring] {
        guard let data = FileManager.default.contents(atPath: file) else {
            throw CalibrationDataError(path: file, message: "cannot read file")
        }
        return try lines(of: data, file: file)
    }

    /// The lines of a file's contents, as ``readLines(_:)`` splits them.
    static func lines(of data: Data, file: String) throws(CalibrationDataError) -> [Substring] {
        guard var text = String(bytes: data, encoding: .utf8) else {
            throw CalibrationDataError(path: file, message: "file is not valid UTF-8")
        }
        if text.unicodeScalars.first == "\u{FEFF}" { text.unicodeScalars.removeFirst() }
        return text.unicodeScalars.split(separator: "\n", omittingEmptySubsequences: false).map { scalars in
            var line = Substring(scalars)
            if line.unicodeScalars.last == "\r" { line.unicodeScalars.removeLast() }
            return line
        }
    }

    /// The records of one `.jsonl` file's contents, read and checked as ``load(path:tokenizer:vocabSize:options:)``
    /// reads them (the fuzz target's entry): each record's token ids, or its text.
    package static func jsonlRecordContents(_ data: Data, vocabSize: Int) throws(CalibrationDataError)
        -> [(tokenIDs: [Int32]?, text: String?)]
    {
        let file = "<memory>.jsonl"
        let records = try jsonlRecords(file: file, lines: try lines(of: data, file: file), hasTokenizer: true,
                                       vocabSize: vocabSize)
        return records.map { record in
            switch record.content {
            case let .tokenIDs(ids): (tokenIDs: ids, text: nil)
            case let .text(text): (tokenIDs: nil, text: text)
            }
        }
    }

    static func isBlank(_ line: Substring) -> Bool { line.unicodeScalars.allSatisfy { $0.properties.isWhitespace } }

    static func paragraphRecords(file: String, lines: [Substring]) -> [CalibrationRecord] {
        var records: [CalibrationRecord] = []
        var current: [Substring] = []
        var startLine = 0
        for (offset, line) in lines.enumerated() {
            if isBlank(line) {
                if !current.isEmpty {
                    records.append(CalibrationRecord(file: file, line: startLine, content: .text(current.joined(separator: "\n"))))
                    current.removeAll()
                }
            } else {
                if current.isEmpty { startLine = offset + 1 }
                current.append(line)
            }
        }
        if !current.isEmpty {
            records.append(CalibrationRecord(file: file, line: startLine, content: .text(current.joined(separator: "\n"))))
        }
        return records
    }

    static func jsonlRecords(file: String, lines: [Substring], hasTokenizer: Bool, vocabSize: Int)
        throws(CalibrationDataError) -> [CalibrationRecord]
    {
        var records: [CalibrationRecord] = []
        for (offset, line) in lines.enumerated() where !isBlank(line) {
            let lineNumber = offset + 1
            func fail(_ message: String) -> CalibrationDataError {
                CalibrationDataError(path: file, line: lineNumber, message: message)
            }
            let value: JSONValue
            do {
                value = try JSONLineParser.parse(line)
            } catch {
                throw fail("malformed JSON at column \(error.column): \(error.message)")
            }
            guard case .object = value else { throw fail("expected a JSON object, found \(value.brief)") }
            if let ids = value["input_ids"] {
                guard case let .array(elements) = ids else { throw fail("input_ids must be an array of integers, found \(ids.brief)") }
                var tokens: [Int32] = []
                tokens.reserveCapacity(elements.count)
                for (position, element) in elements.enumerated() {
                    guard case let .integer(id) = element else {
                        throw fail("input_ids[\(position)] is \(element.brief), not an integer")
                    }
                    guard id >= 0, id < vocabSize else {
                        throw fail("token id \(id) at input_ids[\(position)] is outside the vocabulary [0, \(vocabSize))")
                    }
                    tokens.append(Int32(id))
                }
                records.append(CalibrationRecord(file: file, line: lineNumber, content: .tokenIDs(tokens)))
            } else if let text = value["text"] {
                guard case let .string(string) = text else { throw fail("text must be a string, found \(text.brief)") }
                guard hasTokenizer else { throw fail("text needs a tokenizer, but none was given") }
                records.append(CalibrationRecord(file: file, line: lineNumber, content: .text(string)))
            } else {
                throw fail("object has neither \"input_ids\" nor \"text\"")
            }
        }
        return records
    }

    static func select(_ records: [CalibrationRecord], tokenizer: (any CalibrationTokenizer)?, vocabSize: Int,
                       options: CalibrationOptions, path: String) throws(CalibrationDataError) -> CalibrationSet
    {
        var samples: [CalibrationSample] = []
        var examined = 0, skipped = 0, truncated = 0
        for record in records {
            if samples.count == options.samples { break }
            examined += 1
            var tokens: [Int32]
            switch record.content {
            case let .tokenIDs(ids):
                tokens = ids
            case let .text(text):
                // readRecords already refused text without a tokenizer.
                let ids = tokenizer!.encode(text)
                tokens = []
                tokens.reserveCapacity(ids.count)
                for id in ids {
                    guard id >= 0, id < vocabSize else {
                        throw CalibrationDataError(path: record.file, line: record.line,
                                                   message: "tokenizer produced token id \(id), outside the vocabulary [0, \(vocabSize))")
                    }
                    tokens.append(Int32(id))
                }
            }
            if tokens.count < options.minTokens {
                skipped += 1
                continue
            }
            if tokens.count > options.maxTokens {
                tokens.removeSubrange(options.maxTokens...)
                truncated += 1
            }
            samples.append(CalibrationSample(source: record.source, tokens: tokens))
        }
        guard !samples.isEmpty else {
            throw CalibrationDataError(
                path: path,
                message: "no calibration samples: \(records.count) records read, \(skipped) shorter than minTokens "
                    + "(\(options.minTokens) tokens)")
        }
        return CalibrationSet(samples: samples, recordsRead: records.count, recordsExamined: examined,
                              recordsSkipped: skipped, recordsTruncated: truncated)
    }
}

/// One record before tokenization.
struct CalibrationRecord {
    enum Content {
        case tokenIDs([Int32])
        case text(String)
    }

    var file: String
    /// 1-based: the JSONL line, or the first line of the paragraph.
    var line: Int
    var content: Content

    var source: String { "\(file):\(line)" }
}
