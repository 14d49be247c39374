import ActorSystem
import Foundation
import JobModel
import Logging
import NVFP4
import Transport

/// Where a node listens; how peers find its actors.
public struct NodeAddress: Codable, Sendable, Hashable, CustomStringConvertible {
    public var host: String
    public var port: Int

    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }

    /// Parses `HOST:PORT` (IPv6 as `[::1]:PORT`).
    public init(parsing text: String) throws {
        var hostPart: Substring
        let portPart: Substring
        if text.hasPrefix("["), let close = text.firstIndex(of: "]") {
            hostPart = text[text.index(after: text.startIndex)..<close]
            let rest = text[text.index(after: close)...]
            guard rest.hasPrefix(":") else { throw ClusterProtocolError.badAddress(text) }
            portPart = rest.dropFirst()
        } else {
            guard let colon = text.lastIndex(of: ":") else { throw ClusterProtocolError.badAddress(text) }
            hostPart = text[..<colon]
            portPart = text[text.index(after: colon)...]
        }
        guard !hostPart.isEmpty, let port = Int(portPart), (0...65535).contains(port) else {
            throw ClusterProtocolError.badAddress(text)
        }
        if hostPart == "localhost" { hostPart = "127.0.0.1" }
        self.init(host: String(hostPart), port: port)
    }

    public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }

    /// Loopback addresses are the only ones a node without a cluster token may listen on.
    public var isLoopback: Bool { host == "::1" || host.hasPrefix("127.") }
}

/// Errors of the cluster protocol itself (addresses, ids), as opposed to a job's.
public enum ClusterProtocolError: Error, Codable, Sendable, Equatable, CustomStringConvertible {
    case badAddress(String)
    case badTensorID(UInt64)

    public var description: String {
        switch self {
        case .badAddress(let text): "'\(text)' is not HOST:PORT (e.g. 127.0.0.1:7070 or [::1]:7070)"
        case .badTensorID(let id): "bulk tensor id \(id) is not one this job uses"
        }
    }
}

/// What a worker tells the coordinator about itself.
public struct WorkerInfo: Codable, Sendable, Equatable {
    public var name: String
    /// Where its actor system listens (the coordinator calls it there, predecessors send hidden states there).
    public var address: NodeAddress
    public var device: String
    public var memoryBytes: Int64
    public var freeDiskBytes: Int64
    public var softwareVersion: String

    public init(name: String, address: NodeAddress, device: String, memoryBytes: Int64, freeDiskBytes: Int64,
                softwareVersion: String) {
        self.name = name
        self.address = address
        self.device = device
        self.memoryBytes = memoryBytes
        self.freeDiskBytes = freeDiskBytes
        self.softwareVersion = softwareVersion
    }
}

public struct RegistrationReply: Codable, Sendable, Equatable {
    public var coordinatorVersion: String
    /// Seconds between heartbeats the coordinator expects.
    public var heartbeatSeconds: Double

    public init(coordinatorVersion: String, heartbeatSeconds: Double) {
        self.coordinatorVersion = coordinatorVersion
        self.heartbeatSeconds = heartbeatSeconds
    }
}

/// A job as coordctl submits it: the options of `quantize`, plus how to split the layers.
public struct JobSubmission: Codable, Sendable {
    public var spec: JobSpec
    /// Use this many registered workers (nil: all live ones).
    public var workerCount: Int?
    /// Layers per worker, in route order (`--split A,B,…`); nil: in proportion to memory.
    public var split: [Int]?
    /// What the result depends on, as coordd found it at submit (coordd sets it; a client's is ignored).
    public var fingerprint: JobFingerprint?

    public init(spec: JobSpec, workerCount: Int? = nil, split: [Int]? = nil) {
        self.spec = spec
        self.workerCount = workerCount
        self.split = split
    }
}

/// The part of a job one worker runs.
public struct WorkerAssignment: Codable, Sendable {
    public var jobID: String
    /// Which attempt of the job (it grows with every resume); reports of older attempts are ignored.
    public var attempt: Int
    public var spec: JobSpec
    public var firstLayer: Int
    public var endLayer: Int
    /// The first range embeds the token ids.
    public var embeddings: Bool
    /// The next worker of the route (where hidden states go); nil for the last range.
    public var successor: NodeAddress?
    public var successorName: String?
    /// The worker whose hidden states this range takes (nil for the first range): bulk streams from any other node
    /// are refused.
    public var predecessorName: String?
    /// The calibration plan: every chunk's token ids, shapes and sample names.
    public var plan: CalibrationPlan
    public var chunks: [CalibrationChunk] { plan.chunks }
    /// ``JobFingerprint/digest`` of the job: hidden states kept under another digest are not reused.
    public var fingerprint: String?
    /// The plan's token ids are left out; the coordinator sends them right after `loadLayers` on the data path as
    /// tensor ``BulkTensorID/tokenIDs`` (a `loadLayers` call stays small however large the calibration set).
    public var tokenIDsOnDataPath = false

    public init(jobID: String, attempt: Int, spec: JobSpec, firstLayer: Int, endLayer: Int, embeddings: Bool,
                successor: NodeAddress?, successorName: String?, predecessorName: String? = nil, plan: CalibrationPlan,
                fingerprint: String? = nil) {
        self.fingerprint = fingerprint
        self.jobID = jobID
        self.attempt = attempt
        self.spec = spec
        self.firstLayer = firstLayer
        self.endLayer = endLayer
        self.embeddings = embeddings
        self.successor = successor
        self.successorName = successorName
        self.predecessorName = predecessorName
        self.plan = plan
    }

    public var range: Range<Int> { firstLayer..<endLayer }
}

public struct LoadReport: Codable, Sendable, Equatable {
    public var worker: String
    public var layers: Int
    public var seconds: Double
    /// The device the range computes on, as `calibration.json` names it (e.g. `cpu (bf16 activations)`).
    public var device: String

    public init(worker: String, layers: Int, seconds: Double, device: String) {
        self.worker = worker
        self.layers = layers
        self.seconds = seconds
        self.device = device
    }
}

public struct CalibrateOrder: Codable, Sendable, Equatable {
    public var jobID: String
    public var chunk: Int
    public init(jobID: String, chunk: Int) {
        self.jobID = jobID
        self.chunk = chunk
    }
}

/// Fused group → amax of one layer, from coordd's state, which names each observed input by its group's raw value.
public func activationAmaxByGroup(_ amax: [String: ActivationAmax]) throws -> [FusedGroup: ActivationAmax] {
    var result: [FusedGroup: ActivationAmax] = [:]
    for (input, value) in amax {
        guard let group = FusedGroup(rawValue: input) else { throw UnknownActivationInput(name: input) }
        result[group] = value
    }
    return result
}

/// coordd's state names an observed input that no fused group has (a state file from another version).
public struct UnknownActivationInput: Error, CustomStringConvertible {
    public let name: String
    public var description: String { "the job's state holds statistics of an unknown input '\(name)'" }
}

/// Max |x| of the four observed inputs of one layer over one chunk, one per fused group of the Linears reading it.
public struct LayerAmax: Codable, Sendable, Equatable {
    public var layer: Int
    public var qkv: ActivationAmax
    public var o: ActivationAmax
    public var gateUp: ActivationAmax
    public var down: ActivationAmax

    public init(layer: Int, qkv: ActivationAmax, o: ActivationAmax, gateUp: ActivationAmax, down: ActivationAmax) {
        self.layer = layer
        self.qkv = qkv
        self.o = o
        self.gateUp = gateUp
        self.down = down
    }

    public subscript(group: FusedGroup) -> ActivationAmax {
        switch group {
        case .qkv: qkv
        case .o: o
        case .gateUp: gateUp
        case .down: down
        }
    }

}

public struct ChunkReport: Codable, Sendable, Equatable {
    public var jobID: String
    public var attempt: Int
    public var worker: String
    public var chunk: Int
    public var sampleCount: Int
    public var tokenCount: Int
    public var seconds: Double
    public var layers: [LayerAmax]

    public init(jobID: String, attempt: Int, worker: String, chunk: Int, sampleCount: Int, tokenCount: Int,
                seconds: Double, layers: [LayerAmax]) {
        self.jobID = jobID
        self.attempt = attempt
        self.worker = worker
        self.chunk = chunk
        self.sampleCount = sampleCount
        self.tokenCount = tokenCount
        self.seconds = seconds
        self.layers = layers
    }
}

/// Export one layer. `activationAmax` holds the layer's final activation amax per fused group (W4A4); nil for
/// weight-only schemes. The worker derives the input scales from it where it lays out the tensors.
public struct ExportRequest: Codable, Sendable, Equatable {
    public var jobID: String
    public var layer: Int
    public var activationAmax: [FusedGroup: ActivationAmax]?

    public init(jobID: String, layer: Int, activationAmax: [FusedGroup: ActivationAmax]?) {
        self.jobID = jobID
        self.layer = layer
        self.activationAmax = activationAmax
    }
}

/// The tensors of one exported layer, in write order; their bytes follow on the data path.
public struct ExportManifest: Codable, Sendable, Equatable {
    public struct Entry: Codable, Sendable, Equatable {
        public var name: String
        public var dtype: String
        public var shape: [Int]
        public var byteCount: Int
        /// Lower-case hex SHA-256 of the bytes. Absent only from an in-process worker, whose bytes cross no network:
        /// the coordinator refuses a remote worker's tensor without it.
        public var sha256: String?
        public var bulkID: UInt64

        public init(name: String, dtype: String, shape: [Int], byteCount: Int, sha256: String?, bulkID: UInt64) {
            self.name = name
            self.dtype = dtype
            self.shape = shape
            self.byteCount = byteCount
            self.sha256 = sha256
            self.bulkID = bulkID
        }
    }

    public var layer: Int
    public var entries: [Entry]
    /// Each exported Linear's weight amax and relative quantization error (for `calibration.json` and `status`).
    public var weightQuality: [LinearQuality]
    public init(layer: Int, entries: [Entry], weightQuality: [LinearQuality] = []) {
        self.layer = layer
        self.entries = entries
        self.weightQuality = weightQuality
    }
}

/// Measure the quality of a written checkpoint, still in its partial directory on the coordinator's machine, on
/// held-out text (``QualityReport``), and each Linear's output error on the calibration inputs. Any worker that can
/// read that directory may be asked.
public struct QualityRequest: Codable, Sendable, Equatable {
    public var spec: JobSpec
    /// The staged checkpoint directory (`OUTPUT.partial-<id>`), as the coordinator's machine names it.
    public var checkpointPath: String
    /// The checkpoint's fingerprint as the coordinator computed it (Checkpoint's `CheckpointFingerprint`): a worker
    /// that finds other files at the same path (no shared storage) refuses rather than judge another checkpoint.
    public var fingerprint: String
    /// The leading calibration samples (token ids, at most ``LinearQuality/outputErrorTokenLimit`` tokens in all) on
    /// which each Linear's output error is measured; nil when the job calibrated nothing, and the held-out text
    /// serves instead.
    public var outputErrorSamples: [[Int]]?

    public init(spec: JobSpec, checkpointPath: String, fingerprint: String, outputErrorSamples: [[Int]]? = nil) {
        self.spec = spec
        self.checkpointPath = checkpointPath
        self.fingerprint = fingerprint
        self.outputErrorSamples = outputErrorSamples
    }
}

public struct WorkerStatusReport: Codable, Sendable, Equatable {
    public var name: String
    public var device: String
    public var jobID: String?
    public var range: String?
    public var chunksDone: Int
    public var freeDiskBytes: Int64
    public init(name: String, device: String, jobID: String?, range: String?, chunksDone: Int, freeDiskBytes: Int64) {
        self.name = name
        self.device = device
        self.jobID = jobID
        self.range = range
        self.chunksDone = chunksDone
        self.freeDiskBytes = freeDiskBytes
    }
}

/// Ids of tensors on the data path. Hidden states of chunk `c` travel as `c`; the tensors of an exported layer as
/// `exportBase | layer << 20 | index`, so the two kinds never collide on one connection.
public enum BulkTensorID {
    public static let exportBase: UInt64 = 1 << 62

    public static func hiddenStates(chunk: Int) -> UInt64 { UInt64(chunk) }

    public static func exportedTensor(layer: Int, index: Int) -> UInt64 {
        exportBase | UInt64(layer) << 20 | UInt64(index)
    }

    public static func isExport(_ id: UInt64) -> Bool { id & exportBase != 0 }

    /// The calibration token ids, coordinator → first range: every chunk's ids in chunk order, as little-endian Int32.
    public static let tokenIDs: UInt64 = 1 << 61
}

extension CalibrationPlan {
    /// The plan without its token ids (shapes, counts and sources stay): what a range that does not embed needs, and
    /// what travels in `loadLayers` when the ids follow on the data path.
    public func withoutTokenIDs() -> CalibrationPlan {
        var plan = self
        for index in plan.chunks.indices { plan.chunks[index].tokenIDs = [] }
        return plan
    }

    /// Every chunk's token ids in chunk order, as little-endian Int32 (the data path's form).
    public func tokenIDBytes() -> Data {
        var bytes = Data(capacity: tokenCount * 4)
        for chunk in chunks {
            for id in chunk.tokenIDs { withUnsafeBytes(of: id.littleEndian) { bytes.append(contentsOf: $0) } }
        }
        return bytes
    }
}

extension NodeAddress {
    /// The actor-system endpoint of this address.
    public var endpoint: ClusterEndpoint { ClusterEndpoint(host: host, port: port) }
}

extension ClusterActorSystem {
    /// The id of the actor registered under the well-known `name` on the node at `address`; with `node`, the
    /// connection proves it reaches that node (its certificate's name, with TLS).
    public func wellKnownID(_ name: String, at address: NodeAddress, node: String = "") -> ClusterActorID {
        ClusterActorID.wellKnown(name, at: ClusterEndpoint(host: address.host, port: address.port, node: node))
    }

    /// Where this system listens, once bound.
    public var boundAddress: NodeAddress? { boundPort.map { NodeAddress(host: endpoint.host, port: $0) } }

    /// `start` with a ``NodeAddress``.
    public static func start(identity: NodeIdentity, listen: NodeAddress?, token: ClusterToken?,
                             configuration: TransportConfiguration, logger: Logger) async throws -> ClusterActorSystem {
        try await start(identity: identity, listen: listen.map { (host: $0.host, port: $0.port) }, token: token,
                        configuration: configuration, logger: logger)
    }
}

/// What `coordctl gc` removed on one worker: the jobs whose kept hidden states went, or why it could not ask.
public struct GarbageReport: Codable, Sendable, Equatable {
    public var worker: String
    public var removedJobs: [String]
    public var error: String?

    public init(worker: String, removedJobs: [String], error: String? = nil) {
        self.worker = worker
        self.removedJobs = removedJobs
        self.error = error
    }
}
