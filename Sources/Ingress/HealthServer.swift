import ClusterCore
import Foundation
import Hummingbird
package import Logging
package import NATS
import ServiceLifecycle

/// `/healthz`, `/readyz` and `/metrics` for roles without the ingress (worker, coordinator),
/// so orchestrators can probe them. Ready means the NATS connection is up.
package struct HealthServer: Service {
    let host: String
    let port: Int
    let connection: NATSConnection
    let logger: Logger

    package init(host: String, port: Int, connection: NATSConnection, logger: Logger) {
        self.host = host
        self.port = port
        self.connection = connection
        self.logger = logger
    }

    package func run() async throws {
        let connection = self.connection
        let router = Router()
        router.get("/healthz") { _, _ in Self.json(200, ["status": "ok"]) }
        router.get("/metrics") { _, _ in IngressResponder.metrics() }
        router.get("/readyz") { _, _ in
            connection.isConnected
                ? Self.json(200, ["status": "ready"]) : Self.json(503, ["status": "unavailable", "reason": "NATS is not connected"])
        }
        let app = Application(
            router: router,
            configuration: ApplicationConfiguration(address: .hostname(host, port: port), serverName: "autonomous-health"),
            logger: logger
        )
        try await listening("the health server", host: host, port: port, setting: "--health-port or AUTONOMOUS_HEALTH_PORT") {
            try await app.run()
        }
    }

    static func json(_ status: Int, _ value: JSONValue) -> Response {
        Response(
            status: .init(code: status),
            headers: [.contentType: "application/json"],
            body: .init(byteBuffer: ByteBuffer(bytes: JSONWriter.encode(value)))
        )
    }
}
