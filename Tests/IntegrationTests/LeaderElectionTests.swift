import Autonomous
import AutonomousTesting
import Foundation
import Synchronization
import Testing

@testable import Coordinator

/// A store whose lease calls can be cut off, as if its coordinator lost Postgres.
final class PartitionableStore: CoordinatorStore {
    let base: any CoordinatorStore
    let partitioned = Atomic<Bool>(false)

    init(_ base: any CoordinatorStore) { self.base = base }

    var displayName: String { base.displayName }
    func migrate() async throws { try await base.migrate() }
    func close() async throws { try await base.close() }
    func lastFire(tenant: String, schedule: String) async throws -> Date? { try await base.lastFire(tenant: tenant, schedule: schedule) }
    func lastPublishedFire(tenant: String, schedule: String) async throws -> Date? {
        try await base.lastPublishedFire(tenant: tenant, schedule: schedule)
    }
    func recordFire(tenant: String, schedule: String, at fireTime: Date, published: Bool, fence: LeaseFence?) async throws {
        try await base.recordFire(tenant: tenant, schedule: schedule, at: fireTime, published: published, fence: fence)
    }
    func scheduleControl(tenant: String, schedule: String) async throws -> ScheduleControl {
        try await base.scheduleControl(tenant: tenant, schedule: schedule)
    }
    func setPaused(tenant: String, schedule: String, paused: Bool) async throws {
        try await base.setPaused(tenant: tenant, schedule: schedule, paused: paused)
    }
    func setScheduleOverride(tenant: String, schedule: String, expression: String?, timeZone: String?) async throws {
        try await base.setScheduleOverride(tenant: tenant, schedule: schedule, expression: expression, timeZone: timeZone)
    }
    func acquireLease(name: String, holder: String, ttl: Duration) async throws -> Int64? {
        if partitioned.load(ordering: .relaxed) {
            // A hung connection: the call never answers in time.
            try await Task.sleep(for: .seconds(60))
        }
        return try await base.acquireLease(name: name, holder: holder, ttl: ttl)
    }
    func releaseLease(name: String, holder: String) async throws { try await base.releaseLease(name: name, holder: holder) }
    func liveLeases(prefix: String) async throws -> [Lease] { try await base.liveLeases(prefix: prefix) }
    func createTenant(_ name: String) async throws { try await base.createTenant(name) }
    func tenants() async throws -> [TenantRecord] { try await base.tenants() }
    func setTenantDisabled(_ name: String, disabled: Bool) async throws { try await base.setTenantDisabled(name, disabled: disabled) }
    func insertAPIKey(id: String, tenant: String, hash: String) async throws {
        try await base.insertAPIKey(id: id, tenant: tenant, hash: hash)
    }
    func setTenantLimits(_ name: String, limits: TenantLimits) async throws { try await base.setTenantLimits(name, limits: limits) }
    func accessForAPIKey(hash: String) async throws -> TenantAccess? { try await base.accessForAPIKey(hash: hash) }
    func revokeAPIKey(id: String, tenant: String) async throws { try await base.revokeAPIKey(id: id, tenant: tenant) }
    func apiKeys(tenant: String) async throws -> [APIKeyRecord] { try await base.apiKeys(tenant: tenant) }
}

final class EventLog: Sendable {
    let entries = Mutex<[(String, String, ContinuousClock.Instant)]>([])

    func duties(_ name: String) -> @Sendable (Leadership) async -> Void {
        { leadership in
            self.entries.withLock { $0.append((name, "start", .now)) }
            var lastAct = ContinuousClock.now
            while !Task.isCancelled && leadership.isValid {
                lastAct = .now
                try? await Task.sleep(for: .milliseconds(5))
            }
            self.entries.withLock { $0.append((name, "stop", lastAct)) }
        }
    }
}

@Suite("Leader election")
struct LeaderElectionTests {
    @Test("A leader cut off from the store stops acting before a standby can take the lease")
    func deposedLeaderStopsFirst() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("aut-election-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let storeA = PartitionableStore(try await SQLiteStore.open(path: directory + "/state.sqlite", logger: TestNATSServer.logger))
        let storeB = try await SQLiteStore.open(path: directory + "/state.sqlite", logger: TestNATSServer.logger)
        try await storeA.migrate()
        let ttl = Duration.seconds(2)
        let a = LeaderElection(store: storeA, holder: "a", ttl: ttl, logger: TestNATSServer.logger)
        let b = LeaderElection(store: storeB, holder: "b", ttl: ttl, logger: TestNATSServer.logger)
        // When each tenure started and when its duties stopped (last instant they acted).
        let events = EventLog()
        let runA = Task { await a.run(duties: events.duties("a")) }
        #expect(try await eventually(timeout: .seconds(5)) { events.entries.withLock { $0.contains { $0.0 == "a" && $0.1 == "start" } } })
        let runB = Task { await b.run(duties: events.duties("b")) }
        try await Task.sleep(for: .seconds(1))
        #expect(events.entries.withLock { $0.contains { $0.0 == "b" } } == false, "b stands by while a renews")

        storeA.partitioned.store(true, ordering: .relaxed)
        #expect(try await eventually(timeout: .seconds(10)) { events.entries.withLock { $0.contains { $0.0 == "b" && $0.1 == "start" } } })
        let recorded = events.entries.withLock { $0 }
        let aStopped = try #require(recorded.first { $0.0 == "a" && $0.1 == "stop" }?.2)
        let bStarted = try #require(recorded.first { $0.0 == "b" && $0.1 == "start" }?.2)
        #expect(aStopped < bStarted, "a acted until \(aStopped), b led from \(bStarted)")
        print("election: a stopped acting \(bStarted - aStopped) before b took over")

        // The fencing token stops a write a deposed leader might still attempt.
        let tokenA: Int64 = 1
        await #expect(throws: StoreError.fenced("")) {
            try await storeB.recordFire(
                tenant: "t",
                schedule: "s",
                at: Date(),
                fence: LeaseFence(name: "leader", holder: "a", token: tokenA)
            )
        }
        runB.cancel()
        await runB.value
        runA.cancel()
        await runA.value
        try await storeA.close()
        try await storeB.close()
    }
}
