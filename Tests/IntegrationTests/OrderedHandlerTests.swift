import AsyncHTTPClient
import Autonomous
import AutonomousTesting
import Deploy
import Foundation
import NATS
import NIOCore
import NIOHTTP1
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
        events.onNewRecords(
            "in-order",
            options: HandlerOptions(batchSize: 20, retryBackoff: [.milliseconds(50)]).ordered(by: "key", partitions: 4)
        ) { records, ctx in
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
                    "/v1/tables/events/records",
                    body: Self.ndjson(start..<(start + 500), keys: 20),
                    contentType: "application/x-ndjson"
                )
                #expect(status == 202)
            }
            let subjects = try await app.connection.readAll(
                stream: "AUT_DEFAULT_tbl_events",
                subject: "aut.default.tbl.events.>",
                headers: [],
                atLeast: 2_000
            )
            #expect(Set(subjects.map(\.subject)).count == 4, "records spread over the 4 partition subjects")
            let outputs = try await app.records(in: "ordered_out", atLeast: 2_000)
            let result = Self.check(outputs, expected: 2_000)
            #expect(result.missing == 0 && result.doubled == 0 && result.outOfOrder == 0, "\(result)")
            let copies = try await app.records(in: "plain_out", atLeast: 2_000)
            #expect(copies.count == 2_000)
        }
    }

    @Test("A route and a handler append to a table an ordered handler reads: every record handled, in key order")
    func appendedByRouteAndHandler() async throws {
        var app = AppBuilder(name: "OrderedAppends")
        let incoming = app.table("incoming")
        let events = app.table("events")
        let out = app.table("ordered_out")
        app.post("/events") { request, ctx in
            try await events.append(try request.json(), ctx)
            return .accepted
        }
        // One batch at a time, so the forwarded records keep their order per key.
        incoming.onNewRecords("forward", options: HandlerOptions(batchSize: 50, concurrency: 1)) { records, ctx in
            for record in records { try await events.append(record, ctx) }
        }
        events.onNewRecords("in-order", options: HandlerOptions(batchSize: 20).ordered(by: "key", partitions: 4)) { records, ctx in
            try await out.append(records.map { ["key": $0["key"], "seq": $0["seq"]] }, ctx)
        }
        let graph = try app.build()
        try await withRunningApp(graph) { app in
            for seq in 0..<200 {
                let (status, _) = try await app.post("/events", body: #"{"key":"k\#(seq % 10)","seq":\#(seq)}"#)
                #expect(status == 202)
            }
            let (status, _) = try await app.post(
                "/v1/tables/incoming/records",
                body: Self.ndjson(200..<1_000, keys: 10),
                contentType: "application/x-ndjson"
            )
            #expect(status == 202)
            let stored = try await app.connection.readAll(
                stream: "AUT_DEFAULT_tbl_events",
                subject: "aut.default.tbl.events.>",
                headers: [],
                atLeast: 1_000
            )
            #expect(stored.count == 1_000, "route and handler appends went to the partition subjects")
            let outputs = try await app.records(in: "ordered_out", atLeast: 1_000)
            let result = Self.check(outputs, expected: 1_000)
            #expect(outputs.count == 1_000)
            #expect(result.missing == 0 && result.doubled == 0 && result.outOfOrder == 0, "\(result)")
        }
    }

    /// A worker process that has written outputs (waits up to 10 s for one).
    func activeWorker(_ cluster: ProcessCluster) async throws -> Int32? {
        let connection = try await NATSConnection.connect(configuration: .init(url: cluster.operatorURL), logger: TestNATSServer.logger)
        defer { Task { await connection.close() } }
        let deadline = ContinuousClock.now + .seconds(10)
        while ContinuousClock.now < deadline {
            let outputs = try await connection.readAll(
                stream: "AUT_DEFAULT_tbl_ordered_out",
                subject: "aut.default.tbl.ordered_out",
                headers: [],
                atLeast: 0,
                timeout: .seconds(1)
            )
            let writers = Set(outputs.compactMap { try? JSONParser.parse($0.payload)["pid"].intValue }.map(Int32.init))
            let workers = await cluster.processIDs()["worker"] ?? []
            if let pid = workers.first(where: writers.contains) { return pid }
            try await Task.sleep(for: .milliseconds(200))
        }
        return nil
    }

    @Test("3 worker processes, 10,000 records over 100 keys, one worker killed mid-run: per-key order, each output once")
    func acrossWorkers() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("aut-ordered-\(UUID().uuidString)").path
        var specification = ProcessCluster.Specification(app: CoordinatorFailoverTests.fixture, directory: directory)
        specification.useFreePorts()
        specification.logLevel = "notice"
        specification.replicas = ["ingress": 1, "worker": 3]
        // A slow handler keeps a backlog, so the killed worker dies in the middle of a batch.
        specification.environment = ["FIXTURE_HANDLER_DELAY_MS": "300", "AUTONOMOUS_ACK_WAIT": "30"]
        let cluster = try await ProcessCluster.up(specification, logger: TestNATSServer.logger)
        do {
            let ingress = await cluster.ingressURLs()[0]
            let total = 10_000
            let perRequest = 100
            var killedPID: Int32?
            let start = ContinuousClock.now
            for (n, first) in stride(from: 0, to: total, by: perRequest).enumerated() {
                var request = HTTPClientRequest(url: ingress + "/v1/tables/events/records")
                request.method = .POST
                request.headers.add(name: "Content-Type", value: "application/x-ndjson")
                request.headers.add(name: "Idempotency-Key", value: "batch-\(n)")
                request.body = .bytes(ByteBuffer(string: Self.ndjson(first..<(first + perRequest), keys: 100)))
                var accepted = false
                for _ in 0..<50 where !accepted {
                    if let response = try? await HTTPClient.shared.execute(request, timeout: .seconds(30)) {
                        accepted = response.status.code == 202
                        _ = try? await response.body.collect(upTo: 1 << 20)
                    }
                    if !accepted { try await Task.sleep(for: .milliseconds(200)) }
                }
                #expect(accepted, "request \(n) was never accepted")
                if n == 50 {
                    // Mid-run: kill a worker that is processing partitions.
                    killedPID = try await activeWorker(cluster)
                    if let pid = killedPID { kill(pid, SIGKILL) }
                }
                try await Task.sleep(for: .milliseconds(20))
            }
            var configuration = NATSConnection.Configuration(url: cluster.operatorURL)
            configuration.connectTimeout = .seconds(10)
            let connection = try await NATSConnection.connect(configuration: configuration, logger: TestNATSServer.logger)
            let outputs: [AuditedRecord]
            do {
                outputs = try await StreamAudit.read(
                    connection: connection,
                    stream: "AUT_DEFAULT_tbl_ordered_out",
                    subject: "aut.default.tbl.ordered_out",
                    atLeast: total,
                    timeout: .seconds(120)
                )
                await connection.close()
            } catch {
                await connection.close()
                throw error
            }
            let elapsed = ContinuousClock.now - start
            let result = Self.check(outputs, expected: total)
            let pids = Set(outputs.compactMap { try? JSONParser.parse($0.payload)["pid"].intValue })
            let logs = (try? FileManager.default.contentsOfDirectory(atPath: directory + "/logs")) ?? []
            let resumed = logs.filter { $0.hasPrefix("worker") }.map { name -> Int in
                let text = (try? String(contentsOfFile: directory + "/logs/" + name, encoding: .utf8)) ?? ""
                return text.components(separatedBy: "resuming at the ack floor").count - 1
            }.reduce(0, +)
            print(
                "ordered: \(outputs.count) outputs in \(elapsed), from \(pids.count) worker processes (killed \(killedPID.map(String.init) ?? "none")), \(resumed) partitions resumed at their ack floor, missing \(result.missing), doubled \(result.doubled), out of order \(result.outOfOrder)"
            )
            #expect(killedPID != nil)
            #expect(outputs.count == total, "each record's output appears exactly once")
            #expect(result.missing == 0 && result.doubled == 0 && result.outOfOrder == 0, "\(result)")
            #expect(pids.count >= 3, "the partitions were spread over the workers")
            #expect(resumed >= 1, "a partition of the killed worker was taken over with its batch unacknowledged")
            #expect(pids.contains(Int(killedPID ?? 0)), "the killed worker had processed records before it died")
        } catch {
            await cluster.down()
            throw error
        }
        await cluster.down()
        if ProcessInfo.processInfo.environment["KEEP_TEST_LOGS"] == nil {
            try? FileManager.default.removeItem(atPath: directory)
        } else {
            print("logs in \(directory)")
        }
    }
}
