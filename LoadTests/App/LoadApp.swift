import Autonomous
import Foundation

// The app under load. Every handler is the same small JSON transform as the raw pipeline's
// (wrap the event, add fields) and stamps when it started, so the runner can measure the
// time from the ingress 2xx (or the publish) to the handler and to the output's PubAck.
//
//   events → transform → events_out                       scenarios a, b, c, e, f
//   chain_in → step-1 → chain_1 → step-2 → chain_2 → step-3 → chain_out     scenario d
//   kept_events, kept_live (kept in PostgreSQL by the runner's autonomous.json)  scenario g
//   py_events → py-transform (Python, LoadTests/App/python_handlers.py) → py_events_out   scenario h

@main
struct LoadApp: AutonomousApp {
    var name: String { "LoadApp" }

    static func nanoseconds() -> Int64 {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        return Int64(now.tv_sec) * 1_000_000_000 + Int64(now.tv_nsec)
    }

    static func transform(_ records: Records<JSONValue>, step: Int) -> Derived<JSONValue> {
        let started = JSONValue.int(nanoseconds())
        return records.map { event in
            ["event": event, "handled": true, "step": .int(Int64(step)), "handler_start_ns": started, "sent_ns": event["sent_ns"]]
        }
    }

    func build(_ app: inout AppBuilder) {
        let environment = ProcessInfo.processInfo.environment
        let batchSize = environment["LOAD_BATCH_SIZE"].flatMap(Int.init) ?? 1024
        let concurrency = environment["LOAD_CONCURRENCY"].flatMap(Int.init) ?? 2
        // 500 ms, the product default. A fetch returns as soon as a record is there, so this
        // only bounds how long an idle pull request stays open.
        let maxWait = environment["LOAD_MAX_WAIT_MS"].flatMap(Int64.init) ?? 500
        let options = HandlerOptions(batchSize: batchSize, maxWait: .milliseconds(maxWait), concurrency: concurrency)

        let events = app.table("events")
        let eventsOut = app.table("events_out")
        events.onNewRecords("transform", options: options) { records, ctx in
            try await eventsOut.append(Self.transform(records, step: 1), ctx)
        }

        let chainIn = app.table("chain_in")
        let chain1 = app.table("chain_1")
        let chain2 = app.table("chain_2")
        let chainOut = app.table("chain_out")
        chainIn.onNewRecords("step-1", options: options) { records, ctx in try await chain1.append(Self.transform(records, step: 1), ctx) }
        chain1.onNewRecords("step-2", options: options) { records, ctx in try await chain2.append(Self.transform(records, step: 2), ctx) }
        // No handlers: scenario g's autonomous.json keeps them in PostgreSQL, and their sinks
        // are their only consumers.
        _ = app.table("kept_events")
        _ = app.table("kept_live")
        chain2.onNewRecords("step-3", options: options) { records, ctx in try await chainOut.append(Self.transform(records, step: 3), ctx) }

        let pyEventsOut = app.table("py_events_out")
        app.table("py_events").onNewRecords("py-transform", runsIn: .python, options: options, writes: [pyEventsOut])
    }
}
