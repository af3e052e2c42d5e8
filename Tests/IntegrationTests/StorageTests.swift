import Autonomous
import AutonomousTesting
import ClusterCore
import Deploy
import Foundation
import Storages
import Testing

/// One contract, run against every storage that keeps tables: idempotent writes, pages,
/// filters, tenants, hostile names, and migrations from the record type.
@Suite("Table storage contract", .serialized)
struct StorageTests {
    enum Kind: String, CaseIterable, Sendable { case sqlite, postgres }

    struct Order: Record {
        static let semanticType: SemanticType = "shop.order@1"
        var order_id: String
        var amount: Int
        var paid: Bool
        var note: String?
    }

    /// The same table a release later: one more field.
    struct OrderV2: Record {
        static let semanticType: SemanticType = "shop.order@1"
        var order_id: String
        var amount: Int
        var paid: Bool
        var note: String?
        var currency: String?
    }

    /// A release that changed a field's type.
    struct OrderAmountText: Record {
        static let semanticType: SemanticType = "shop.order@1"
        var order_id: String
        var amount: String
    }

    /// Field names an attacker or a careless type could choose.
    struct Hostile: Record {
        static let semanticType: SemanticType = "test.hostile@1"
        enum CodingKeys: String, CodingKey {
            case quote = "x\"; DROP TABLE orders; --"
            case apostrophe = "it's"
            case system = "_tenant"
        }
        var quote: String
        var apostrophe: String
        var system: String
    }

    static func table<Row: Record>(_ name: String, _ type: Row.Type) -> TableDefinition {
        var builder = AppBuilder(name: "storage-test")
        let handle = builder.table(name, of: Row.self)
        return handle.definition
    }

    static func record(_ id: String, _ body: String, micros: Int64, tenant: String = "acme", table: String = "orders") -> IncomingRecord {
        IncomingRecord(
            metadata: RecordMetadata(
                id: id,
                table: table,
                tenant: tenant,
                ingestTime: Date(timeIntervalSince1970: Double(micros) / 1_000_000),
                causedBy: "cause-\(id)",
                semanticType: "shop.order@1"
            ),
            payload: Array(body.utf8)
        )
    }

    func withStorage(_ kind: Kind, _ body: (any TableStorage) async throws -> Void) async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("aut-storage-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        switch kind {
        case .sqlite:
            let storage = try await SQLiteTableStorage.open(path: directory + "/tables.sqlite", logger: TestNATSServer.logger)
            do {
                try await body(storage)
                try await storage.close()
            } catch {
                try? await storage.close()
                throw error
            }
        case .postgres:
            let server = try await LocalPostgres.start(
                directory: directory + "/pg",
                port: LoopbackPorts.freeBase(spans: [0..<1]),
                database: "tables",
                logger: TestNATSServer.logger
            )
            do {
                try await PostgresTableStorage.withStorage(url: server.url, logger: TestNATSServer.logger) { storage in
                    try await body(storage)
                }
                await server.stop()
            } catch {
                await server.stop()
                throw error
            }
        }
    }

    @Test("A batch written twice is kept once; pages, order, filters and counts", arguments: Kind.allCases)
    func writesAndReads(kind: Kind) async throws {
        try await withStorage(kind) { storage in
            let table = Self.table("orders", Order.self)
            try await storage.prepare(table)
            try await storage.prepare(table)  // idempotent
            let base: Int64 = 1_800_000_000_000_000
            var batch: [IncomingRecord] = []
            for i in 0..<25 {
                let body = #"{"amount":\#(i * 10),"note":"line\tbreak\n\\ \#(i)","order_id":"o-\#(i)","paid":\#(i % 2 == 0)}"#
                batch.append(Self.record("r-\(i)", body, micros: base + Int64(i)))
            }
            try await storage.write(batch, table: table, tenant: "acme")
            // A redelivered batch, overlapping and with a repeat inside it.
            try await storage.write(Array(batch[10..<25]) + [batch[12]], table: table, tenant: "acme")
            #expect(try await storage.count(RecordQuery(), table: table, tenant: "acme") == 25)

            // Newest first, in pages of 10 that meet without gaps or repeats.
            var seen: [String] = []
            var cursor: String?
            repeat {
                let page = try await storage.read(RecordQuery(limit: 10, cursor: cursor), table: table, tenant: "acme")
                seen += page.records.map(\.metadata.id)
                cursor = page.nextCursor
            } while cursor != nil
            #expect(seen == (0..<25).reversed().map { "r-\($0)" })

            let oldest = try await storage.read(RecordQuery(order: .oldestFirst, limit: 3), table: table, tenant: "acme")
            #expect(oldest.records.map(\.metadata.id) == ["r-0", "r-1", "r-2"])
            let first = try #require(oldest.records.first)
            #expect(first.metadata.causedBy == "cause-r-0")
            #expect(first.metadata.semanticType == "shop.order@1")
            #expect(RecordCursor.micros(first.metadata.ingestTime) == base)
            // The body comes back as the same JSON (tabs, newlines and backslashes included).
            let decoded = try JSONDecoder().decode(Order.self, from: Data(first.payload))
            #expect(decoded.note == "line\tbreak\n\\ 0")

            // Time range: [since, until).
            let window = RecordQuery(
                since: Date(timeIntervalSince1970: Double(base + 5) / 1_000_000),
                until: Date(timeIntervalSince1970: Double(base + 8) / 1_000_000),
                order: .oldestFirst
            )
            #expect(try await storage.read(window, table: table, tenant: "acme").records.map(\.metadata.id) == ["r-5", "r-6", "r-7"])
            #expect(try await storage.count(window, table: table, tenant: "acme") == 3)

            // Field filters compare values and types: "10" the string is not 10 the number.
            let filtered = try await storage.read(RecordQuery(filters: ["amount": 10]), table: table, tenant: "acme")
            #expect(filtered.records.map(\.metadata.id) == ["r-1"])
            #expect(try await storage.count(RecordQuery(filters: ["amount": "10"]), table: table, tenant: "acme") == 0)
            #expect(try await storage.count(RecordQuery(filters: ["paid": true]), table: table, tenant: "acme") == 13)
            #expect(try await storage.count(RecordQuery(filters: ["paid": false, "order_id": "o-3"]), table: table, tenant: "acme") == 1)
            #expect(try await storage.count(RecordQuery(filters: ["note": .null]), table: table, tenant: "acme") == 0)
        }
    }

    @Test("Tenants see only their own records, and hostile names are data", arguments: Kind.allCases)
    func tenantsAndHostileNames(kind: Kind) async throws {
        try await withStorage(kind) { storage in
            let table = Self.table("orders", Order.self)
            try await storage.prepare(table)
            let base: Int64 = 1_800_000_000_000_000
            try await storage.write(
                [Self.record("same-id", #"{"order_id":"a","amount":1,"paid":true}"#, micros: base)],
                table: table,
                tenant: "tenant-a"
            )
            try await storage.write(
                [Self.record("same-id", #"{"order_id":"b","amount":2,"paid":true}"#, micros: base + 1)],
                table: table,
                tenant: "tenant-b"
            )
            let a = try await storage.read(RecordQuery(), table: table, tenant: "tenant-a")
            #expect(a.records.count == 1)
            #expect(String(decoding: a.records[0].payload, as: UTF8.self).contains("\"a\""))
            #expect(try await storage.count(RecordQuery(), table: table, tenant: "tenant-b") == 1)
            #expect(try await storage.count(RecordQuery(), table: table, tenant: "x' OR '1'='1") == 0)

            // A table whose name needs quoting, with fields named to break SQL and JSON paths.
            let hostile = Self.table("drop-table_x", Hostile.self)
            try await storage.prepare(hostile)
            let body = #"{"x\"; DROP TABLE orders; --":"q","it's":"a","_tenant":"tenant-b"}"#
            try await storage.write([Self.record("h-1", body, micros: base, table: "drop-table_x")], table: hostile, tenant: "tenant-a")
            let read = try await storage.read(RecordQuery(), table: hostile, tenant: "tenant-a")
            #expect(read.records.count == 1)
            let value = try JSONParser.parse(read.records[0].payload)
            #expect(value["x\"; DROP TABLE orders; --"] == "q")
            #expect(value["_tenant"] == "tenant-b", "a field named like a system column stays in the record")
            #expect(try await storage.count(RecordQuery(), table: hostile, tenant: "tenant-b") == 0)
            // The orders table is still there.
            #expect(try await storage.count(RecordQuery(), table: table, tenant: "tenant-a") == 1)
        }
    }

    @Test(
        "PostgreSQL: SQL with bound values over the tenant's rows; typed columns; read only; SQLite refuses SQL",
        arguments: Kind.allCases
    )
    func sql(kind: Kind) async throws {
        try await withStorage(kind) { storage in
            let table = Self.table("orders", OrderV2.self)
            try await storage.prepare(table)
            let base: Int64 = 1_800_000_000_000_000
            var batch: [IncomingRecord] = []
            for i in 0..<10 {
                batch.append(
                    Self.record(
                        "r-\(i)",
                        #"{"order_id":"o-\#(i)","amount":\#(i * 10),"paid":\#(i < 4),"currency":"\#(i % 2 == 0 ? "EUR" : "USD")"}"#,
                        micros: base + Int64(i)
                    )
                )
            }
            try await storage.write(batch, table: table, tenant: "acme")
            try await storage.write(
                [Self.record("x-1", #"{"order_id":"x","amount":1000,"paid":true,"currency":"EUR"}"#, micros: base)],
                table: table,
                tenant: "globex"
            )
            let reader = TableReader(storages: ["orders": storage], tables: ["orders": table])
            let query = SQLQuery(
                "SELECT currency, sum(amount) AS total, count(*) AS n, bool_and(paid) AS all_paid FROM {orders} WHERE amount >= $1 GROUP BY currency ORDER BY currency",
                bindings: [20]
            )
            guard kind == .postgres else {
                await #expect(throws: TableReadError.self) {
                    try await reader.query(query, table: table, tables: reader.tables, tenant: "acme")
                }
                return
            }
            let rows = try await reader.query(query, table: table, tables: reader.tables, tenant: "acme")
            // acme: amounts 20…90; EUR 20+40+60+80, USD 30+50+70+90; globex's 1000 is not there.
            #expect(rows.count == 2)
            #expect(rows[0]["currency"] == "EUR" && rows[0]["total"] == 200 && rows[0]["n"] == 4 && rows[0]["all_paid"] == false)
            #expect(rows[1]["currency"] == "USD" && rows[1]["total"] == 240)
            // The record's metadata columns and the whole record are there too.
            let newest = try await reader.query(
                SQLQuery("SELECT _id, _ingested_at, _record FROM {orders} ORDER BY _ingested_at DESC LIMIT 1"),
                table: table,
                tables: reader.tables,
                tenant: "acme"
            )
            #expect(newest.first?["_id"] == "r-9")
            #expect(newest.first?["_record"]?["order_id"] == "o-9")
            #expect(newest.first?["_ingested_at"]?.stringValue?.hasSuffix("Z") == true)
            // Read only: a write is refused by the database.
            await #expect(throws: StorageError.self) {
                try await reader.query(SQLQuery("DELETE FROM {orders} RETURNING _id"), table: table, tables: reader.tables, tenant: "acme")
            }
            #expect(try await storage.count(RecordQuery(), table: table, tenant: "acme") == 10)
            // A placeholder must name a table kept in the same storage.
            await #expect(throws: TableReadError.self) {
                try await reader.query(SQLQuery("SELECT * FROM {invoices}"), table: table, tables: reader.tables, tenant: "acme")
            }
        }
    }

    @Test("A new field migrates the table; a changed type stops with a message naming the field", arguments: Kind.allCases)
    func migrations(kind: Kind) async throws {
        try await withStorage(kind) { storage in
            let v1 = Self.table("orders", Order.self)
            try await storage.prepare(v1)
            let base: Int64 = 1_800_000_000_000_000
            try await storage.write(
                [Self.record("old", #"{"order_id":"o","amount":5,"paid":false,"currency":"EUR"}"#, micros: base)],
                table: v1,
                tenant: "acme"
            )
            let v2 = Self.table("orders", OrderV2.self)
            try await storage.prepare(v2)
            try await storage.write(
                [Self.record("new", #"{"order_id":"p","amount":6,"paid":true,"currency":"USD"}"#, micros: base + 1)],
                table: v2,
                tenant: "acme"
            )
            #expect(try await storage.count(RecordQuery(), table: v2, tenant: "acme") == 2, "no record lost")
            #expect(try await storage.count(RecordQuery(filters: ["currency": "EUR"]), table: v2, tenant: "acme") == 1)

            let changed = Self.table("orders", OrderAmountText.self)
            do {
                try await storage.prepare(changed)
                Issue.record("a changed field type must stop startup")
            } catch let error as StorageError {
                #expect(error.message.contains("'amount'"))
                #expect(error.message.contains("orders"))
                #expect(!error.isTransient)
            }
        }
    }

    @Test("Nearest neighbours: exact cosine, ranked, ties by id; odd vectors left out; filters and tenants apply", arguments: Kind.allCases)
    func nearest(_ kind: Kind) async throws {
        try await withStorage(kind) { storage in
            let table = Self.table("chunks", JSONValue.self)
            try await storage.prepare(table)
            // Deterministic vectors in 8 dimensions, and some that must be left out.
            var bodies: [(String, String)] = []
            var vectors: [String: [Double]] = [:]
            for n in 0..<300 {
                let vector = (0..<8).map { Double((n * 7 + $0 * 13) % 17) - 8 + ($0 == n % 8 ? 0.5 : 0) }
                vectors["c-\(n)"] = vector
                let numbers = vector.map { $0 == $0.rounded() ? String(Int($0)) : String($0) }.joined(separator: ",")
                bodies.append(("c-\(n)", #"{"embedding":[\#(numbers)],"kind":"\#(n % 3 == 0 ? "faq" : "doc")"}"#))
            }
            bodies.append(("odd-short", #"{"embedding":[1,2,3],"kind":"doc"}"#))
            bodies.append(("odd-text", #"{"embedding":[1,2,3,4,5,6,7,"x"],"kind":"doc"}"#))
            bodies.append(("odd-zero", #"{"embedding":[0,0,0,0,0,0,0,0],"kind":"doc"}"#))
            bodies.append(("odd-none", #"{"kind":"doc"}"#))
            bodies.append(("odd-object", #"{"embedding":{"a":1},"kind":"doc"}"#))
            let records = bodies.enumerated().map { Self.record($1.0, $1.1, micros: 1_000_000 + Int64($0), table: "chunks") }
            try await storage.write(records, table: table, tenant: "acme")
            // Another tenant's exact match must not be found.
            let probe = [1.0, -2, 3, -4, 5, -6, 7, -8]
            let theirs = #"{"embedding":[1,-2,3,-4,5,-6,7,-8],"kind":"doc"}"#
            try await storage.write(
                [Self.record("theirs", theirs, micros: 1, tenant: "globex", table: "chunks")],
                table: table,
                tenant: "globex"
            )

            func cosine(_ a: [Double], _ b: [Double]) -> Double {
                zip(a, b).reduce(0) { $0 + $1.0 * $1.1 }
                    / (a.reduce(0) { $0 + $1 * $1 }.squareRoot() * b.reduce(0) { $0 + $1 * $1 }.squareRoot())
            }
            let expected = vectors.map { (id: $0.key, score: cosine(probe, $0.value)) }
                .sorted { $0.score != $1.score ? $0.score > $1.score : $0.id < $1.id }
            let found = try await storage.nearest(NearestQuery(vector: probe, field: "embedding", limit: 10), table: table, tenant: "acme")
            #expect(found.map(\.record.metadata.id) == expected.prefix(10).map(\.id))
            for (hit, want) in zip(found, expected) { #expect(abs(hit.score - want.score) < 1e-9) }
            #expect(found.allSatisfy { !$0.record.metadata.id.hasPrefix("odd") && $0.record.metadata.id != "theirs" })

            // Filters narrow what is compared.
            let faqs = try await storage.nearest(
                NearestQuery(vector: probe, field: "embedding", limit: 5, filters: ["kind": "faq"]),
                table: table,
                tenant: "acme"
            )
            let expectedFAQs = expected.filter { (Int($0.id.dropFirst(2)) ?? 1) % 3 == 0 }.prefix(5).map(\.id)
            #expect(faqs.map(\.record.metadata.id) == expectedFAQs)
            // The other tenant finds its own.
            let theirsFound = try await storage.nearest(
                NearestQuery(vector: probe, field: "embedding", limit: 3),
                table: table,
                tenant: "globex"
            )
            #expect(theirsFound.map(\.record.metadata.id) == ["theirs"] && abs((theirsFound.first?.score ?? 0) - 1) < 1e-9)
            // A field no record has finds nothing.
            #expect(try await storage.nearest(NearestQuery(vector: probe, field: "missing"), table: table, tenant: "acme").isEmpty)
        }
    }

    @Test("A nearest-neighbour query that cannot run is refused naming the parameter")
    func nearestProblems() {
        #expect(NearestQuery(vector: [], field: "e").problem?.field == "vector")
        #expect(NearestQuery(vector: [0, 0], field: "e").problem?.field == "vector")
        #expect(NearestQuery(vector: [.nan], field: "e").problem?.field == "vector")
        #expect(NearestQuery(vector: Array(repeating: 1, count: 4_097), field: "e").problem?.field == "vector")
        #expect(NearestQuery(vector: [1], field: "a.b").problem?.field == "field")
        #expect(NearestQuery(vector: [1], field: "e", limit: 0).problem?.field == "limit")
        #expect(NearestQuery(vector: [1], field: "e", filters: ["a": [1]]).problem?.field == "where")
        #expect(NearestQuery(vector: [1], field: "e").problem == nil)
    }

    @Test("Concurrent writes (two sinks, two fetch loops) each keep their whole batch", arguments: Kind.allCases)
    func concurrentWrites(_ kind: Kind) async throws {
        try await withStorage(kind) { storage in
            let tables = [Self.table("notes", JSONValue.self), Self.table("shouts", JSONValue.self)]
            for table in tables { try await storage.prepare(table) }
            try await withThrowingTaskGroup(of: Void.self) { group in
                for batch in 0..<16 {
                    let table = tables[batch % 2]
                    let records = (0..<40).map { n in
                        Self.record("b\(batch)-\(n)", #"{"n":\#(n)}"#, micros: Int64(batch * 100 + n), table: table.name)
                    }
                    group.addTask { try await storage.write(records, table: table, tenant: "acme") }
                    // Reads meanwhile, as a route or the record API would.
                    group.addTask { _ = try await storage.count(RecordQuery(), table: table, tenant: "acme") }
                }
                try await group.waitForAll()
            }
            for table in tables {
                #expect(try await storage.count(RecordQuery(), table: table, tenant: "acme") == 8 * 40)
            }
        }
    }
}
