import ServiceLifecycle

/// The actor system as a service of a daemon's `ServiceGroup`. It runs until graceful shutdown reaches it, then
/// closes every connection. List it before the services that use the system: the group shuts services down in
/// reverse order, so they finish their work (drain jobs, finish a chunk) while the system still carries it.
public struct ClusterActorSystemService: Service {
    public let system: ClusterActorSystem

    public init(system: ClusterActorSystem) { self.system = system }

    public func run() async throws {
        // Returns at graceful shutdown; throws when the group is cancelled. Close the system either way.
        try? await gracefulShutdown()
        await system.shutdown()
    }
}
