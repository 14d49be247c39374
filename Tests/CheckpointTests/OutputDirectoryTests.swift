import Checkpoint
import Foundation
import Testing

@Suite struct OutputDirectoryTests {
    func contents(_ url: URL) throws -> [String] {
        try FileManager.default.contentsOfDirectory(atPath: url.path).sorted()
    }

    /// A directory that looks like a checkpoint: config.json beside safetensors weights.
    func makeOldCheckpoint(at url: URL) throws {
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: false)
        try Data("{}".utf8).write(to: url.appendingPathComponent("config.json"))
        try Data("old".utf8).write(to: url.appendingPathComponent("model.safetensors"))
    }

    @Test func forceNeverReplacesADirectoryThatIsNoCheckpoint() throws {
        try withTemporaryDirectory("ckout") { parent in
            let final = parent.appendingPathComponent("home")
            try FileManager.default.createDirectory(at: final, withIntermediateDirectories: false)
            try Data("precious".utf8).write(to: final.appendingPathComponent("thesis.tex"))
            let error = expectCheckpointError { _ = try OutputDirectory(final: final, jobID: "j9", force: true) }
            #expect(error?.message.contains("does not look like a checkpoint") == true, "\(String(describing: error))")
            #expect(try contents(final) == ["thesis.tex"])
        }
    }

    @Test func anOutputThatAppearedWhileTheJobRanIsNotReplacedWithoutForce() throws {
        try withTemporaryDirectory("ckout") { parent in
            let final = parent.appendingPathComponent("OUT")
            let output = try OutputDirectory(final: final, jobID: "j10", force: false)
            try output.create()
            try Data("new".utf8).write(to: output.partial.appendingPathComponent("new.txt"))
            try makeOldCheckpoint(at: final)   // someone else wrote OUT meanwhile
            let error = expectCheckpointError { try output.commit() }
            #expect(error?.message.contains("appeared while the job ran") == true, "\(String(describing: error))")
            #expect(try contents(final) == ["config.json", "model.safetensors"])
        }
    }

    @Test func refusesANonEmptyDirectoryWithoutForce() throws {
        try withTemporaryDirectory("ckout") { parent in
            let final = parent.appendingPathComponent("OUT")
            try FileManager.default.createDirectory(at: final, withIntermediateDirectories: false)
            try Data("old".utf8).write(to: final.appendingPathComponent("old.txt"))
            let error = expectCheckpointError { _ = try OutputDirectory(final: final, jobID: "j1", force: false) }
            #expect(error?.subject == final.standardizedFileURL.path)
            #expect(error?.message.contains("--force") == true)
            #expect(try contents(final) == ["old.txt"])
        }
    }

    @Test func refusesAFile() throws {
        try withTemporaryDirectory("ckout") { parent in
            let final = parent.appendingPathComponent("OUT")
            try Data("x".utf8).write(to: final)
            for force in [false, true] {
                let error = expectCheckpointError { _ = try OutputDirectory(final: final, jobID: "j1", force: force) }
                #expect(error?.message.contains("not a directory") == true)
            }
        }
    }

    @Test func acceptsAnEmptyDirectoryAndAMissingOne() throws {
        try withTemporaryDirectory("ckout") { parent in
            let empty = parent.appendingPathComponent("EMPTY")
            try FileManager.default.createDirectory(at: empty, withIntermediateDirectories: false)
            let output = try OutputDirectory(final: empty, jobID: "j2", force: false)
            try output.create()
            try Data("new".utf8).write(to: output.partial.appendingPathComponent("new.txt"))
            try output.commit()
            #expect(try contents(empty) == ["new.txt"])

            let missing = parent.appendingPathComponent("nested/MISSING")
            let second = try OutputDirectory(final: missing, jobID: "j3", force: false)
            try second.create()
            try second.commit()
            #expect(try contents(missing) == [])
            OutputDirectory.finishCommit(final: empty, jobID: "j2")
            OutputDirectory.finishCommit(final: missing, jobID: "j3")
            #expect(try contents(parent) == ["EMPTY", "nested"])
        }
    }

    @Test func partialDirectoryIsNamedAfterTheJob() throws {
        try withTemporaryDirectory("ckout") { parent in
            let output = try OutputDirectory(final: parent.appendingPathComponent("OUT"), jobID: "abc123", force: false)
            #expect(output.partial.lastPathComponent == "OUT.partial-abc123")
            #expect(output.partial.deletingLastPathComponent().path == parent.standardizedFileURL.path)
        }
    }

    @Test func trailingSlashAndDotsAreNormalized() throws {
        try withTemporaryDirectory("ckout") { parent in
            let output = try OutputDirectory(final: URL(fileURLWithPath: parent.path + "/sub/../OUT/"), jobID: "j7", force: false)
            #expect(output.final.path == parent.standardizedFileURL.path + "/OUT")
            #expect(output.partial.path == parent.standardizedFileURL.path + "/OUT.partial-j7")
            try output.create()
            try output.commit()
            OutputDirectory.finishCommit(final: output.final, jobID: "j7")
            #expect(try contents(parent) == ["OUT"])
        }
    }

    @Test func forceReplacesTheOldContentsOnlyAtCommit() throws {
        try withTemporaryDirectory("ckout") { parent in
            let final = parent.appendingPathComponent("OUT")
            try makeOldCheckpoint(at: final)

            let output = try OutputDirectory(final: final, jobID: "j4", force: true)
            try output.create()
            try Data("new".utf8).write(to: output.partial.appendingPathComponent("new.txt"))
            #expect(try contents(final) == ["config.json", "model.safetensors"], "the old output stays until commit")
            try output.commit()
            #expect(try contents(final) == ["new.txt"])
            OutputDirectory.finishCommit(final: final, jobID: "j4")
            #expect(try contents(parent) == ["OUT"], "no partial or replaced directory is left")
        }
    }

    /// The rename leaves a durable intent beside the output until the job's success is recorded: a coordd that
    /// stopped in between finds it at resume and only records the success.
    @Test func aCommitLeavesItsIntentUntilTheSuccessIsRecorded() throws {
        try withTemporaryDirectory("ckout") { parent in
            let final = parent.appendingPathComponent("OUT")
            let output = try OutputDirectory(final: final, jobID: "j11", force: false)
            try output.create()
            try Data("new".utf8).write(to: output.partial.appendingPathComponent("new.txt"))
            #expect(!OutputDirectory.wasCommitted(final: final, jobID: "j11"))
            try output.commit()
            #expect(try contents(parent) == ["OUT", "OUT.committing-j11"])
            #expect(OutputDirectory.wasCommitted(final: final, jobID: "j11"))
            #expect(!OutputDirectory.wasCommitted(final: final, jobID: "other"))
            OutputDirectory.finishCommit(final: final, jobID: "j11")
            #expect(!OutputDirectory.wasCommitted(final: final, jobID: "j11"))
            #expect(try contents(parent) == ["OUT"])
        }
    }

    @Test func discardRemovesThePartialDirectoryAndKeepsTheOldOutput() throws {
        try withTemporaryDirectory("ckout") { parent in
            let final = parent.appendingPathComponent("OUT")
            try makeOldCheckpoint(at: final)
            let output = try OutputDirectory(final: final, jobID: "j5", force: true)
            try output.create()
            try Data("half".utf8).write(to: output.partial.appendingPathComponent("half.txt"))
            output.discard()
            #expect(try contents(parent) == ["OUT"])
            #expect(try contents(final) == ["config.json", "model.safetensors"])
        }
    }

    @Test func createRemovesALeftoverPartialOfTheSameJob() throws {
        try withTemporaryDirectory("ckout") { parent in
            let output = try OutputDirectory(final: parent.appendingPathComponent("OUT"), jobID: "j6", force: false)
            try FileManager.default.createDirectory(at: output.partial, withIntermediateDirectories: false)
            try Data("stale".utf8).write(to: output.partial.appendingPathComponent("stale.txt"))
            try output.create()
            #expect(try contents(output.partial) == [])
        }
    }
}
