import ClusterMetrics
import CoreMetrics

/// The transport's failure counters (`nvfp4_transport_connection_failures_total` and
/// `nvfp4_transport_authentication_failures_total`, label `reason`), recorded through swift-metrics.
enum TransportMetrics {
    /// Makes every reason's counter exist (at 0), so that a scrape shows the series before the first failure.
    static func registerAll() {
        for reason in ConnectionFailureReason.allCases { _ = MetricName.connectionFailures.counter(reason.rawValue) }
        for reason in AuthenticationFailureReason.allCases { _ = MetricName.authenticationFailures.counter(reason.rawValue) }
    }

    static func connectionFailed(_ reason: ConnectionFailureReason) {
        MetricName.connectionFailures.counter(reason.rawValue).increment()
    }

    static func authenticationFailed(_ reason: AuthenticationFailureReason) {
        MetricName.authenticationFailures.counter(reason.rawValue).increment()
    }

    /// Counts a handshake that ended with `error` before authentication: an authentication failure when
    /// `authentication` names why the peer was refused, else a connection failure classified from the error.
    static func handshakeFailed(_ error: TransportError, authentication: AuthenticationFailureReason?) {
        if let authentication {
            authenticationFailed(authentication)
            return
        }
        switch error {
        case .authenticationFailed: authenticationFailed(.refusedByPeer)
        case .unexpectedPeer: authenticationFailed(.unexpectedPeer)
        case .timedOut: connectionFailed(.handshakeTimeout)
        case .protocolViolation: connectionFailed(.protocolViolation)
        case .integrityCheckFailed: connectionFailed(.tlsIntegrity)
        case .connectFailed: connectionFailed(.connectFailed)
        default: connectionFailed(.closed)
        }
    }
}
