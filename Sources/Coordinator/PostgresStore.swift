public import ClusterCore
import Foundation
public import Logging
import PostgresNIO

/// The production coordinator store: PostgreSQL through PostgresNIO's pooled client, with
/// versioned migrations applied under an advisory lock (several coordinators may start at once).
public final class PostgresStore: CoordinatorStore {
    private let client: PostgresClient
    // The pool's run loop; cancelled by `close()`. Owned here because the store is opened
    // before the process's services start and closed after they stop.
    private let runTask: Task<Void, Never>
    private let logger: Logger
    public let displayName: String

    /// Connects to `url` (`postgres://user[:password]@host[:port]/database`); the password may
    /// also come from `password` (e.g. a secret in the environment).
    public static func open(url: String, password: String? = nil, logger: Logger) throws -> PostgresStore {
        guard let components = URLComponents(string: url), components.scheme == "postgres" || components.scheme == "postgresql",
            let host = components.host, !host.isEmpty
        else {
            throw ConfigurationError("Postgres URL must look like postgres://user@host:5432/database")
        }
        let database = components.path.split(separator: "/").first.map(String.init)
        var configuration = PostgresClient.Configuration(
            host: host,
            port: components.port ?? 5432,
            username: components.user ?? "postgres",
            password: password ?? components.password,
            database: database,
            tls: .disable
        )
        configuration.options.maximumConnections = 4
        let client = PostgresClient(configuration: configuration, backgroundLogger: logger)
        let runTask = Task { await client.run() }
        return PostgresStore(
            client: client,
            runTask: runTask,
            logger: logger,
            displayName: "postgres://\(host):\(components.port ?? 5432)/\(database ?? "")"
        )
    }

    private init(client: PostgresClient, runTask: Task<Void, Never>, logger: Logger, displayName: String) {
        self.client = client
        self.runTask = runTask
        self.logger = logger
        self.displayName = displayName
    }

    /// Versioned migrations; each runs once, in order, in its own transaction.
    static let migrations: [PostgresQuery] = [
        """
        CREATE TABLE IF NOT EXISTS autonomous_schedule_state (
            tenant TEXT NOT NULL,
            schedule TEXT NOT NULL,
            last_fire DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (tenant, schedule)
        )
        """
    ]

    public func migrate() async throws {
        try await client.withConnection { connection in
            // One coordinator migrates at a time.
            try await connection.query("SELECT pg_advisory_lock(4242424242)", logger: self.logger)
            do {
                try await connection.query(
                    "CREATE TABLE IF NOT EXISTS autonomous_schema_migrations (version INTEGER PRIMARY KEY)",
                    logger: self.logger
                )
                var current = 0
                for try await version in try await connection.query(
                    "SELECT COALESCE(MAX(version), 0) FROM autonomous_schema_migrations",
                    logger: self.logger
                ).decode(Int.self) {
                    current = version
                }
                for (index, statement) in Self.migrations.enumerated() where index + 1 > current {
                    try await connection.query("BEGIN", logger: self.logger)
                    do {
                        try await connection.query(statement, logger: self.logger)
                        try await connection.query("INSERT INTO autonomous_schema_migrations (version) VALUES (\(index + 1))", logger: self.logger)
                        try await connection.query("COMMIT", logger: self.logger)
                    } catch {
                        _ = try? await connection.query("ROLLBACK", logger: self.logger)
                        throw error
                    }
                }
            } catch {
                _ = try? await connection.query("SELECT pg_advisory_unlock(4242424242)", logger: self.logger)
                throw error
            }
            try await connection.query("SELECT pg_advisory_unlock(4242424242)", logger: self.logger)
        }
    }

    public func lastFire(tenant: String, schedule: String) async throws -> Date? {
        let rows = try await client.query(
            "SELECT last_fire FROM autonomous_schedule_state WHERE tenant = \(tenant) AND schedule = \(schedule)",
            logger: logger
        )
        for try await seconds in rows.decode(Double.self) {
            return Date(timeIntervalSince1970: seconds)
        }
        return nil
    }

    public func recordFire(tenant: String, schedule: String, at fireTime: Date) async throws {
        try await client.query(
            """
            INSERT INTO autonomous_schedule_state (tenant, schedule, last_fire) VALUES (\(tenant), \(schedule), \(fireTime.timeIntervalSince1970))
            ON CONFLICT (tenant, schedule) DO UPDATE SET last_fire = GREATEST(autonomous_schedule_state.last_fire, EXCLUDED.last_fire)
            """,
            logger: logger
        )
    }

    public func close() async throws {
        runTask.cancel()
        await runTask.value
    }
}
