import ArgumentParser
import CheckpointReport
import Foundation

struct Report: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show which Linears of a written checkpoint suffer most, and write OUT/report.html.",
        discussion: """
            Reads OUT/calibration.json (each Linear's weight amax, relative weight quantization error \
            ‖W − Q(W)‖/‖W‖ and calibrated activation amax) and OUT/quality.json (the job's perplexity report and \
            gate, when it measured one), prints the quality report and the Linears with the largest weight error, \
            and writes OUT/report.html: one self-contained page (no script, no network) with a per-layer chart of \
            those figures, the worst Linears and every Linear's figures. Candidates for --exclude are at the top.
            """)

    @Argument(help: "The checkpoint directory `quantize` or coordd wrote (W4A4).")
    var output: String

    @Option(name: .long, help: "How many of the worst Linears to list.")
    var top: Int = 10

    @Flag(name: .long, help: "Print only; do not write report.html.")
    var noHTML = false

    func validate() throws {
        if top < 1 { throw ValidationError("--top must be at least 1 (got \(top))") }
    }

    func run() throws {
        let directory = URL(fileURLWithPath: output).standardizedFileURL
        let report: CheckpointReport
        do {
            report = try CheckpointReport(directory: directory)
        } catch let error as CheckpointReportError {
            FileHandle.standardError.write(Data("Error: \(error)\n".utf8))
            throw ExitCode(1)
        }
        print(report.text(worst: top))
        guard !noHTML else { return }
        let page = directory.appendingPathComponent(CheckpointReport.pageFile)
        // Written beside and renamed, so a reader never sees half a page.
        let staging = directory.appendingPathComponent(".\(CheckpointReport.pageFile).\(ProcessInfo.processInfo.processIdentifier)")
        try Data(report.html(worst: top).utf8).write(to: staging)
        _ = try? FileManager.default.removeItem(at: page)
        try FileManager.default.moveItem(at: staging, to: page)
        print("wrote \(page.path)")
    }
}
