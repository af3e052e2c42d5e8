import ClusterCore
import Metrics
import Prometheus
import Synchronization

/// Installs Prometheus as the process's swift-metrics backend, once, and registers its text
/// with ``MetricsExport`` for the `/metrics` routes.
///
/// Runs before any role creates its counters (they bind to the backend present when they are
/// made). An app that bootstrapped another backend itself keeps it; `/metrics` then answers 404.
enum ProcessMetrics {
    private static let installed = Mutex(false)

    static func install() {
        installed.withLock { installed in
            guard !installed else { return }
            installed = true
            guard MetricsSystem.factory is NOOPMetricsHandler else { return }
            let registry = PrometheusCollectorRegistry()
            MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: registry))
            MetricsExport.register { registry.emitToBuffer() }
        }
    }
}
