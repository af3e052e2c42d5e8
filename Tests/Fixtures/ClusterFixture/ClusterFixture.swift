import Autonomous
import Foundation

// An app for the multi-process tests: an every-second schedule that catches up every missed
// tick (coordinator failover), and an ordered handler (partition leases across workers).

@main
struct ClusterFixtureApp: AutonomousApp {
    var name: String { "ClusterFixture" }

    func build(_ app: inout AppBuilder) {
        app.schedule("beat", .every(.seconds(1)).catchUp(.fireAll(limit: 600))) { _, _ in }

        let events = app.table("events")
        let ordered = app.table("ordered_out")
        let pid = Int64(ProcessInfo.processInfo.processIdentifier)
        let delay = ProcessInfo.processInfo.environment["FIXTURE_HANDLER_DELAY_MS"].flatMap(Int.init) ?? 0
        events.onNewRecords("in-order", options: HandlerOptions(batchSize: 50).ordered(by: "key", partitions: 8)) { records, ctx in
            if delay > 0 { try await Task.sleep(for: .milliseconds(delay)) }
            try await ordered.append(records.map { ["key": $0["key"], "seq": $0["seq"], "pid": .int(pid)] }, ctx)
        }
    }
}
