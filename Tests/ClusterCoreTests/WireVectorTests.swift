import ClusterCore
import Foundation
import NIOCore
import Testing

/// docs/wire-vectors.json: record ids, idempotency keys, partitions and names that every
/// implementation of the wire contract must compute alike (the Python package checks the same
/// file in python/tests/test_wire_vectors.py).
@Suite("Wire contract test vectors")
struct WireVectorTests {
    static let vectors: JSONValue = {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let data = FileManager.default.contents(atPath: root.appendingPathComponent("docs/wire-vectors.json").path)!
        return try! JSONParser.parse(Array(data))
    }()

    @Test func outputIDs() {
        let cases = Self.vectors["output_ids"].arrayValue ?? []
        #expect(cases.count >= 5)
        for vector in cases {
            let id = Wire.outputID(
                source: vector["source"].stringValue!,
                handler: vector["handler"].stringValue!,
                index: vector["index"].intValue!
            )
            #expect(id == vector["id"].stringValue, "output id of \(vector)")
        }
    }

    @Test func batchIDs() {
        let cases = Self.vectors["batch_ids"].arrayValue ?? []
        #expect(cases.count >= 2)
        for vector in cases {
            let records = (vector["ids"].arrayValue ?? []).map { RecordMetadata(id: $0.stringValue!, table: "t", tenant: "default") }
            #expect(RecordMetadata.summary(of: records)?.id == vector["id"].stringValue, "batch id of \(vector)")
        }
    }

    @Test func scopedKeys() {
        let cases = Self.vectors["scoped_keys"].arrayValue ?? []
        #expect(cases.count >= 3)
        for vector in cases {
            let id = RecordIDGenerator.scopedKey(
                vector["key"].stringValue!,
                tenant: vector["tenant"].stringValue!,
                caller: vector["caller"].stringValue!,
                path: vector["path"].stringValue!
            )
            #expect(id == vector["id"].stringValue, "scoped key of \(vector)")
        }
    }

    @Test func partitions() {
        let cases = Self.vectors["partitions"].arrayValue ?? []
        #expect(cases.count >= 5)
        for vector in cases {
            let body = ByteBuffer(bytes: JSONWriter.encode(vector["record"]))
            let key = Wire.partitionKey(body, field: vector["field"].stringValue!)
            #expect(Wire.partition(key, of: vector["partitions"].intValue!) == vector["partition"].intValue, "partition of \(vector)")
        }
    }

    @Test func names() {
        for vector in Self.vectors["names"].arrayValue ?? [] {
            let tenant = vector["tenant"].stringValue!
            let table = vector["table"].stringValue!
            let handler = vector["handler"].stringValue!
            #expect(Wire.tableSubject(tenant: tenant, table: table) == vector["subject"].stringValue)
            #expect(Wire.tableStreamName(tenant: tenant, table: table) == vector["stream"].stringValue)
            #expect(Wire.streamName(tenant: tenant) == vector["tenant_stream"].stringValue)
            #expect(Wire.consumerName(handler: handler) == vector["consumer"].stringValue)
            #expect(Wire.deadLetterSubject(tenant: tenant, handler: handler) == vector["dead_letter_subject"].stringValue)
            #expect(Wire.runSubject(tenant: tenant, handler: handler, sequence: 42) == vector["run_note_subject"].stringValue)
        }
    }
}
