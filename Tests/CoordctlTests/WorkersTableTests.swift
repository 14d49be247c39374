import ClusterClient
import Foundation
import JobModel
import Testing

/// `coordctl workers`: each worker's link to the next one, with a fallback's reason.
@Suite struct WorkersTableTests {
    static func worker(_ name: String, link: String?) -> WorkerRecord {
        WorkerRecord(name: name, address: "10.0.0.1:7071", device: "cuda:0", memoryBytes: 1 << 30, freeDiskBytes: 1 << 30,
                     softwareVersion: "v", lastHeartbeat: Date(timeIntervalSince1970: 0), health: .alive, linkTransport: link)
    }

    @Test func theLinkColumnShowsTheTransportAndAFallbackGivesItsReason() {
        let lines = Workers.table([Self.worker("a", link: "rdma"), Self.worker("b", link: "tcp"),
                                   Self.worker("c", link: "rdma→tcp: RDMA link failed mid-job: retry exceeded"),
                                   Self.worker("d", link: nil)])
        #expect(lines.count == 5)
        #expect(lines[0].contains("HEALTH  LINK      LAST HEARTBEAT"), "\(lines[0])")
        #expect(lines[1].contains("alive   rdma      1970-01-01T00:00:00Z") && !lines[1].contains("(link"), "\(lines[1])")
        #expect(lines[2].contains("alive   tcp       1970-"), "\(lines[2])")
        #expect(lines[3].contains("alive   rdma→tcp  1970-"), "\(lines[3])")
        #expect(lines[3].hasSuffix("(link: RDMA link failed mid-job: retry exceeded)"), "\(lines[3])")
        #expect(lines[4].contains("alive   -         1970-"), "\(lines[4])")
    }
}
