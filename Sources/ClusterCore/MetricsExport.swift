import Synchronization

/// The process's metrics in the Prometheus text format, served as `GET /metrics` by every
/// role's HTTP port (ingress, worker and coordinator health ports, the admin port).
///
/// Metrics are process-wide (swift-metrics has one backend per process), so the exposition is
/// too: the runtime that installs the backend registers how to render it here. Without one
/// (an app that bootstrapped its own metrics backend), `/metrics` answers 404.
package enum MetricsExport {
    private static let renderer = Mutex<(@Sendable () -> [UInt8])?>(nil)

    /// Registers how to render the process's metrics (the runtime does, once).
    package static func register(_ render: @escaping @Sendable () -> [UInt8]) {
        renderer.withLock { $0 = render }
    }

    /// The metrics as Prometheus text, or `nil` when nothing was registered.
    package static func render() -> [UInt8]? {
        renderer.withLock { $0 }?()
    }

    /// `Content-Type` of ``render()``'s text.
    package static let contentType = "text/plain; version=0.0.4; charset=utf-8"
}
