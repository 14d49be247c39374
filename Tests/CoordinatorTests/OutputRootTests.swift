import Foundation
import Testing
@testable import Coordinator

/// coordd decides where job outputs may go (`--output-root`), on real paths.
@Suite struct OutputRootTests {
    func withRoot(_ body: (URL) throws -> Void) throws {
        let parent = FileManager.default.temporaryDirectory.appendingPathComponent("roots-\(UUID().uuidString)")
        let root = parent.appendingPathComponent("models")
        try FileManager.default.createDirectory(at: root, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: parent) }
        try body(root)
    }

    @Test func anOutputInsideARootIsAcceptedAndOneOutsideIsRefusedNamingTheRoots() throws {
        try withRoot { root in
            try JobRunner.checkOutput(root.appendingPathComponent("llama-nvfp4").path, within: [root.path])
            try JobRunner.checkOutput(root.appendingPathComponent("new/deeper/out").path, within: ["/nonexistent", root.path])
            for outside in ["/etc/out", root.path, root.appendingPathComponent("../escape").path, root.path + "-sibling/out"] {
                #expect(throws: (any Error).self, "\(outside)") { try JobRunner.checkOutput(outside, within: [root.path]) }
            }
            do {
                try JobRunner.checkOutput("/etc/out", within: [root.path])
            } catch {
                #expect("\(error)".contains("outside coordd's output roots") && "\(error)".contains(root.path), "\(error)")
            }
        }
    }

    @Test func aSymbolicLinkInsideARootDoesNotLeadOut() throws {
        try withRoot { root in
            let outside = root.deletingLastPathComponent().appendingPathComponent("elsewhere")
            try FileManager.default.createDirectory(at: outside, withIntermediateDirectories: true)
            try FileManager.default.createSymbolicLink(at: root.appendingPathComponent("link"), withDestinationURL: outside)
            #expect(throws: (any Error).self) {
                try JobRunner.checkOutput(root.appendingPathComponent("link/out").path, within: [root.path])
            }
        }
    }

    @Test func withoutAnyRootEveryOutputIsRefusedSayingHowToSetOne() throws {
        do {
            try JobRunner.checkOutput("/tmp/out", within: [])
            Issue.record("accepted an output with no root")
        } catch {
            #expect("\(error)".contains("--output-root"), "\(error)")
        }
    }
}
