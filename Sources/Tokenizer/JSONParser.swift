import StrictJSON

/// tokenizer.json as native Swift values. `JSONSerialization` on Linux hands back `NSString`-backed strings and
/// boxed numbers, which made reading a 128k-token vocabulary and 280k merges take seconds; StrictJSON reads it in a
/// fraction of that, and most token strings fit Swift's inline small-string storage.
enum JSONValue: Sendable {
    case null
    case bool(Bool)
    case int(Int)
    case double(Double)
    case string(String)
    case array([JSONValue])
    case object(JSONObject)
}

/// Object members in file order; lookups take the last member with a key, as most JSON readers do.
struct JSONObject: Sendable {
    var members: [(key: String, value: JSONValue)]

    subscript(key: String) -> JSONValue? {
        for member in members.reversed() where member.key == key { return member.value }
        return nil
    }
}

struct JSONParseError: Error {
    let offset: Int
    let message: String
}

/// Reads tokenizer.json with the project's strict parser (StrictJSON), as Hugging Face's readers read it: a lone
/// `\u` surrogate becomes U+FFFD. Integers stay exact; every other number becomes a Double.
enum JSONParser {
    static func parse(_ bytes: UnsafeRawBufferPointer) throws(JSONParseError) -> JSONValue {
        let parsed = Result { () throws(StrictJSON.JSONParseError) -> JSONNode in
            try StrictJSONParser.parse(bytes, loneSurrogates: .replaceWithU_FFFD)
        }
        switch parsed {
        case .success(let node): return JSONValue(node)
        case .failure(let error): throw JSONParseError(offset: error.offset, message: error.message)
        }
    }
}

extension JSONValue {
    init(_ node: JSONNode) {
        switch node {
        case .null: self = .null
        case .bool(let value): self = .bool(value)
        case .integer(let value): self = .int(value)
        // A fraction, an exponent, or an integer beyond Int: valid number syntax, kept as text by the parser.
        case .number(let text): self = .double(Double(text) ?? .nan)
        case .string(let value): self = .string(value)
        case .array(let items): self = .array(items.map(JSONValue.init))
        case .object(let members): self = .object(JSONObject(members: members.map { (key: $0.key, value: JSONValue($0.value)) }))
        }
    }
}
