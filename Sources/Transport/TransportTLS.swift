import Foundation
import NIOCore
import NIOSSL
import X509

/// Mutual TLS 1.3 for every connection of a node: its certificate and key, and the cluster CA that must have signed
/// every peer's certificate. A node's identity is the name in its certificate (DNS subject alternative name, else
/// common name): the name a peer claims in the handshake must be that name, and a dialer that expects a node checks
/// it too. The shared token, when also given, is checked inside the TLS session as before.
public struct TransportTLS: Sendable {
    /// The name in this node's own certificate.
    public let name: String
    let serverContext: NIOSSLContext
    let clientContext: NIOSSLContext

    /// Loads PEM files; every failure names the file.
    public init(certificateFile: String, keyFile: String, caFile: String) throws {
        let chain: [NIOSSLCertificate]
        let key: NIOSSLPrivateKey
        let roots: [NIOSSLCertificate]
        do { chain = try NIOSSLCertificate.fromPEMFile(certificateFile) } catch {
            throw TransportError.invalidConfiguration("--tls-cert \(certificateFile): not a readable PEM certificate (\(error))")
        }
        do { key = try NIOSSLPrivateKey(file: keyFile, format: .pem) } catch {
            throw TransportError.invalidConfiguration("--tls-key \(keyFile): not a readable PEM private key (\(error))")
        }
        do { roots = try NIOSSLCertificate.fromPEMFile(caFile) } catch {
            throw TransportError.invalidConfiguration("--tls-ca \(caFile): not a readable PEM certificate (\(error))")
        }
        guard let leaf = chain.first, !roots.isEmpty else {
            throw TransportError.invalidConfiguration("--tls-cert \(certificateFile) / --tls-ca \(caFile): no certificate in the file")
        }
        name = try Self.name(of: leaf, file: certificateFile)

        var server = TLSConfiguration.makeServerConfigurationWithMTLS(
            certificateChain: chain.map { .certificate($0) }, privateKey: .privateKey(key), trustRoots: .certificates(roots))
        server.minimumTLSVersion = .tlsv13
        var client = TLSConfiguration.makeClientConfiguration()
        client.minimumTLSVersion = .tlsv13
        client.certificateChain = chain.map { .certificate($0) }
        client.privateKey = .privateKey(key)
        client.trustRoots = .certificates(roots)
        // Peers are dialed by address; the name is checked against the handshake's claim instead (HandshakeHandler).
        client.certificateVerification = .noHostnameVerification
        do {
            serverContext = try NIOSSLContext(configuration: server)
            clientContext = try NIOSSLContext(configuration: client)
        } catch {
            throw TransportError.invalidConfiguration(
                "--tls-cert \(certificateFile) / --tls-key \(keyFile): the key does not make a TLS context with the certificate (\(error))")
        }
    }

    /// The identity a certificate names: its first DNS subject alternative name, else its subject common name.
    static func name(of certificate: NIOSSLCertificate, file: String? = nil) throws -> String {
        do {
            let parsed = try Certificate(derEncoded: try certificate.toDERBytes())
            if let names = try parsed.extensions.subjectAlternativeNames {
                for case .dnsName(let name) in names { return name }
            }
            for rdn in parsed.subject {
                for attribute in rdn where attribute.type == .RDNAttributeType.commonName {
                    return String(describing: attribute.value)
                }
            }
        } catch {
            throw TransportError.invalidConfiguration("\(file ?? "certificate"): cannot be parsed (\(error))")
        }
        throw TransportError.invalidConfiguration("\(file ?? "certificate"): names no node (no DNS name, no common name)")
    }

    /// The handler that starts TLS on a new connection.
    func makeHandler(side: HandshakeHandler.Side) throws -> NIOSSLHandler {
        switch side {
        case .server: NIOSSLServerHandler(context: serverContext)
        case .client: try NIOSSLClientHandler(context: clientContext, serverHostname: nil)
        }
    }
}

extension ChannelPipeline.SynchronousOperations {
    /// The node name in the peer's verified certificate; nil on a connection without TLS.
    func peerCertificateName() throws -> String? {
        guard let handler = try? handler(type: NIOSSLHandler.self) else { return nil }
        guard let certificate = handler.peerCertificate else {
            throw TransportError.invalidConfiguration("the peer presented no certificate")
        }
        return try TransportTLS.name(of: certificate)
    }
}

extension TransportConfiguration {
    /// With TLS, a node's name must be its certificate's: peers check the one against the other.
    func checkLocalIdentity(_ identity: NodeIdentity) throws {
        guard let tls, tls.name != identity.name else { return }
        throw TransportError.invalidConfiguration(
            "this node is named '\(identity.name)' but its certificate (--tls-cert) is for '\(tls.name)'; "
                + "issue one with `coordctl certs issue --name \(identity.name)` or use the certificate's name")
    }
}
