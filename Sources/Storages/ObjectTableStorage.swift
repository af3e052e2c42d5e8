package import ClusterCore
import Foundation

/// Keeps tables as gzip JSON Lines objects in an object store (S3, an S3-compatible server, a
/// local directory), partitioned Hive-style so warehouses read them as external tables:
///
///     <prefix>/table=<table>/tenant=<tenant>/date=<YYYY-MM-DD>/hour=<HH>/<sequence>-<micros>.jsonl.gz
///
/// Each line is the record with its metadata in front: `_id`, `_ingested_at` (RFC 3339, UTC),
/// `_caused_by` and `_type`. (A record's own fields of those names give way to them here; the
/// record is otherwise kept as sent.)
///
/// Exactly once by name: the sink of an object store reads its table in stream order, one
/// batch at a time across the cluster (``HandlerDefinition/sink(table:storage:inOrder:resolve:)``),
/// and names each object after its first and last records' stream sequences (and the first's
/// storage time): `<first>-<last>-<micros>.jsonl.gz`. A batch delivered again after a crash may
/// start earlier or end elsewhere than the delivery that wrote objects before (a worker killed
/// before all its acks reached the server resumes at the ack floor), so before writing a batch
/// the sink lists the objects of its hour: records an earlier object already holds (one that
/// starts before the batch and ends inside it) are left out, and objects that start inside the
/// batch are removed once the new one is written. Their records after the batch are not lost:
/// the consumer was re-created at the ack floor, so they come again. Objects named by an
/// earlier release (`<first>-<micros>.jsonl.gz`) say no last sequence and are only replaced or
/// removed, never used to leave records out.
package struct ObjectTableStorage: TableStorage {
    package let name: String
    package let store: any ObjectStore
    /// Key prefix inside the bucket or directory (no leading or trailing `/`).
    package let prefix: String
    package var displayName: String { store.displayName + (prefix.isEmpty ? "" : "/" + prefix) }
    /// Objects are for warehouses and tools; the framework's reads need a database storage.
    package var isReadable: Bool { false }

    package init(name: String, store: any ObjectStore, prefix: String) {
        self.name = name
        self.store = store
        self.prefix = prefix.split(separator: "/").joined(separator: "/")
    }

    package func prepare(_ table: TableDefinition) async throws {
        try await store.check()
    }

    package func close() async throws {
        try await store.close()
    }

    package func read(_ query: RecordQuery, table: TableDefinition, tenant: String) async throws -> StoredPage {
        throw StorageError("storage '\(name)' keeps objects for warehouses; read table '\(table.name)' from a database storage")
    }

    package func count(_ query: RecordQuery, table: TableDefinition, tenant: String) async throws -> Int {
        throw StorageError("storage '\(name)' keeps objects for warehouses; count table '\(table.name)' in a database storage")
    }

    package func write(_ records: [IncomingRecord], table: TableDefinition, tenant: String) async throws {
        guard !records.isEmpty else { return }
        let ordered = records.sorted { $0.streamSequence < $1.streamSequence }
        // One object per hour the batch spans, each named after its first and last records.
        var groups: [(hour: String, records: [IncomingRecord])] = []
        for record in ordered {
            let hour = Self.partition(record.metadata.ingestTime)
            if groups.last?.hour == hour { groups[groups.count - 1].records.append(record) } else { groups.append((hour, [record])) }
        }
        for group in groups {
            let directory = tablePrefix(table: table.name, tenant: tenant) + group.hour + "/"
            let existing = try await store.list(prefix: directory).compactMap { key in Self.sequences(of: key).map { (key, $0) } }
            // Records an earlier object holds already (it starts before them and ends after).
            let held = existing.filter { $0.1.first < group.records[0].streamSequence }.compactMap(\.1.last).max() ?? 0
            let fresh = group.records.filter { $0.streamSequence > held }
            guard let first = fresh.first, let last = fresh.last else { continue }
            var body: [UInt8] = []
            body.reserveCapacity(fresh.reduce(0) { $0 + $1.payload.count + 160 })
            for record in fresh { Self.appendLine(record, to: &body) }
            let key = objectKey(table: table.name, tenant: tenant, hour: group.hour, first: first, last: last)
            try await store.put(key: key, body: try Gzip.compress(body), contentType: "application/x-ndjson", contentEncoding: nil)
            // Objects an earlier delivery wrote from inside this batch: replaced by this one.
            for (stale, range) in existing where stale != key && (first.streamSequence...last.streamSequence).contains(range.first) {
                try await store.delete(key: stale)
            }
        }
    }

    /// The first and (when the name says it) last stream sequence of an object the sink wrote.
    static func sequences(of key: String) -> (first: UInt64, last: UInt64?)? {
        let name = key.split(separator: "/").last.map(String.init) ?? key
        guard name.hasSuffix(".jsonl.gz") else { return nil }
        let parts = name.dropLast(".jsonl.gz".count).split(separator: "-")
        guard let first = parts.first.flatMap({ UInt64($0) }) else { return nil }
        return parts.count == 3 ? (first, UInt64(parts[1])) : (first, nil)
    }

    /// `<prefix>/table=<t>/tenant=<tenant>/`: where a table's objects for one tenant go.
    package func tablePrefix(table: String, tenant: String) -> String {
        (prefix.isEmpty ? "" : prefix + "/") + "table=\(table)/tenant=\(tenant)/"
    }

    func objectKey(table: String, tenant: String, hour: String, first: IncomingRecord, last: IncomingRecord) -> String {
        func padded(_ sequence: UInt64) -> String {
            let text = String(sequence)
            return String(repeating: "0", count: max(0, 20 - text.count)) + text
        }
        return tablePrefix(table: table, tenant: tenant) + hour
            + "/\(padded(first.streamSequence))-\(padded(last.streamSequence))-\(RecordCursor.micros(first.metadata.ingestTime)).jsonl.gz"
    }

    /// `date=YYYY-MM-DD/hour=HH` of a storage time, in UTC.
    static func partition(_ date: Date) -> String {
        let utc = UTCParts(date)
        return "date=\(utc.year)-\(utc.month)-\(utc.day)/hour=\(utc.hour)"
    }

    static let metadataKeys: Set<String> = ["_id", "_ingested_at", "_caused_by", "_type"]

    /// One JSON line: the metadata, then the record's own members.
    static func appendLine(_ record: IncomingRecord, to body: inout [UInt8]) {
        var metadata: JSONObject = [
            "_id": .string(record.metadata.id),
            "_ingested_at": .string(ISO8601.format(record.metadata.ingestTime)),
        ]
        if let cause = record.metadata.causedBy { metadata["_caused_by"] = .string(cause) }
        if let type = record.metadata.semanticType { metadata["_type"] = .string(type) }
        let head = JSONWriter.encode(.object(metadata))
        var payload = record.payload[...]
        // A record with a member named like the metadata (rare: only then is it parsed).
        if payload.count > 2, payload.firstRange(of: Array("\"_".utf8)) != nil,
            case .object(var object)? = try? JSONParser.parse(record.payload),
            object.keys.contains(where: metadataKeys.contains)
        {
            for key in metadataKeys { object.removeValue(forKey: key) }
            payload = JSONWriter.encode(.object(object))[...]
        }
        // `{"_id":…}` and `{…record…}` become `{"_id":…,…record…}`.
        let inner = payload.drop { $0 == 0x20 || $0 == 0x0A || $0 == 0x0D || $0 == 0x09 }.dropFirst()  // after '{'
        let isEmpty = inner.first { !($0 == 0x20 || $0 == 0x0A || $0 == 0x0D || $0 == 0x09) } == UInt8(ascii: "}")
        body += head.dropLast()
        if !isEmpty { body.append(UInt8(ascii: ",")) }
        if isEmpty {
            body.append(UInt8(ascii: "}"))
        } else {
            // JSON strings hold no raw line break, so one in a (pretty-printed) record is
            // whitespace between tokens: a space keeps each record on one line.
            for byte in inner { body.append(byte == 0x0A || byte == 0x0D ? 0x20 : byte) }
        }
        while let last = body.last, last == 0x20 || last == 0x09 { body.removeLast() }
        body.append(0x0A)
    }
}
