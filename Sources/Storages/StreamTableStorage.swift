package import ClusterCore
package import Foundation
package import NATS

/// Reads a table from its stream, for a table no readable storage keeps (or a read by
/// stream sequence): what the stream still holds, within its retention.
///
/// Each page reads through a short-lived ephemeral consumer that needs no acks (one replica,
/// in memory). Oldest first starts at the page's first sequence (or the first record stored
/// at `since`) and reads forward; newest first reads windows backwards from the end (or from
/// `until`), each window forwards, doubling the window until the page is full. A page scans at
/// most ``scanLimit`` records: when filters skip that many it ends early, with a cursor, so one
/// request never reads a whole large stream. Counting with filters or a time range scans, and
/// refuses a range of more than ``countLimit`` records.
package struct StreamTableStorage: TableStorage {
    package let connection: NATSConnection
    package var name: String { "stream" }
    package var displayName: String { "the table's stream" }
    package var isReadable: Bool { true }

    /// Most records one page reads from the stream.
    package static let scanLimit = 100_000
    /// Most records a count reads from the stream.
    package static let countLimit = 1_000_000

    package init(connection: NATSConnection) {
        self.connection = connection
    }

    package func prepare(_ table: TableDefinition) async throws {}

    package func write(_ records: [IncomingRecord], table: TableDefinition, tenant: String) async throws {
        throw StorageError("a table's stream is written by appending to the table, not by a sink")
    }

    package func close() async throws {}

    // MARK: Reading

    /// The stream sequences `query` covers (both ends included), or `nil` when none.
    private func range(_ query: RecordQuery, stream: String, subject: String) async throws -> ClosedRange<UInt64>? {
        guard let state = try await connection.streamState(stream), state.messages > 0 else { return nil }
        var lower = max(state.firstSequence, query.sinceSequence ?? 0)
        var upper = state.lastSequence
        if let since = query.since { lower = max(lower, try await firstSequence(at: since, stream: stream, subject: subject) ?? upper + 1) }
        if let until = query.until, let first = try await firstSequence(at: until, stream: stream, subject: subject) {
            upper = min(upper, first - 1)
        }
        if let text = query.cursor, let cursor = StreamCursor(text) {
            if query.order == .oldestFirst { lower = max(lower, cursor.sequence + 1) } else { upper = min(upper, cursor.sequence - 1) }
        }
        return lower <= upper && upper > 0 ? lower...upper : nil
    }

    /// The sequence of the first record stored at or after `time`, or `nil` when none is.
    private func firstSequence(at time: Date, stream: String, subject: String) async throws -> UInt64? {
        try await connection.firstSequence(stream: stream, atOrAfter: Int64((time.timeIntervalSince1970 * 1e9).rounded(.up)))
    }

    /// How many records the reader has still to deliver, as the server counts them.
    private func pending(_ reader: PullSubscription, stream: String) async throws -> UInt64 {
        guard let consumer = reader.ephemeralConsumer, let state = try await connection.consumerState(stream: stream, consumer: consumer)
        else { throw StorageError("the reader of \(stream) disappeared; try again", transient: true) }
        return state.numPending
    }

    /// The reader's next messages; empty only when the server has none left for it. A busy
    /// server may take long to deliver: an empty fetch is not the end while records are pending.
    private func next(_ reader: PullSubscription, stream: String, maxMessages: Int) async throws -> [JetStreamMessage] {
        for _ in 0..<15 {
            let batch = try await reader.fetch(maxMessages: maxMessages, timeout: .seconds(2))
            if !batch.isEmpty { return batch.messages }
            if try await pending(reader, stream: stream) == 0 { return [] }
        }
        throw StorageError("the stream \(stream) did not deliver its records within 30 s; try again", transient: true)
    }

    /// Runs `body` with an ephemeral reader that needs no acks, and removes the reader after.
    private func withReader<T>(
        stream: String,
        subject: String,
        headers: [String],
        start: ReadStart,
        _ body: (PullSubscription) async throws -> T
    ) async throws -> T {
        let reader = try await connection.ephemeralPullSubscription(
            stream: stream,
            filterSubject: subject,
            headers: headers,
            start: start,
            acknowledged: false
        )
        do {
            let result = try await body(reader)
            await reader.closeAndRemove()
            return result
        } catch {
            await reader.closeAndRemove()
            throw error
        }
    }

    /// Reads `range` in order, calling `take` with each record until it returns false; returns
    /// the last sequence read.
    private func scan(
        _ range: ClosedRange<UInt64>,
        table: TableDefinition,
        tenant: String,
        stream: String,
        take: (IncomingRecord) -> Bool
    ) async throws -> UInt64 {
        try await withReader(
            stream: stream,
            subject: table.filterSubject(tenant: tenant),
            headers: Wire.consumedHeaders,
            start: .sequence(range.lowerBound)
        ) { reader in
            var last = range.lowerBound - 1
            while last < range.upperBound {
                let wanted = Int(min(1_024, range.upperBound - last))
                let messages = try await next(reader, stream: stream, maxMessages: wanted)
                // Nothing more: the rest of the range was deleted (retention) meanwhile.
                if messages.isEmpty { return range.upperBound }
                for message in messages {
                    guard message.streamSequence <= range.upperBound else { return range.upperBound }
                    last = message.streamSequence
                    if !take(IncomingRecord(message, table: table.name, tenant: tenant)) { return last }
                }
            }
            return last
        }
    }

    package func read(_ query: RecordQuery, table: TableDefinition, tenant: String) async throws -> StoredPage {
        if let cursor = query.cursor, StreamCursor(cursor) == nil {
            throw TableReadError(table: table.name, field: "cursor", message: "is not a cursor of a read of this table's stream")
        }
        let stream = Wire.tableStreamName(tenant: tenant, table: table.name)
        guard let range = try await range(query, stream: stream, subject: table.filterSubject(tenant: tenant)) else {
            return StoredPage(records: [], nextCursor: nil)
        }
        let matches = RecordFilter(query.filters)
        var records: [IncomingRecord] = []
        var scanned = 0
        // Where the read stopped early (the scan limit), if it did.
        var stoppedAt: UInt64?
        switch query.order {
        case .oldestFirst:
            let last = try await scan(range, table: table, tenant: tenant, stream: stream) { record in
                scanned += 1
                if matches(record.payload) { records.append(record) }
                return records.count <= query.limit && scanned < Self.scanLimit
            }
            if records.count <= query.limit && last < range.upperBound { stoppedAt = last }
        case .newestFirst:
            var upper = range.upperBound
            var window = UInt64(max(256, query.limit * 4))
            while records.count <= query.limit {
                let lower = upper - min(window, upper - range.lowerBound + 1) + 1
                var found: [IncomingRecord] = []
                _ = try await scan(lower...upper, table: table, tenant: tenant, stream: stream) { record in
                    if matches(record.payload) { found.append(record) }
                    return true
                }
                scanned += Int(upper - lower + 1)
                records += found.reversed()
                if lower == range.lowerBound { break }
                upper = lower - 1
                if scanned >= Self.scanLimit && records.count <= query.limit {
                    stoppedAt = lower
                    break
                }
                window = min(window * 2, 16_384)
            }
        }
        if records.count > query.limit {
            let page = Array(records.prefix(query.limit))
            let last = page[page.count - 1]
            return StoredPage(
                records: page,
                nextCursor: StreamCursor(sequence: last.streamSequence, time: last.metadata.ingestTime).text
            )
        }
        // The page ends early: its cursor continues the scan where it stopped.
        let next = stoppedAt.map { StreamCursor(sequence: $0, time: records.last?.metadata.ingestTime ?? Date()).text }
        return StoredPage(records: records, nextCursor: next)
    }

    package func count(_ query: RecordQuery, table: TableDefinition, tenant: String) async throws -> Int {
        let stream = Wire.tableStreamName(tenant: tenant, table: table.name)
        var whole = query
        whole.cursor = nil
        if whole.filters.isEmpty && whole.since == nil && whole.until == nil && whole.sinceSequence == nil {
            return Int(try await connection.streamState(stream)?.messages ?? 0)
        }
        guard let range = try await range(whole, stream: stream, subject: table.filterSubject(tenant: tenant)) else { return 0 }
        guard range.count <= Self.countLimit else {
            throw TableReadError(
                table: table.name,
                message: "counting \(range.count) records of its stream needs a storage: a count reads at most "
                    + "\(Self.countLimit) records of a stream; keep the table in one (table(_:of:storage:) or \"tables\" in autonomous.json)"
            )
        }
        let matches = RecordFilter(whole.filters)
        var count = 0
        _ = try await scan(range, table: table, tenant: tenant, stream: stream) { record in
            if matches(record.payload) { count += 1 }
            return true
        }
        return count
    }
}

/// Where a stream read ended: a stream sequence (and the record's time, for people reading
/// cursors). Written as a ``RecordCursor`` whose id is `seq-<sequence>`.
package struct StreamCursor: Sendable, Hashable {
    package var sequence: UInt64
    package var time: Date

    package init(sequence: UInt64, time: Date) {
        self.sequence = sequence
        self.time = time
    }

    package init?(_ text: String) {
        guard let cursor = RecordCursor(text), cursor.id.hasPrefix("seq-"), let sequence = UInt64(cursor.id.dropFirst(4)), sequence > 0
        else { return nil }
        self.init(sequence: sequence, time: Date(timeIntervalSince1970: Double(cursor.micros) / 1e6))
    }

    package var text: String { RecordCursor(micros: RecordCursor.micros(time), id: "seq-\(sequence)").text }
}

/// The `where` of a query, applied in process: every field present and equal (numbers by value).
struct RecordFilter {
    let filters: [(String, JSONValue)]

    init(_ filters: [String: JSONValue]) {
        self.filters = filters.sorted { $0.key < $1.key }
    }

    func callAsFunction(_ payload: [UInt8]) -> Bool {
        guard !filters.isEmpty else { return true }
        guard case .object(let object)? = try? JSONParser.parse(payload) else { return false }
        for (field, wanted) in filters {
            guard let value = object[field], Self.equal(value, wanted) else { return false }
        }
        return true
    }

    static func equal(_ value: JSONValue, _ wanted: JSONValue) -> Bool {
        switch (value, wanted) {
        case (.int(let a), .double(let b)), (.double(let b), .int(let a)): return Double(a) == b
        default: return value == wanted
        }
    }
}
