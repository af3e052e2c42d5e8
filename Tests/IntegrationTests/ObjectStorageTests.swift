import AutonomousTesting
import ClusterCore
import Deploy
import Foundation
import Storages
import Testing

/// A local S3-compatible server (moto, from PyPI) on a free loopback port, and the Python
/// tools that read a storage's objects back (boto3 and DuckDB).
struct LocalS3: Sendable {
    let endpoint: String
    let python: String

    static let lakeScript = FaultTests.root.appendingPathComponent("Tests/IntegrationTests/Python/lake.py").path

    /// Installs the tools if needed (scripts/install-python-tools.sh), starts moto and runs `body`.
    static func with<T: Sendable>(_ body: (LocalS3) async throws -> T) async throws -> T {
        let install = try await runProgram("/bin/bash", [FaultTests.root.appendingPathComponent("scripts/install-python-tools.sh").path])
        guard install.status == 0, let venv = install.output.split(separator: "\n").last.map(String.init) else {
            throw StorageError("installing the Python tools failed: \(install.output.suffix(2000))")
        }
        let port = LoopbackPorts.freeBase(spans: [0..<1])
        let process = Process()
        process.executableURL = URL(fileURLWithPath: venv + "/bin/moto_server")
        process.arguments = ["-H", "127.0.0.1", "-p", "\(port)"]
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        defer {
            // SIGKILL: a child of the test process inherits its ignored SIGTERM.
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
        let s3 = LocalS3(endpoint: "http://127.0.0.1:\(port)", python: venv + "/bin/python")
        var ready = false
        for _ in 0..<200 where !ready {
            ready = (try? await runProgram("/usr/bin/curl", ["-fsS", "-o", "/dev/null", s3.endpoint + "/"]))?.status == 0
            if !ready { try await Task.sleep(for: .milliseconds(100)) }
        }
        guard ready else { throw StorageError("moto did not start on port \(port)") }
        return try await body(s3)
    }

    func createBucket(_ bucket: String) async throws {
        let result = try await runProgram(python, [Self.lakeScript, "create-bucket", endpoint, bucket])
        guard result.status == 0 else { throw StorageError("create-bucket: \(result.output)") }
    }

    /// What boto3 and DuckDB find under the table's tenant (see lake.py).
    func audit(bucket: String, prefix: String, table: String, tenant: String) async throws -> JSONValue {
        let result = try await runProgram(python, [Self.lakeScript, "audit", endpoint, bucket, prefix, table, tenant])
        guard result.status == 0, let line = result.output.split(separator: "\n").last else {
            throw StorageError("audit: \(result.output.suffix(3000))")
        }
        return try JSONParser.parse(Array(line.utf8))
    }

    func store(bucket: String) throws -> S3ObjectStore {
        try S3ObjectStore(
            bucket: bucket,
            region: "us-east-1",
            endpoint: endpoint,
            credentials: AWSCredentials(accessKeyID: "test", secretAccessKey: "test")
        )
    }
}

@Suite("Object storages: S3 (moto) and a directory", .serialized)
struct ObjectStorageTests {
    static func record(_ sequence: UInt64, micros: Int64, body: String) -> IncomingRecord {
        IncomingRecord(
            metadata: RecordMetadata(
                id: "r-\(sequence)",
                table: "events",
                tenant: "acme",
                ingestTime: Date(timeIntervalSince1970: Double(micros) / 1_000_000),
                causedBy: sequence % 2 == 0 ? "c-\(sequence)" : nil,
                semanticType: "test.event@1"
            ),
            payload: Array(body.utf8),
            streamSequence: sequence
        )
    }

    static func table() -> TableDefinition {
        var builder = AppBuilder(name: "lake")
        return builder.table("events").definition
    }

    @Test("Redelivered batches, whole or in part, leave every record in exactly one object; boto3 and DuckDB agree")
    func exactlyOnceByName() async throws {
        try await LocalS3.with { s3 in
            let missing = ObjectTableStorage(name: "lake", store: try s3.store(bucket: "no-such-bucket"), prefix: "x")
            await #expect {
                try await missing.prepare(Self.table())
            } throws: { error in
                "\(error)".contains("the bucket does not exist")
            }
            try await missing.close()

            try await s3.createBucket("lake")
            let storage = ObjectTableStorage(name: "lake", store: try s3.store(bucket: "lake"), prefix: "raw/v1")
            let table = Self.table()
            try await storage.prepare(table)
            // 2026-12-07 09:59:59.000 to 10:00:00.xxx: the batch spans two hours.
            let start: Int64 = 1_796_637_599_000_000
            var batch: [IncomingRecord] = []
            for i in 1...300 {
                let body = i == 7 ? "{\n  \"n\": 7,\n  \"_id\": \"forged\",\n  \"text\": \"line\\nbreak\"\n}" : #"{"n":\#(i)}"#
                batch.append(Self.record(UInt64(i), micros: start + Int64(i) * 5_000, body: body))
            }
            try await storage.write(batch, table: table, tenant: "acme")
            // The same batch again (a redelivery), then a redelivery that came back shorter
            // followed by the rest in a batch of its own.
            try await storage.write(batch, table: table, tenant: "acme")
            try await storage.write(Array(batch[0..<120]), table: table, tenant: "acme")
            try await storage.write(Array(batch[120...]), table: table, tenant: "acme")
            try await storage.write([Self.record(1, micros: start, body: #"{"n":1}"#)], table: table, tenant: "other")
            let keys = try await storage.store.list(prefix: "raw/v1/table=events/tenant=acme/")
            #expect(keys.contains { $0.contains("/date=2026-12-07/hour=09/") })
            #expect(keys.contains { $0.contains("/date=2026-12-07/hour=10/") })
            let audit = try await s3.audit(bucket: "lake", prefix: "raw/v1", table: "events", tenant: "acme")
            #expect(audit["python"]["lines"] == 300)
            #expect(audit["python"]["distinct_ids"] == 300)
            #expect(audit["python"]["bad_lines"] == 0)
            #expect(audit["duckdb"]["rows"] == 300)
            #expect(audit["duckdb"]["distinct_ids"] == 300)
            #expect(audit["duckdb"]["tenants"] == 1)

            // One line per record, metadata first, the record's own `_id` given way.
            var lines: [JSONValue] = []
            for key in keys {
                let text = try Gzip.decompress(try await storage.store.get(key: key))
                lines += try String(decoding: text, as: UTF8.self).split(separator: "\n").map { try JSONParser.parse(Array($0.utf8)) }
            }
            let seventh = try #require(lines.first { $0["n"] == 7 })
            #expect(seventh["_id"] == "r-7")
            #expect(seventh["text"] == "line\nbreak")
            #expect(seventh["_type"] == "test.event@1")
            #expect(lines.first { $0["n"] == 2 }?["_caused_by"] == "c-2")
            try await storage.close()
        }
    }

    @Test("A directory storage writes the same layout, atomically")
    func directory() async throws {
        let root = FileManager.default.temporaryDirectory.appendingPathComponent("aut-lake-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: root) }
        let storage = ObjectTableStorage(name: "lake", store: DirectoryObjectStore(root: root), prefix: "")
        try await storage.prepare(Self.table())
        let batch = (1...10).map { Self.record(UInt64($0), micros: 1_796_637_600_000_000 + Int64($0), body: #"{"n":\#($0)}"#) }
        try await storage.write(batch, table: Self.table(), tenant: "acme")
        try await storage.write(batch, table: Self.table(), tenant: "acme")
        let keys = try await storage.store.list(prefix: "table=events/tenant=acme/")
        #expect(
            keys == ["table=events/tenant=acme/date=2026-12-07/hour=10/00000000000000000001-00000000000000000010-1796637600000001.jsonl.gz"]
        )
        let text = String(decoding: try Gzip.decompress(try await storage.store.get(key: keys[0])), as: UTF8.self)
        #expect(text.split(separator: "\n").count == 10)
    }

    /// Every record's line in the table's objects, by record number.
    static func lines(_ storage: ObjectTableStorage) async throws -> [Int] {
        var numbers: [Int] = []
        for key in try await storage.store.list(prefix: "table=events/tenant=acme/") {
            let text = String(decoding: try Gzip.decompress(try await storage.store.get(key: key)), as: UTF8.self)
            numbers += try text.split(separator: "\n").map { try JSONParser.parse(Array($0.utf8))["n"].intValue ?? -1 }
        }
        return numbers.sorted()
    }

    @Test("A batch delivered again with other boundaries (a worker killed before its acks reached the server) keeps each record once")
    func redeliveryWithShiftedBoundaries() async throws {
        let root = FileManager.default.temporaryDirectory.appendingPathComponent("aut-lake-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: root) }
        let storage = ObjectTableStorage(name: "lake", store: DirectoryObjectStore(root: root), prefix: "")
        try await storage.prepare(Self.table())
        func batch(_ range: ClosedRange<Int>) -> [IncomingRecord] {
            range.map { Self.record(UInt64($0), micros: 1_796_637_600_000_000 + Int64($0), body: #"{"n":\#($0)}"#) }
        }
        // Two batches written; the worker dies with the second's acks (and some of the first's)
        // lost; its successor resumes at the ack floor, 5, with batches of another size.
        try await storage.write(batch(1...10), table: Self.table(), tenant: "acme")
        try await storage.write(batch(11...20), table: Self.table(), tenant: "acme")
        try await storage.write(batch(6...15), table: Self.table(), tenant: "acme")
        try await storage.write(batch(16...20), table: Self.table(), tenant: "acme")
        #expect(try await Self.lines(storage) == Array(1...20))
        // From the very start again, in one batch larger than any before.
        try await storage.write(batch(1...17), table: Self.table(), tenant: "acme")
        try await storage.write(batch(18...20), table: Self.table(), tenant: "acme")
        #expect(try await Self.lines(storage) == Array(1...20))
        // A batch wholly inside an object written before adds nothing.
        try await storage.write(batch(2...4), table: Self.table(), tenant: "acme")
        #expect(try await Self.lines(storage) == Array(1...20))
    }
}
