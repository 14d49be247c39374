// Loopback throughput of the bulk activation path (TCPActivationTransport over an authenticated bulk connection),
// in plaintext and over mutual TLS 1.3, beside a plain blocking POSIX socket copy of the same bytes, and the
// in-process LocalActivationTransport.
//
//   swift run -c release TransportBenchmarks [total GiB per measurement, default 2] [runs, default 5]
//
// Tensors are 1200 × 8192 × 2 bytes: one 70B sample's hidden states (1200 tokens, hidden size 8192, BF16).
// Each run measures every path once, the POSIX copy first and last; the figure is each path's rate over the faster
// POSIX copy of the same run, and its median over the runs. The receiving connection's statistics say how many bytes
// its decoder copied per chunk. Both ends run on NIO's shared event loops, as in the daemons. (Giving each end a loop
// of its own, as on two nodes, was slower on the 2-core development VM: 0.87x plaintext and 0.47x TLS, medians.)

import ClusterCertificates
import Foundation
import Logging
import NIOCore
import NIOPosix
import Transport
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

let tensorBytes = 1200 * 8192 * 2
let totalGiB = CommandLine.arguments.dropFirst().first.flatMap(Double.init) ?? 2
let runCount = CommandLine.arguments.dropFirst(2).first.flatMap(Int.init) ?? 5
let tensorCount = max(1, Int((totalGiB * Double(1 << 30)) / Double(tensorBytes)))
let totalBytes = tensorCount * tensorBytes

/// One tensor's worth of non-trivial bytes, reused for every tensor (the sender slices it, never copies).
let tensor: ByteBuffer = {
    var buffer = ByteBuffer()
    buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: tensorBytes) { raw in
        for index in 0..<tensorBytes { raw[index] = UInt8(truncatingIfNeeded: index &* 2_654_435_761 >> 7) }
        return tensorBytes
    }
    return buffer
}()

struct Measurement {
    var name: String
    var seconds: Double
    /// The receiving connection's decoder, for the TCP paths.
    var received: ReceiveStatistics?
    var gbPerSecond: Double { Double(totalBytes) / seconds / 1e9 }
}

func now() -> Double { Double(DispatchTime.now().uptimeNanoseconds) / 1e9 }

/// A lock-protected flag/counter readable from any thread.
final class ByteCounter: @unchecked Sendable {
    private let lock = NSLock()
    private var bytes = 0
    func add(_ n: Int) { lock.lock(); bytes += n; lock.unlock() }
    var value: Int { lock.lock(); defer { lock.unlock() }; return bytes }
}

// MARK: TCP bulk path

/// Sender and receiver configurations with certificates of a fresh cluster CA (mutual TLS 1.3).
func withTLS(_ configuration: TransportConfiguration) throws -> (sender: TransportConfiguration, receiver: TransportConfiguration) {
    let directory = FileManager.default.temporaryDirectory.appendingPathComponent("bench-tls-\(UUID().uuidString)")
    defer { try? FileManager.default.removeItem(at: directory) }
    try ClusterCertificateAuthority.initialize(directory: directory)
    func tls(_ name: String) throws -> TransportTLS {
        try ClusterCertificateAuthority.issue(directory: directory, name: name)
        return try TransportTLS(certificateFile: directory.appendingPathComponent("\(name).pem").path,
                                keyFile: directory.appendingPathComponent("\(name)-key.pem").path,
                                caFile: directory.appendingPathComponent("ca.pem").path)
    }
    var sender = configuration
    sender.tls = try tls("sender")
    var receiver = configuration
    receiver.tls = try tls("receiver")
    return (sender, receiver)
}

func measureTCPBulk(configuration: TransportConfiguration, receiverConfiguration: TransportConfiguration? = nil,
                    label: String) async throws -> Measurement {
    let logger = Logger(label: "bench", factory: { _ in SwiftLogNoOpLogHandler() })
    let token = try ClusterToken("benchmark-token-0123456789abcdef")
    let done = AsyncStream.makeStream(of: (Double, ReceiveStatistics?).self)
    struct Receiver: TransportRequestHandler {
        let expected: Int
        let done: AsyncStream<(Double, ReceiveStatistics?)>.Continuation
        func handleRequest(type: UInt16, payload: ByteBuffer, from connection: PeerConnection) async throws -> ByteBuffer { payload }
        func connectionOpened(_ connection: PeerConnection) async {
            let transport = TCPActivationTransport(connection: connection)
            var received = 0
            do {
                for try await incoming in transport.incomingTensors {
                    for try await chunk in incoming.chunks { received += chunk.readableBytes }
                    if received >= expected {
                        let end = now()
                        done.yield((end, try? await connection.receiveStatistics()))
                        return
                    }
                }
            } catch {
                print("receiver failed: \(error)")
            }
            done.yield((now(), nil))
        }
    }
    let server = try await TransportServer.bind(host: "127.0.0.1", port: 0, identity: NodeIdentity(name: "receiver", role: .worker),
                                                token: token, configuration: receiverConfiguration ?? configuration,
                                                logger: logger)
    let serving = Task { await server.serve(with: Receiver(expected: totalBytes, done: done.continuation)) }
    let connection = try await PeerConnection.connect(host: "127.0.0.1", port: server.port,
                                                      identity: NodeIdentity(name: "sender", role: .worker), token: token,
                                                      purpose: .bulk, configuration: configuration, logger: logger)
    let sender = TCPActivationTransport(connection: connection)
    let start = now()
    for id in 0..<tensorCount {
        try await sender.sendTensor(id: UInt64(id), chunks: [tensor])
    }
    var finished = done.stream.makeAsyncIterator()
    let (end, statistics) = await finished.next() ?? (now(), nil)
    await connection.close()
    await server.close()
    serving.cancel()
    return Measurement(name: "TCPActivationTransport \(label)", seconds: end - start, received: statistics)
}

// MARK: Local (in-process) path

func measureLocal() async throws -> Measurement {
    let (a, b) = LocalActivationTransport.makePair()
    let start = now()
    let receiver = Task {
        var received = 0
        for try await incoming in b.incomingTensors {
            for try await chunk in incoming.chunks { received += chunk.readableBytes }
            if received >= totalBytes { break }
        }
        return received
    }
    for id in 0..<tensorCount {
        // 1 MiB slices, as a producer handing over a tensor piecewise would.
        var rest = tensor
        var chunks: [ByteBuffer] = []
        while rest.readableBytes > 0 { chunks.append(rest.readSlice(length: min(1 << 20, rest.readableBytes))!) }
        try await a.sendTensor(id: UInt64(id), chunks: chunks)
    }
    _ = try await receiver.value
    return Measurement(name: "LocalActivationTransport (in-process, by reference)", seconds: now() - start)
}

// MARK: Plain POSIX sockets

func posixCheck(_ result: Int32, _ what: String) -> Int32 {
    if result < 0 { fatalError("\(what) failed: \(String(cString: strerror(errno)))") }
    return result
}

/// The POSIX copy: one thread `send`s whole tensors, one `recv`s into a 1 MiB buffer.
func measurePOSIX() -> Measurement {
    #if canImport(Glibc)
    let streamType = Int32(SOCK_STREAM.rawValue)
    #else
    let streamType = SOCK_STREAM
    #endif
    let listener = posixCheck(socket(AF_INET, streamType, 0), "socket")
    var yes: Int32 = 1
    setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &yes, socklen_t(MemoryLayout<Int32>.size))
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = 0
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    withUnsafeMutablePointer(to: &address) { pointer in
        pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { raw in
            _ = posixCheck(bind(listener, raw, length), "bind")
            _ = posixCheck(getsockname(listener, raw, &length), "getsockname")
        }
    }
    _ = posixCheck(listen(listener, 1), "listen")

    let received = ByteCounter()
    let finished = DispatchSemaphore(value: 0)
    let reader = Thread {
        let connection = posixCheck(accept(listener, nil, nil), "accept")
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: 1 << 20, alignment: 64)
        var total = 0
            while total < totalBytes {
                let n = recv(connection, buffer, 1 << 20, 0)
                if n <= 0 { break }
                total += n
            }
        buffer.deallocate()
        received.add(total)
        close(connection)
        finished.signal()
    }
    reader.start()

    let client = posixCheck(socket(AF_INET, streamType, 0), "socket")
    withUnsafePointer(to: &address) { pointer in
        pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { raw in
            _ = posixCheck(connect(client, raw, socklen_t(MemoryLayout<sockaddr_in>.size)), "connect")
        }
    }
    func sendAll(_ bytes: UnsafeRawBufferPointer) {
        var offset = 0
        while offset < bytes.count {
            let n = send(client, bytes.baseAddress! + offset, bytes.count - offset, 0)
            if n <= 0 { fatalError("send failed: \(String(cString: strerror(errno)))") }
            offset += n
        }
    }
    let start = now()
    tensor.withUnsafeReadableBytes { bytes in
        for _ in 0..<tensorCount {
            sendAll(bytes)
        }
    }
    finished.wait()
    let end = now()
    close(client)
    close(listener)
    precondition(received.value == totalBytes, "POSIX receiver got \(received.value) of \(totalBytes) bytes")
    return Measurement(name: "plain blocking POSIX socket (send/recv, 1 MiB reads)", seconds: end - start)
}

// MARK: Run

print("TransportBenchmarks: \(tensorCount) tensors of 1200x8192x2 = \(tensorBytes) bytes, " +
      String(format: "%.2f GiB per measurement, loopback, %d cores, %d runs", Double(totalBytes) / Double(1 << 30),
             ProcessInfo.processInfo.activeProcessorCount, runCount))

func row(_ name: String, _ seconds: String, _ rate: String, _ ratio: String, _ copies: String = "") -> String {
    name.padding(toLength: 80, withPad: " ", startingAt: 0) + " " + seconds.leftPad(8) + " " + rate.leftPad(8) + " "
        + ratio.leftPad(10) + " " + copies.leftPad(26)
}
extension String {
    func leftPad(_ width: Int) -> String { count >= width ? self : String(repeating: " ", count: width - count) + self }
}
func median(_ values: [Double]) -> Double {
    let sorted = values.sorted()
    return sorted.count % 2 == 1 ? sorted[sorted.count / 2] : (sorted[sorted.count / 2 - 1] + sorted[sorted.count / 2]) / 2
}
/// Bytes the receiving decoder copied per sent chunk, and the pieces each chunk was delivered in.
func copies(_ measurement: Measurement, chunkSize: Int) -> String {
    guard let received = measurement.received else { return "" }
    let chunks = Double(received.bulkPayloadBytes) / Double(chunkSize)
    return String(format: "%.0f B, %.1f pieces /chunk", Double(received.copiedBytes) / chunks, Double(received.bulkPieces) / chunks)
}

var large = TransportConfiguration()
large.bulkChunkSize = 4 << 20
large.bulkWritesInFlight = 8
large.bulkReceiveBufferBytes = 32 << 20
let tlsDefaults = try withTLS(TransportConfiguration())
let tlsLargeConfigurations = try withTLS(large)

var ratios: [String: [Double]] = [:]
for run in 1...runCount {
    // POSIX first and last, so a machine that speeds up or slows down during the run shows in the two baselines.
    let posixBefore = measurePOSIX()
    let tcp = try await measureTCPBulk(configuration: TransportConfiguration(), label: "(defaults: 1 MiB chunks, 4 in flight, 8 MiB rx)")
    let tcpLarge = try await measureTCPBulk(configuration: large, label: "(4 MiB chunks, 8 in flight, 32 MiB rx)")
    let tls = try await measureTCPBulk(configuration: tlsDefaults.sender, receiverConfiguration: tlsDefaults.receiver,
                                       label: "over mutual TLS 1.3 (defaults)")
    let tlsLarge = try await measureTCPBulk(configuration: tlsLargeConfigurations.sender,
                                            receiverConfiguration: tlsLargeConfigurations.receiver,
                                            label: "over mutual TLS 1.3 (4 MiB chunks, 8 in flight, 32 MiB rx)")
    let local = try await measureLocal()
    let posixAfter = measurePOSIX()
    let baseline = max(posixBefore.gbPerSecond, posixAfter.gbPerSecond)

    print("\nrun \(run) of \(runCount)")
    print(row("path", "seconds", "GB/s", "vs POSIX", "rx copies"))
    for (measurement, chunkSize) in [(posixBefore, 1), (tcp, 1 << 20), (tcpLarge, 4 << 20), (tls, 1 << 20),
                                     (tlsLarge, 4 << 20), (local, 1), (posixAfter, 1)] {
        print(row(measurement.name, String(format: "%.3f", measurement.seconds), String(format: "%.2f", measurement.gbPerSecond),
                  String(format: "%.2fx", measurement.gbPerSecond / baseline), copies(measurement, chunkSize: chunkSize)))
        if measurement.name.hasPrefix("TCPActivationTransport") {
            ratios[measurement.name, default: []].append(measurement.gbPerSecond / baseline)
        }
    }
    print(String(format: "TLS / plaintext, same run: %.2fx with the defaults, %.2fx with large chunks", tls.gbPerSecond / tcp.gbPerSecond,
                 tlsLarge.gbPerSecond / tcpLarge.gbPerSecond))
}

print("\nmedian over \(runCount) runs, each path over the faster POSIX copy of its run (target: at least 0.80x):")
for (name, values) in ratios.sorted(by: { $0.key < $1.key }) {
    print(row(name, "", "", String(format: "%.2fx", median(values))) + "   runs: "
          + values.map { String(format: "%.2f", $0) }.joined(separator: " "))
}
