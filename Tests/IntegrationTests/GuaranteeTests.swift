import AsyncHTTPClient
import Autonomous
import AutonomousTesting
import Coordinator
import Foundation
import NATS
import NIOCore
import NIOHTTP1
import Synchronization
import Testing

@Suite("Delivery guarantees", .serialized)
struct GuaranteeTests {
    @Test("A handler slower than the ack wait completes without being redelivered")
    func slowHandler() async throws {
        let invocations = Mutex<[String: Int]>([:])
        var app = AppBuilder(name: "Slow")
        let inputs = app.table("inputs")
        let outputs = app.table("outputs")
        inputs.onNewRecords("slow", options: HandlerOptions(batchSize: 5, concurrency: 1)) { records, ctx in
            for entry in records.entries { invocations.withLock { $0[entry.id, default: 0] += 1 } }
            try await Task.sleep(for: .seconds(12))  // twice the ack wait below
            try await outputs.append(records.map { ["n": $0["n"]] as JSONValue }, ctx)
        }
        let graph = try app.build()
        // An ack wait of 6 s (a heartbeat every 2 s): a run of the whole suite on two busy cores
        // stalled a 2 s ack wait's heartbeats long enough for a redelivery.
        try await withRunningApp(graph, configure: { $0.topology.ackWait = .seconds(6) }) { app in
            let response = try await app.post("/v1/tables/inputs/records", body: #"[{"n":1},{"n":2},{"n":3}]"#)
            #expect(response.status == 202)
            let out = try await app.records(in: "outputs", atLeast: 3, timeout: .seconds(40))
            #expect(out.count == 3)
            // Wait past another ack-wait period: a missed heartbeat would show up as a redelivery.
            try await Task.sleep(for: .seconds(7))
            let counts = invocations.withLock { $0 }
            #expect(counts.count == 3)
            #expect(counts.values.allSatisfy { $0 == 1 }, "each record handled once: \(counts)")
            let state = try await app.connection.consumerState(
                stream: Wire.tableStreamName(tenant: "default", table: "inputs"),
                consumer: "h_slow"
            )
            #expect(state?.numRedelivered == 0)
            #expect(state?.numAckPending == 0)
        }
    }

    @Test("Dead letters carry the error; `dlq replay` after the fix processes them once, only in that handler")
    func deadLetterReplay() async throws {
        let broken = Mutex(true)
        let steadyRuns = Mutex(0)
        var app = AppBuilder(name: "Replay")
        let inputs = app.table("inputs")
        let fixed = app.table("fixed")
        let steady = app.table("steady_out")
        inputs.onNewRecords("fragile", options: HandlerOptions(batchSize: 10, maxAttempts: 2, retryBackoff: [.milliseconds(50)])) {
            records,
            ctx in
            if broken.withLock({ $0 }) { throw ConfigurationError("upstream API returned 500") }
            try await fixed.append(records.map { ["n": $0["n"]] as JSONValue }, ctx)
        }
        inputs.onNewRecords("steady") { records, ctx in
            steadyRuns.withLock { $0 += records.count }
            try await steady.append(records.map { ["n": $0["n"]] as JSONValue }, ctx)
        }
        let graph = try app.build()
        try await withRunningApp(graph) { app in
            let response = try await app.post("/v1/tables/inputs/records", body: #"[{"n":1},{"n":2},{"n":3}]"#)
            #expect(response.status == 202)
            let dlqSubject = Wire.deadLetterSubject(tenant: "default", handler: "fragile")
            let dead = try await StreamAudit.read(connection: app.connection, stream: app.stream, subject: dlqSubject, atLeast: 3)
            #expect(dead.count == 3)

            let listed = try runAutonomousCLI(["dlq", "list", "--nats-url", app.server.url, "--handler", "fragile"])
            #expect(listed.status == 0, "\(listed.output)")
            #expect(listed.output.contains("upstream API returned 500"))
            #expect(listed.output.contains("attempts=2"))
            #expect(listed.output.contains("3 dead letter(s)."))

            broken.withLock { $0 = false }
            let replayed = try runAutonomousCLI(["dlq", "replay", "--nats-url", app.server.url, "--handler", "fragile"])
            #expect(replayed.status == 0, "\(replayed.output)")
            #expect(replayed.output.contains("Replayed 3 dead letter(s)."))
            let again = try runAutonomousCLI(["dlq", "replay", "--nats-url", app.server.url])
            #expect(again.output.contains("Replayed 0 dead letter(s)."))

            let outputs = try await app.records(in: "fixed", atLeast: 3)
            #expect(outputs.count == 3)
            #expect(Set(outputs.compactMap { try? JSONParser.parse($0.payload)["n"].intValue }) == [1, 2, 3])
            let steadyOutputs = try await app.records(in: "steady_out", atLeast: 3)
            #expect(steadyOutputs.count == 3)
            #expect(steadyRuns.withLock { $0 } == 3, "the replay is for 'fragile' only")
            let left = try await DeadLetters.list(connection: app.connection, tenant: "default")
            #expect(left.isEmpty)

            let purgeNothing = try runAutonomousCLI(["dlq", "purge", "--nats-url", app.server.url])
            #expect(purgeNothing.output.contains("Purged 0 dead letter(s)."))
            let badName = try runAutonomousCLI(["dlq", "list", "--nats-url", app.server.url, "--handler", "a.b"])
            #expect(badName.status != 0)
            #expect(badName.output.contains("handler name 'a.b'"))
        }
    }

    @Test("A slow handler does not starve another handler in the same worker")
    func slowDoesNotStarve() async throws {
        var app = AppBuilder(name: "Mixed")
        let slowIn = app.table("slow_in")
        let fastIn = app.table("fast_in")
        let fastOut = app.table("fast_out")
        // The slow handler holds its records until the test has seen the fast one's outputs.
        let released = Mutex(false)
        let busy = Mutex(0)
        slowIn.onNewRecords("slow", options: HandlerOptions(batchSize: 1, concurrency: 2)) { _, _ in
            busy.withLock { $0 += 1 }
            while !released.withLock({ $0 }) { try await Task.sleep(for: .milliseconds(20)) }
        }
        fastIn.onNewRecords("fast") { records, ctx in
            try await fastOut.append(records.map { ["n": $0["n"]] as JSONValue }, ctx)
        }
        let graph = try app.build()
        try await withRunningApp(graph) { app in
            // Occupy every slot of the slow handler first.
            let slow = try await app.post("/v1/tables/slow_in/records", body: #"[{"n":1},{"n":2},{"n":3},{"n":4}]"#)
            #expect(slow.status == 202)
            #expect(try await eventually { busy.withLock { $0 } == 2 }, "both of the slow handler's slots are taken")
            let fast = try await app.post("/v1/tables/fast_in/records", body: #"[{"n":1},{"n":2}]"#)
            #expect(fast.status == 202)
            let out = try? await app.records(in: "fast_out", atLeast: 2, timeout: .seconds(60))
            #expect(out?.count == 2, "the fast handler ran while the slow one held every slot")
            #expect(busy.withLock { $0 } == 2)
            released.withLock { $0 = true }
        }
    }

    @Test("Over its in-flight limit the ingress answers 429 with Retry-After at once; a frozen JetStream gets 503, never 2xx")
    func backpressure() async throws {
        var app = AppBuilder(name: "Pressure")
        _ = app.table("events")
        let graph = try app.build()
        try await withRunningApp(
            graph,
            configure: {
                $0.maxInFlightRecords = 50
                $0.publishTimeout = .seconds(3)
            }
        ) { app in
            #expect(try await app.post("/v1/tables/events/records", body: #"{"warm":"up"}"#).status == 202)
            // Freeze nats-server: the TCP connection stays up, PubAcks stop.
            let pid = app.server.process.processIdentifier
            kill(pid, SIGSTOP)
            let big = (0..<50).map { #"{"n":\#($0)}"# }.joined(separator: "\n")
            let held = Task { try await app.post("/v1/tables/events/records", body: big, contentType: "application/x-ndjson") }
            try await Task.sleep(for: .milliseconds(500))
            var request = HTTPClientRequest(url: app.baseURL + "/v1/tables/events/records")
            request.method = .POST
            request.headers.add(name: "Content-Type", value: "application/json")
            request.body = .bytes(ByteBuffer(string: #"{"n":"extra"}"#))
            let response = try await HTTPClient.shared.execute(request, timeout: .seconds(10))
            // Refused at once: a request queued for room would have been published to the
            // frozen server after the held one timed out, and got 503 like it.
            #expect(response.status.code == 429)
            #expect(response.headers.first(name: "Retry-After") == "1")
            let stalled = try await held.value
            kill(pid, SIGCONT)
            #expect(stalled.status == 503, "no 2xx without a PubAck")
            #expect(stalled.body["error"]["code"] == "unavailable")
            // Once JetStream answers again, so does the ingress.
            let recovered = try await eventually(timeout: .seconds(15)) {
                (try? await app.post("/v1/tables/events/records", body: #"{"after":"thaw"}"#).status) == 202
            }
            #expect(recovered)
        }
    }
}
