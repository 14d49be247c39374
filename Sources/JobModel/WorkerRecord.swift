import Foundation

/// A worker as coordd knows it (a row of its `worker` table): what the worker said of itself when it registered,
/// and what coordd knows of its liveness. It is also what `coordctl workers` shows.
public struct WorkerRecord: Codable, Sendable, Equatable {
    public var name: String
    public var address: String
    public var device: String
    public var memoryBytes: Int64
    public var freeDiskBytes: Int64
    public var softwareVersion: String
    public var lastHeartbeat: Date
    public var health: WorkerHealth
    public var deathReason: String?
    /// The transport of the worker's link to the next worker, as the worker last reported it (in its latest job that
    /// gave it a successor): `tcp`, `rdma`, or `rdma→tcp: REASON` once the link fell back. Nil until it reports one.
    public var linkTransport: String?

    public init(name: String, address: String, device: String, memoryBytes: Int64, freeDiskBytes: Int64,
                softwareVersion: String, lastHeartbeat: Date, health: WorkerHealth, deathReason: String? = nil,
                linkTransport: String? = nil) {
        self.name = name
        self.address = address
        self.device = device
        self.memoryBytes = memoryBytes
        self.freeDiskBytes = freeDiskBytes
        self.softwareVersion = softwareVersion
        self.lastHeartbeat = lastHeartbeat
        self.health = health
        self.deathReason = deathReason
        self.linkTransport = linkTransport
    }
}
