package import ClusterCore
package import Foundation
package import Logging
import NIOPosix
import PostgresNIO
package import ServiceLifecycle

/// The production coordinator store: PostgreSQL through PostgresNIO's pooled client, with
/// versioned migrations applied under an advisory lock (several coordinators may start at once).
///
/// The store is a `Service`: its connection pool runs in ``run()``, which the process's
/// `ServiceGroup` starts before the coordinator and stops after it. Outside a group (tools,
/// tests) ``withStore(url:password:logger:_:)`` runs it around a body.
package final class PostgresStore: CoordinatorStore, Service {
    let client: PostgresClient
    /// Finished when ``run()`` starts the pool; ``migrate()``, the first query, waits for it.
    private let started: AsyncStream<Never>
    private let startedContinuation: AsyncStream<Never>.Continuation
    let logger: Logger
    package let displayName: String

    /// Connects to `url` (`postgres://user[:password]@host[:port]/database[?sslmode=…]`); the
    /// password may also come from `password` (e.g. a secret in the environment). TLS follows
    /// libpq's `sslmode` and `sslrootcert` (``tls(from:)``).
    package static func open(url: String, password: String? = nil, logger: Logger) async throws -> PostgresStore {
        let settings = try await PostgresSettings.connect(url: url, password: password, logger: logger)
        var configuration = settings.client
        configuration.options.maximumConnections = 4
        return PostgresStore(
            client: PostgresClient(configuration: configuration, backgroundLogger: logger),
            logger: logger,
            displayName: settings.displayName
        )
    }

    private init(client: PostgresClient, logger: Logger, displayName: String) {
        self.client = client
        (started, startedContinuation) = AsyncStream.makeStream(of: Never.self)
        self.logger = logger
        self.displayName = displayName
    }

    /// Runs the connection pool until a graceful shutdown or cancellation; then its
    /// connections close.
    package func run() async {
        startedContinuation.finish()
        await cancelWhenGracefulShutdown { await self.client.run() }
    }

    /// Opens a store and runs its pool while `body` runs, for callers outside a `ServiceGroup`.
    package static func withStore<T: Sendable>(
        url: String,
        password: String? = nil,
        logger: Logger,
        _ body: (PostgresStore) async throws -> T
    ) async throws -> T {
        let store = try await open(url: url, password: password, logger: logger)
        return try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { await store.run() }
            defer { group.cancelAll() }
            return try await body(store)
        }
    }

    /// Versioned migrations; each runs once, in order, in its own transaction.
    static let migrations: [String] = [
        """
        CREATE TABLE IF NOT EXISTS autonomous_schedule_state (
            tenant TEXT NOT NULL,
            schedule TEXT NOT NULL,
            last_fire DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (tenant, schedule)
        )
        """,
        """
        CREATE TABLE IF NOT EXISTS autonomous_schedule_controls (
            tenant TEXT NOT NULL,
            schedule TEXT NOT NULL,
            paused BOOLEAN NOT NULL DEFAULT false,
            expression TEXT,
            time_zone TEXT,
            PRIMARY KEY (tenant, schedule)
        );
        CREATE TABLE IF NOT EXISTS autonomous_leases (
            name TEXT PRIMARY KEY,
            holder TEXT NOT NULL,
            token BIGINT NOT NULL,
            expires_at TIMESTAMPTZ NOT NULL
        );
        CREATE TABLE IF NOT EXISTS autonomous_tenants (
            name TEXT PRIMARY KEY,
            disabled BOOLEAN NOT NULL DEFAULT false,
            created_at TIMESTAMPTZ NOT NULL DEFAULT now()
        );
        CREATE TABLE IF NOT EXISTS autonomous_api_keys (
            id TEXT PRIMARY KEY,
            tenant TEXT NOT NULL REFERENCES autonomous_tenants(name),
            hash TEXT NOT NULL UNIQUE,
            created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
            revoked_at TIMESTAMPTZ
        );
        CREATE INDEX IF NOT EXISTS autonomous_api_keys_tenant ON autonomous_api_keys (tenant)
        """,
        """
        ALTER TABLE autonomous_tenants ADD COLUMN IF NOT EXISTS records_per_second BIGINT;
        ALTER TABLE autonomous_tenants ADD COLUMN IF NOT EXISTS burst BIGINT
        """,
        // The last tick published, apart from the last one handled (which includes ticks
        // skipped while paused). Ticks recorded before this column existed were published.
        """
        ALTER TABLE autonomous_schedule_state ADD COLUMN IF NOT EXISTS last_published DOUBLE PRECISION;
        UPDATE autonomous_schedule_state SET last_published = last_fire WHERE last_published IS NULL
        """,
    ]

    package func migrate() async throws {
        // PostgresNIO warns about a query made before the pool runs.
        for await _ in started {}
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
                        for part in statement.split(separator: ";") where !part.allSatisfy(\.isWhitespace) {
                            try await connection.query(PostgresQuery(unsafeSQL: String(part)), logger: self.logger)
                        }
                        try await connection.query(
                            "INSERT INTO autonomous_schema_migrations (version) VALUES (\(index + 1))",
                            logger: self.logger
                        )
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

    package func lastFire(tenant: String, schedule: String) async throws -> Date? {
        let rows = try await client.query(
            "SELECT last_fire FROM autonomous_schedule_state WHERE tenant = \(tenant) AND schedule = \(schedule)",
            logger: logger
        )
        for try await seconds in rows.decode(Double.self) {
            return Date(timeIntervalSince1970: seconds)
        }
        return nil
    }

    package func lastPublishedFire(tenant: String, schedule: String) async throws -> Date? {
        let rows = try await client.query(
            "SELECT last_published FROM autonomous_schedule_state WHERE tenant = \(tenant) AND schedule = \(schedule)",
            logger: logger
        )
        for try await seconds in rows.decode(Double?.self) {
            return seconds.map { Date(timeIntervalSince1970: $0) }
        }
        return nil
    }

    package func recordFire(tenant: String, schedule: String, at fireTime: Date, published: Bool, fence: LeaseFence?) async throws {
        let seconds = fireTime.timeIntervalSince1970
        let publishedSeconds: Double? = published ? seconds : nil
        // GREATEST ignores NULL: a skipped tick leaves the last published one as it was.
        if let fence {
            // One statement: the lease check and the write see the same snapshot.
            let written = try await returnsRow(
                """
                INSERT INTO autonomous_schedule_state (tenant, schedule, last_fire, last_published)
                SELECT \(tenant), \(schedule), \(seconds), \(publishedSeconds)
                WHERE EXISTS (
                    SELECT 1 FROM autonomous_leases
                    WHERE name = \(fence.name) AND holder = \(fence.holder) AND token = \(fence.token) AND expires_at > now()
                )
                ON CONFLICT (tenant, schedule) DO UPDATE SET
                    last_fire = GREATEST(autonomous_schedule_state.last_fire, EXCLUDED.last_fire),
                    last_published = GREATEST(autonomous_schedule_state.last_published, EXCLUDED.last_published)
                RETURNING 1
                """
            )
            if !written { throw StoreError.fenced("lease '\(fence.name)' is no longer held by \(fence.holder) with token \(fence.token)") }
        } else {
            try await client.query(
                """
                INSERT INTO autonomous_schedule_state (tenant, schedule, last_fire, last_published)
                VALUES (\(tenant), \(schedule), \(seconds), \(publishedSeconds))
                ON CONFLICT (tenant, schedule) DO UPDATE SET
                    last_fire = GREATEST(autonomous_schedule_state.last_fire, EXCLUDED.last_fire),
                    last_published = GREATEST(autonomous_schedule_state.last_published, EXCLUDED.last_published)
                """,
                logger: logger
            )
        }
    }

    package func scheduleControl(tenant: String, schedule: String) async throws -> ScheduleControl {
        let rows = try await client.query(
            "SELECT paused, expression, time_zone FROM autonomous_schedule_controls WHERE tenant = \(tenant) AND schedule = \(schedule)",
            logger: logger
        )
        for try await (paused, expression, timeZone) in rows.decode((Bool, String?, String?).self) {
            return ScheduleControl(paused: paused, expression: expression, timeZone: timeZone)
        }
        return ScheduleControl()
    }

    package func setScheduleOverride(tenant: String, schedule: String, expression: String?, timeZone: String?) async throws {
        try await client.query(
            """
            INSERT INTO autonomous_schedule_controls (tenant, schedule, expression, time_zone) VALUES (\(tenant), \(schedule), \(expression), \(timeZone))
            ON CONFLICT (tenant, schedule) DO UPDATE SET expression = EXCLUDED.expression, time_zone = EXCLUDED.time_zone
            """,
            logger: logger
        )
    }

    package func setPaused(tenant: String, schedule: String, paused: Bool) async throws {
        try await client.query(
            """
            INSERT INTO autonomous_schedule_controls (tenant, schedule, paused) VALUES (\(tenant), \(schedule), \(paused))
            ON CONFLICT (tenant, schedule) DO UPDATE SET paused = EXCLUDED.paused
            """,
            logger: logger
        )
    }

    package func acquireLease(name: String, holder: String, ttl: Duration) async throws -> Int64? {
        let seconds = ttl.inSeconds
        let rows = try await client.query(
            """
            INSERT INTO autonomous_leases (name, holder, token, expires_at)
            VALUES (\(name), \(holder), 1, now() + make_interval(secs => \(seconds)))
            ON CONFLICT (name) DO UPDATE SET
                token = CASE WHEN autonomous_leases.holder = EXCLUDED.holder THEN autonomous_leases.token ELSE autonomous_leases.token + 1 END,
                holder = EXCLUDED.holder,
                expires_at = EXCLUDED.expires_at
            WHERE autonomous_leases.holder = EXCLUDED.holder OR autonomous_leases.expires_at <= now()
            RETURNING token
            """,
            logger: logger
        )
        for try await token in rows.decode(Int64.self) { return token }
        return nil
    }

    package func releaseLease(name: String, holder: String) async throws {
        try await client.query(
            "UPDATE autonomous_leases SET expires_at = now() - interval '1 second' WHERE name = \(name) AND holder = \(holder)",
            logger: logger
        )
    }

    package func liveLeases(prefix: String) async throws -> [Lease] {
        let rows = try await client.query(
            """
            SELECT name, holder, token FROM autonomous_leases
            WHERE starts_with(name, \(prefix)) AND expires_at > now() ORDER BY name
            """,
            logger: logger
        )
        var leases: [Lease] = []
        for try await (name, holder, token) in rows.decode((String, String, Int64).self) {
            leases.append(Lease(name: name, holder: holder, token: token))
        }
        return leases
    }

    package func createTenant(_ name: String) async throws {
        let created = try await returnsRow(
            "INSERT INTO autonomous_tenants (name) VALUES (\(name)) ON CONFLICT (name) DO NOTHING RETURNING 1"
        )
        if !created { throw StoreError.duplicate("tenant '\(name)' already exists") }
    }

    package func tenants() async throws -> [TenantRecord] {
        let rows = try await client.query(
            "SELECT name, disabled, extract(epoch FROM created_at)::float8, records_per_second, burst FROM autonomous_tenants ORDER BY name",
            logger: logger
        )
        var result: [TenantRecord] = []
        for try await (name, disabled, created, rate, burst) in rows.decode((String, Bool, Double, Int?, Int?).self) {
            result.append(
                TenantRecord(
                    name: name,
                    disabled: disabled,
                    createdAt: Date(timeIntervalSince1970: created),
                    limits: TenantLimits(recordsPerSecond: rate, burst: burst)
                )
            )
        }
        return result
    }

    package func setTenantLimits(_ name: String, limits: TenantLimits) async throws {
        let found = try await returnsRow(
            "UPDATE autonomous_tenants SET records_per_second = \(limits.recordsPerSecond), burst = \(limits.burst) WHERE name = \(name) RETURNING 1"
        )
        if !found { throw StoreError.notFound("no tenant '\(name)'") }
    }

    package func setTenantDisabled(_ name: String, disabled: Bool) async throws {
        let found = try await returnsRow(
            "UPDATE autonomous_tenants SET disabled = \(disabled) WHERE name = \(name) RETURNING 1"
        )
        if !found { throw StoreError.notFound("no tenant '\(name)'") }
    }

    package func insertAPIKey(id: String, tenant: String, hash: String) async throws {
        let inserted = try await returnsRow(
            "INSERT INTO autonomous_api_keys (id, tenant, hash) SELECT \(id), name, \(hash) FROM autonomous_tenants WHERE name = \(tenant) RETURNING 1"
        )
        if !inserted { throw StoreError.notFound("no tenant '\(tenant)'") }
    }

    package func accessForAPIKey(hash: String) async throws -> TenantAccess? {
        let rows = try await client.query(
            """
            SELECT k.tenant, t.records_per_second, t.burst FROM autonomous_api_keys k JOIN autonomous_tenants t ON t.name = k.tenant
            WHERE k.hash = \(hash) AND k.revoked_at IS NULL AND NOT t.disabled
            """,
            logger: logger
        )
        for try await (tenant, rate, burst) in rows.decode((String, Int?, Int?).self) {
            return TenantAccess(tenant: tenant, limits: TenantLimits(recordsPerSecond: rate, burst: burst))
        }
        return nil
    }

    package func revokeAPIKey(id: String, tenant: String) async throws {
        let found = try await returnsRow(
            "UPDATE autonomous_api_keys SET revoked_at = COALESCE(revoked_at, now()) WHERE id = \(id) AND tenant = \(tenant) RETURNING 1"
        )
        if !found { throw StoreError.notFound("tenant '\(tenant)' has no key '\(id)'") }
    }

    package func apiKeys(tenant: String) async throws -> [APIKeyRecord] {
        let rows = try await client.query(
            """
            SELECT id, tenant, extract(epoch FROM created_at)::float8, extract(epoch FROM revoked_at)::float8
            FROM autonomous_api_keys WHERE tenant = \(tenant) ORDER BY created_at, id
            """,
            logger: logger
        )
        var result: [APIKeyRecord] = []
        for try await (id, tenant, created, revoked) in rows.decode((String, String, Double, Double?).self) {
            result.append(
                APIKeyRecord(
                    id: id,
                    tenant: tenant,
                    createdAt: Date(timeIntervalSince1970: created),
                    revokedAt: revoked.map { Date(timeIntervalSince1970: $0) }
                )
            )
        }
        return result
    }

    /// Runs a statement ending in `RETURNING 1`; `true` when it returned a row.
    private func returnsRow(_ query: PostgresQuery) async throws -> Bool {
        for try await _ in try await client.query(query, logger: logger).decode(Int.self) { return true }
        return false
    }

    /// Nothing to do: the pool closes its connections when ``run()`` returns.
    package func close() async throws {}
}

extension PostgresStore: CustomStringConvertible {
    /// The server and database; never a user or password.
    package var description: String { "PostgresStore(\(displayName))" }
}
