/// # RDMATransport
///
/// RDMA verbs for the activation data path between workers, over the `CVerbs` shim, which opens libibverbs at run time
/// with `dlopen`: the package builds without linking it and the binaries run where it is absent. Knows nothing of
/// Llama.
///
/// This first step finds out what a node has and chooses the transport; the RDMA data plane itself (queue pairs,
/// registered rings, credits) is not built yet, so every link runs over TCP.
///
/// - The narrow verbs interface: ``VerbsProvider`` and ``VerbsDeviceHandle``, implemented over libibverbs by
///   ``VerbsLibrary`` and ``VerbsDevice`` (located by ``VerbsLibraryLocator``), and by fakes in the tests.
/// - ``GIDAttributeSource``: a GID's type (RoCE v2 or not) and network interface, from sysfs.
/// - ``RDMASurvey``: every device, port and populated GID of a node; ``RDMASurvey/report`` is what
///   `coordctl doctor rdma` prints.
/// - ``ActivationTransportSelector``: `--transport auto|tcp|rdma` against a survey, with the reason for the choice or an
///   ``RDMASelectionError`` naming what is missing.
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
