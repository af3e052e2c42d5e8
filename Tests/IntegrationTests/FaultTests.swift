import AsyncHTTPClient
import Autonomous
import AutonomousTesting
import Deploy
import Foundation
import NATS
import NIOCore
import NIOHTTP1
import Synchronization
import Testing

/// Faults injected into real processes started by the `process` deploy engine.
@Suite("Faults against real processes", .serialized)
struct FaultTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    static let orderFlow = root.appendingPathComponent(".build/debug/OrderFlow").path

    func specification(_ name: String) throws -> ProcessCluster.Specification {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("aut-fault-\(name)-\(UUID().uuidString)").path
        var specification = ProcessCluster.Specification(app: Self.orderFlow, directory: directory)
        specification.useFreePorts()
        specification.logLevel = "warning"
        // Records held by a killed worker come back after this many seconds.
        specification.environment = ["AUTONOMOUS_ACK_WAIT": "3"]
        return specification
    }

    /// Starts a cluster, runs `body`, and always stops the cluster and removes its directory.
    func withCluster<T: Sendable>(
        _ specification: ProcessCluster.Specification,
        _ body: (ProcessCluster) async throws -> T
    ) async throws -> T {
        let cluster = try await ProcessCluster.up(specification, logger: TestNATSServer.logger)
        do {
            let result = try await body(cluster)
            await cluster.down()
            try? FileManager.default.removeItem(atPath: specification.directory)
            return result
        } catch {
            await cluster.down()
            try? FileManager.default.removeItem(atPath: specification.directory)
            throw error
        }
    }

    static func order(_ batch: Int, _ i: Int) -> String {
        #"{"order_id":"o-\#(batch)-\#(i)","customer":"c\#(i % 11)","items":[{"sku":"s","quantity":1,"unit_price":\#(i % 500)}]}"#
    }

    /// Posts one NDJSON batch; returns the status (0 for a transport error) and how long it took.
    func post(_ url: String, key: String, body: String, table: String = "orders", timeout: Duration = .seconds(30)) async -> (Int, Duration)
    {
        let start = ContinuousClock.now
        var request = HTTPClientRequest(url: url + "/v1/tables/\(table)/records")
        request.method = .POST
        request.headers.add(name: "Content-Type", value: "application/x-ndjson")
        request.headers.add(name: "Idempotency-Key", value: key)
        request.body = .bytes(ByteBuffer(string: body))
        guard let response = try? await HTTPClient.shared.execute(request, timeout: .seconds(timeout.components.seconds)) else {
            return (0, ContinuousClock.now - start)
        }
        _ = try? await response.body.collect(upTo: 1 << 20)
        return (Int(response.status.code), ContinuousClock.now - start)
    }

    /// Reads every record of `table` (default: OrderFlow's enriched orders); returns how many
    /// there are and the distinct values of `field` among them.
    func audit(
        _ natsURL: String,
        table: String = "enriched_orders",
        field: String = "order_id",
        expected: Set<String>
    ) async throws -> (outputs: Int, unique: Set<String>) {
        var configuration = NATSConnection.Configuration(url: natsURL)
        configuration.connectTimeout = .seconds(10)
        let connection = try await NATSConnection.connect(configuration: configuration, logger: TestNATSServer.logger)
        do {
            let records = try await StreamAudit.read(
                connection: connection,
                stream: "AUT_DEFAULT_tbl_\(table)",
                subject: "aut.default.tbl.\(table)",
                atLeast: expected.count,
                timeout: .seconds(180)
            )
            await connection.close()
            let ids = records.compactMap { try? JSONParser.parse($0.payload)[field].stringValue }
            return (records.count, Set(ids))
        } catch {
            await connection.close()
            throw error
        }
    }

    /// Runs `body` while a worker (slot 0, then 1, …) is killed with SIGKILL every 2 s; returns
    /// what `body` returned and how many kills there were.
    func killingWorkers<T: Sendable>(of cluster: ProcessCluster, _ body: () async throws -> T) async throws -> (T, kills: Int) {
        let done = Mutex(false)
        let chaos = Task {
            var kills = 0
            while !done.withLock({ $0 }) {
                try? await Task.sleep(for: .seconds(2))
                if done.withLock({ $0 }) { break }
                await cluster.signal(SIGKILL, role: "worker", slot: kills % 2)
                kills += 1
            }
            return kills
        }
        do {
            let result = try await body()
            done.withLock { $0 = true }
            return (result, await chaos.value)
        } catch {
            done.withLock { $0 = true }
            _ = await chaos.value
            throw error
        }
    }

    /// Posts NDJSON batches `0..<batches` of `table` from `senders` concurrent clients, each
    /// retried until accepted (its Idempotency-Key is `key(b)`).
    func postBatches(
        _ ingress: String,
        batches: Int,
        senders: Int,
        table: String = "orders",
        key: @escaping @Sendable (Int) -> String,
        body: @escaping @Sendable (Int) -> String
    ) async throws {
        try await withThrowingTaskGroup(of: Void.self) { group in
            for sender in 0..<senders {
                group.addTask {
                    for b in stride(from: sender, to: batches, by: senders) {
                        let text = body(b)
                        var accepted = false
                        for _ in 0..<50 where !accepted {
                            let (status, _) = await post(ingress, key: key(b), body: text, table: table)
                            accepted = status == 202
                            if !accepted { try await Task.sleep(for: .milliseconds(200)) }
                        }
                        #expect(accepted, "batch \(b) was never accepted")
                    }
                }
            }
            try await group.waitForAll()
        }
    }

    @Test("100,000 records while workers are killed with kill -9 and restarted: every output exactly once")
    func killWorkers() async throws {
        var specification = try specification("kill")
        specification.replicas = ["ingress": 1, "worker": 2]
        try await withCluster(specification) { cluster in
            let ingress = await cluster.ingressURLs()[0]
            let batches = 100
            let perBatch = 1_000
            let start = ContinuousClock.now
            let expected = Set((0..<batches).flatMap { b in (0..<perBatch).map { "o-\(b)-\($0)" } })
            let ((outputs, unique), kills) = try await killingWorkers(of: cluster) {
                try await postBatches(ingress, batches: batches, senders: 4, key: { "b\($0)" }) { b in
                    (0..<perBatch).map { Self.order(b, $0) }.joined(separator: "\n")
                }
                return try await audit(cluster.operatorURL, expected: expected)
            }
            let elapsed = ContinuousClock.now - start
            let restarts = await cluster.restarts
            print(
                "kill -9 test: \(batches * perBatch) records, \(kills) worker kills, \(restarts) restarts, \(outputs) outputs in \(elapsed)"
            )
            #expect(kills >= 2)
            #expect(outputs == expected.count, "no output lost or doubled")
            #expect(unique == expected)
        }
    }

    @Test("Handlers that append in a for loop, with forEach, or to two tables per record: 50,000 records under kill -9, every output once")
    func killLoopingWorkers() async throws {
        var specification = try specification("loops")
        specification.app = CoordinatorFailoverTests.fixture
        specification.replicas = ["ingress": 1, "worker": 2]
        try await withCluster(specification) { cluster in
            let ingress = await cluster.ingressURLs()[0]
            let batches = 50
            let perBatch = 1_000
            let expected = Set((0..<batches).flatMap { b in (0..<perBatch).map { "r-\(b)-\($0)" } })
            let (counts, kills) = try await killingWorkers(of: cluster) {
                try await postBatches(ingress, batches: batches, senders: 2, table: "loop_in", key: { "loops-\($0)" }) { b in
                    (0..<perBatch).map { #"{"id":"r-\#(b)-\#($0)"}"# }.joined(separator: "\n")
                }
                var counts: [String: (outputs: Int, unique: Int)] = [:]
                for table in ["loop_for", "loop_foreach", "loop_pair_a", "loop_pair_b"] {
                    let (outputs, unique) = try await audit(cluster.operatorURL, table: table, field: "id", expected: expected)
                    counts[table] = (outputs, unique.intersection(expected).count)
                }
                return counts
            }
            print("loop handlers under kill -9: \(expected.count) records, \(kills) kills, outputs \(counts)")
            #expect(kills >= 2)
            for (table, count) in counts {
                #expect(count.outputs == expected.count, "\(table): no output lost or doubled")
                #expect(count.unique == expected.count, "\(table): every record's output")
            }
        }
    }

    @Test("nats-server stopped for 5 s mid-load: 503s during the outage, no hang, every 2xx record processed")
    func natsOutage() async throws {
        var specification = try specification("outage")
        specification.replicas = ["ingress": 1, "worker": 1]
        try await withCluster(specification) { cluster in
            let ingress = await cluster.ingressURLs()[0]
            let outcomes = Mutex<[(key: String, status: Int, seconds: Double)]>([])
            let stop = Mutex(false)
            let load = Task {
                var n = 0
                while !stop.withLock({ $0 }) {
                    let key = "k\(n)"
                    let body = (0..<20).map { Self.order(n, $0) }.joined(separator: "\n")
                    let (status, duration) = await post(ingress, key: key, body: body, timeout: .seconds(20))
                    let seconds = Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
                    outcomes.withLock { $0.append((key, status, seconds)) }
                    n += 1
                    try? await Task.sleep(for: .milliseconds(20))
                }
            }
            try await Task.sleep(for: .seconds(2))
            try await cluster.stopNATS()
            try await Task.sleep(for: .seconds(5))
            try await cluster.restartNATS()
            try await Task.sleep(for: .seconds(4))
            stop.withLock { $0 = true }
            await load.value

            let all = outcomes.withLock { $0 }
            let accepted = all.filter { $0.status == 202 }
            let refused = all.filter { $0.status != 202 }
            print(
                "outage test: \(all.count) requests, \(accepted.count) accepted, \(refused.count) refused (\(Set(refused.map(\.status))))"
            )
            #expect(!refused.isEmpty, "some requests fell in the outage")
            let statuses = Set(refused.map(\.status))
            let slowest = all.map(\.seconds).max() ?? 0
            let recovered = all.suffix(5).filter { $0.status == 202 }.count
            #expect(statuses == [503], "refusals are 503: \(statuses)")
            #expect(slowest < 7, "no request hung past the publish timeout (5 s); slowest \(slowest) s")
            #expect(accepted.count > 10)
            #expect(recovered == 5, "the ingress recovered by itself")

            // Every record of every 2xx is enriched exactly once.
            let expected = Set(
                accepted.flatMap { outcome in
                    let n = Int(outcome.key.dropFirst())!
                    return (0..<20).map { "o-\(n)-\($0)" }
                }
            )
            let (_, unique) = try await audit(cluster.operatorURL, expected: expected)
            #expect(expected.isSubset(of: unique), "missing: \(expected.subtracting(unique).prefix(5))")
        }
    }

    @Test("Ingress processes find each other over NATS, and one that stops is counted out at once")
    func ingressPeers() async throws {
        var specification = try specification("peers")
        specification.replicas = ["ingress": 2, "worker": 0]
        try await withCluster(specification) { cluster in
            let urls = await cluster.ingressHealthURLs()
            #expect(urls.count == 2)
            @Sendable func nodes(_ url: String) async -> Double? {
                guard let text = try? await MetricsTests.get(url + "/metrics").text else { return nil }
                return MetricsTests.value(text, "autonomous_ingress_nodes")
            }
            // Each shares tenant limits between the two.
            #expect(
                try await eventually(timeout: .seconds(15)) {
                    let first = await nodes(urls[0])
                    let second = await nodes(urls[1])
                    return first == 2 && second == 2
                }
            )
            // SIGTERM to the second: it says it is leaving, so the first counts it out for that
            // reason, not for going quiet.
            try await cluster.scale("ingress", to: 1)
            #expect(try await eventually(timeout: .seconds(10)) { await nodes(urls[0]) == 1 })
            let metrics = try await MetricsTests.get(urls[0] + "/metrics").text
            #expect(
                MetricsTests.value(metrics, #"autonomous_ingress_nodes_departed_total{reason="leaving"}"#) == 1,
                "counted out by its leaving message"
            )
            #expect((MetricsTests.value(metrics, #"autonomous_ingress_nodes_departed_total{reason="silent"}"#) ?? 0) == 0)
        }
    }

    /// Before the fix the poison record was redelivered after every ack wait, crashed the
    /// restarted worker each time (with the batch it came in), and was never dead-lettered.
    @Test("A record that traps its handler is dead-lettered after maxAttempts crashes; other records and tenants keep flowing")
    func poisonRecord() async throws {
        var specification = try specification("poison")
        specification.app = CoordinatorFailoverTests.fixture
        let token = "poison-test-admin-token-0123456789"
        specification.environment = ["AUTONOMOUS_ACK_WAIT": "2", "AUTONOMOUS_ADMIN_TOKEN": token]
        try await withCluster(specification) { cluster in
            let ingress = await cluster.ingressURLs()[0]
            let admin = "http://127.0.0.1:\(specification.healthPort)/v1/admin"
            var create = HTTPClientRequest(url: admin + "/tenants")
            create.method = .POST
            create.headers.add(name: "Authorization", value: "Bearer \(token)")
            create.headers.add(name: "Content-Type", value: "application/json")
            create.body = .bytes(ByteBuffer(string: #"{"name":"acme"}"#))
            let created = try await HTTPClient.shared.execute(create, timeout: .seconds(10))
            #expect(created.status.code == 201)
            var keyRequest = HTTPClientRequest(url: admin + "/tenants/acme/keys")
            keyRequest.method = .POST
            keyRequest.headers.add(name: "Authorization", value: "Bearer \(token)")
            let keyResponse = try await HTTPClient.shared.execute(keyRequest, timeout: .seconds(10))
            let acmeKey = try #require(
                try JSONParser.parse(Array(buffer: try await keyResponse.body.collect(upTo: 1 << 16)))["key"].stringValue
            )
            @Sendable func post(_ tenant: String, _ numbers: Range<Int>, poison: Int? = nil) async throws {
                let body = numbers.map { n in
                    n == poison ? #"{"n":\#(n),"quantity":9223372036854775807}"# : #"{"n":\#(n),"quantity":2}"#
                }.joined(separator: "\n")
                // The tenant's streams appear once the coordinator has provisioned them.
                #expect(
                    try await eventually(timeout: .seconds(30)) {
                        var request = HTTPClientRequest(url: ingress + "/v1/tenants/\(tenant)/tables/poison_in/records")
                        request.method = .POST
                        request.headers.add(name: "Content-Type", value: "application/x-ndjson")
                        request.headers.add(name: "Idempotency-Key", value: "\(tenant)-\(numbers.lowerBound)")
                        if tenant == "acme" { request.headers.add(name: "Authorization", value: "Bearer \(acmeKey)") }
                        request.body = .bytes(ByteBuffer(string: body))
                        let response = try await HTTPClient.shared.execute(request, timeout: .seconds(10))
                        if response.status.code != 202 {
                            let text = String(buffer: try await response.body.collect(upTo: 1 << 16))
                            print("poison test: \(tenant) got \(response.status.code) \(text)")
                        }
                        return response.status.code == 202
                    }
                )
            }
            try await post("default", 0..<100, poison: 50)
            try await post("acme", 0..<100)
            var configuration = NATSConnection.Configuration(url: cluster.operatorURL)
            configuration.connectTimeout = .seconds(10)
            let connection = try await NATSConnection.connect(configuration: configuration, logger: TestNATSServer.logger)
            defer { Task { await connection.close() } }
            let letters = try await StreamAudit.read(
                connection: connection,
                stream: "AUT_DEFAULT",
                subject: "aut.default.dlq.poison",
                atLeast: 1,
                timeout: .seconds(120)
            )
            #expect(letters.count == 1, "\(letters.map { "\($0.headers["Aut-Record-Id"] ?? "?"): \($0.headers["Aut-Error"] ?? "?")" })")
            let reason = letters.first?.headers["Aut-Error"] ?? ""
            #expect(reason.contains("the process stopped while handling this record 3 times"), "\(reason)")
            #expect(try JSONParser.parse(letters.first?.payload ?? [])["n"] == 50)
            // Records that arrive after it flow, for both tenants.
            try await post("default", 100..<120)
            try await post("acme", 100..<120)
            for (tenant, count) in [("default", 119), ("acme", 120)] {
                let outputs = try await StreamAudit.read(
                    connection: connection,
                    stream: "AUT_\(tenant.uppercased())_tbl_poison_out",
                    subject: "aut.\(tenant).tbl.poison_out",
                    atLeast: count,
                    timeout: .seconds(120)
                )
                let numbers = Set(outputs.compactMap { try? JSONParser.parse($0.payload)["n"].intValue })
                #expect(outputs.count == count, "\(tenant): every record but the poison one, once")
                #expect(numbers.count == count)
            }
            let restarts = await cluster.restarts
            print("poison record: dead-lettered after \(restarts) worker restarts; reason: \(reason)")
            #expect(restarts >= 1, "the poison record crashed the worker")
            #expect(restarts <= 3, "no more restarts than maxAttempts")
        }
    }

    @Test("A worker stopped with SIGTERM finishes and acks what it holds: no redeliveries")
    func gracefulWorkerStop() async throws {
        var specification = try specification("sigterm")
        specification.replicas = ["ingress": 1, "worker": 2]
        specification.environment = [:]  // default 30 s ack wait: a redelivery would show in the audit
        try await withCluster(specification) { cluster in
            let ingress = await cluster.ingressURLs()[0]
            let batches = 30
            let load = Task {
                for b in 0..<batches {
                    let body = (0..<500).map { Self.order(b, $0) }.joined(separator: "\n")
                    let (status, _) = await post(ingress, key: "g\(b)", body: body)
                    #expect(status == 202)
                }
            }
            try await Task.sleep(for: .seconds(1))
            try await cluster.scale("worker", to: 1)
            await load.value
            let expected = Set((0..<batches).flatMap { b in (0..<500).map { "o-\(b)-\($0)" } })
            let (outputs, unique) = try await audit(cluster.operatorURL, expected: expected)
            var configuration = NATSConnection.Configuration(url: cluster.operatorURL)
            configuration.connectTimeout = .seconds(5)
            let connection = try await NATSConnection.connect(configuration: configuration, logger: TestNATSServer.logger)
            let state = try await connection.consumerState(stream: "AUT_DEFAULT_tbl_orders", consumer: "h_enrich-orders")
            await connection.close()
            #expect(outputs == expected.count)
            #expect(unique == expected)
            #expect(state?.numRedelivered == 0, "a draining worker caused redeliveries")
            #expect(state?.numAckPending == 0)
        }
    }

    @Test("Scale-out: the same backlog with 1, 2 and 4 worker processes (figures, not thresholds)")
    func scaleOut() async throws {
        var figures: [String] = []
        for workers in [1, 2, 4] {
            var specification = try specification("scale\(workers)")
            specification.replicas = ["ingress": 1, "worker": 0]
            try await withCluster(specification) { cluster in
                let ingress = await cluster.ingressURLs()[0]
                let total = 40_000
                for b in 0..<(total / 1000) {
                    let body = (0..<1000).map { Self.order(b, $0) }.joined(separator: "\n")
                    let (status, _) = await post(ingress, key: "s\(b)", body: body)
                    #expect(status == 202)
                }
                var configuration = NATSConnection.Configuration(url: cluster.operatorURL)
                configuration.connectTimeout = .seconds(5)
                let connection = try await NATSConnection.connect(configuration: configuration, logger: TestNATSServer.logger)
                let start = ContinuousClock.now
                try await cluster.scale("worker", to: workers)
                var drained = false
                while ContinuousClock.now - start < .seconds(120) {
                    if let state = try await connection.consumerState(
                        stream: "AUT_DEFAULT_tbl_enriched_orders",
                        consumer: "h_flag-high-value"
                    ),
                        let enrich = try await connection.consumerState(stream: "AUT_DEFAULT_tbl_orders", consumer: "h_enrich-orders"),
                        enrich.numPending == 0, enrich.numAckPending == 0, state.numPending == 0, state.numAckPending == 0,
                        enrich.ackFloorStreamSequence > 0
                    {
                        drained = true
                        break
                    }
                    try await Task.sleep(for: .milliseconds(50))
                }
                let elapsed = ContinuousClock.now - start
                await connection.close()
                #expect(drained)
                let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
                figures.append("\(workers) worker(s): \(Int(Double(total) / seconds)) orders/s through 2 handlers (incl. process start)")
            }
        }
        print("scale-out (debug build, 2 cores): " + figures.joined(separator: "; "))
    }

    @Test("Three-node NATS cluster with R3 streams: one node killed mid-load, nothing acknowledged is lost")
    func clusterNodeLoss() async throws {
        var specification = try specification("r3")
        specification.natsNodes = 3
        specification.replicas = ["ingress": 1, "worker": 2]
        try await withCluster(specification) { cluster in
            let ingress = await cluster.ingressURLs()[0]
            let accepted = Mutex<[Int]>([])
            let batches = 60
            let load = Task {
                for b in 0..<batches {
                    let body = (0..<500).map { Self.order(b, $0) }.joined(separator: "\n")
                    for _ in 0..<40 {
                        let (status, _) = await post(ingress, key: "r\(b)", body: body)
                        if status == 202 {
                            accepted.withLock { $0.append(b) }
                            break
                        }
                        try? await Task.sleep(for: .milliseconds(250))
                    }
                }
            }
            try await Task.sleep(for: .seconds(2))
            // Node 0 is the one every client connected to first: its loss forces reconnects too.
            await cluster.killNATSNode(0)
            #expect(accepted.withLock { $0.count } < batches, "the node must die while load is still being sent")
            await load.value
            let batchesAccepted = accepted.withLock { $0 }
            let expected = Set(batchesAccepted.flatMap { b in (0..<500).map { "o-\(b)-\($0)" } })
            let survivors = cluster.operatorURL.split(separator: ",").dropFirst().joined(separator: ",")
            let (outputs, unique) = try await audit(survivors, expected: expected)
            var configuration = NATSConnection.Configuration(url: survivors)
            configuration.connectTimeout = .seconds(5)
            let connection = try await NATSConnection.connect(configuration: configuration, logger: TestNATSServer.logger)
            let stream = try await connection.streamState("AUT_DEFAULT_tbl_orders")
            await connection.close()
            #expect(stream?.replicas == 3)
            print("R3 test: \(batchesAccepted.count) of \(batches) batches accepted, \(outputs) outputs")
            #expect(batchesAccepted.count == batches, "every batch was accepted in the end (retries after the node loss)")
            #expect(outputs == expected.count)
            #expect(unique == expected)
        }
    }
}
