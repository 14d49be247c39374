import Foundation
import LlamaModel
import SafeTensors
import ComputeBackend

enum Fixtures {
    static var directory: URL {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("Fixtures")
    }

    static func path(_ relative: String) -> String { directory.appendingPathComponent(relative).path }

    static func tinyConfig() throws -> LlamaConfig { try LlamaConfig.load(path: path("tiny-llama/config.json")) }
    static func tinyModel() throws -> SafeTensorsModel { try SafeTensorsModel(directory: path("tiny-llama")) }
    static func forwardReference() throws -> SafeTensorsFile {
        try SafeTensorsFile(path: path("tiny-llama-forward.safetensors"))
    }

    /// input_ids of each line of tiny-llama-calib.jsonl, in file order.
    static func calibrationInputIDs() throws -> [[Int]] {
        struct Line: Decodable { let input_ids: [Int] }
        let text = try String(contentsOfFile: path("tiny-llama-calib.jsonl"), encoding: .utf8)
        return try text.split(separator: "\n").map { try JSONDecoder().decode(Line.self, from: Data($0.utf8)).input_ids }
    }

    /// Linear module name → max |input| over the 8 calibration samples (f32 transformers forward).
    static func referenceAmax() throws -> [String: Double] {
        try JSONDecoder().decode([String: Double].self, from: Data(contentsOf: URL(fileURLWithPath: path("tiny-llama-amax-fp32.json"))))
    }
}

/// ‖a − b‖ / ‖b‖ in f64.
func relativeError(_ values: [Float], _ reference: [Float]) -> Double {
    precondition(values.count == reference.count)
    var difference = 0.0
    var norm = 0.0
    for (value, expected) in zip(values, reference) {
        difference += (Double(value) - Double(expected)) * (Double(value) - Double(expected))
        norm += Double(expected) * Double(expected)
    }
    return (difference / norm).squareRoot()
}
