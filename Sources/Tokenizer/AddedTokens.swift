/// One entry of `added_tokens`.
struct AddedToken: Sendable {
    let id: Int
    let content: [UInt8]
    let singleWord: Bool
    let leftStrip: Bool
    let rightStrip: Bool
    let normalized: Bool
    let special: Bool
}

/// Finds added tokens in text, leftmost first and longest at a position (Hugging Face uses an Aho-Corasick
/// automaton in leftmost-longest mode), so the model never sees their text.
struct AddedTokenMatcher: Sendable {
    private let tokens: [AddedToken]
    /// For each first byte, indices into `tokens`, longest content first.
    private let candidatesByFirstByte: [[Int]]

    init(_ tokens: [AddedToken]) {
        let usable = tokens.filter { !$0.content.isEmpty }
        self.tokens = usable
        var table = [[Int]](repeating: [], count: 256)
        for (index, token) in usable.enumerated() { table[Int(token.content[0])].append(index) }
        for byte in 0..<256 {
            table[byte].sort { usable[$0].content.count > usable[$1].content.count }
        }
        candidatesByFirstByte = table
    }

    var isEmpty: Bool { tokens.isEmpty }

    /// Splits scalars `lo..<hi` of `text` into plain runs (`emitText`) and added tokens (`emitToken`).
    func split(_ text: ScalarText, _ lo: Int, _ hi: Int,
               emitText: (Int, Int) -> Void, emitToken: (Int) -> Void) {
        if tokens.isEmpty {
            if lo < hi { emitText(lo, hi) }
            return
        }
        let bytes = text.bytes
        let starts = text.starts
        let classes = text.classes
        let endByte = Int(starts[hi])
        var plainStart = lo
        var i = lo
        while i < hi {
            let byteOffset = Int(starts[i])
            var matched: AddedToken?
            for index in candidatesByFirstByte[Int(bytes[byteOffset])] {
                let content = tokens[index].content
                if byteOffset + content.count <= endByte,
                   bytes[byteOffset..<byteOffset + content.count].elementsEqual(content) {
                    matched = tokens[index]
                    break
                }
            }
            guard let token = matched else {
                i += 1
                continue
            }
            var end = i
            while Int(starts[end]) < byteOffset + token.content.count { end += 1 }
            if token.singleWord {
                let wordScalar = ScalarClass.letter | ScalarClass.number
                let joinsLeft = i > lo && classes[i - 1] & wordScalar != 0
                let joinsRight = end < hi && classes[end] & wordScalar != 0
                if joinsLeft || joinsRight {
                    // A rejected match still consumes its span, as in Hugging Face's non-overlapping search.
                    i = end
                    continue
                }
            }
            var start = i
            if token.leftStrip {
                while start > plainStart && classes[start - 1] & ScalarClass.whitespace != 0 { start -= 1 }
            }
            if token.rightStrip {
                while end < hi && classes[end] & ScalarClass.whitespace != 0 { end += 1 }
            }
            if start > plainStart { emitText(plainStart, start) }
            emitToken(token.id)
            plainStart = end
            i = end
        }
        if plainStart < hi { emitText(plainStart, hi) }
    }
}
