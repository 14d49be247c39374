import Foundation

/// Where a cluster node can be reached: the address it listens on and its node name.
///
/// `node` may be empty when the caller knows only the address (e.g. `coordctl` dialing coordd); a non-empty `node` is
/// checked against the name the peer proves in the handshake.
public struct ClusterEndpoint: Codable, Hashable, Sendable, CustomStringConvertible {
    public var host: String
    public var port: Int
    public var node: String

    public init(host: String, port: Int, node: String = "") {
        self.host = host
        self.port = port
        self.node = node
    }

    /// `host:port`, with IPv6 hosts bracketed.
    public var address: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }

    public var description: String { node.isEmpty ? address : "\(node)@\(address)" }
}

/// The identity of a distributed actor: its node's endpoint and a name unique on that node.
///
/// Well-known names (e.g. `"coordinator"`, `"worker"`) let a peer build the id of an actor it has never been told
/// about (``wellKnown(_:at:)``) and `resolve` it; actors made without one get a unique name `Type#n` (`#` is reserved
/// for those, so the two kinds never collide).
public struct ClusterActorID: Codable, Hashable, Sendable, CustomStringConvertible {
    public var endpoint: ClusterEndpoint
    public var name: String

    public init(endpoint: ClusterEndpoint, name: String) {
        self.endpoint = endpoint
        self.name = name
    }

    /// The id of the actor registered under the well-known `name` on the node at `endpoint`.
    public static func wellKnown(_ name: String, at endpoint: ClusterEndpoint) -> ClusterActorID {
        ClusterActorID(endpoint: endpoint, name: name)
    }

    public var description: String { "\(name)@\(endpoint)" }

    /// Well-known names: 1–255 UTF-8 bytes, no `#`, no control characters.
    static func validateWellKnown(_ name: String) throws {
        guard !name.isEmpty, name.utf8.count <= 255, !name.contains("#"),
              !name.unicodeScalars.contains(where: { $0.properties.generalCategory == .control })
        else { throw ClusterActorSystemError.invalidActorName(name) }
    }
}
