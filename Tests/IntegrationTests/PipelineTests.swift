import Autonomous
import AutonomousTesting
import Foundation
import NATS
import Synchronization
import Testing

struct Reading: Record {
    static let semanticType: SemanticType = "test.reading@1"
    var sensor: String
    var value: Double
}

struct Doubled: Record {
    static let semanticType: SemanticType = "test.doubled@2"
    var sensor: String
    var doubled: Double
}

@Suite("Pipeline against a real nats-server", .serialized)
struct PipelineTests {
    static func pipelineGraph() throws -> AppGraph {
        var app = AppBuilder(name: "Pipeline")
        let readings = app.table("readings", of: Reading.self)
        let doubled = app.table("doubled", of: Doubled.self)
        app.post("/readings") { request, ctx in
            try await readings.append(try request.decode(Reading.self), ctx)
            return .accepted
        }
        readings.onNewRecords("double", options: HandlerOptions(batchSize: 1000)) { records, ctx in
            try await doubled.append(records.map { Doubled(sensor: $0.sensor, doubled: $0.value * 2) }, ctx)
        }
        return try app.build()
    }

    @Test("A record posted to a route reaches its handler; the output has the right headers and lineage")
    func routeToHandlerToOutput() async throws {
        try await withRunningApp(try Self.pipelineGraph()) { app in
            let response = try await app.post("/readings", body: #"{"sensor":"s1","value":21}"#)
            #expect(response.status == 202)

            let inputs = try await app.records(in: "readings", atLeast: 1)
            #expect(inputs.count == 1)
            let input = try #require(inputs.first)
            let inputID = try #require(input.id)
            #expect(input.headers["Aut-Table"] == "readings")
            #expect(input.headers["Aut-Tenant"] == "default")
            #expect(input.headers["Aut-Type"] == "test.reading@1")

            let outputs = try await app.records(in: "doubled", atLeast: 1)
            #expect(outputs.count == 1)
            let output = try #require(outputs.first)
            #expect(output.subject == "aut.default.tbl.doubled")
            #expect(output.headers["Aut-Table"] == "doubled")
            #expect(output.headers["Aut-Tenant"] == "default")
            #expect(output.headers["Aut-Type"] == "test.doubled@2")
            #expect(output.causedBy == inputID)
            #expect(output.id == Wire.outputID(source: inputID, handler: "double", index: 0))
            let value = try JSONParser.parse(output.payload)
            #expect(value["sensor"] == "s1")
            #expect(value["doubled"].doubleValue == 42)
        }
    }

    @Test("10,000 records through the NDJSON endpoint arrive exactly once in the output table")
    func tenThousandNDJSON() async throws {
        try await withRunningApp(try Self.pipelineGraph()) { app in
            let count = 10_000
            let perRequest = 1_000
            let start = ContinuousClock.now
            for chunk in stride(from: 0, to: count, by: perRequest) {
                let body = (chunk..<chunk + perRequest).map { #"{"sensor":"s\#($0)","value":\#($0)}"# }.joined(separator: "\n")
                let response = try await app.post("/v1/tables/readings/records", body: body, contentType: "application/x-ndjson")
                #expect(response.status == 202)
                #expect(response.body["accepted"].intValue == perRequest)
            }
            let outputs = try await app.records(in: "doubled", atLeast: count, timeout: .seconds(120))
            let elapsed = ContinuousClock.now - start
            let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
            print(
                "NDJSON 10,000 records: ingest → handler → output persisted in \(String(format: "%.2f", seconds)) s = \(Int(Double(count) / seconds)) records/s (debug build)"
            )

            #expect(outputs.count == count)
            let sensors = Set(outputs.compactMap { try? JSONParser.parse($0.payload)["sensor"].stringValue })
            #expect(sensors.count == count)
            let causes = Set(outputs.compactMap(\.causedBy))
            #expect(causes.count == count)
            let ids = Set(outputs.compactMap(\.id))
            #expect(ids.count == count)
            let inputs = try await app.records(in: "readings", atLeast: count, timeout: .seconds(60))
            #expect(Set(inputs.compactMap(\.id)) == causes)
        }
    }

    @Test("A handler that throws is retried and its record is not lost")
    func throwingHandlerIsRetried() async throws {
        let attempts = Mutex<[String: Int]>([:])
        var app = AppBuilder(name: "Flaky")
        let inputs = app.table("inputs")
        let outputs = app.table("outputs")
        inputs.onNewRecords("flaky", options: HandlerOptions(batchSize: 10, maxAttempts: 5, retryBackoff: [.milliseconds(100)])) {
            records,
            ctx in
            for entry in records.entries {
                let n = attempts.withLock { counts -> Int in
                    counts[entry.id, default: 0] += 1
                    return counts[entry.id]!
                }
                if n < 3 { throw ConfigurationError("transient failure #\(n)") }
            }
            try await outputs.append(records.map { ["seen": $0["n"]] as JSONValue }, ctx)
        }
        let graph = try app.build()
        try await withRunningApp(graph) { app in
            let response = try await app.post("/v1/tables/inputs/records", body: #"[{"n":1},{"n":2},{"n":3}]"#)
            #expect(response.status == 202)
            let out = try await app.records(in: "outputs", atLeast: 3)
            #expect(out.count == 3)
            #expect(Set(out.compactMap { try? JSONParser.parse($0.payload)["seen"].intValue }) == [1, 2, 3])
            let counts = attempts.withLock { $0 }
            #expect(counts.values.allSatisfy { $0 >= 3 })
        }
    }

    @Test("After maxAttempts a failing record goes to the dead-letter subject with the error")
    func deadLetter() async throws {
        var app = AppBuilder(name: "Failing")
        let inputs = app.table("inputs")
        inputs.onNewRecords("always-fails", options: HandlerOptions(batchSize: 10, maxAttempts: 2, retryBackoff: [.milliseconds(50)])) {
            _,
            _ in
            throw ConfigurationError("the database is on fire")
        }
        let graph = try app.build()
        try await withRunningApp(graph) { app in
            let response = try await app.post("/v1/tables/inputs/records", body: #"{"n":7}"#)
            #expect(response.status == 202)
            let inputID = try #require(response.body["ids"][0].stringValue)
            let dead = try await StreamAudit.read(
                connection: app.connection,
                stream: app.stream,
                subject: Wire.deadLetterSubject(tenant: "default", handler: "always-fails"),
                atLeast: 1
            )
            #expect(dead.count == 1)
            let record = try #require(dead.first)
            #expect(record.headers["Aut-Error"]?.contains("the database is on fire") == true)
            #expect(record.headers["Aut-Attempts"] == "2")
            #expect(record.headers["Aut-Handler"] == "always-fails")
            #expect(record.headers["Aut-Record-Id"] == inputID)
            let first = try #require(record.headers["Aut-First-Failure"].flatMap(ISO8601.parse))
            let last = try #require(record.headers["Aut-Last-Failure"].flatMap(ISO8601.parse))
            #expect(first < last, "first failure \(first) before last \(last)")
            #expect(try JSONParser.parse(record.payload)["n"] == 7)
        }
    }

    @Test("A schedule fires and its handler runs with the tick")
    func scheduleFires() async throws {
        var app = AppBuilder(name: "Ticking")
        let seen = app.table("seen")
        app.schedule("every-second", .every(.seconds(1))) { tick, ctx in
            try await seen.append(["schedule": .string(tick.schedule), "fire_time": .string(tick.fireTime)], ctx)
        }
        let graph = try app.build()
        try await withRunningApp(graph) { app in
            let ticks = try await StreamAudit.read(
                connection: app.connection,
                stream: app.stream,
                subject: Wire.scheduleSubject(tenant: "default", schedule: "every-second"),
                atLeast: 2,
                timeout: .seconds(10)
            )
            #expect(ticks.count >= 2)
            #expect(ticks.allSatisfy { $0.id?.hasPrefix("tick-every-second-") == true })
            let outputs = try await app.records(in: "seen", atLeast: 2, timeout: .seconds(10))
            #expect(outputs.count >= 2)
            let first = try JSONParser.parse(try #require(outputs.first).payload)
            #expect(first["schedule"] == "every-second")
            let fireTime = try #require(first["fire_time"].stringValue.flatMap(ISO8601.parse))
            #expect(fireTime.timeIntervalSince1970.truncatingRemainder(dividingBy: 1) == 0)
        }
    }
}
