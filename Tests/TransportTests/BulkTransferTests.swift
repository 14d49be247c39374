import Logging
import NIOCore
import NIOPosix
import Testing
@testable import Transport

struct TensorDigest: Sendable, Equatable {
    var id: UInt64
    var bytes: Int
    var checksum: UInt64
}

/// Chunks that fail after `failAfter` of them.
struct FailingChunks: AsyncSequence, Sendable {
    typealias Element = ByteBuffer
    let failAfter: Int
    struct SenderGaveUp: Error {}
    struct AsyncIterator: AsyncIteratorProtocol {
        var produced = 0
        let failAfter: Int
        mutating func next() async throws -> ByteBuffer? {
            guard produced < failAfter else { throw SenderGaveUp() }
            produced += 1
            return patternChunk(index: produced, size: 4096)
        }
    }
    func makeAsyncIterator() -> AsyncIterator { AsyncIterator(failAfter: failAfter) }
}

@Suite("Bulk activation transport", .timeLimit(.minutes(2)))
struct BulkTransferTests {
    static let chunkSize = 1 << 20

    @Test("a 64 MiB tensor in 1 MiB chunks arrives intact, with bounded receive buffering under a slow consumer")
    func largeTensorIntactAndBounded() async throws {
        var configuration = fastConfiguration()
        configuration.bulkReceiveBufferBytes = 4 << 20
        let digests = Mailbox<TensorDigest>()
        let peaks = Mailbox<Int>()
        let statistics = Mailbox<ReceiveStatistics>()
        let handler = ClosureHandler(onOpen: { connection in
            let transport = TCPActivationTransport(connection: connection)
            do {
                for try await tensor in transport.incomingTensors {
                    var checksum = StreamChecksum()
                    var index = 0
                    for try await chunk in tensor.chunks {
                        checksum.update(chunk)
                        index += 1
                        if index % 4 == 0 { try await Task.sleep(for: .milliseconds(5)) }  // a slow consumer
                    }
                    digests.put(TensorDigest(id: tensor.id, bytes: checksum.count, checksum: checksum.final))
                    peaks.put(try await transport.peakReceiveQueueBytes())
                    statistics.put(try await connection.receiveStatistics())
                }
            } catch {
                Issue.record("receiver failed: \(error)")
            }
        })
        try await withServer(configuration: configuration, handler: handler) { server in
            let connection = try await connect(to: server, purpose: .bulk, configuration: configuration)
            let transport = TCPActivationTransport(connection: connection)
            var expected = StreamChecksum()
            var chunks: [ByteBuffer] = []
            for index in 0..<64 {
                let chunk = patternChunk(index: index, size: Self.chunkSize)
                expected.update(chunk)
                chunks.append(chunk)
            }
            try await transport.sendTensor(id: 0xA11CE, chunks: chunks)
            let digest = await digests.take()
            #expect(digest == TensorDigest(id: 0xA11CE, bytes: 64 << 20, checksum: expected.final))
            let peak = await peaks.take()
            // Bounded: reads pause at 4 MiB; what was already read (one socket read of at most 1 MiB, completing
            // at most one partial chunk) still lands.
            #expect(peak <= (4 << 20) + Self.chunkSize + (1 << 20), "receive queue peaked at \(peak) bytes")
            #expect(peak >= 2 << 20, "the slow consumer should have made the queue fill (peak \(peak))")
            // The receiving side copied no payload: at most the 64 frame headers and the handshake and heartbeat
            // frames that a read happened to split.
            let received = await statistics.take()
            #expect(received.bulkPayloadBytes == 64 << 20)
            #expect(received.copiedBytes <= 64 * Frame.headerSize + 4096, "copied \(received.copiedBytes) bytes")
            await connection.close()
        }
    }

    @Test("throughput over loopback (printed)")
    func throughput() async throws {
        let configuration = fastConfiguration()
        let received = Mailbox<Int>()
        let handler = ClosureHandler(onOpen: { connection in
            let transport = TCPActivationTransport(connection: connection)
            do {
                for try await tensor in transport.incomingTensors {
                    var bytes = 0
                    for try await chunk in tensor.chunks { bytes += chunk.readableBytes }
                    received.put(bytes)
                }
            } catch {
                Issue.record("receiver failed: \(error)")
            }
        })
        try await withServer(configuration: configuration, handler: handler) { server in
            let connection = try await connect(to: server, purpose: .bulk, configuration: configuration)
            let transport = TCPActivationTransport(connection: connection)
            let chunks = (0..<64).map { patternChunk(index: $0, size: Self.chunkSize) }
            let tensors = 8
            let start = ContinuousClock.now
            for id in 0..<tensors {
                try await transport.sendTensor(id: UInt64(id), chunks: chunks)
                #expect(await received.take() == 64 << 20)
            }
            let seconds = (ContinuousClock.now - start) / .seconds(1)
            let gigabytes = Double(tensors * (64 << 20)) / 1e9
            print("TCPActivationTransport loopback: \(tensors) x 64 MiB in \(String(format: "%.3f", seconds)) s = "
                + "\(String(format: "%.2f", gigabytes / seconds)) GB/s")
            await connection.close()
        }
    }

    @Test("an aborted tensor throws remoteError on the receiver; an undrained tensor is skipped; order is kept")
    func abortAndSkip() async throws {
        let outcomes = Mailbox<String>()
        let handler = ClosureHandler(onOpen: { connection in
            let transport = TCPActivationTransport(connection: connection)
            do {
                for try await tensor in transport.incomingTensors {
                    switch tensor.id {
                    case 1:
                        do {
                            _ = try await tensor.chunks.collect(maxBytes: 1 << 20)
                            outcomes.put("1: completed?!")
                        } catch let error as TransportError {
                            outcomes.put("1: \(error)")
                        }
                    case 2:
                        outcomes.put("2: skipped")  // never read its chunks
                    default:
                        let whole = try await tensor.chunks.collect(maxBytes: 1 << 20)
                        outcomes.put("\(tensor.id): \(whole.readableBytes) bytes, intact=\(whole == patternChunk(index: 3, size: 8192))")
                    }
                }
            } catch {
                outcomes.put("receiver failed: \(error)")
            }
        })
        try await withServer(handler: handler) { server in
            var configuration = fastConfiguration()
            configuration.bulkChunkSize = 1024  // several frames per tensor even for small buffers
            let connection = try await connect(to: server, purpose: .bulk, configuration: configuration)
            let transport = TCPActivationTransport(connection: connection)
            await #expect(throws: FailingChunks.SenderGaveUp.self) {
                try await transport.sendTensor(id: 1, chunks: FailingChunks(failAfter: 3))
            }
            #expect(await outcomes.take().hasPrefix("1: remote error [aborted]: sender failed"))
            try await transport.sendTensor(id: 2, chunks: [patternChunk(index: 9, size: 8192)])
            #expect(await outcomes.take() == "2: skipped")
            try await transport.sendTensor(id: 3, chunks: [patternChunk(index: 3, size: 8192)])
            #expect(await outcomes.take() == "3: 8192 bytes, intact=true")
            await connection.close()
        }
    }

    @Test("a connection lost mid-tensor fails the receiver's chunk stream with connectionClosed")
    func closedMidTensor() async throws {
        let outcome = Mailbox<String>()
        let handler = ClosureHandler(onOpen: { connection in
            let transport = TCPActivationTransport(connection: connection)
            do {
                for try await tensor in transport.incomingTensors {
                    for try await _ in tensor.chunks {}
                    outcome.put("completed?!")
                }
                outcome.put("ended without error?!")
            } catch {
                outcome.put("\(error)")
            }
        })
        try await withServer(handler: handler) { server in
            let connection = try await connect(to: server, purpose: .bulk)
            // Open a tensor by hand (first chunk only), then drop the connection.
            try await connection.write(Frame(type: .bulkChunk, flags: [.firstChunk], correlationID: 5,
                                             payload: patternChunk(index: 0, size: 4096)))
            await connection.close()
            #expect(await outcome.take() == "\(TransportError.connectionClosed(peer: worker.name))")
        }
    }

    @Test("bulk chunks out of sequence are a protocol violation")
    func outOfSequenceChunks() async throws {
        let logs = LogRecorder()
        try await withServer(logger: logs.logger("server")) { server in
            let connection = try await connect(to: server, purpose: .bulk)
            try await connection.write(Frame(type: .bulkChunk, flags: [.lastChunk], correlationID: 8, payload: ByteBuffer(bytes: [1])))
            await connection.waitUntilClosed()
        }
        #expect(logs.contains("bulk tensor 8: chunk without a first chunk"))
    }
}

/// A consumer waiting for the next tensor stops when its task is cancelled, while the connection stays up: the
/// daemons end their receive loops this way on shutdown, before the actor system closes its connections.
@Suite("Bulk receive and cancellation", .timeLimit(.minutes(1)))
struct BulkReceiveCancellationTests {
    @Test func waitingForATensorEndsWhenTheTaskIsCancelled() async throws {
        let outcome = Mailbox<String>()
        let waiting = Mailbox<Bool>()
        let handler = ClosureHandler(onOpen: { connection in
            let transport = TCPActivationTransport(connection: connection)
            let receiver = Task {
                waiting.put(true)
                do {
                    for try await _ in transport.incomingTensors {}
                    outcome.put("finished")
                } catch is CancellationError {
                    outcome.put("cancelled")
                } catch {
                    outcome.put("failed: \(error)")
                }
            }
            _ = await waiting.take()
            try? await Task.sleep(for: .milliseconds(100))  // let it block on the empty connection
            receiver.cancel()
            _ = await receiver.result
        })
        try await withServer(handler: handler) { server in
            let connection = try await connect(to: server, purpose: .bulk)
            #expect(await outcome.take() == "cancelled")
            await connection.close()
        }
    }
}
