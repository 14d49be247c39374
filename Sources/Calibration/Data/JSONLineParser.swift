import StrictJSON
/// A calibration record's JSON value. Foundation's decoders accept trailing commas and silently turn `1.0` or `1e3`
/// into integers; token ids must be exact, so integers and other numbers stay apart.
enum JSONValue: Equatable {
    case null
    case bool(Bool)
    /// A number written without fraction or exponent that fits in Int64.
    case integer(Int64)
    /// Any other number (fraction, exponent, or an integer too large for Int64).
    case float(Double)
    case string(String)
    case array([JSONValue])
    case object([(key: String, value: JSONValue)])

    static func == (lhs: JSONValue, rhs: JSONValue) -> Bool {
        switch (lhs, rhs) {
        case (.null, .null): return true
        case let (.bool(a), .bool(b)): return a == b
        case let (.integer(a), .integer(b)): return a == b
        case let (.float(a), .float(b)): return a == b
        case let (.string(a), .string(b)): return a == b
        case let (.array(a), .array(b)): return a == b
        case let (.object(a), .object(b)):
            return a.count == b.count && zip(a, b).allSatisfy { $0.key == $1.key && $0.value == $1.value }
        default: return false
        }
    }

    /// The first value stored under `key` in an object.
    subscript(key: String) -> JSONValue? {
        guard case let .object(members) = self else { return nil }
        return members.first { $0.key == key }?.value
    }

    /// A short rendering for error messages.
    var brief: String {
        switch self {
        case .null: return "null"
        case let .bool(b): return String(b)
        case let .integer(i): return String(i)
        case let .float(d): return String(d)
        case let .string(s): return "\"\(s.count > 20 ? String(s.prefix(20)) + "…" : s)\""
        case .array: return "an array"
        case .object: return "an object"
        }
    }
}

struct JSONSyntaxError: Error, Equatable {
    /// 1-based column (in UTF-8 bytes) where the problem was found.
    var column: Int
    var message: String
}

/// Reads one JSONL line with the project's strict parser (StrictJSON) and turns it into the values calibration data
/// is read as: integers that fit Int64 stay integers, every other number becomes a Double.
enum JSONLineParser {
    static func parse(_ text: Substring) throws(JSONSyntaxError) -> JSONValue {
        // A Swift string is valid UTF-8, which the parser requires of its input.
        let parsed = Array(text.utf8).withUnsafeBytes { buffer in
            Result { () throws(JSONParseError) -> JSONNode in try StrictJSONParser.parse(buffer) }
        }
        switch parsed {
        case .success(let node): return JSONValue(node)
        case .failure(let error): throw JSONSyntaxError(column: error.offset + 1, message: error.message)
        }
    }
}

extension JSONValue {
    init(_ node: JSONNode) {
        switch node {
        case .null: self = .null
        case .bool(let value): self = .bool(value)
        case .integer(let value): self = .integer(Int64(value))
        // An integer too large for Int, a fraction or an exponent: kept as text by the parser, valid JSON number syntax.
        case .number(let text): self = .float(Double(text) ?? .nan)
        case .string(let value): self = .string(value)
        case .array(let items): self = .array(items.map(JSONValue.init))
        case .object(let members): self = .object(members.map { (key: $0.key, value: JSONValue($0.value)) })
        }
    }
}
