/// Hand-written matchers for the two pre-tokenizer regexes byte-level BPE tokenizers ship with. Each reproduces
/// the leftmost-first alternation with greedy quantifiers that Oniguruma (which Hugging Face `tokenizers` uses)
/// applies, on scalar classes, so no regex engine sits on the hot path.
enum RegexScanners {
    /// The Llama-3 (tiktoken cl100k-style) `Split` pattern.
    static let llama3Pattern =
        #"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"#
    /// The GPT-2 pattern that `ByteLevel` with `use_regex: true` applies.
    static let gpt2Pattern = #"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"#

    typealias Values = UnsafeBufferPointer<UInt32>
    typealias Classes = UnsafeBufferPointer<UInt8>

    private static let apostrophe: UInt32 = 0x27
    private static let space: UInt32 = 0x20
    private static let letterOrNumberOrSpace = ScalarClass.letter | ScalarClass.number | ScalarClass.whitespace

    /// Length of a contraction `'s|'t|'re|'ve|'m|'ll|'d` at `i` (after the apostrophe check), or 0.
    @inline(__always)
    private static func contractionLength(_ v: Values, _ i: Int, _ hi: Int, caseInsensitive: Bool) -> Int {
        guard v[i] == apostrophe, i + 1 < hi else { return 0 }
        func lower(_ x: UInt32) -> UInt32 {
            caseInsensitive && x >= 0x41 && x <= 0x5A ? x + 0x20 : x
        }
        let first = lower(v[i + 1])
        switch first {
        case 0x73, 0x74, 0x6D, 0x64: // s t m d
            return 2
        case 0x72, 0x76: // r v, followed by e
            return i + 2 < hi && lower(v[i + 2]) == 0x65 ? 3 : 0
        case 0x6C: // l, followed by l
            return i + 2 < hi && lower(v[i + 2]) == 0x6C ? 3 : 0
        default:
            return 0
        }
    }

    @inline(__always)
    private static func runEnd(_ c: Classes, from start: Int, _ hi: Int, having flag: UInt8) -> Int {
        var j = start
        while j < hi && c[j] & flag != 0 { j += 1 }
        return j
    }

    @inline(__always)
    private static func isOther(_ cls: UInt8) -> Bool { cls & letterOrNumberOrSpace == 0 }

    @inline(__always)
    private static func otherRunEnd(_ c: Classes, from start: Int, _ hi: Int) -> Int {
        var j = start
        while j < hi && isOther(c[j]) { j += 1 }
        return j
    }

    /// End of the match of `\s*[\r\n]+|\s+(?!\S)|\s+` at a whitespace scalar `i`; `allowLineBreakAlternative`
    /// switches the first alternative on (Llama-3) or off (GPT-2).
    @inline(__always)
    private static func whitespaceMatchEnd(_ c: Classes, _ i: Int, _ hi: Int, allowLineBreakAlternative: Bool) -> Int {
        let end = runEnd(c, from: i, hi, having: ScalarClass.whitespace)
        if allowLineBreakAlternative {
            // `\s*` backtracks until `[\r\n]+` fits: the match ends after the last CR/LF of the run.
            var j = end - 1
            while j >= i {
                if c[j] & ScalarClass.lineBreak != 0 { return j + 1 }
                j -= 1
            }
        }
        // `\s+(?!\S)`: the whole run at the end of the text, else the run minus its last scalar.
        if end == hi || end - 1 > i { return end == hi ? end : end - 1 }
        // `\s+`.
        return end
    }

    /// Splits `lo..<hi` with the Llama-3 pattern, calling `emit` with every match (gaps, which this pattern
    /// cannot leave, would be emitted too, as `Isolated` splitting does).
    static func splitLlama3(_ v: Values, _ c: Classes, _ lo: Int, _ hi: Int, _ emit: (Int, Int) -> Void) {
        var i = lo
        while i < hi {
            let cls = c[i]
            let contraction = contractionLength(v, i, hi, caseInsensitive: true)
            var end: Int
            if contraction > 0 {
                end = i + contraction
            } else if cls & ScalarClass.letter != 0 {
                end = runEnd(c, from: i + 1, hi, having: ScalarClass.letter)
            } else if cls & (ScalarClass.lineBreak | ScalarClass.number) == 0, i + 1 < hi,
                      c[i + 1] & ScalarClass.letter != 0 {
                end = runEnd(c, from: i + 2, hi, having: ScalarClass.letter)
            } else if cls & ScalarClass.number != 0 {
                end = i + 1
                while end < hi && end < i + 3 && c[end] & ScalarClass.number != 0 { end += 1 }
            } else if isOther(cls) || (v[i] == space && i + 1 < hi && isOther(c[i + 1])) {
                end = otherRunEnd(c, from: i + 1, hi)
                end = runEnd(c, from: end, hi, having: ScalarClass.lineBreak)
            } else {
                end = whitespaceMatchEnd(c, i, hi, allowLineBreakAlternative: true)
            }
            emit(i, end)
            i = end
        }
    }

    /// Splits `lo..<hi` with the GPT-2 pattern.
    static func splitGPT2(_ v: Values, _ c: Classes, _ lo: Int, _ hi: Int, _ emit: (Int, Int) -> Void) {
        var i = lo
        while i < hi {
            let length = contractionLength(v, i, hi, caseInsensitive: false)
            var end: Int
            if length > 0 {
                end = i + length
            } else {
                // ` ?X+` for X in letters, numbers, others: an optional leading space joins the run after it.
                let start = v[i] == space && i + 1 < hi && c[i + 1] & ScalarClass.whitespace == 0 ? i + 1 : i
                let cls = c[start]
                if cls & ScalarClass.letter != 0 {
                    end = runEnd(c, from: start + 1, hi, having: ScalarClass.letter)
                } else if cls & ScalarClass.number != 0 {
                    end = runEnd(c, from: start + 1, hi, having: ScalarClass.number)
                } else if isOther(cls) {
                    end = otherRunEnd(c, from: start + 1, hi)
                } else {
                    end = whitespaceMatchEnd(c, i, hi, allowLineBreakAlternative: false)
                }
            }
            emit(i, end)
            i = end
        }
    }
}
