import Autonomous
import AutonomousTesting
import ClusterCore
import Deploy
import Foundation
import Storages
import Testing

/// Storage sinks in real processes, under the faults the other handlers survive.
@Suite("Storage sinks against real processes", .serialized)
struct StorageFaultTests {
    /// OrderFlow keeping `orders` and `enriched_orders` in the cluster's PostgreSQL.
    func specification(_ name: String) throws -> (ProcessCluster.Specification, deploymentFile: String) {
        var (specification, file) = (try FaultTests().specification(name), "")
        let port = LoopbackPorts.freeBase(spans: [0..<1])
        specification.postgres = .init(port: port, database: "kept")
        try FileManager.default.createDirectory(atPath: specification.directory, withIntermediateDirectories: true)
        file = specification.directory + "/autonomous.json"
        let json = """
            {
              "storages": [{"name": "orders-db", "type": "database", "url": "postgres://postgres@127.0.0.1:\(port)/kept"}],
              "tables": {"orders": {"storage": "orders-db"}, "enriched_orders": {"storage": "orders-db"}}
            }
            """
        try Data(json.utf8).write(to: URL(fileURLWithPath: file))
        specification.environment["AUTONOMOUS_DEPLOYMENT_FILE"] = file
        return (specification, file)
    }

    /// Every order id kept in `table` for the default tenant, and how many rows there are.
    func kept(_ url: String, table: TableDefinition, expected: Int) async throws -> (rows: Int, orders: Set<String>) {
        try await PostgresTableStorage.withStorage(url: url, logger: TestNATSServer.logger) { storage in
            // The sink trails the stream by a batch or two; wait for it.
            var rows = 0
            let clock = ContinuousClock()
            let deadline = clock.now.advanced(by: .seconds(180))
            while clock.now < deadline {
                rows = try await storage.count(RecordQuery(), table: table, tenant: "default")
                if rows >= expected { break }
                try await Task.sleep(for: .milliseconds(500))
            }
            try await Task.sleep(for: .seconds(2))  // anything more would be a double
            var orders = Set<String>()
            var total = 0
            var cursor: String?
            repeat {
                let page = try await storage.read(
                    RecordQuery(order: .oldestFirst, limit: RecordQuery.maximumLimit, cursor: cursor),
                    table: table,
                    tenant: "default"
                )
                total += page.records.count
                for record in page.records {
                    if let id = try? JSONParser.parse(record.payload)["order_id"].stringValue { orders.insert(id) }
                }
                cursor = page.nextCursor
            } while cursor != nil
            return (total, orders)
        }
    }

    @Test("S3 sink: 100,000 records while workers are killed with kill -9: boto3 and DuckDB find each record once")
    func killWorkersWhileWritingObjects() async throws {
        try await LocalS3.with { s3 in
            try await s3.createBucket("orders-lake")
            var specification = try FaultTests().specification("lake")
            try FileManager.default.createDirectory(atPath: specification.directory, withIntermediateDirectories: true)
            let file = specification.directory + "/autonomous.json"
            let json = """
                {
                  "storages": [{"name": "lake", "type": "file", "url": "s3://orders-lake/raw", "endpoint": "\(s3.endpoint)",
                                "access_key_id": {"secret": "LAKE_KEY_ID"}, "secret_access_key": {"secret": "LAKE_SECRET"}}],
                  "tables": {"orders": {"storage": "lake"}}
                }
                """
            try Data(json.utf8).write(to: URL(fileURLWithPath: file))
            specification.environment["AUTONOMOUS_DEPLOYMENT_FILE"] = file
            specification.environment["LAKE_KEY_ID"] = "test"
            specification.environment["LAKE_SECRET"] = "test"
            specification.replicas = ["ingress": 1, "worker": 2]
            let faults = FaultTests()
            try await faults.withCluster(specification) { cluster in
                let ingress = await cluster.ingressURLs()[0]
                let batches = 100
                let perBatch = 1_000
                let expected = batches * perBatch
                // Workers die while the records are posted and while the sink writes them out;
                // wait for every record, then a little longer: anything more would be a double.
                let (_, kills) = try await faults.killingWorkers(of: cluster) {
                    try await faults.postBatches(ingress, batches: batches, senders: 4, key: { "lake-\($0)" }) { b in
                        (0..<perBatch).map { FaultTests.order(b, $0) }.joined(separator: "\n")
                    }
                    let clock = ContinuousClock()
                    let deadline = clock.now.advanced(by: .seconds(300))
                    while clock.now < deadline {
                        let audit = try await s3.audit(bucket: "orders-lake", prefix: "raw", table: "orders", tenant: "default")
                        if (audit["python"]["lines"].intValue ?? 0) >= expected { break }
                        try await Task.sleep(for: .seconds(2))
                    }
                }
                try await Task.sleep(for: .seconds(3))
                var audit: JSONValue = .null
                audit = try await s3.audit(bucket: "orders-lake", prefix: "raw", table: "orders", tenant: "default")
                print("S3 sink under kill -9: \(expected) records, \(kills) kills, audit \(audit)")
                #expect(kills >= 2)
                #expect(audit["python"]["lines"].intValue == expected, "boto3: every record once")
                #expect(audit["python"]["distinct_orders"].intValue == expected)
                #expect(audit["duckdb"]["rows"].intValue == expected, "DuckDB: every record once")
                #expect(audit["duckdb"]["distinct_ids"].intValue == expected)
                #expect(audit["duckdb"]["distinct_orders"].intValue == expected)
            }
        }
    }

    static func definition(_ name: String) throws -> TableDefinition {
        var builder = AppBuilder(name: "audit")
        return builder.table(name).definition
    }

    @Test("PostgreSQL sink: 100,000 records while workers are killed with kill -9: each record id kept exactly once")
    func killWorkersWhileKeeping() async throws {
        var (specification, _) = try specification("kept")
        specification.replicas = ["ingress": 1, "worker": 2]
        let faults = FaultTests()
        try await faults.withCluster(specification) { cluster in
            let ingress = await cluster.ingressURLs()[0]
            let postgresURL = try #require(cluster.postgresURL)
            let batches = 100
            let perBatch = 1_000
            let expected = Set((0..<batches).flatMap { b in (0..<perBatch).map { "o-\(b)-\($0)" } })
            let ((orders, enriched), kills) = try await faults.killingWorkers(of: cluster) {
                try await faults.postBatches(ingress, batches: batches, senders: 4, key: { "kept-\($0)" }) { b in
                    (0..<perBatch).map { FaultTests.order(b, $0) }.joined(separator: "\n")
                }
                let orders = try await kept(postgresURL, table: try Self.definition("orders"), expected: expected.count)
                let enriched = try await kept(postgresURL, table: try Self.definition("enriched_orders"), expected: expected.count)
                return (orders, enriched)
            }
            print(
                "PostgreSQL sink under kill -9: \(expected.count) records, \(kills) kills, orders \(orders.rows) rows, enriched \(enriched.rows) rows"
            )
            #expect(kills >= 2)
            #expect(orders.rows == expected.count, "every order kept once")
            #expect(expected.subtracting(orders.orders).count == 0, "orders missing")
            #expect(enriched.rows == expected.count, "every enriched order kept once")
            #expect(expected.subtracting(enriched.orders).count == 0, "enriched orders missing")
        }
    }
}
