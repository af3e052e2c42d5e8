import ClusterCore
package import Hummingbird
package import NATS
import NIOCore

/// `/healthz`, `/readyz` and `/metrics`: one implementation for the three servers that answer
/// them (the ingress, the coordinator's admin server, and ``HealthServer`` for processes with
/// neither).
///
/// Alive means the process answers. Ready means the NATS connection is up and, when
/// `readiness` is given, that it names no further reason to wait (the ingress waits for its
/// tenant's stream).
package struct HealthEndpoints: Sendable {
    package let connection: NATSConnection
    /// Why the process is not ready beyond NATS (`nil`: ready).
    package let readiness: (@Sendable () async -> String?)?
    /// Whether `/metrics` is served here: on the health and admin ports (loopback unless the
    /// deployment says otherwise), never on the ingress's public port, since it names tenants.
    package let servesMetrics: Bool

    package init(connection: NATSConnection, servesMetrics: Bool = true, readiness: (@Sendable () async -> String?)? = nil) {
        self.connection = connection
        self.servesMetrics = servesMetrics
        self.readiness = readiness
    }

    package static let paths: Set<String> = ["/healthz", "/readyz", "/metrics"]

    /// The answer to `path`, or `nil` for a path it does not serve.
    package func respond(to path: String) async -> Response? {
        switch path {
        case "/healthz": return JSONResponse.make(200, ["status": "ok"])
        case "/readyz": return await ready()
        case "/metrics" where servesMetrics: return Self.metrics()
        default: return nil
        }
    }

    /// Adds the three paths to a router.
    package func add<Context: RequestContext>(to router: Router<Context>) {
        for path in Self.paths.sorted() {
            router.get(RouterPath(path)) { _, _ in await self.respond(to: path) ?? JSONResponse.make(404, [:]) }
        }
    }

    private func ready() async -> Response {
        guard connection.isConnected else {
            return JSONResponse.make(503, ["status": "unavailable", "reason": "NATS is not connected"])
        }
        if let readiness, let reason = await readiness() {
            return JSONResponse.make(503, ["status": "unavailable", "reason": .string(reason)])
        }
        return JSONResponse.make(200, ["status": "ready"])
    }

    /// `GET /metrics`: the process's metrics (``MetricsExport``), 404 without a backend.
    static func metrics() -> Response {
        guard let text = MetricsExport.render() else {
            return APIError(RouteError(status: 404, code: "not_found", message: "no metrics backend in this process")).response
        }
        return Response(status: .ok, headers: [.contentType: MetricsExport.contentType], body: .init(byteBuffer: ByteBuffer(bytes: text)))
    }
}
