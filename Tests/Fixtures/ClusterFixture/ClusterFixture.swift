import Autonomous
import Foundation

// An app for the multi-process tests: an every-second schedule that catches up every missed
// tick (coordinator failover), an ordered handler (partition leases across workers), handlers
// that append in loops rather than with `map` (exactly-once under kill -9), and one that traps
// on a poison record (crash loops).

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

        // A handler that does not return (for the shutdown timeout): it marks that it started.
        let stuckSeconds = ProcessInfo.processInfo.environment["FIXTURE_STUCK_SECONDS"].flatMap(Int.init) ?? 0
        let startedFile = ProcessInfo.processInfo.environment["FIXTURE_STARTED_FILE"]
        app.table("stuck_in").onNewRecords("stuck", options: HandlerOptions(batchSize: 1, concurrency: 1)) { _, _ in
            if let startedFile { _ = FileManager.default.createFile(atPath: startedFile, contents: Data()) }
            if stuckSeconds > 0 { try await Task.sleep(for: .seconds(stuckSeconds)) }
        }

        // A handler that traps (an arithmetic overflow, as a naive total would) on a record
        // whose `quantity` is huge: the poison-record test.
        let poisonOut = app.table("poison_out")
        app.table("poison_in").onNewRecords("poison", options: HandlerOptions(batchSize: 20, maxAttempts: 3)) { records, ctx in
            for record in records {
                let quantity = record["quantity"].intValue ?? 1
                let total = quantity * 100
                try await poisonOut.append(["n": record["n"], "total": .int(Int64(total)), "tenant": .string(ctx.tenant)], ctx)
            }
        }

        // The same records handled in the shapes people write by hand.
        let loopIn = app.table("loop_in")
        let viaFor = app.table("loop_for")
        let viaForEach = app.table("loop_foreach")
        let pairsA = app.table("loop_pair_a")
        let pairsB = app.table("loop_pair_b")
        let loopOptions = HandlerOptions(batchSize: 100, maxAttempts: 1_000)
        loopIn.onNewRecords("loop-for", options: loopOptions) { records, ctx in
            for record in records {
                try await viaFor.append(["id": record["id"]], ctx)
            }
        }
        loopIn.onNewRecords("loop-foreach", options: loopOptions) { records, ctx in
            try await records.forEach { record in
                await Task.yield()
                try await viaForEach.append(["id": record["id"]], ctx)
            }
        }
        loopIn.onNewRecords("loop-two-tables", options: loopOptions) { records, ctx in
            for i in records.indices {
                try await pairsA.append(["id": records[i]["id"]], ctx)
                try await pairsB.append(["id": records[i]["id"], "side": "b"], ctx)
            }
        }

        // One app in two languages: Swift → Python → Swift (python/tests/test_mixed.py runs the
        // Python handler from python/tests/apps/mixed_handlers.py).
        let mixedOrders = app.table("mixed_orders")
        let mixedEnriched = app.table("mixed_enriched")
        let mixedScored = app.table("mixed_scored")
        let mixedFinal = app.table("mixed_final")
        mixedOrders.onNewRecords("mixed-enrich", options: HandlerOptions(maxAttempts: 1_000), writes: [mixedEnriched]) { records, ctx in
            try await mixedEnriched.append(records.map { ["n": $0["n"], "stage": "swift"] }, ctx)
        }
        mixedEnriched.onNewRecords("mixed-score", runsIn: .python, options: HandlerOptions(maxAttempts: 1_000), writes: [mixedScored])
        mixedScored.onNewRecords("mixed-finalize", options: HandlerOptions(maxAttempts: 1_000), writes: [mixedFinal]) { records, ctx in
            for record in records {
                try await mixedFinal.append(["n": record["n"], "score": record["score"], "done": true], ctx)
            }
        }
    }
}
