/// # RDMATransport
///
/// RDMA verbs for the activation data path between workers, over the `CVerbs` shim, which opens libibverbs at run time
/// with `dlopen`: the package builds without linking it and the binaries run where it is absent. Knows nothing of
/// Llama.
///
/// It finds out what a node has, chooses the transport, and carries activations over RDMA: RC queue pairs, RDMA WRITE
/// with immediate into the peer's registered ring of slots, credits for flow control, completions waited for on a
/// completion channel. Tested against Debian's libibverbs (no device) and an in-process fake fabric; never run on
/// RDMA hardware. workerd's links to the next worker use it (the Worker module offers RDMA over each bulk connection,
/// ``RDMALinkHandshake``), and so does `coordctl doctor rdma`'s loopback.
///
/// - The narrow verbs interface: ``VerbsProvider`` and ``VerbsDeviceHandle`` (discovery), and ``VerbsDataPlaneDevice``,
///   ``VerbsProtectionDomain``, ``VerbsMemoryRegion``, ``VerbsCompletionQueue``, ``VerbsQueuePair`` (data), implemented
///   over libibverbs by ``VerbsLibrary`` and ``VerbsDevice`` (located by ``VerbsLibraryLocator``), and by fakes in the
///   tests.
/// - ``GIDAttributeSource``: a GID's type (RoCE v2 or not) and network interface, from sysfs.
/// - ``RDMASurvey``: every device, port and populated GID of a node; ``RDMADoctorReport`` is what
///   `coordctl doctor rdma` prints, with ``RDMALoopbackTest``'s line.
/// - ``ActivationTransportSelector``: `--transport auto|tcp|rdma` against a survey, with the reason for the choice or an
///   ``RDMASelectionError`` naming what is missing; ``ActivationLinkSetup``: the decision with the opened device
///   (libibverbs', or a fake's in tests) that links are made on; ``ActivationLinkChoice``: one link's transport across
///   reconnections (TCP once an RDMA connection of it failed, or the peer refused).
/// - ``RDMAActivationTransport``: `ActivationTransport` over one RC queue pair; ``RDMAConnectionInfo`` is what the two
///   ends exchange over the control connection (``RDMALinkHandshake``: offer, then accept or refuse with a reason)
///   and ``RDMARing`` the slot and immediate format
///   (Docs/wire-protocol.md, "RDMA activation links"); failures are ``RDMALinkError``.
import CVerbs
import Foundation

/// A failure of the verbs library or of one device, naming the device, port and call.
public enum VerbsError: Error, CustomStringConvertible, Equatable, Sendable {
    /// libibverbs could not be opened; `tried` lists each candidate with the dynamic linker's reason.
    case libraryNotFound(tried: [String])
    /// The opened library lacks an entry point the shim needs.
    case symbolNotFound(library: String, symbol: String)
    /// This build was compiled without infiniband/verbs.h, so it cannot use the library even where it is installed.
    case builtWithoutVerbsHeaders
    /// libibverbs could not list devices; ENOSYS means the kernel has no RDMA support.
    case deviceListFailed(code: Int32)
    /// No device of that name; `available` lists those present.
    case deviceNotFound(name: String, available: [String])
    /// `call` failed on `device` (and `port` when it concerns one) with an errno-style code.
    case callFailed(call: String, device: String, port: Int?, code: Int32)

    public var description: String {
        switch self {
        case let .libraryNotFound(tried):
            return "libibverbs is not installed (or not found); tried: " + tried.joined(separator: "; ")
        case let .symbolNotFound(library, symbol):
            return "\(library) has no symbol \(symbol); is it too old?"
        case .builtWithoutVerbsHeaders:
            return "this build was compiled without infiniband/verbs.h; install libibverbs-dev and rebuild to use RDMA"
        case let .deviceListFailed(code):
            if code == ENOSYS { return "libibverbs cannot list devices: the kernel has no RDMA support (ENOSYS)" }
            return "libibverbs cannot list devices: \(errnoText(code))"
        case let .deviceNotFound(name, available):
            return "no RDMA device named \(name); "
                + (available.isEmpty ? "this node has none" : "this node has \(available.joined(separator: ", "))")
        case let .callFailed(call, device, port, code):
            return "\(call) failed on \(device)" + (port.map { " port \($0)" } ?? "") + ": \(errnoText(code))"
        }
    }

    /// True when libibverbs loaded but the kernel offers no RDMA subsystem at all.
    public var meansKernelWithoutRDMA: Bool {
        if case let .deviceListFailed(code) = self { return code == ENOSYS }
        return false
    }
}

/// `strerror` text with the code, e.g. `No such device (errno 19)`.
func errnoText(_ code: Int32) -> String {
    "\(String(cString: strerror(code))) (errno \(code))"
}
