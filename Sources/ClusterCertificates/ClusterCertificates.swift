/// # ClusterCertificates
///
/// The cluster's own certificate authority, for mutual TLS between coordd, workerd and coordctl
/// (`coordctl certs init` and `coordctl certs issue`): a P-256 CA, and node certificates whose name (subject common
/// name and DNS subject alternative name) is the node's identity in the cluster. Keys are written with mode 600 and
/// never overwritten.
import Crypto
import Foundation
import SwiftASN1
import X509

public enum CertificateToolError: Error, CustomStringConvertible, Equatable, Sendable {
    case fileExists(path: String)
    case unreadable(path: String, reason: String)
    case unwritable(path: String, reason: String)
    case invalidName(name: String, reason: String)

    public var description: String {
        switch self {
        case .fileExists(let path): "\(path) already exists; remove it first or choose another --dir (nothing was written)"
        case .unreadable(let path, let reason): "\(path): \(reason)"
        case .unwritable(let path, let reason): "cannot write \(path): \(reason)"
        case .invalidName(let name, let reason): "--name '\(name)': \(reason)"
        }
    }
}

public enum ClusterCertificateAuthority {
    /// Node names are DNS labels, so that they fit a DNS subject alternative name and the handshake's name field.
    public static func validate(name: String) throws {
        guard !name.isEmpty, name.utf8.count <= 63 else {
            throw CertificateToolError.invalidName(name: name, reason: "must be 1 to 63 characters")
        }
        guard name.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-") }),
              name.first != "-", name.last != "-" else {
            throw CertificateToolError.invalidName(
                name: name, reason: "use letters, digits and inner hyphens only (a DNS label, e.g. spark-a)")
        }
    }

    public static func caCertificatePath(in directory: URL) -> URL { directory.appendingPathComponent("ca.pem") }
    public static func caKeyPath(in directory: URL) -> URL { directory.appendingPathComponent("ca-key.pem") }
    public static func certificatePath(in directory: URL, name: String) -> URL { directory.appendingPathComponent("\(name).pem") }
    public static func keyPath(in directory: URL, name: String) -> URL { directory.appendingPathComponent("\(name)-key.pem") }

    /// Makes a CA valid for `years` and writes `ca.pem` and `ca-key.pem` (600) into `directory`.
    @discardableResult
    public static func initialize(directory: URL, years: Int = 10, now: Date = Date()) throws -> Certificate {
        let certificateURL = caCertificatePath(in: directory)
        let keyURL = caKeyPath(in: directory)
        try refuseExisting([certificateURL, keyURL])
        let key = P256.Signing.PrivateKey()
        let name = try DistinguishedName {
            OrganizationName("NVFP4Cluster")
            CommonName("NVFP4Cluster cluster CA")
        }
        let certificate = try Certificate(
            version: .v3, serialNumber: Certificate.SerialNumber(), publicKey: .init(key.publicKey),
            notValidBefore: now.addingTimeInterval(-300), notValidAfter: now.addingTimeInterval(Double(years) * 365 * 86_400),
            issuer: name, subject: name, signatureAlgorithm: .ecdsaWithSHA256,
            extensions: try Certificate.Extensions {
                Critical(BasicConstraints.isCertificateAuthority(maxPathLength: 0))
                Critical(KeyUsage(keyCertSign: true, cRLSign: true))
                SubjectKeyIdentifier(hash: .init(key.publicKey))
            },
            issuerPrivateKey: .init(key))
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        try write(key.pemRepresentation, to: keyURL, mode: 0o600)
        try write(try certificate.serializeAsPEM().pemString, to: certificateURL, mode: 0o644)
        return certificate
    }

    /// Issues the certificate of node `name`, signed by the CA in `directory`: `NAME.pem` and `NAME-key.pem` (600).
    @discardableResult
    public static func issue(directory: URL, name: String, years: Int = 2, now: Date = Date()) throws -> Certificate {
        try validate(name: name)
        let certificateURL = certificatePath(in: directory, name: name)
        let keyURL = keyPath(in: directory, name: name)
        try refuseExisting([certificateURL, keyURL])
        let caCertificate = try Certificate(pemEncoded: try read(caCertificatePath(in: directory)))
        let caKey: P256.Signing.PrivateKey
        do {
            caKey = try P256.Signing.PrivateKey(pemRepresentation: try read(caKeyPath(in: directory)))
        } catch let error as CertificateToolError {
            throw error
        } catch {
            throw CertificateToolError.unreadable(path: caKeyPath(in: directory).path, reason: "not a P-256 private key in PEM")
        }
        let key = P256.Signing.PrivateKey()
        let subject = try DistinguishedName {
            OrganizationName("NVFP4Cluster")
            CommonName(name)
        }
        let certificate = try Certificate(
            version: .v3, serialNumber: Certificate.SerialNumber(), publicKey: .init(key.publicKey),
            notValidBefore: now.addingTimeInterval(-300), notValidAfter: now.addingTimeInterval(Double(years) * 365 * 86_400),
            issuer: caCertificate.subject, subject: subject, signatureAlgorithm: .ecdsaWithSHA256,
            extensions: try Certificate.Extensions {
                Critical(BasicConstraints.notCertificateAuthority)
                Critical(KeyUsage(digitalSignature: true))
                try ExtendedKeyUsage([.serverAuth, .clientAuth])
                SubjectAlternativeNames([.dnsName(name)])
                SubjectKeyIdentifier(hash: .init(key.publicKey))
            },
            issuerPrivateKey: .init(caKey))
        try write(key.pemRepresentation, to: keyURL, mode: 0o600)
        try write(try certificate.serializeAsPEM().pemString, to: certificateURL, mode: 0o644)
        return certificate
    }

    private static func refuseExisting(_ urls: [URL]) throws {
        for url in urls where FileManager.default.fileExists(atPath: url.path) {
            throw CertificateToolError.fileExists(path: url.path)
        }
    }

    private static func read(_ url: URL) throws -> String {
        do {
            return try String(contentsOf: url, encoding: .utf8)
        } catch {
            throw CertificateToolError.unreadable(path: url.path, reason: "cannot read it (run `coordctl certs init` first?)")
        }
    }

    /// Creates the file with `mode` before any byte is written, so a key is never readable by others, even briefly.
    private static func write(_ text: String, to url: URL, mode: mode_t) throws {
        let descriptor = open(url.path, O_WRONLY | O_CREAT | O_EXCL, mode)
        guard descriptor >= 0 else {
            throw CertificateToolError.unwritable(path: url.path, reason: String(cString: strerror(errno)))
        }
        defer { close(descriptor) }
        let bytes = Array(text.utf8)
        let written = bytes.withUnsafeBytes { Foundation.write(descriptor, $0.baseAddress, $0.count) }
        guard written == bytes.count, fchmod(descriptor, mode) == 0 else {
            throw CertificateToolError.unwritable(path: url.path, reason: String(cString: strerror(errno)))
        }
    }
}
