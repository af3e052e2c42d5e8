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
                port: Int.random(in: 41_000..<60_000),
                database: "contract",
                logger: TestNATSServer.logger
            )
            do {
                try await use(try PostgresStore.open(url: server.url, logger: TestNATSServer.logger))
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
            // Names are bound as parameters, never spliced into SQL.
            try await store.recordFire(tenant: "x'; DROP TABLE t; --", schedule: "s", at: first)
            #expect(try await store.lastFire(tenant: "x'; DROP TABLE t; --", schedule: "s") == first)
        }
    }

    @Test("With a Postgres URL the coordinator keeps schedule state in Postgres")
    func coordinatorOnPostgres() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("aut-pgcoord-\(UUID().uuidString)").path
        let server = try await LocalPostgres.start(
            directory: directory, port: Int.random(in: 41_000..<60_000), database: "coord", logger: TestNATSServer.logger
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
            let store = try PostgresStore.open(url: server.url, logger: TestNATSServer.logger)
            let last = try await store.lastFire(tenant: "default", schedule: "tick")
            try await store.close()
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
