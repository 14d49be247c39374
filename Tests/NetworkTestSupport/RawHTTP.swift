import Foundation

/// Why ``rawHTTPExchange(address:requestLine:)`` got no answer, naming the address.
public struct RawHTTPError: Error, CustomStringConvertible {
    public let description: String
}

/// Sends one HTTP/1.1 request (`requestLine`, plus Host and an empty body) over a blocking loopback socket and returns
/// everything the server wrote before it closed the connection (the metrics endpoint closes after each answer).
public func rawHTTPExchange(address: String, requestLine: String) throws -> String {
    guard let colon = address.lastIndex(of: ":"), let port = UInt16(address[address.index(after: colon)...]) else {
        throw RawHTTPError(description: "bad address \(address)")
    }
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { throw RawHTTPError(description: "socket() failed") }
    defer { close(fd) }
    var timeout = timeval(tv_sec: 10, tv_usec: 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    var socketAddress = sockaddr_in()
    socketAddress.sin_family = sa_family_t(AF_INET)
    socketAddress.sin_port = port.bigEndian
    socketAddress.sin_addr.s_addr = inet_addr(String(address[..<colon]))
    let connected = withUnsafePointer(to: &socketAddress) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    guard connected == 0 else { throw RawHTTPError(description: "connect to \(address) failed: errno \(errno)") }
    let request = Array("\(requestLine)\r\nHost: \(address)\r\nContent-Length: 0\r\n\r\n".utf8)
    guard request.withUnsafeBytes({ send(fd, $0.baseAddress, $0.count, 0) }) == request.count else {
        throw RawHTTPError(description: "send to \(address) failed")
    }
    var response: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 65536)
    while true {
        let count = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        if count <= 0 { break }
        response.append(contentsOf: buffer[0..<count])
    }
    return String(decoding: response, as: UTF8.self)
}
