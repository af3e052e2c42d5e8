import Autonomous
import AutonomousTesting
import Coordinator
import Foundation
import NATS
import Testing

/// The coordinator's schedulers against a real nats-server: what happens after downtime.
@Suite("Schedule catch-up after downtime", .serialized)
struct SchedulerTests {
    @Test(
        "skip fires nothing missed, fire-once the latest, fire-all up to its limit",
        arguments: [
            (Schedule.CatchUpPolicy.skip, 0),
            (.fireOnce, 1),
            (.fireAll(limit: 5), 5),
        ]
    )
    func catchUp(policy: Schedule.CatchUpPolicy, expectedMissed: Int) async throws {
        var builder = AppBuilder(name: "CatchUp")
        // Hourly, so no regular tick falls into the few seconds the test runs.
        builder.schedule("hourly", .every(.seconds(3600)).catchUp(policy)) { _, _ in }
        let graph = try builder.build()
        let dataDirectory = FileManager.default.temporaryDirectory.appendingPathComponent("aut-catchup-\(UUID().uuidString)").path
        // The coordinator was last up ten hours ago: ten ticks were missed.
        let store = try await SQLiteStore.open(path: dataDirectory + "/coordinator.sqlite", logger: TestNATSServer.logger)
        try await store.migrate()
        let latest = Date(timeIntervalSince1970: (Date().timeIntervalSince1970 / 3600).rounded(.down) * 3600)
        let lastFire = latest.addingTimeInterval(-10 * 3600)
        try await store.recordFire(tenant: "default", schedule: "hourly", at: lastFire)
        try await store.close()
        try await withRunningApp(graph, configure: { $0.dataDirectory = dataDirectory }) { app in
            try await Task.sleep(for: .milliseconds(1500))
            let ticks = try await app.connection.readAll(
                stream: "AUT_DEFAULT",
                subject: "aut.default.sched.hourly",
                headers: [],
                atLeast: 0,
                timeout: .seconds(2)
            )
            let missed = ticks.compactMap { try? JSONParser.parse($0.payload)["fire_time"].stringValue }.compactMap(ISO8601.parse)
            #expect(missed.count == expectedMissed, "\(policy): fired \(missed.map(ISO8601.format))")
            #expect(missed.allSatisfy { $0 > lastFire }, "nothing at or before the last recorded tick")
            if expectedMissed > 0 {
                // The most recent missed ticks, oldest first.
                #expect(missed.last == latest, "the newest missed tick fires")
                #expect(missed == missed.sorted())
            }
        }
    }
}
