import ClusterCore
import Foundation
package import Logging
import NIOPosix
package import PostgresNIO

/// How to reach a PostgreSQL server, from a `postgres://user[:password]@host[:port]/database`
/// URL: the coordinator's store and the storages that keep tables share it.
package struct PostgresSettings: Sendable {
    /// The pooled client's configuration (the caller sets its pool size).
    package var client: PostgresClient.Configuration
    /// `postgres://host:port/database`, without credentials.
    package var displayName: String
    package var host: String
    package var port: Int

    /// Reads `url` and connects once to check it: a wrong password, a refused certificate or
    /// a server that does not answer is reported now, naming the server, instead of every
    /// query waiting on a pool that keeps retrying. The password may come from `password`
    /// (a secret in the environment) instead of the URL. TLS follows libpq's `sslmode` and
    /// `sslrootcert` (``PostgresStore/tls(from:)``).
    package static func connect(url: String, password: String?, logger: Logger) async throws -> PostgresSettings {
        guard let components = URLComponents(string: url), components.scheme == "postgres" || components.scheme == "postgresql",
            let host = components.host, !host.isEmpty
        else {
            throw ConfigurationError("Postgres URL must look like postgres://user@host:5432/database")
        }
        let database = components.path.split(separator: "/").first.map(String.init)
        let port = components.port ?? 5432
        let tls = try PostgresStore.tls(from: components)
        let user = components.user ?? "postgres"
        let password = password ?? components.password
        do {
            let probe = try await PostgresConnection.connect(
                on: MultiThreadedEventLoopGroup.singleton.next(),
                configuration: PostgresConnection.Configuration(
                    host: host,
                    port: port,
                    username: user,
                    password: password,
                    database: database,
                    tls: try tls.connection()
                ),
                id: 0,
                logger: logger
            ).get()
            try await probe.close()
        } catch let error as ConfigurationError {
            throw error
        } catch {
            throw ConfigurationError("cannot connect to PostgreSQL at \(host):\(port): \(PostgresStore.describe(error))")
        }
        return PostgresSettings(
            client: PostgresClient.Configuration(
                host: host,
                port: port,
                username: user,
                password: password,
                database: database,
                tls: tls.client
            ),
            displayName: "postgres://\(host):\(port)/\(database ?? "")",
            host: host,
            port: port
        )
    }
}
