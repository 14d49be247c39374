import Checkpoint
import Foundation
import Testing

/// Regenerates Tests/Fixtures/evaluation/tiny-llama-nvfp4-w4a4, the checkpoint that
/// Scripts/reference/torch_w4a4_eval.py evaluated. Runs only with WRITE_EVALUATION_FIXTURES=1.
@Test(.enabled(if: ProcessInfo.processInfo.environment["WRITE_EVALUATION_FIXTURES"] == "1"))
func writeW4A4FixtureCheckpoint() throws {
    try? FileManager.default.removeItem(at: Fixtures.w4a4Checkpoint)
    try FileManager.default.createDirectory(at: Fixtures.evaluation, withIntermediateDirectories: true)
    try writeTinyCheckpoint(to: Fixtures.w4a4Checkpoint, layout: .compressedTensors)
}
