/// One step of the pre-tokenizer pipeline; a `Sequence` becomes several steps, each applied to every piece the
/// previous step produced.
enum PreTokenizerStep: Sendable, Equatable {
    /// `Split` with the Llama-3 pattern, behaviour `Isolated`.
    case llama3Split
    /// The GPT-2 pattern (`ByteLevel` with `use_regex: true`, or a `Split` spelling it).
    case gpt2Split
    /// `Digits`: every numeric scalar alone (`individual_digits`), or runs of them.
    case digits(individual: Bool)
    /// `ByteLevel`'s `add_prefix_space`: a piece not starting with a space gets one.
    case prefixSpace
}

/// Applies the pre-tokenizer steps to scalar ranges and hands each final piece's bytes to a body.
struct PreTokenizerPipeline: Sendable {
    let steps: [PreTokenizerStep]

    func run(_ text: ScalarText, _ lo: Int, _ hi: Int, _ body: (UnsafeRawBufferPointer) -> Void) {
        text.values.withUnsafeBufferPointer { values in
            text.classes.withUnsafeBufferPointer { classes in
                text.bytes.withUnsafeBytes { bytes in
                    text.starts.withUnsafeBufferPointer { starts in
                        apply(0, text, values, classes, bytes, starts, lo, hi, body)
                    }
                }
            }
        }
    }

    private func apply(_ stepIndex: Int, _ text: ScalarText,
                       _ values: UnsafeBufferPointer<UInt32>, _ classes: UnsafeBufferPointer<UInt8>,
                       _ bytes: UnsafeRawBufferPointer, _ starts: UnsafeBufferPointer<Int32>,
                       _ lo: Int, _ hi: Int, _ body: (UnsafeRawBufferPointer) -> Void) {
        if lo >= hi { return }
        if stepIndex == steps.count {
            body(UnsafeRawBufferPointer(rebasing: bytes[Int(starts[lo])..<Int(starts[hi])]))
            return
        }
        let nextStep = stepIndex + 1
        switch steps[stepIndex] {
        case .llama3Split:
            RegexScanners.splitLlama3(values, classes, lo, hi) { a, b in
                apply(nextStep, text, values, classes, bytes, starts, a, b, body)
            }
        case .gpt2Split:
            RegexScanners.splitGPT2(values, classes, lo, hi) { a, b in
                apply(nextStep, text, values, classes, bytes, starts, a, b, body)
            }
        case .digits(let individual):
            var runStart = lo
            var i = lo
            while i < hi {
                let isNumber = classes[i] & ScalarClass.number != 0
                var end = i + 1
                if isNumber && !individual {
                    while end < hi && classes[end] & ScalarClass.number != 0 { end += 1 }
                }
                if isNumber {
                    if runStart < i { apply(nextStep, text, values, classes, bytes, starts, runStart, i, body) }
                    apply(nextStep, text, values, classes, bytes, starts, i, end, body)
                    runStart = end
                }
                i = end
            }
            if runStart < hi { apply(nextStep, text, values, classes, bytes, starts, runStart, hi, body) }
        case .prefixSpace:
            if values[lo] == 0x20 {
                apply(nextStep, text, values, classes, bytes, starts, lo, hi, body)
            } else {
                // The piece's content changes, so the remaining steps run on a re-decoded copy.
                let piece = [0x20] + Array(bytes[Int(starts[lo])..<Int(starts[hi])])
                let spaced = ScalarText(utf8: piece)
                let rest = PreTokenizerPipeline(steps: Array(steps[nextStep...]))
                rest.run(spaced, 0, spaced.scalarCount, body)
            }
        }
    }
}
