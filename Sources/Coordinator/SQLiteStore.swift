package import ClusterCore
package import Foundation
package import Logging
import SQLiteNIO

/// The embedded coordinator store: one SQLite file (WAL), used by `dev` and single-node setups.
package actor SQLiteStore: CoordinatorStore {
    private let connection: SQLiteConnection
    package nonisolated let displayName: String

    /// Opens (creating if needed) the database at `path`.
    package static func open(path: String, logger: Logger) async throws -> SQLiteStore {
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
        """,
        """
        CREATE TABLE IF NOT EXISTS schedule_controls (
            tenant TEXT NOT NULL,
            schedule TEXT NOT NULL,
            paused INTEGER NOT NULL DEFAULT 0,
            expression TEXT,
            time_zone TEXT,
            PRIMARY KEY (tenant, schedule)
        );
        CREATE TABLE IF NOT EXISTS leases (
            name TEXT PRIMARY KEY,
            holder TEXT NOT NULL,
            token INTEGER NOT NULL,
            expires_at REAL NOT NULL
        );
        CREATE TABLE IF NOT EXISTS tenants (
            name TEXT PRIMARY KEY,
            disabled INTEGER NOT NULL DEFAULT 0,
            created_at REAL NOT NULL
        );
        CREATE TABLE IF NOT EXISTS api_keys (
            id TEXT PRIMARY KEY,
            tenant TEXT NOT NULL REFERENCES tenants(name),
            hash TEXT NOT NULL UNIQUE,
            created_at REAL NOT NULL,
            revoked_at REAL
        );
        CREATE INDEX IF NOT EXISTS api_keys_tenant ON api_keys (tenant)
        """,
        """
        ALTER TABLE tenants ADD COLUMN records_per_second INTEGER;
        ALTER TABLE tenants ADD COLUMN burst INTEGER
        """,
        // The last tick published, apart from the last one handled (which includes ticks
        // skipped while paused). Ticks recorded before this column existed were published.
        """
        ALTER TABLE schedule_state ADD COLUMN last_published REAL;
        UPDATE schedule_state SET last_published = last_fire
        """,
    ]

    package func migrate() async throws {
        _ = try await connection.query("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY)")
        let rows = try await connection.query("SELECT MAX(version) AS v FROM schema_migrations")
        let current = rows.first?.column("v")?.integer ?? 0
        for (index, statement) in Self.migrations.enumerated() where index + 1 > current {
            _ = try await connection.query("BEGIN")
            do {
                for part in statement.split(separator: ";") where !part.allSatisfy(\.isWhitespace) {
                    _ = try await connection.query(String(part))
                }
                _ = try await connection.query("INSERT INTO schema_migrations (version) VALUES (?)", [.integer(index + 1)])
                _ = try await connection.query("COMMIT")
            } catch {
                _ = try? await connection.query("ROLLBACK")
                throw error
            }
        }
    }

    package func lastFire(tenant: String, schedule: String) async throws -> Date? {
        let rows = try await connection.query(
            "SELECT last_fire FROM schedule_state WHERE tenant = ? AND schedule = ?",
            [.text(tenant), .text(schedule)]
        )
        return rows.first?.column("last_fire")?.double.map { Date(timeIntervalSince1970: $0) }
    }

    package func lastPublishedFire(tenant: String, schedule: String) async throws -> Date? {
        let rows = try await connection.query(
            "SELECT last_published FROM schedule_state WHERE tenant = ? AND schedule = ?",
            [.text(tenant), .text(schedule)]
        )
        return rows.first?.column("last_published")?.double.map { Date(timeIntervalSince1970: $0) }
    }

    package func recordFire(tenant: String, schedule: String, at fireTime: Date, published: Bool, fence: LeaseFence?) async throws {
        // One statement, so the fence check and the write cannot interleave with another
        // call on this actor's connection.
        var sql = """
            INSERT INTO schedule_state (tenant, schedule, last_fire, last_published) SELECT ?, ?, ?, ?
            """
        let seconds = fireTime.timeIntervalSince1970
        var binds: [SQLiteData] = [.text(tenant), .text(schedule), .float(seconds), published ? .float(seconds) : .null]
        if let fence {
            sql += " WHERE EXISTS (SELECT 1 FROM leases WHERE name = ? AND holder = ? AND token = ? AND expires_at > ?)"
            binds += [.text(fence.name), .text(fence.holder), .integer(Int(fence.token)), .float(Self.now())]
        }
        sql += """
             ON CONFLICT (tenant, schedule) DO UPDATE SET last_fire = MAX(last_fire, excluded.last_fire),
                last_published = CASE
                    WHEN excluded.last_published IS NULL THEN last_published
                    WHEN last_published IS NULL THEN excluded.last_published
                    ELSE MAX(last_published, excluded.last_published) END
             RETURNING 1 AS done
            """
        let rows = try await connection.query(sql, binds)
        if fence != nil && rows.isEmpty {
            throw StoreError.fenced("lease '\(fence!.name)' is no longer held by \(fence!.holder) with token \(fence!.token)")
        }
    }

    package func scheduleControl(tenant: String, schedule: String) async throws -> ScheduleControl {
        let rows = try await connection.query(
            "SELECT paused, expression, time_zone FROM schedule_controls WHERE tenant = ? AND schedule = ?",
            [.text(tenant), .text(schedule)]
        )
        guard let row = rows.first else { return ScheduleControl() }
        return ScheduleControl(
            paused: (row.column("paused")?.integer ?? 0) != 0,
            expression: row.column("expression")?.string,
            timeZone: row.column("time_zone")?.string
        )
    }

    package func setScheduleOverride(tenant: String, schedule: String, expression: String?, timeZone: String?) async throws {
        _ = try await connection.query(
            """
            INSERT INTO schedule_controls (tenant, schedule, expression, time_zone) VALUES (?, ?, ?, ?)
            ON CONFLICT (tenant, schedule) DO UPDATE SET expression = excluded.expression, time_zone = excluded.time_zone
            """,
            [.text(tenant), .text(schedule), expression.map { .text($0) } ?? .null, timeZone.map { .text($0) } ?? .null]
        )
    }

    package func setPaused(tenant: String, schedule: String, paused: Bool) async throws {
        _ = try await connection.query(
            """
            INSERT INTO schedule_controls (tenant, schedule, paused) VALUES (?, ?, ?)
            ON CONFLICT (tenant, schedule) DO UPDATE SET paused = excluded.paused
            """,
            [.text(tenant), .text(schedule), .integer(paused ? 1 : 0)]
        )
    }

    /// SQLite has no server clock; the embedded store runs on one machine, so its clock is used.
    private static func now() -> Double { Date().timeIntervalSince1970 }

    package func acquireLease(name: String, holder: String, ttl: Duration) async throws -> Int64? {
        let now = Self.now()
        let rows = try await connection.query(
            """
            INSERT INTO leases (name, holder, token, expires_at) VALUES (?, ?, 1, ?)
            ON CONFLICT (name) DO UPDATE SET
                token = CASE WHEN leases.holder = excluded.holder THEN leases.token ELSE leases.token + 1 END,
                holder = excluded.holder,
                expires_at = excluded.expires_at
            WHERE leases.holder = excluded.holder OR leases.expires_at <= ?
            RETURNING token
            """,
            [.text(name), .text(holder), .float(now + ttl.inSeconds), .float(now)]
        )
        return rows.first?.column("token")?.integer.map(Int64.init)
    }

    package func releaseLease(name: String, holder: String) async throws {
        _ = try await connection.query(
            "UPDATE leases SET expires_at = ? WHERE name = ? AND holder = ?",
            [.float(Self.now() - 1), .text(name), .text(holder)]
        )
    }

    package func liveLeases(prefix: String) async throws -> [Lease] {
        let rows = try await connection.query(
            "SELECT name, holder, token FROM leases WHERE substr(name, 1, ?) = ? AND expires_at > ? ORDER BY name",
            [.integer(prefix.utf8.count), .text(prefix), .float(Self.now())]
        )
        return rows.compactMap { row in
            guard let name = row.column("name")?.string, let holder = row.column("holder")?.string, let token = row.column("token")?.integer
            else { return nil }
            return Lease(name: name, holder: holder, token: Int64(token))
        }
    }

    package func createTenant(_ name: String) async throws {
        let rows = try await connection.query(
            "INSERT INTO tenants (name, disabled, created_at) VALUES (?, 0, ?) ON CONFLICT (name) DO NOTHING RETURNING 1 AS done",
            [.text(name), .float(Self.now())]
        )
        if rows.isEmpty { throw StoreError.duplicate("tenant '\(name)' already exists") }
    }

    package func tenants() async throws -> [TenantRecord] {
        let rows = try await connection.query("SELECT name, disabled, created_at, records_per_second, burst FROM tenants ORDER BY name")
        return rows.compactMap { row in
            guard let name = row.column("name")?.string, let created = row.column("created_at")?.double else { return nil }
            return TenantRecord(
                name: name,
                disabled: (row.column("disabled")?.integer ?? 0) != 0,
                createdAt: Date(timeIntervalSince1970: created),
                limits: Self.limits(row)
            )
        }
    }

    private static func limits(_ row: SQLiteRow) -> TenantLimits {
        TenantLimits(recordsPerSecond: row.column("records_per_second")?.integer, burst: row.column("burst")?.integer)
    }

    package func setTenantLimits(_ name: String, limits: TenantLimits) async throws {
        let rows = try await connection.query(
            "UPDATE tenants SET records_per_second = ?, burst = ? WHERE name = ? RETURNING 1 AS done",
            [limits.recordsPerSecond.map { .integer($0) } ?? .null, limits.burst.map { .integer($0) } ?? .null, .text(name)]
        )
        if rows.isEmpty { throw StoreError.notFound("no tenant '\(name)'") }
    }

    package func setTenantDisabled(_ name: String, disabled: Bool) async throws {
        let rows = try await connection.query(
            "UPDATE tenants SET disabled = ? WHERE name = ? RETURNING 1 AS done",
            [.integer(disabled ? 1 : 0), .text(name)]
        )
        if rows.isEmpty { throw StoreError.notFound("no tenant '\(name)'") }
    }

    package func insertAPIKey(id: String, tenant: String, hash: String) async throws {
        let rows = try await connection.query(
            "INSERT INTO api_keys (id, tenant, hash, created_at) SELECT ?, name, ?, ? FROM tenants WHERE name = ? RETURNING 1 AS done",
            [.text(id), .text(hash), .float(Self.now()), .text(tenant)]
        )
        if rows.isEmpty { throw StoreError.notFound("no tenant '\(tenant)'") }
    }

    package func accessForAPIKey(hash: String) async throws -> TenantAccess? {
        let rows = try await connection.query(
            """
            SELECT k.tenant AS tenant, t.records_per_second AS records_per_second, t.burst AS burst
            FROM api_keys k JOIN tenants t ON t.name = k.tenant
            WHERE k.hash = ? AND k.revoked_at IS NULL AND t.disabled = 0
            """,
            [.text(hash)]
        )
        guard let row = rows.first, let tenant = row.column("tenant")?.string else { return nil }
        return TenantAccess(tenant: tenant, limits: Self.limits(row))
    }

    package func revokeAPIKey(id: String, tenant: String) async throws {
        let rows = try await connection.query(
            "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, ?) WHERE id = ? AND tenant = ? RETURNING 1 AS done",
            [.float(Self.now()), .text(id), .text(tenant)]
        )
        if rows.isEmpty { throw StoreError.notFound("tenant '\(tenant)' has no key '\(id)'") }
    }

    package func apiKeys(tenant: String) async throws -> [APIKeyRecord] {
        let rows = try await connection.query(
            "SELECT id, tenant, created_at, revoked_at FROM api_keys WHERE tenant = ? ORDER BY created_at, id",
            [.text(tenant)]
        )
        return rows.compactMap { row in
            guard let id = row.column("id")?.string, let tenant = row.column("tenant")?.string,
                let created = row.column("created_at")?.double
            else { return nil }
            return APIKeyRecord(
                id: id,
                tenant: tenant,
                createdAt: Date(timeIntervalSince1970: created),
                revokedAt: row.column("revoked_at")?.double.map { Date(timeIntervalSince1970: $0) }
            )
        }
    }

    package func close() async throws {
        try await connection.close()
    }
}
