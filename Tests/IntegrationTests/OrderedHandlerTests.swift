import Autonomous
import AutonomousTesting
import Deploy
import Foundation
import NATS
import Testing

/// Ordered handlers: per-key order and exactly-once outputs, in one process and across
/// worker processes with one of them killed.
@Suite("Ordered handlers", .serialized)
struct OrderedHandlerTests {
    /// Checks the outputs: each input seq exactly once, and per key in increasing seq order.
    static func check(_ outputs: [AuditedRecord], expected: Int) -> (missing: Int, doubled: Int, outOfOrder: Int) {
        var seen: [Int64: Int] = [:]
        var lastByKey: [String: Int64] = [:]
        var outOfOrder = 0
        for output in outputs {
            guard let value = try? JSONParser.parse(output.payload), let seq = value["seq"].intValue.map(Int64.init),
                let key = value["key"].stringValue
            else { continue }
            seen[seq, default: 0] += 1
            if let last = lastByKey[key], seq <= last, seen[seq] == 1 { outOfOrder += 1 }
            if seen[seq] == 1 { lastByKey[key] = max(lastByKey[key] ?? -1, seq) }
        }
        let missing = (0..<Int64(expected)).filter { seen[$0] == nil }.count
        let doubled = seen.values.filter { $0 > 1 }.count
        return (missing, doubled, outOfOrder)
    }

    static func ndjson(_ range: Range<Int>, keys: Int) -> String {
        range.map { #"{"key":"k\#($0 % keys)","seq":\#($0)}"# }.joined(separator: "\n")
    }

    @Test("In one process: records of a key are handled in order, a failing record holds its key back, outputs once")
    func inProcess() async throws {
        var app = AppBuilder(name: "Ordered")
        let events = app.table("events")
        let out = app.table("ordered_out")
        let plain = app.table("plain_out")
        events.onNewRecords("in-order", options: HandlerOptions(batchSize: 20, retryBackoff: [.milliseconds(50)]).ordered(by: "key", partitions: 4)) { records, ctx in
            for entry in records.entries where entry.value["seq"] == 7 && entry.metadata.deliveryCount < 3 {
                throw ConfigurationError("record 7 fails twice")
            }
            try await out.append(records.map { ["key": $0["key"], "seq": $0["seq"]] }, ctx)
        }
        // An unordered handler of the same (now partitioned) table sees every record too.
        events.onNewRecords("copy") { records, ctx in
            try await plain.append(records.map { ["seq": $0["seq"]] }, ctx)
        }
        let graph = try app.build()
        #expect(graph.table("events")?.partitioning == HandlerOrdering(field: "key", partitions: 4))
        try await withRunningApp(graph) { app in
            for start in stride(from: 0, to: 2_000, by: 500) {
                let (status, _) = try await app.post(
                    "/v1/tables/events/records", body: Self.ndjson(start..<(start + 500), keys: 20), contentType: "application/x-ndjson"
                )
                #expect(status == 202)
            }
            let subjects = try await app.connection.readAll(stream: "AUT_DEFAULT", subject: "aut.default.tbl.events.>", headers: [], atLeast: 2_000)
            #expect(Set(subjects.map(\.subject)).count == 4, "records spread over the 4 partition subjects")
            let outputs = try await app.records(in: "ordered_out", atLeast: 2_000)
            let result = Self.check(outputs, expected: 2_000)
            #expect(result.missing == 0 && result.doubled == 0 && result.outOfOrder == 0, "\(result)")
            let copies = try await app.records(in: "plain_out", atLeast: 2_000)
            #expect(copies.count == 2_000)
        }
    }
}
