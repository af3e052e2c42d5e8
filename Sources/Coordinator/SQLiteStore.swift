public import ClusterCore
import Foundation
import Logging
import SQLiteNIO

/// The embedded coordinator store: one SQLite file (WAL), used by `dev` and single-node setups.
public actor SQLiteStore: CoordinatorStore {
    private let connection: SQLiteConnection
    public nonisolated let displayName: String

    /// Opens (creating if needed) the database at `path`.
    public static func open(path: String, logger: Logger) async throws -> SQLiteStore {
        let directory = (path as NSString).deletingLastPathComponent
        if !directory.isEmpty {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        }
        let connection = try await SQLiteConnection.open(storage: .file(path: path), logger: logger)
        _ = try await connection.query("PRAGMA journal_mode=WAL")
        _ = try await connection.query("PRAGMA busy_timeout=5000")
        return SQLiteStore(connection: connection, displayName: "sqlite://\(path)")
    }

    private init(connection: SQLiteConnection, displayName: String) {
        self.connection = connection
        self.displayName = displayName
    }

    /// Versioned migrations; each runs once, in order.
    static let migrations: [String] = [
        """
        CREATE TABLE IF NOT EXISTS schedule_state (
            tenant TEXT NOT NULL,
            schedule TEXT NOT NULL,
            last_fire REAL NOT NULL,
            PRIMARY KEY (tenant, schedule)
        )
        """
    ]

    public func migrate() async throws {
        _ = try await connection.query("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY)")
        let rows = try await connection.query("SELECT MAX(version) AS v FROM schema_migrations")
        let current = rows.first?.column("v")?.integer ?? 0
        for (index, statement) in Self.migrations.enumerated() where index + 1 > current {
            _ = try await connection.query("BEGIN")
            do {
                _ = try await connection.query(statement)
                _ = try await connection.query("INSERT INTO schema_migrations (version) VALUES (?)", [.integer(index + 1)])
                _ = try await connection.query("COMMIT")
            } catch {
                _ = try? await connection.query("ROLLBACK")
                throw error
            }
        }
    }

    public func lastFire(tenant: String, schedule: String) async throws -> Date? {
        let rows = try await connection.query(
            "SELECT last_fire FROM schedule_state WHERE tenant = ? AND schedule = ?",
            [.text(tenant), .text(schedule)]
        )
        return rows.first?.column("last_fire")?.double.map { Date(timeIntervalSince1970: $0) }
    }

    public func recordFire(tenant: String, schedule: String, at fireTime: Date) async throws {
        _ = try await connection.query(
            """
            INSERT INTO schedule_state (tenant, schedule, last_fire) VALUES (?, ?, ?)
            ON CONFLICT (tenant, schedule) DO UPDATE SET last_fire = MAX(last_fire, excluded.last_fire)
            """,
            [.text(tenant), .text(schedule), .float(fireTime.timeIntervalSince1970)]
        )
    }

    public func close() async throws {
        try await connection.close()
    }
}
