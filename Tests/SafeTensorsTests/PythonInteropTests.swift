import Foundation
import Testing
@testable import SafeTensors

/// Runs `python3 -c SCRIPT ARGS...`, returning the exit status and combined output.
private func runPython(_ script: String, _ arguments: [String]) throws -> (status: Int32, output: String) {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    process.arguments = ["python3", "-c", script] + arguments
    let pipe = Pipe()
    process.standardOutput = pipe
    process.standardError = pipe
    try process.run()
    let output = pipe.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return (process.terminationStatus, String(decoding: output, as: UTF8.self))
}

/// Whether `python3` with the `safetensors` and `numpy` packages can be run. These tests are skipped
/// (and Swift Testing reports them as skipped, with this reason) on machines without them.
enum PythonSafeTensors {
    static let isAvailable: Bool = {
        guard let result = try? runPython("import safetensors, numpy", []) else { return false }
        if result.status != 0 {
            print("SafeTensorsTests: python3 with safetensors+numpy unavailable; Python round trips skipped")
        }
        return result.status == 0
    }()
}

@Suite(.enabled(if: PythonSafeTensors.isAvailable, "needs python3 with the safetensors and numpy packages"))
struct PythonInteropTests {
    /// Python checks a file our writer produced: the header layout byte for byte, non-BF16/F8 values through
    /// `safetensors.safe_open(framework="numpy")`, and BF16/F8 bytes against the same formula in Python.
    static let verifyOurFile = #"""
import json, struct, sys, os
import numpy as np
from safetensors import safe_open
path = sys.argv[1]
raw = open(path, "rb").read()
n = struct.unpack("<Q", raw[:8])[0]
text = raw[8:8 + n].decode("utf-8")
assert n % 8 == 0, n
assert text == text.rstrip(" ") + " " * (n - len(text.rstrip(" ").encode())), "padding is not spaces"
header = json.loads(text)
assert list(header)[0] == "__metadata__", list(header)
assert header["__metadata__"] == {"format": "pt", "note": "from swift"}, header["__metadata__"]
assert json.dumps(header, separators=(",", ":"), ensure_ascii=False) == text.rstrip(" "), "not compact"
entries = sorted((v["data_offsets"], k) for k, v in header.items() if k != "__metadata__")
end = 0
for (b, e), k in entries:
    assert b == end, (k, b, end)
    end = e
assert 8 + n + end == len(raw) == os.path.getsize(path)
def pattern(count, seed):
    return bytes(((i * 37 + seed) & 0xFF) for i in range(count))
data = raw[8 + n:]
for k, seed, dtype, shape in [("bf16", 1, "BF16", [3, 2]), ("f8", 2, "F8_E4M3", [4])]:
    h = header[k]
    assert h["dtype"] == dtype and h["shape"] == shape, h
    b, e = h["data_offsets"]
    assert data[b:e] == pattern(e - b, seed), k
expected = {
    "f32": np.arange(12, dtype=np.float32).reshape(3, 4) * 0.25 - 1.5,
    "f32.scalar": np.array(-0.125, dtype=np.float32),
    "f16": np.array([1.0, -2.5, 65504.0, 2.0 ** -24], dtype=np.float16),
    "i64": np.array([-(2 ** 40), 7, 2 ** 62], dtype=np.int64),
    "i32": np.array([[-5, 0, 2 ** 31 - 1]], dtype=np.int32),
    "u8": np.arange(0, 250, 25, dtype=np.uint8),
    "bool": np.array([True, False, True]),
    "empty": np.zeros((2, 0), dtype=np.float32),
}
with safe_open(path, framework="numpy") as f:
    assert set(f.keys()) == set(expected) | {"bf16", "f8"}, sorted(f.keys())
    assert f.metadata() == {"format": "pt", "note": "from swift"}
    for k, v in expected.items():
        got = f.get_tensor(k)
        assert got.dtype == v.dtype and got.shape == v.shape, (k, got.dtype, got.shape)
        assert np.array_equal(got, v), (k, got, v)
print("OK")
"""#

    @Test func pythonReadsWhatWeWrite() throws {
        var tensors: [(PlannedTensor, [UInt8])] = []
        func add<T>(_ name: String, _ dtype: SafeTensorsDType, _ shape: [Int], _ values: [T]) {
            tensors.append((PlannedTensor(name: name, dtype: dtype, shape: shape),
                            values.withUnsafeBytes { Array($0) }))
        }
        add("f32", .f32, [3, 4], (0..<12).map { Float($0) * 0.25 - 1.5 })
        add("bf16", .bf16, [3, 2], patternBytes(count: 12, seed: 1))
        add("f32.scalar", .f32, [], [Float(-0.125)])
        add("f8", .f8e4m3, [4], patternBytes(count: 4, seed: 2))
        add("f16", .f16, [4], [UInt16(0x3C00), 0xC100, 0x7BFF, 0x0001])
        add("i64", .i64, [3], [Int64(-(1 << 40)), 7, 1 << 62])
        add("i32", .i32, [1, 3], [Int32(-5), 0, Int32.max])
        add("u8", .u8, [10], (0..<10).map { UInt8($0 * 25) })
        add("bool", .bool, [3], [UInt8(1), 0, 1])
        add("empty", .f32, [2, 0], [Float]())
        try withTemporaryDirectory { directory in
            let path = directory.appendingPathComponent("swift.safetensors").path
            let writer = try SafeTensorsWriter(
                path: path, tensors: tensors.map(\.0), metadata: ["format": "pt", "note": "from swift"])
            for (tensor, bytes) in tensors { try writer.write(tensor.name, data: Data(bytes)) }
            try writer.finish()
            let result = try runPython(Self.verifyOurFile, [path])
            #expect(result.status == 0, "\(result.output)")
            #expect(result.output.hasSuffix("OK\n"), "\(result.output)")
        }
    }

    static let writeWithPython = #"""
import sys
import numpy as np
from safetensors.numpy import save_file
save_file({
    "weights": np.arange(12, dtype=np.float32).reshape(3, 4) * 0.25 - 1.0,
    "bytes": (np.arange(7) * 30).astype(np.uint8),
    "ids": np.array([-(2 ** 40), 0, 2 ** 62], dtype=np.int64),
    "scalar": np.array(3.5, dtype=np.float32),
    "empty": np.zeros((2, 0), dtype=np.float32),
}, sys.argv[1], metadata={"format": "np", "source": "python"})
print("OK")
"""#

    @Test func weReadWhatPythonWrites() throws {
        try withTemporaryDirectory { directory in
            let path = directory.appendingPathComponent("python.safetensors").path
            let result = try runPython(Self.writeWithPython, [path])
            try #require(result.status == 0, "\(result.output)")
            let file = try SafeTensorsFile(path: path)
            try file.validateTiling()
            #expect(file.metadata == ["format": "np", "source": "python"])
            #expect(Set(file.tensorNames) == ["weights", "bytes", "ids", "scalar", "empty"])
            #expect(try file.info("weights").dtype == .f32 && file.info("weights").shape == [3, 4])
            #expect(try file.floats("weights") == (0..<12).map { Float($0) * 0.25 - 1.0 })
            #expect(try file.info("bytes").dtype == .u8)
            #expect(try file.data("bytes") == Data((0..<7).map { UInt8($0 * 30) }))
            #expect(try file.info("ids").dtype == .i64)
            #expect(try file.int64s("ids") == [-(1 << 40), 0, 1 << 62])
            #expect(try file.info("scalar").shape == [] && file.floats("scalar") == [3.5])
            #expect(try file.info("empty").shape == [2, 0] && file.floats("empty") == [])
        }
    }
}
