import ClusterCore
import Foundation
import NIOCore
import Testing

@testable import Storages

@Suite("COPY rows")
struct CopyRowsTests {
    static let record = IncomingRecord(
        metadata: RecordMetadata(
            id: "r-1",
            table: "t",
            tenant: "acme",
            ingestTime: Date(timeIntervalSince1970: 1_765_000_000.000_042),
            causedBy: nil,
            semanticType: "test.x@1"
        ),
        // Pretty-printed JSON has raw tabs and newlines; strings carry backslashes.
        payload: Array("{\n\t\"a\": \"x\\\"y\",\r\n\t\"b\": 1}".utf8)
    )

    @Test("A kept table's row: tenant, id, time to the microsecond in UTC, NULL, type, the escaped record")
    func keptRow() {
        var rows = PostgresTableStorage.CopyRows(tenant: "acme", capacity: 0)
        rows.append(Self.record)
        rows.append(Self.record)
        let line = #"acme\#tr-1\#t2025-12-06 05:46:40.000042+00\#t\N\#ttest.x@1\#t{\n\t"a": "x\\"y",\r\n\t"b": 1}"# + "\n"
        #expect(String(buffer: rows.buffer) == line + line)
    }

    @Test("A staging row: id, microseconds since 1970, …")
    func stagingRow() {
        var rows = PostgresTableStorage.CopyRows(tenant: nil, capacity: 0)
        rows.append(Self.record)
        #expect(String(buffer: rows.buffer).hasPrefix("r-1\t1765000000000042\t\\N\ttest.x@1\t{\\n\\t"))
    }
}
