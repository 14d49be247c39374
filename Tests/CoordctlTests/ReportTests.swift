import CheckpointReport
import Foundation
import Testing
import W4A4Probes

/// `coordctl report OUT` on a checkpoint `coordctl quantize` wrote: the worst Linears in the order numpy's figures for
/// modelopt's checkpoint give, and a self-contained page that headless Chromium renders with the numbers in its DOM.
@Suite(.serialized) struct ReportTests {
    /// Quantizes the tiny model with a quality report, runs `coordctl report` on it and hands both to `body`.
    func withReport(evalSamples: Int = 2, extra: [String] = [], _ body: (URL, Coordctl.Result) throws -> Void) throws {
        try withTemporaryDirectory("report") { parent throws in
            let output = parent.appendingPathComponent("OUT")
            let quantized = try Coordctl.run(["quantize", "--model", Fixtures.tinyLlama.path, "--output", output.path,
                                              "--calib", Fixtures.directory.appendingPathComponent("tiny-llama-calib.jsonl").path,
                                              "--min-tokens", "1", "--eval-samples", "\(evalSamples)"] + extra, in: parent)
            try #require(quantized.status == 0, "stderr: \(quantized.stderr)")
            let report = try Coordctl.run(["report", output.path], in: parent)
            try #require(report.status == 0, "stderr: \(report.stderr)")
            try body(output, report)
        }
    }

    /// With the quality report: ranked by output error (as quality.json holds it), each line carrying the weight error
    /// numpy gives for modelopt's bytes.
    @Test func worstTenByOutputErrorWithTheReferenceWeightErrors() throws {
        try withReport { output, report in
            let reference = try LinearQualityTests.reference()
            let quality = try jsonObject(output.appendingPathComponent("quality.json"))
            let outputErrors = try #require(quality["linear_output_relative_error"] as? [String: Double])
            #expect(outputErrors.count == 14 && outputErrors.values.allSatisfy { $0 > 0.01 && $0 < 0.5 }, "\(outputErrors)")
            // Measured on the calibration inputs: PyTorch's figures for modelopt's checkpoint on the same 490 tokens.
            #expect(quality["output_error_inputs"] as? String == "calibration")
            let torchFigures = try Self.torchOutputErrors()
            #expect(Set(outputErrors.keys) == Set(torchFigures.keys))
            // Judged like activation scales: two forwards summing in different orders, and our input scales within
            // BF16 noise of modelopt's.
            let agreement = ScaleAgreement(outputErrors.mapValues(Float.init), reference: torchFigures.mapValues(Float.init))
            #expect(agreement.withinBF16Noise, "\(agreement)")
            // calibration.json carries the same figures beside the weight errors.
            let calibration = try jsonObject(output.appendingPathComponent("calibration.json"))
            #expect(calibration["output_relative_error"] as? [String: Double] == outputErrors)
            #expect(calibration["output_error_inputs"] as? String == "calibration")
            let expected = outputErrors.sorted { ($0.value, $1.key) > ($1.value, $0.key) }.prefix(10)
            let ranked = report.stdout.split(separator: "\n").filter { $0.hasPrefix("  ") && $0.contains("model.layers.") }
            #expect(ranked.count == 10, "\(report.stdout)")
            #expect(report.stdout.contains("largest output error on calibration inputs"))
            for (line, (name, outputError)) in zip(ranked, expected) {
                #expect(line.contains(name + " "), "\(line) should be \(name)")
                #expect(line.contains(String(format: "%.3f%%", outputError * 100)), "\(line)")
                #expect(line.contains(String(format: "%.3f%%", reference[name]!["weight_relative_error"]! * 100)), "\(line)")
            }
            let original = try #require(quality["original_perplexity"] as? Double)
            #expect(report.stdout.contains("quality: perplexity \(String(format: "%.2f", original))"), "\(report.stdout)")
            #expect(report.stdout.contains("gate passed"))
            #expect(FileManager.default.fileExists(atPath: output.appendingPathComponent("report.html").path))
        }
    }

    /// Scripts/reference/linear-output-error.py: a float32 transformers forward over the calibration file's samples,
    /// modelopt's Q(W) and input scales, in float64.
    static func torchOutputErrors() throws -> [String: Double] {
        let url = Fixtures.directory.appendingPathComponent("tiny-llama-output-error-modelopt.json")
        let object = try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: url)) as? [String: Any])
        #expect(object["tokens"] as? Int == 490, "the reference covers the whole calibration file")
        return try #require(object["linear_output_relative_error"] as? [String: Double])
    }

    /// Without a quality report: ranked by weight error, in numpy's order for modelopt's bytes.
    @Test func worstTenByWeightErrorWithoutAQualityReport() throws {
        try withReport(evalSamples: 0) { output, report in
            let reference = try LinearQualityTests.reference()
            let expected = reference.sorted { $0.value["weight_relative_error"]! > $1.value["weight_relative_error"]! }.prefix(10)
            let ranked = report.stdout.split(separator: "\n").filter { $0.hasPrefix("  ") && $0.contains("model.layers.") }
            #expect(ranked.count == 10, "\(report.stdout)")
            for (line, (name, figures)) in zip(ranked, expected) {
                #expect(line.contains(name + " "), "\(line) should be \(name)")
                #expect(line.contains(String(format: "%.3f%%", figures["weight_relative_error"]! * 100)), "\(line)")
            }
            #expect(report.stdout.contains("no quality report was recorded"))
            let calibration = try jsonObject(output.appendingPathComponent("calibration.json"))
            #expect(calibration["output_relative_error"] == nil && calibration["output_error_inputs"] == nil)
        }
    }

    /// Linears kept in BF16 (`--exclude`) show as kept, with no error of their own, and the quality report counts them.
    @Test func keptLinearsShowAsKeptWithTheirEffectInTheQualityReport() throws {
        try withReport(extra: ["--exclude", "*.down_proj"]) { output, report in
            #expect(report.stdout.contains("12 quantized Linears and 2 kept unquantized (--exclude) in 2 layers"), "\(report.stdout)")
            #expect(report.stdout.contains("with 2 Linears kept unquantized (--exclude)"), "\(report.stdout)")
            let calibration = try jsonObject(output.appendingPathComponent("calibration.json"))
            let kept = ["model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj"]
            #expect(calibration["kept_unquantized"] as? [String] == kept)
            let errors = try #require(calibration["weight_relative_error"] as? [String: Double])
            #expect(kept.allSatisfy { errors[$0] == 0 } && errors.count == 14)
            let quality = try jsonObject(output.appendingPathComponent("quality.json"))
            #expect(quality["excluded_linears"] as? Int == 2)
            let outputErrors = try #require(quality["linear_output_relative_error"] as? [String: Double])
            #expect(kept.allSatisfy { outputErrors[$0] == 0 } && outputErrors.filter { $0.value > 0.01 }.count == 12, "\(outputErrors)")
            let page = try String(contentsOf: output.appendingPathComponent("report.html"), encoding: .utf8)
            #expect(page.contains("model.layers.1.mlp.down_proj <em>(kept unquantized)</em>"))
        }
    }

    @Test func aCheckpointWithoutFiguresIsRefusedNamingTheFile() throws {
        try withTemporaryDirectory("report-missing") { parent throws in
            let result = try Coordctl.run(["report", parent.path], in: parent)
            #expect(result.status == 1)
            #expect(result.stderr.contains(parent.appendingPathComponent("calibration.json").path + ": not found"), "\(result.stderr)")
        }
    }

    /// The page needs nothing from the network and carries every figure as text.
    @Test func thePageIsSelfContained() throws {
        try withReport { output, _ in
            let page = try String(contentsOf: output.appendingPathComponent("report.html"), encoding: .utf8)
            for outside in ["http://", "https://", "<script", "src=", "<link"] {
                #expect(!page.contains(outside), "\(outside)")
            }
            #expect(page.contains("<svg") && page.contains("id=\"worst\""))
        }
    }

    static let chromium = ["/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/chromium-headless-shell"]
        .first { FileManager.default.isExecutableFile(atPath: $0) }

    /// Rendered in headless Chromium (Debian's package; `.ci/run` installs it): the screenshot is not blank and the
    /// DOM holds the worst Linear, its error and the perplexities.
    @Test(.enabled(if: chromium != nil, "needs Debian's chromium package (apt-get install chromium)"))
    func chromiumRendersThePageWithItsNumbers() throws {
        try withReport { output, _ in
            let page = output.appendingPathComponent("report.html")
            let screenshot = output.deletingLastPathComponent().appendingPathComponent("report.png")
            let common = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-dev-shm-usage",
                          "--user-data-dir=" + output.deletingLastPathComponent().appendingPathComponent("chromium-profile").path]
            let shot = try run(Self.chromium!, common + ["--window-size=1200,1400", "--screenshot=" + screenshot.path, page.absoluteString])
            try #require(FileManager.default.fileExists(atPath: screenshot.path), "no screenshot: \(shot)")
            let stats = try run("/usr/bin/env", ["python3", Self.scripts.appendingPathComponent("png-stats.py").path, screenshot.path])
                .split(separator: " ").compactMap { Double($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
            try #require(stats.count == 4, "png-stats: \(stats)")
            #expect(stats[0] == 1200 && stats[1] == 1400)
            #expect(stats[2] >= 8, "a rendered page has text and bars in several colours: \(stats)")
            #expect(stats[3] > 0.01, "more than 1% of the pixels differ from the background: \(stats)")

            let dom = try run(Self.chromium!, common + ["--dump-dom", page.absoluteString])
            let report = try CheckpointReport(directory: output)
            let worst = try #require(report.worst(1).first)
            #expect(dom.contains(worst.name) && dom.contains(String(format: "%.3f%%", worst.weightRelativeError * 100)), "\(dom.prefix(2000))")
            let quality = try #require(report.quality)
            #expect(dom.contains(String(format: "%.2f", quality.originalPerplexity)) && dom.contains(String(format: "%.2f", quality.quantizedPerplexity)))
            #expect(dom.contains("<svg") && dom.contains("<rect"))
        }
    }

    static let scripts = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("Scripts/test-support")

    /// Runs `executable`, returning standard output (standard error is discarded); throws on a non-zero exit.
    func run(_ executable: String, _ arguments: [String]) throws -> String {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        let out = FileManager.default.temporaryDirectory.appendingPathComponent("report-run-\(UUID().uuidString)")
        _ = FileManager.default.createFile(atPath: out.path, contents: nil)
        defer { try? FileManager.default.removeItem(at: out) }
        let handle = try FileHandle(forWritingTo: out)
        process.standardOutput = handle
        process.standardError = FileHandle.nullDevice
        process.standardInput = FileHandle.nullDevice
        try process.run()
        process.waitUntilExit()
        try handle.close()
        let text = try String(contentsOf: out, encoding: .utf8)
        guard process.terminationStatus == 0 else {
            throw CheckpointReportError.malformed(path: executable, field: "exit status", reason: "\(process.terminationStatus): \(text.prefix(500))")
        }
        return text
    }
}
