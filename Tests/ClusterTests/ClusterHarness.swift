import Foundation
import Testing

/// Runs the real binaries (coordd, workerd, coordctl) as separate processes, as an operator would.
/// They must be built: `swift build` (which `swift test` does first) puts them in `.build/debug/`.
enum Binaries {
    static let packageRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent()

    /// `$NVFP4_TEST_BIN_DIR/name` when set (to run these tests against other binaries, e.g. an older commit's).
    static func url(_ name: String) throws -> URL {
        if let directory = ProcessInfo.processInfo.environment["NVFP4_TEST_BIN_DIR"] {
            return URL(fileURLWithPath: directory).appendingPathComponent(name)
        }
        var candidates = [Bundle.main.bundleURL.appendingPathComponent(name)]
        if let executable = Bundle.main.executableURL {
            candidates.append(executable.deletingLastPathComponent().appendingPathComponent(name))
        }
        candidates.append(packageRoot.appendingPathComponent(".build/debug/\(name)"))
        return try #require(candidates.first { FileManager.default.isExecutableFile(atPath: $0.path) },
                            "\(name) is not built; run `swift build` (looked in \(candidates.map(\.path)))")
    }
}

enum Fixtures {
    static let directory = Binaries.packageRoot.appendingPathComponent("Tests/Fixtures")
    static let tinyLlama = directory.appendingPathComponent("tiny-llama")
    static let tinyCalibration = directory.appendingPathComponent("tiny-llama-calib.jsonl")
}

/// A process whose output goes to a log file (never a pipe, which could fill and block it).
final class Daemon: @unchecked Sendable {
    let name: String
    let process = Process()
    let log: URL

    init(name: String, executable: URL, arguments: [String], directory: URL, prefix: [String] = [],
         environment: [String: String] = [:]) throws {
        self.name = name
        log = directory.appendingPathComponent("\(name)-\(UUID().uuidString.prefix(8)).log")
        FileManager.default.createFile(atPath: log.path, contents: nil)
        let handle = try FileHandle(forWritingTo: log)
        process.setCommand(executable, arguments, prefix: prefix)
        process.standardOutput = handle
        process.standardError = handle
        process.standardInput = FileHandle.nullDevice
        if !environment.isEmpty {
            process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        }
        try process.run()
    }

    var output: String { (try? String(contentsOf: log, encoding: .utf8)) ?? "" }
    var isRunning: Bool { process.isRunning }

    /// Waits until the log contains `text`; throws with the log when it does not within `timeout`.
    func waitForLog(_ text: String, timeout: Double = 20) throws {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if output.contains(text) { return }
            if !process.isRunning { break }
            Thread.sleep(forTimeInterval: 0.05)
        }
        throw HarnessError("\(name) did not log '\(text)' within \(timeout) s; log:\n\(output)")
    }

    /// The `address=HOST:PORT` a daemon logs once it listens.
    func listenAddress(marker: String) throws -> String {
        try waitForLog(marker)
        for line in output.split(separator: "\n") where line.contains(marker) {
            if let range = line.range(of: #"address=\S+"#, options: .regularExpression) {
                return String(line[range].dropFirst("address=".count))
            }
        }
        throw HarnessError("\(name) logged no address; log:\n\(output)")
    }

    func kill(signal: Int32 = SIGKILL) {
        if process.isRunning { Foundation.kill(process.processIdentifier, signal) }
        process.waitUntilExit()
    }

    deinit { kill() }
}

struct HarnessError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

struct CommandResult {
    let status: Int32
    let stdout: String
    let stderr: String
}

/// Runs a binary to completion.
func run(_ executable: URL, _ arguments: [String], in directory: URL, prefix: [String] = []) throws -> CommandResult {
    let process = Process()
    process.setCommand(executable, arguments, prefix: prefix)
    let id = UUID().uuidString
    let stdoutURL = directory.appendingPathComponent("out-\(id)")
    let stderrURL = directory.appendingPathComponent("err-\(id)")
    FileManager.default.createFile(atPath: stdoutURL.path, contents: nil)
    FileManager.default.createFile(atPath: stderrURL.path, contents: nil)
    let stdout = try FileHandle(forWritingTo: stdoutURL)
    let stderr = try FileHandle(forWritingTo: stderrURL)
    process.standardOutput = stdout
    process.standardError = stderr
    process.standardInput = FileHandle.nullDevice
    try process.run()
    process.waitUntilExit()
    try stdout.close()
    try stderr.close()
    defer {
        try? FileManager.default.removeItem(at: stdoutURL)
        try? FileManager.default.removeItem(at: stderrURL)
    }
    return CommandResult(status: process.terminationStatus, stdout: try String(contentsOf: stdoutURL, encoding: .utf8),
                         stderr: try String(contentsOf: stderrURL, encoding: .utf8))
}

func withTemporaryDirectory<R>(_ label: String, _ body: (URL) throws -> R) throws -> R {
    let directory = FileManager.default.temporaryDirectory.appendingPathComponent("\(label)-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(at: directory) }
    return try body(directory)
}

func withTemporaryDirectory<R>(_ label: String, _ body: (URL) async throws -> R) async throws -> R {
    let directory = FileManager.default.temporaryDirectory.appendingPathComponent("\(label)-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(at: directory) }
    return try await body(directory)
}

/// A token file with mode 600.
func writeToken(_ secret: String, in directory: URL, name: String = "cluster.token") throws -> URL {
    let url = directory.appendingPathComponent(name)
    try Data(secret.utf8).write(to: url)
    try FileManager.default.setAttributes([.posixPermissions: 0o600], ofItemAtPath: url.path)
    return url
}

/// A free TCP port on 127.0.0.1 (bound and released; good enough for tests that must restart on a fixed port).
func freeLoopbackPort() throws -> Int {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { throw HarnessError("socket() failed") }
    defer { close(fd) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = 0
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let bound = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) }
    }
    guard bound == 0 else { throw HarnessError("bind() failed") }
    _ = withUnsafeMutablePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
    }
    return Int(UInt16(bigEndian: address.sin_port))
}

/// Every regular file under `directory`, relative path → bytes.
func directoryContents(_ directory: URL) throws -> [String: Data] {
    var result: [String: Data] = [:]
    let names = try FileManager.default.contentsOfDirectory(atPath: directory.path)
    for name in names {
        let url = directory.appendingPathComponent(name)
        var isDirectory: ObjCBool = false
        FileManager.default.fileExists(atPath: url.path, isDirectory: &isDirectory)
        if isDirectory.boolValue {
            for (inner, data) in try directoryContents(url) { result["\(name)/\(inner)"] = data }
        } else {
            result[name] = try Data(contentsOf: url)
        }
    }
    return result
}

/// Expects two checkpoint directories to hold the same files with the same bytes.
func expectIdenticalDirectories(_ a: URL, _ b: URL, sourceLocation: SourceLocation = #_sourceLocation) throws {
    let left = try directoryContents(a)
    let right = try directoryContents(b)
    #expect(left.keys.sorted() == right.keys.sorted(), "file lists differ", sourceLocation: sourceLocation)
    for (name, data) in left {
        #expect(right[name] == data, "\(name) differs", sourceLocation: sourceLocation)
    }
}

/// A coordd and workers on this machine, started as separate processes.
final class LocalCluster {
    let directory: URL
    let token: URL?
    var coordd: Daemon?
    var workers: [String: Daemon] = [:]
    var coordinatorAddress = ""
    var prefix: (String) -> [String] = { _ in [] }
    /// Where `coordctl certs` put the cluster CA and the nodes' certificates, when the cluster runs mutual TLS.
    var tlsDirectory: URL?

    init(directory: URL, token: URL?) {
        self.directory = directory
        self.token = token
    }

    var tokenArguments: [String] { token.map { ["--token-file", $0.path] } ?? [] }

    /// `--tls-cert/--tls-key/--tls-ca` of node `name` (coordd is `coordinator`, coordctl `admin`).
    func tlsArguments(_ name: String) -> [String] {
        guard let tlsDirectory else { return [] }
        return ["--tls-cert", tlsDirectory.appendingPathComponent("\(name).pem").path,
                "--tls-key", tlsDirectory.appendingPathComponent("\(name)-key.pem").path,
                "--tls-ca", tlsDirectory.appendingPathComponent("ca.pem").path]
    }

    /// Makes the cluster CA and a certificate per node with `coordctl certs`, as the two-node guide does.
    func makeCertificates(for names: [String]) throws {
        let tls = directory.appendingPathComponent("tls")
        for arguments in [["certs", "init", "--dir", tls.path]]
            + (["coordinator", "admin"] + names).map({ ["certs", "issue", "--dir", tls.path, "--name", $0] }) {
            let result = try run(try Binaries.url("coordctl"), arguments, in: directory)
            guard result.status == 0 else { throw HarnessError("coordctl \(arguments.joined(separator: " ")): \(result.stderr)") }
        }
        tlsDirectory = tls
    }

    func startCoordinator(listen: String = "127.0.0.1:0", extra: [String] = [], environment: [String: String] = [:]) throws {
        let daemon = try Daemon(name: "coordd", executable: try Binaries.url("coordd"),
                                arguments: ["--listen", listen, "--state-dir", directory.appendingPathComponent("state").path,
                                            "--output-root", directory.path,
                                            "--log-level", "debug"] + tokenArguments + tlsArguments("coordinator") + extra,
                                directory: directory, prefix: prefix("coordd"), environment: environment)
        coordd = daemon
        coordinatorAddress = try daemon.listenAddress(marker: "coordd listening")
    }

    @discardableResult
    func startWorker(_ name: String, listen: String = "127.0.0.1:0", token: URL? = nil, extra: [String] = [],
                     environment: [String: String] = [:]) throws -> Daemon {
        let tokenArguments = token.map { ["--token-file", $0.path] } ?? self.tokenArguments
        let daemon = try Daemon(name: name, executable: try Binaries.url("workerd"),
                                arguments: ["--coordinator", coordinatorAddress, "--listen", listen, "--name", name,
                                            "--scratch", directory.appendingPathComponent("scratch-\(name)").path,
                                            "--log-level", "debug"] + tokenArguments + tlsArguments(name) + extra,
                                directory: directory, prefix: prefix(name), environment: environment)
        workers[name] = daemon
        return daemon
    }

    func coordctl(_ arguments: [String]) throws -> CommandResult {
        guard let command = arguments.first else { throw HarnessError("no command") }
        return try run(try Binaries.url("coordctl"),
                       [command, "--coordinator", coordinatorAddress] + tokenArguments + tlsArguments("admin")
                           + arguments.dropFirst(),
                       in: directory, prefix: prefix("coordctl"))
    }

    /// Waits until `coordctl workers --json` lists exactly `names` as alive.
    func waitForWorkers(_ names: Set<String>, timeout: Double = 30) throws {
        let deadline = Date().addingTimeInterval(timeout)
        var last = ""
        while Date() < deadline {
            let result = try coordctl(["workers", "--json"])
            last = result.stdout + result.stderr
            if result.status == 0, let data = result.stdout.data(using: .utf8),
               let list = try? JSONSerialization.jsonObject(with: data) as? [[String: Any]] {
                let alive = Set(list.filter { $0["health"] as? String == "alive" }.compactMap { $0["name"] as? String })
                if alive == names { return }
            }
            Thread.sleep(forTimeInterval: 0.2)
        }
        throw HarnessError("workers \(names.sorted()) not all registered within \(timeout) s; last answer: \(last)\n"
                           + "coordd log:\n\(coordd?.output ?? "")")
    }

    /// The job's status object.
    func status(_ job: String) throws -> [String: Any] {
        let result = try coordctl(["status", job, "--json"])
        guard let data = result.stdout.data(using: .utf8),
              let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else {
            throw HarnessError("status of \(job) unreadable: \(result.stdout) \(result.stderr)")
        }
        return object
    }

    /// Submits the tiny model split one layer per worker (w1, w2) to `output`, waits for the end and checks that the
    /// job succeeded with the bytes of `reference`; returns the job id and its final status object.
    @discardableResult
    func runTinyTwoWorkerJob(output: URL, reference: URL, extra: [String] = [],
                             sourceLocation: SourceLocation = #_sourceLocation) throws -> (job: String, status: [String: Any]) {
        let submitted = try coordctl(tinySubmitArguments(output: output, extra: ["--split", "1,1"] + extra))
        #expect(submitted.status == 0, "submit: \(submitted.stderr)", sourceLocation: sourceLocation)
        let job = try #require(submitted.stdout.split(separator: "\n").last.map(String.init), "\(submitted.stderr)",
                               sourceLocation: sourceLocation)
        let status = try waitForEnd(job)
        #expect(status["state"] as? String == "succeeded", "status: \(status)\n\(coordd?.output ?? "")",
                sourceLocation: sourceLocation)
        try expectIdenticalDirectories(reference, output, sourceLocation: sourceLocation)
        return (job, status)
    }

    /// Polls until the job ends; returns its final status object.
    func waitForEnd(_ job: String, timeout: Double = 120) throws -> [String: Any] {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if let status = try? status(job), let state = status["state"] as? String,
               ["succeeded", "failed", "cancelled"].contains(state) {
                return status
            }
            Thread.sleep(forTimeInterval: 0.2)
        }
        throw HarnessError("job \(job) did not end within \(timeout) s; coordd log:\n\(coordd?.output ?? "")\n"
                           + workers.map { "\($0.key) log:\n\($0.value.output)" }.joined(separator: "\n"))
    }

    func stopAll() {
        for worker in workers.values { worker.kill(signal: SIGTERM) }
        coordd?.kill(signal: SIGTERM)
    }
}

/// The tiny fixture model quantized W4A4 by `coordctl quantize` on one machine: the reference output.
func embeddedReference(in directory: URL, extra: [String] = []) throws -> URL {
    let output = directory.appendingPathComponent("embedded")
    let result = try run(try Binaries.url("coordctl"),
                         ["quantize", "--model", Fixtures.tinyLlama.path, "--output", output.path, "--calib",
                          Fixtures.tinyCalibration.path, "--min-tokens", "1", "--device", "cpu", "--eval-samples", "0"]
                         + extra, in: directory)
    #expect(result.status == 0, "embedded quantize failed: \(result.stderr)")
    return output
}

/// `submit` arguments for the tiny model.
func tinySubmitArguments(output: URL, extra: [String] = [], model: URL = Fixtures.tinyLlama,
                         calibration: URL = Fixtures.tinyCalibration) -> [String] {
    ["submit", "--model", model.path, "--output", output.path, "--calib", calibration.path,
     "--min-tokens", "1", "--device", "cpu", "--eval-samples", "0"] + extra
}

extension Process {
    /// Sets the executable and arguments, run through `prefix` (e.g. `ip netns exec NAME`) when one is given.
    func setCommand(_ executable: URL, _ arguments: [String], prefix: [String]) {
        if prefix.isEmpty {
            executableURL = executable
            self.arguments = arguments
        } else {
            executableURL = URL(fileURLWithPath: prefix[0])
            self.arguments = Array(prefix.dropFirst()) + [executable.path] + arguments
        }
    }
}
