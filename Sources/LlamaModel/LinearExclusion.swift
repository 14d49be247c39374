/// Why a set of `--exclude` patterns cannot be applied to a model, naming the pattern.
public enum LinearExclusionError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The pattern names no Linear of the model (a typo would otherwise quantize everything silently).
    case matchesNothing(pattern: String, example: String)
    /// The pattern takes part of a fused group: vLLM runs q/k/v (and gate/up) as one GEMM with one scheme, so
    /// its loader refuses a group whose members disagree.
    case splitsFusedGroup(pattern: String, group: String, matched: [String], missing: [String])
    /// An empty pattern, or an unterminated `[` set.
    case malformedPattern(pattern: String, reason: String)

    public var description: String {
        switch self {
        case .matchesNothing(let pattern, let example):
            "pattern '\(pattern)' matches no Linear of the model; patterns match module names such as \(example)"
        case .splitsFusedGroup(let pattern, let group, let matched, let missing):
            "pattern '\(pattern)' takes \(matched.joined(separator: ", ")) but not \(missing.joined(separator: ", ")): "
                + "vLLM fuses \(group) into one GEMM with one scheme, so exclude the whole group "
                + "(add a pattern for the missing members, e.g. '\(Self.groupPattern(missing.first ?? ""))')"
        case .malformedPattern(let pattern, let reason):
            "pattern '\(pattern)': \(reason)"
        }
    }

    /// `model.layers.3.self_attn.k_proj` → `model.layers.3.self_attn.*`: a pattern that takes the member's whole
    /// module, hence its whole fused group.
    static func groupPattern(_ member: String) -> String {
        guard let dot = member.lastIndex(of: ".") else { return member }
        return member[..<dot] + ".*"
    }
}

/// The Linears that `--exclude` patterns keep unquantized, resolved against a model's config. Patterns are
/// fnmatch-style (`*` any run of characters including dots, `?` one character, `[abc]` / `[!abc]` a set), matched
/// against whole module names such as `model.layers.0.mlp.down_proj`, as Python's `fnmatch.fnmatchcase` does.
public struct LinearExclusion: Sendable, Equatable {
    public let patterns: [String]
    /// Module names of the excluded Linears, in model order (layer by layer, `LinearKind.allCases` order).
    public let moduleNames: [String]
    private let names: Set<String>

    /// Resolves `patterns` against every Linear of `config`. Throws when a pattern is malformed, matches nothing,
    /// or (all patterns together) take part of a fused group, naming the pattern and the group's missing members.
    public init(patterns: [String], config: LlamaConfig) throws(LinearExclusionError) {
        self.patterns = patterns
        let linears = config.allLinears
        var matched = Set<String>()
        var firstPattern: [String: String] = [:]
        for pattern in patterns {
            if pattern.isEmpty { throw .malformedPattern(pattern: pattern, reason: "an empty pattern matches nothing") }
            guard let glob = FnmatchPattern(pattern) else {
                throw .malformedPattern(pattern: pattern, reason: "'[' opens a character set that is never closed")
            }
            let hits = linears.filter { glob.matches($0.name) }
            guard !hits.isEmpty else {
                throw .matchesNothing(pattern: pattern, example: linears.first.map { $0.name } ?? "model.layers.0.mlp.down_proj")
            }
            for hit in hits {
                matched.insert(hit.name)
                if firstPattern[hit.name] == nil { firstPattern[hit.name] = pattern }
            }
        }
        for layer in 0..<config.numHiddenLayers {
            let layerLinears = config.linears(layer: layer)
            for group in FusedGroup.allCases where group.members.count > 1 {
                let members = layerLinears.filter { $0.kind.group == group }.map(\.name)
                let taken = members.filter(matched.contains)
                guard !taken.isEmpty, taken.count < members.count else { continue }
                throw .splitsFusedGroup(pattern: firstPattern[taken[0]]!, group: group.vllmName,
                                        matched: taken, missing: members.filter { !matched.contains($0) })
            }
        }
        names = matched
        moduleNames = linears.map(\.name).filter(matched.contains)
    }

    /// No patterns: every Linear is quantized.
    public static let empty = LinearExclusion()

    private init() {
        patterns = []
        moduleNames = []
        names = []
    }

    public var isEmpty: Bool { names.isEmpty }
    public var count: Int { names.count }
    public func contains(_ linear: LinearSpec) -> Bool { names.contains(linear.name) }
    public func contains(moduleName: String) -> Bool { names.contains(moduleName) }
}

extension FusedGroup {
    /// The fused module vLLM builds from the group.
    var vllmName: String {
        switch self {
        case .qkv: "q/k/v (qkv_proj)"
        case .gateUp: "gate/up (gate_up_proj)"
        case .o: "o_proj"
        case .down: "down_proj"
        }
    }
}

/// One fnmatch pattern, compiled to a list of tokens. Case-sensitive; no escapes (module names hold none of the
/// special characters).
struct FnmatchPattern: Sendable {
    enum Token: Sendable {
        case literal(Character)
        case any
        case anyRun
        case set(negated: Bool, members: [ClosedRange<Character>])
    }

    let tokens: [Token]

    /// nil when a `[` set is not closed.
    init?(_ pattern: String) {
        var tokens: [Token] = []
        let characters = Array(pattern)
        var index = 0
        while index < characters.count {
            let character = characters[index]
            switch character {
            case "*":
                if case .anyRun? = tokens.last {} else { tokens.append(.anyRun) }
                index += 1
            case "?":
                tokens.append(.any)
                index += 1
            case "[":
                var cursor = index + 1
                var negated = false
                if cursor < characters.count, characters[cursor] == "!" {
                    negated = true
                    cursor += 1
                }
                var members: [ClosedRange<Character>] = []
                // As in fnmatch, a `]` right after the opening (or after `!`) is a member, not the end.
                var first = true
                while cursor < characters.count, characters[cursor] != "]" || first {
                    first = false
                    let low = characters[cursor]
                    if cursor + 2 < characters.count, characters[cursor + 1] == "-", characters[cursor + 2] != "]" {
                        let high = characters[cursor + 2]
                        if low <= high { members.append(low...high) }
                        cursor += 3
                    } else {
                        members.append(low...low)
                        cursor += 1
                    }
                }
                guard cursor < characters.count else { return nil }
                tokens.append(.set(negated: negated, members: members))
                index = cursor + 1
            default:
                tokens.append(.literal(character))
                index += 1
            }
        }
        self.tokens = tokens
    }

    func matches(_ name: String) -> Bool {
        let text = Array(name)
        // Iterative glob matching with one backtrack point per `*` (linear in practice).
        var t = 0
        var p = 0
        var starToken: Int?
        var starText = 0
        while t < text.count {
            if p < tokens.count, accepts(tokens[p], text[t]) {
                t += 1
                p += 1
            } else if p < tokens.count, case .anyRun = tokens[p] {
                starToken = p
                starText = t
                p += 1
            } else if let star = starToken {
                p = star + 1
                starText += 1
                t = starText
            } else {
                return false
            }
        }
        while p < tokens.count, case .anyRun = tokens[p] { p += 1 }
        return p == tokens.count
    }

    private func accepts(_ token: Token, _ character: Character) -> Bool {
        switch token {
        case .literal(let expected): character == expected
        case .any: true
        case .anyRun: false
        case .set(let negated, let members): members.contains { $0.contains(character) } != negated
        }
    }
}

extension JobSpec {
    /// The Linears this job keeps unquantized (`--exclude`), resolved against `config`.
    public func linearExclusion(config: LlamaConfig) throws(LinearExclusionError) -> LinearExclusion {
        excludePatterns.isEmpty ? .empty : try LinearExclusion(patterns: excludePatterns, config: config)
    }
}
