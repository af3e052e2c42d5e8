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
        let router = Router()
        HealthEndpoints(connection: connection).add(to: router)
        let app = Application(
            router: router,
            configuration: ApplicationConfiguration(address: .hostname(host, port: port), serverName: "autonomous-health"),
            logger: logger
        )
        try await listening("the health server", host: host, port: port, setting: "--health-port or AUTONOMOUS_HEALTH_PORT") {
            try await app.run()
        }
    }
}

extension HealthServer: CustomStringConvertible {
    package var description: String { "HealthServer(address: \(host):\(port))" }
}
