import Autonomous
import AutonomousTesting
import Coordinator
import Deploy
import Foundation
import Testing

/// One contract, run against every coordinator store.
@Suite("Coordinator store contract", .serialized)
struct StoreContractTests {
    enum Kind: String, CaseIterable, Sendable { case sqlite, postgres }

    func withStore(_ kind: Kind, _ body: (any CoordinatorStore) async throws -> Void) async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("aut-store-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        /// Runs `body` with `store` and always closes it.
        func use(_ store: any CoordinatorStore) async throws {
            do {
                try await body(store)
                try await store.close()
            } catch {
                try? await store.close()
                throw error
            }
        }
        switch kind {
        case .sqlite:
            try await use(try await SQLiteStore.open(path: directory + "/state.sqlite", logger: TestNATSServer.logger))
        case .postgres:
            let server = try await LocalPostgres.start(
                directory: directory + "/pg",
                port: LoopbackPorts.freeBase(spans: [0..<1]),
                database: "contract",
                logger: TestNATSServer.logger
            )
            do {
                try await PostgresStore.withStore(url: server.url, logger: TestNATSServer.logger) { try await use($0) }
                await server.stop()
                try? FileManager.default.removeItem(atPath: server.dataDirectory)
            } catch {
                await server.stop()
                try? FileManager.default.removeItem(atPath: server.dataDirectory)
                throw error
            }
        }
    }

    @Test("Migrations are idempotent; schedule state is per tenant and never moves backwards", arguments: Kind.allCases)
    func contract(kind: Kind) async throws {
        try await withStore(kind) { store in
            try await store.migrate()
            try await store.migrate()
            #expect(try await store.lastFire(tenant: "acme", schedule: "nightly") == nil)
            let first = Date(timeIntervalSince1970: 1_800_000_000)
            try await store.recordFire(tenant: "acme", schedule: "nightly", at: first)
            #expect(try await store.lastFire(tenant: "acme", schedule: "nightly") == first)
            try await store.recordFire(tenant: "acme", schedule: "nightly", at: first.addingTimeInterval(-60))
            #expect(try await store.lastFire(tenant: "acme", schedule: "nightly") == first, "a late writer must not move it back")
            try await store.recordFire(tenant: "acme", schedule: "nightly", at: first.addingTimeInterval(86_400))
            #expect(try await store.lastFire(tenant: "acme", schedule: "nightly") == first.addingTimeInterval(86_400))
            #expect(try await store.lastFire(tenant: "other", schedule: "nightly") == nil, "tenants are separate")
            #expect(try await store.lastFire(tenant: "acme", schedule: "hourly") == nil)
            // A tick skipped while paused is handled, but was not published.
            let published = first.addingTimeInterval(86_400)
            #expect(try await store.lastPublishedFire(tenant: "acme", schedule: "nightly") == published)
            try await store.recordFire(
                tenant: "acme",
                schedule: "nightly",
                at: published.addingTimeInterval(60),
                published: false,
                fence: nil
            )
            #expect(try await store.lastFire(tenant: "acme", schedule: "nightly") == published.addingTimeInterval(60))
            #expect(try await store.lastPublishedFire(tenant: "acme", schedule: "nightly") == published)
            try await store.recordFire(tenant: "paused", schedule: "s", at: first, published: false, fence: nil)
            #expect(try await store.lastPublishedFire(tenant: "paused", schedule: "s") == nil)
            #expect(try await store.lastFire(tenant: "paused", schedule: "s") == first)
            // Names are bound as parameters, never spliced into SQL.
            try await store.recordFire(tenant: "x'; DROP TABLE t; --", schedule: "s", at: first)
            #expect(try await store.lastFire(tenant: "x'; DROP TABLE t; --", schedule: "s") == first)
        }
    }

    @Test("Leases: one holder at a time, fencing tokens grow on takeover, fenced writes fail", arguments: Kind.allCases)
    func leases(kind: Kind) async throws {
        try await withStore(kind) { store in
            try await store.migrate()
            let a = try await store.acquireLease(name: "leader", holder: "a", ttl: .milliseconds(600))
            #expect(a != nil)
            #expect(try await store.acquireLease(name: "leader", holder: "b", ttl: .seconds(5)) == nil, "a holds it")
            #expect(try await store.acquireLease(name: "leader", holder: "a", ttl: .milliseconds(600)) == a, "renewal keeps the token")
            #expect(try await store.liveLeases(prefix: "lead").map(\.holder) == ["a"])
            let fenceA = LeaseFence(name: "leader", holder: "a", token: a ?? -1)
            let fire = Date(timeIntervalSince1970: 1_800_000_000)
            try await store.recordFire(tenant: "t", schedule: "s", at: fire, fence: fenceA)
            #expect(try await store.lastFire(tenant: "t", schedule: "s") == fire)
            try await Task.sleep(for: .milliseconds(900))
            #expect(try await store.liveLeases(prefix: "leader").isEmpty, "expired")
            let b = try await store.acquireLease(name: "leader", holder: "b", ttl: .seconds(30))
            #expect(b != nil && b! > a!, "a new holder gets a larger token")
            await #expect(throws: StoreError.fenced("")) {
                try await store.recordFire(tenant: "t", schedule: "s", at: fire.addingTimeInterval(1), fence: fenceA)
            }
            #expect(try await store.lastFire(tenant: "t", schedule: "s") == fire, "the deposed holder wrote nothing")
            try await store.recordFire(
                tenant: "t",
                schedule: "s",
                at: fire.addingTimeInterval(1),
                fence: LeaseFence(name: "leader", holder: "b", token: b!)
            )
            #expect(try await store.lastFire(tenant: "t", schedule: "s") == fire.addingTimeInterval(1))
            try await store.releaseLease(name: "leader", holder: "a")
            #expect(try await store.liveLeases(prefix: "leader").map(\.holder) == ["b"], "only the holder can release")
            try await store.releaseLease(name: "leader", holder: "b")
            #expect(try await store.liveLeases(prefix: "leader").isEmpty)
            let c = try await store.acquireLease(name: "leader", holder: "c", ttl: .seconds(30))
            #expect(c == b! + 1, "a released lease is free at once")
            _ = try await store.acquireLease(name: "part/t/h/0", holder: "w1", ttl: .seconds(30))
            _ = try await store.acquireLease(name: "part/t/h/1", holder: "w2", ttl: .seconds(30))
            #expect(try await store.liveLeases(prefix: "part/t/h/").map(\.name) == ["part/t/h/0", "part/t/h/1"])
            #expect(try await store.liveLeases(prefix: "part/t/x/").isEmpty)
        }
    }

    @Test("Schedules can be paused, resumed and retimed per tenant", arguments: Kind.allCases)
    func pause(kind: Kind) async throws {
        try await withStore(kind) { store in
            try await store.migrate()
            #expect(try await store.isPaused(tenant: "t", schedule: "s") == false)
            try await store.setPaused(tenant: "t", schedule: "s", paused: true)
            #expect(try await store.isPaused(tenant: "t", schedule: "s"))
            #expect(try await store.isPaused(tenant: "u", schedule: "s") == false)
            try await store.setScheduleOverride(tenant: "t", schedule: "s", expression: "*/5 * * * *", timeZone: "Europe/Berlin")
            #expect(
                try await store.scheduleControl(tenant: "t", schedule: "s")
                    == ScheduleControl(paused: true, expression: "*/5 * * * *", timeZone: "Europe/Berlin")
            )
            try await store.setPaused(tenant: "t", schedule: "s", paused: false)
            #expect(try await store.isPaused(tenant: "t", schedule: "s") == false)
            try await store.setScheduleOverride(tenant: "t", schedule: "s", expression: nil, timeZone: nil)
            #expect(try await store.scheduleControl(tenant: "t", schedule: "s") == ScheduleControl())
            try await store.setScheduleOverride(tenant: "t", schedule: "fresh", expression: "@daily", timeZone: nil)
            #expect(try await store.scheduleControl(tenant: "t", schedule: "fresh") == ScheduleControl(expression: "@daily"))
        }
    }

    @Test("Tenants and API keys: duplicates, unknown names, hashes only, revocation, disabled tenants", arguments: Kind.allCases)
    func tenantsAndKeys(kind: Kind) async throws {
        try await withStore(kind) { store in
            try await store.migrate()
            try await store.createTenant("acme")
            try await store.createTenant("globex")
            await #expect(throws: StoreError.duplicate("")) { try await store.createTenant("acme") }
            #expect(try await store.tenants().map(\.name) == ["acme", "globex"])
            await #expect(throws: StoreError.notFound("")) { try await store.setTenantDisabled("nope", disabled: true) }
            await #expect(throws: StoreError.notFound("")) { try await store.insertAPIKey(id: "k0", tenant: "nope", hash: "h0") }

            let (id, key) = APIKeys.generate()
            #expect(APIKeys.isWellFormed(key))
            try await store.insertAPIKey(id: id, tenant: "acme", hash: APIKeys.hash(key))
            #expect(try await store.accessForAPIKey(hash: APIKeys.hash(key))?.tenant == "acme")
            #expect(try await store.accessForAPIKey(hash: key) == nil, "the key itself is not stored")
            #expect(try await store.apiKeys(tenant: "acme").map(\.id) == [id])
            #expect(try await store.apiKeys(tenant: "globex").isEmpty)

            await #expect(throws: StoreError.notFound("")) { try await store.revokeAPIKey(id: id, tenant: "globex") }
            #expect(try await store.accessForAPIKey(hash: APIKeys.hash(key))?.tenant == "acme", "another tenant cannot revoke it")

            try await store.setTenantDisabled("acme", disabled: true)
            #expect(try await store.accessForAPIKey(hash: APIKeys.hash(key))?.tenant == nil, "a disabled tenant's keys do not resolve")
            #expect(try await store.tenants().first { $0.name == "acme" }?.disabled == true)
            try await store.setTenantDisabled("acme", disabled: false)
            #expect(try await store.accessForAPIKey(hash: APIKeys.hash(key))?.tenant == "acme")

            // Limits: none by default, set, changed, removed; they come with the key's tenant.
            #expect(try await store.accessForAPIKey(hash: APIKeys.hash(key)) == TenantAccess(tenant: "acme"))
            try await store.setTenantLimits("acme", limits: TenantLimits(recordsPerSecond: 500))
            #expect(try await store.accessForAPIKey(hash: APIKeys.hash(key))?.limits == TenantLimits(recordsPerSecond: 500))
            try await store.setTenantLimits("acme", limits: TenantLimits(recordsPerSecond: 2_000_000, burst: 4_000_000))
            #expect(
                try await store.tenants().first { $0.name == "acme" }?.limits == TenantLimits(recordsPerSecond: 2_000_000, burst: 4_000_000)
            )
            #expect(try await store.tenants().first { $0.name == "globex" }?.limits == TenantLimits(), "only that tenant")
            try await store.setTenantLimits("acme", limits: TenantLimits())
            #expect(try await store.accessForAPIKey(hash: APIKeys.hash(key))?.limits.isUnlimited == true)
            await #expect(throws: StoreError.notFound("")) {
                try await store.setTenantLimits("nope", limits: TenantLimits(recordsPerSecond: 1))
            }

            try await store.revokeAPIKey(id: id, tenant: "acme")
            try await store.revokeAPIKey(id: id, tenant: "acme")
            #expect(try await store.accessForAPIKey(hash: APIKeys.hash(key)) == nil)
            #expect(try await store.apiKeys(tenant: "acme").first?.revokedAt != nil)
        }
    }

    @Test("With a Postgres URL the coordinator keeps schedule state in Postgres")
    func coordinatorOnPostgres() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("aut-pgcoord-\(UUID().uuidString)").path
        let server = try await LocalPostgres.start(
            directory: directory,
            port: LoopbackPorts.freeBase(spans: [0..<1]),
            database: "coord",
            logger: TestNATSServer.logger
        )
        do {
            var app = AppBuilder(name: "PgTicks")
            let seen = app.table("seen")
            app.schedule("tick", .every(.seconds(1))) { tick, ctx in
                try await seen.append(["at": .string(tick.fireTime)], ctx)
            }
            let graph = try app.build()
            try await withRunningApp(graph, configure: { $0.postgresURL = server.url }) { app in
                let out = try await app.records(in: "seen", atLeast: 2, timeout: .seconds(10))
                #expect(out.count >= 2)
            }
            let last = try await PostgresStore.withStore(url: server.url, logger: TestNATSServer.logger) {
                try await $0.lastFire(tenant: "default", schedule: "tick")
            }
            #expect(last != nil, "the coordinator wrote its schedule state to Postgres")
            await server.stop()
            try? FileManager.default.removeItem(atPath: server.dataDirectory)
            try? FileManager.default.removeItem(atPath: directory)
        } catch {
            await server.stop()
            try? FileManager.default.removeItem(atPath: server.dataDirectory)
            throw error
        }
    }
}
