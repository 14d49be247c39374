// Tokenizer benchmark: 256 article-sized texts through the Llama-3 tokenizer, ours beside Hugging Face
// `tokenizers` (when `python3 -c "import tokenizers"` works), with an exact id comparison between the two.
// Run with `swift run -c release TokenizerBenchmarks`.
import Dispatch
import Foundation
import Tokenizer

let packageRoot = URL(fileURLWithPath: #filePath)
    .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
let tokenizerPath = packageRoot.appendingPathComponent(".assets/llama3-tokenizer/tokenizer.json").path
let articleCount = 256
let articleBytes = 4096

func fail(_ message: String) -> Never {
    FileHandle.standardError.write(Data("TokenizerBenchmarks: \(message)\n".utf8))
    exit(1)
}

@discardableResult
func run(_ arguments: [String]) -> (status: Int32, output: String) {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    process.arguments = arguments
    let pipe = Pipe()
    process.standardOutput = pipe
    process.standardError = pipe
    do { try process.run() } catch { return (-1, "\(error)") }
    let output = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
    process.waitUntilExit()
    return (process.terminationStatus, output)
}

if !FileManager.default.fileExists(atPath: tokenizerPath) {
    let script = packageRoot.appendingPathComponent("Scripts/fetch-llama3-tokenizer.sh").path
    let result = run(["bash", script])
    guard result.status == 0 else { fail("fetching the Llama-3 tokenizer failed:\n\(result.output)") }
}

/// Article-sized texts: paragraphs of the public-domain novels when `.assets/public-domain-text` holds them
/// (Scripts: /work/shared/tools/fetch-public-domain-text.sh), otherwise generated prose mixed with the llama.cpp
/// test vectors' texts (numbers, emoji, scripts other than Latin).
func articles() -> (texts: [String], source: String) {
    let textDirectory = packageRoot.appendingPathComponent(".assets/public-domain-text")
    let files = ((try? FileManager.default.contentsOfDirectory(atPath: textDirectory.path)) ?? [])
        .filter { $0.hasSuffix(".txt") }.sorted()
    var paragraphs: [String] = []
    var source: String
    if !files.isEmpty {
        for file in files {
            let text = (try? String(contentsOf: textDirectory.appendingPathComponent(file), encoding: .utf8)) ?? ""
            paragraphs += text.components(separatedBy: "\n\n").filter { $0.utf8.count > 40 }
        }
        source = "public-domain novels (\(files.count) files)"
    } else {
        let vectors = (try? String(contentsOf: packageRoot.appendingPathComponent(
            "Tests/Fixtures/tokenizer-vectors/llama3.inp"), encoding: .utf8)) ?? ""
        let extras = vectors.components(separatedBy: "\n__ggml_vocab_test__\n").filter { !$0.isEmpty }
        let words = ("the of and to in a is that for it as was with be by on not he I this are or his from at which "
            + "but have an they you were her she there been one all we their has would when if so no will more "
            + "market government reported percent million said year people company officials city president "
            + "according week state research new data growth economy analysts court health climate").split(separator: " ")
        var seed: UInt64 = 0x2545_F491_4F6C_DD1D
        func random(_ bound: Int) -> Int {
            seed = seed &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            return Int((seed >> 33) % UInt64(bound))
        }
        for _ in 0..<(articleCount * 12) {
            var sentence: [String] = []
            for _ in 0..<(8 + random(20)) {
                var word = String(words[random(words.count)])
                if random(12) == 0 { word = "\(random(100_000))" }
                if random(15) == 0 { word = word.capitalized }
                sentence.append(word)
            }
            var paragraph = sentence.joined(separator: " ").capitalized(firstOnly: true) + ". "
            if random(6) == 0 { paragraph += extras[random(extras.count)] }
            paragraphs.append(paragraph)
        }
        source = "generated prose with llama.cpp vector texts"
    }
    var texts: [String] = []
    var current = ""
    var index = 0
    while texts.count < articleCount {
        current += paragraphs[index % paragraphs.count] + "\n\n"
        index += 1
        if current.utf8.count >= articleBytes {
            texts.append(current)
            current = ""
        }
    }
    return (texts, source)
}

extension String {
    func capitalized(firstOnly: Bool) -> String { prefix(1).uppercased() + dropFirst() }
}

func seconds(_ body: () throws -> Void) rethrows -> Double {
    let start = DispatchTime.now().uptimeNanoseconds
    try body()
    return Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
}

let (texts, source) = articles()
let totalBytes = texts.reduce(0) { $0 + $1.utf8.count }

let loadStart = DispatchTime.now().uptimeNanoseconds
let tokenizer = try BPETokenizer(contentsOf: tokenizerPath)
let loadSeconds = Double(DispatchTime.now().uptimeNanoseconds - loadStart) / 1e9

// One warm-up pass, then the best of three.
var ours: [[Int]] = texts.map { tokenizer.encode($0, addSpecialTokens: false) }
var oursSeconds = Double.infinity
for _ in 0..<3 {
    oursSeconds = min(oursSeconds, seconds { ours = texts.map { tokenizer.encode($0, addSpecialTokens: false) } })
}
let tokenCount = ours.reduce(0) { $0 + $1.count }

let threads = ProcessInfo.processInfo.activeProcessorCount
final class ResultSlots: @unchecked Sendable {
    var ids: [[Int]]
    init(_ count: Int) { ids = [[Int]](repeating: [], count: count) }
}
let parallel = ResultSlots(texts.count)
var oursParallelSeconds = Double.infinity
for _ in 0..<3 {
    oursParallelSeconds = min(oursParallelSeconds, seconds {
        DispatchQueue.concurrentPerform(iterations: texts.count) { i in
            parallel.ids[i] = tokenizer.encode(texts[i], addSpecialTokens: false)
        }
    })
}
if parallel.ids != ours { fail("parallel encoding differs from sequential encoding") }

// Hugging Face, measured in the same run on the same texts.
struct ReferenceResult: Decodable {
    let version: String
    let load_s: Double
    let encode_s: Double
    let batch_s: Double
    let ids: [[Int]]
}
var reference: ReferenceResult?
var referenceNote = "not available (python3 -c \"import tokenizers\" failed)"
if run(["python3", "-c", "import tokenizers"]).status == 0 {
    let work = FileManager.default.temporaryDirectory.appendingPathComponent("tokenizer-bench-\(getpid())")
    try FileManager.default.createDirectory(at: work, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(at: work) }
    let textsPath = work.appendingPathComponent("texts.json").path
    let resultPath = work.appendingPathComponent("result.json").path
    try JSONSerialization.data(withJSONObject: texts).write(to: URL(fileURLWithPath: textsPath))
    let script = """
        import json, sys, time, tokenizers
        from tokenizers import Tokenizer
        texts = json.load(open(sys.argv[2], encoding="utf-8"))
        t0 = time.perf_counter(); tok = Tokenizer.from_file(sys.argv[1]); load = time.perf_counter() - t0
        ids = [tok.encode(t, add_special_tokens=False).ids for t in texts]
        best = best_batch = float("inf")
        for _ in range(3):
            t0 = time.perf_counter(); ids = [tok.encode(t, add_special_tokens=False).ids for t in texts]
            best = min(best, time.perf_counter() - t0)
            t0 = time.perf_counter(); tok.encode_batch(texts, add_special_tokens=False)
            best_batch = min(best_batch, time.perf_counter() - t0)
        json.dump({"version": tokenizers.__version__, "load_s": load, "encode_s": best, "batch_s": best_batch,
                   "ids": ids}, open(sys.argv[3], "w"))
        """
    let result = run(["python3", "-c", script, tokenizerPath, textsPath, resultPath])
    if result.status == 0, let data = FileManager.default.contents(atPath: resultPath) {
        reference = try JSONDecoder().decode(ReferenceResult.self, from: data)
    } else {
        referenceNote = "not available (the Python measurement failed: \(result.output.suffix(300)))"
    }
}

func row(_ name: String, _ load: String, _ tokens: Int, _ time: Double) -> String {
    let rate = Double(tokens) / time
    return "| \(name) | \(load) | \(tokens) | \(String(format: "%.4f", time)) | \(String(format: "%.3g", rate)) |"
}

print("Tokenizer benchmark: \(texts.count) texts, \(totalBytes) bytes (\(source)), Llama-3 tokenizer.json, "
      + "\(threads) CPU threads; best of 3 timed passes")
print("")
print("| implementation | load s | tokens | seconds | tokens/s |")
print("|---|---|---|---|---|")
print(row("ours (Swift, encode, 1 thread)", String(format: "%.3f", loadSeconds), tokenCount, oursSeconds))
print(row("ours (Swift, encode, \(threads) threads)", "", tokenCount, oursParallelSeconds))
if let reference {
    let hfTokens = reference.ids.reduce(0) { $0 + $1.count }
    print(row("HF tokenizers \(reference.version) (encode, 1 thread)", String(format: "%.3f", reference.load_s),
              hfTokens, reference.encode_s))
    print(row("HF tokenizers \(reference.version) (encode_batch, \(threads) threads)", "", hfTokens, reference.batch_s))
    let identical = zip(reference.ids, ours).filter { $0 == $1 }.count
    print("")
    print("ids identical to Hugging Face: \(identical)/\(texts.count) texts")
    if identical != texts.count { exit(1) }
} else {
    print("| HF tokenizers | \(referenceNote) | | | |")
}
