public import Foundation

/// Which records of a kept table to read: a time range, field filters, an order and a page.
///
/// ```swift
/// let page = try await orders.records(since: .now.addingTimeInterval(-86_400), where: ["status": "paid"], limit: 50, ctx)
/// for entry in page.entries { … }
/// let next = try await orders.records(since: …, cursor: page.nextCursor, ctx)
/// ```
public struct RecordQuery: Sendable, Hashable {
    /// Records stored at or after this time.
    public var since: Date?
    /// Records stored before this time.
    public var until: Date?
    /// Top-level fields and the value each must equal (strings, numbers, booleans or null).
    public var filters: [String: JSONValue]
    public var order: RecordOrder
    /// Most records per page, 1…``RecordQuery/maximumLimit``.
    public var limit: Int
    /// Where the previous page ended (its ``RecordPage/nextCursor``); `nil` for the first page.
    public var cursor: String?
    /// Records at or after this sequence of the table's stream. A read by sequence always
    /// reads the stream (within its retention), even when a storage keeps the table.
    public var sinceSequence: UInt64?

    public static let maximumLimit = 10_000

    public init(
        since: Date? = nil,
        until: Date? = nil,
        filters: [String: JSONValue] = [:],
        order: RecordOrder = .newestFirst,
        limit: Int = 100,
        cursor: String? = nil,
        sinceSequence: UInt64? = nil
    ) {
        self.since = since
        self.until = until
        self.filters = filters
        self.order = order
        self.limit = limit
        self.cursor = cursor
        self.sinceSequence = sinceSequence
    }

    /// Why the query cannot run, naming the parameter; `nil` when it can.
    package var problem: (field: String, message: String)? {
        if !(1...Self.maximumLimit).contains(limit) {
            return ("limit", "must be between 1 and \(Self.maximumLimit)")
        }
        if let since, let until, until < since { return ("until", "is before since") }
        if sinceSequence == 0 { return ("since_sequence", "must be 1 or more (stream sequences start at 1)") }
        for (field, value) in filters.sorted(by: { $0.key < $1.key }) {
            if !Self.isFilterField(field) {
                return ("where", "field '\(field.prefix(80))' must be 1-63 letters, digits or '_' (a top-level field)")
            }
            switch value {
            case .string, .int, .double, .bool, .null: continue
            default: return ("where", "field '\(field)': only strings, numbers, booleans and null can be compared")
            }
        }
        if let cursor, RecordCursor(cursor) == nil { return ("cursor", "is not a cursor this API returned") }
        return nil
    }

    /// Filter fields reach SQL as bound parameters, and JSON paths in SQLite; they are
    /// restricted to plain top-level names all the same.
    package static func isFilterField(_ field: String) -> Bool {
        !field.isEmpty && field.utf8.count <= 63
            && field.utf8.allSatisfy { byte in
                switch byte {
                case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
                    UInt8(ascii: "_"):
                    return true
                default: return false
                }
            }
    }
}

public enum RecordOrder: String, Sendable, Hashable, CaseIterable {
    case newestFirst = "newest"
    case oldestFirst = "oldest"
}

/// One page of records read back from a table.
public struct RecordPage<Row: Sendable>: Sendable {
    public var entries: [Entry<Row>]
    /// Pass as `cursor` to read the next page; `nil` when this page is the last.
    public var nextCursor: String?

    package init(entries: [Entry<Row>], nextCursor: String?) {
        self.entries = entries
        self.nextCursor = nextCursor
    }
}

/// Where a page ended: the last record's storage time (microseconds since 1970) and id.
/// Opaque to callers (`<micros>.<id>` in base64url); pages are keyset-paged on the two.
package struct RecordCursor: Sendable, Hashable {
    package var micros: Int64
    package var id: String

    package init(micros: Int64, id: String) {
        self.micros = micros
        self.id = id
    }

    package init?(_ text: String) {
        guard text.utf8.count <= 300 else { return nil }
        var base64 = text.replacingOccurrences(of: "-", with: "+").replacingOccurrences(of: "_", with: "/")
        while base64.utf8.count % 4 != 0 { base64.append("=") }
        guard let data = Data(base64Encoded: base64), let decoded = String(data: data, encoding: .utf8),
            let dot = decoded.firstIndex(of: "."), let micros = Int64(decoded[..<dot])
        else { return nil }
        let id = String(decoded[decoded.index(after: dot)...])
        guard Names.isValidRecordID(id) || id.hasPrefix("seq-") else { return nil }
        self.init(micros: micros, id: id)
    }

    package var text: String {
        Data("\(micros).\(id)".utf8).base64EncodedString()
            .replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_")
            .replacingOccurrences(of: "=", with: "")
    }

    package static func micros(_ date: Date) -> Int64 { Int64((date.timeIntervalSince1970 * 1_000_000).rounded()) }
}

/// A nearest-neighbour search: the records whose `field` (a top-level array of numbers, such
/// as an embedding) is most similar to `vector` by cosine similarity, exactly (every record
/// of the tenant's table is compared). Records whose field is missing, not an array of
/// numbers, of another length, or all zeros are left out.
public struct NearestQuery: Sendable, Hashable {
    public var vector: [Double]
    public var field: String
    public var limit: Int
    /// Top-level fields and the values they must equal, as in ``RecordQuery``.
    public var filters: [String: JSONValue]

    /// The longest vector compared (OpenAI's text-embedding-3-large has 3,072 dimensions).
    public static let maximumDimensions = 4_096
    public static let maximumLimit = 1_000
    /// Most records compared when the storage cannot compute similarity itself (SQLite, a
    /// stream): they are read into the process, page by page.
    public static let maximumRecordsInProcess = 100_000

    public init(vector: [Double], field: String, limit: Int = 10, filters: [String: JSONValue] = [:]) {
        self.vector = vector
        self.field = field
        self.limit = limit
        self.filters = filters
    }

    /// Why the query cannot run, naming the parameter; `nil` when it can.
    package var problem: (field: String, message: String)? {
        if !RecordQuery.isFilterField(field) { return ("field", "must be 1-63 letters, digits or '_' (a top-level field)") }
        if vector.isEmpty || vector.count > Self.maximumDimensions {
            return ("vector", "must have 1 to \(Self.maximumDimensions) numbers, has \(vector.count)")
        }
        if !vector.allSatisfy(\.isFinite) { return ("vector", "must hold finite numbers") }
        if norm == 0 { return ("vector", "must not be all zeros (it has no direction)") }
        if !(1...Self.maximumLimit).contains(limit) { return ("limit", "must be between 1 and \(Self.maximumLimit)") }
        return RecordQuery(filters: filters).problem
    }

    /// The vector's Euclidean length.
    package var norm: Double { vector.reduce(0) { $0 + $1 * $1 }.squareRoot() }

    /// The cosine similarity of `value` (a record's field) with the vector, or `nil` when it
    /// is not an array of as many numbers, or all zeros.
    package func similarity(_ value: JSONValue, norm: Double) -> Double? {
        guard case .array(let items) = value, items.count == vector.count else { return nil }
        var dot = 0.0
        var squares = 0.0
        for (index, item) in items.enumerated() {
            let number: Double
            switch item {
            case .int(let n): number = Double(n)
            case .double(let d): number = d
            default: return nil
            }
            dot += number * vector[index]
            squares += number * number
        }
        guard squares > 0 else { return nil }
        return dot / (squares.squareRoot() * norm)
    }
}

/// A record found by a nearest-neighbour search, and its cosine similarity (-1…1, higher is
/// nearer).
public struct Scored<Row: Sendable>: Sendable {
    public var entry: Entry<Row>
    public var score: Double

    package init(entry: Entry<Row>, score: Double) {
        self.entry = entry
        self.score = score
    }

    public var value: Row { entry.value }
}

/// A raw record found by a nearest-neighbour search.
package struct ScoredRecord: Sendable {
    package var record: IncomingRecord
    package var score: Double

    package init(record: IncomingRecord, score: Double) {
        self.record = record
        self.score = score
    }

    /// Whether `self` ranks before `other`: higher score, then lower id.
    package func ranks(before other: ScoredRecord) -> Bool {
        score != other.score ? score > other.score : record.metadata.id < other.record.metadata.id
    }

    /// Inserts `candidate` into `best` (ranked), keeping at most `limit`.
    package static func insert(_ candidate: ScoredRecord, into best: inout [ScoredRecord], keeping limit: Int) {
        if best.count == limit, let last = best.last, !candidate.ranks(before: last) { return }
        let index = best.firstIndex { candidate.ranks(before: $0) } ?? best.endIndex
        best.insert(candidate, at: index)
        if best.count > limit { best.removeLast() }
    }
}

/// Raw records read from a storage, before decoding.
package struct StoredPage: Sendable {
    package var records: [IncomingRecord]
    package var nextCursor: String?

    package init(records: [IncomingRecord], nextCursor: String?) {
        self.records = records
        self.nextCursor = nextCursor
    }
}

/// A place that keeps tables' records and answers queries on them: PostgreSQL, SQLite, S3.
///
/// Writes are idempotent by record id: writing a record again (a redelivered batch) leaves
/// one copy. Every read is scoped to one tenant.
package protocol TableStorage: Sendable {
    /// The storage's name in `autonomous.json` (`sqlite` for dev's default).
    var name: String { get }
    /// What startup output shows: kind and address, never credentials.
    var displayName: String { get }
    /// Creates or migrates what keeps `table` (idempotent). Throws ``StorageError`` naming the
    /// table and field when the record type changed in a way the storage cannot follow.
    func prepare(_ table: TableDefinition) async throws
    /// Keeps `records` of `table` for `tenant`, once each by record id.
    func write(_ records: [IncomingRecord], table: TableDefinition, tenant: String) async throws
    /// The query's page of `tenant`'s records of `table`. The query was checked.
    func read(_ query: RecordQuery, table: TableDefinition, tenant: String) async throws -> StoredPage
    /// How many of `tenant`'s records of `table` match the query (limit and cursor ignored).
    func count(_ query: RecordQuery, table: TableDefinition, tenant: String) async throws -> Int
    /// Whether the storage can read back (an S3 storage only writes).
    var isReadable: Bool { get }
    /// Runs a read-only SQL query with bound parameters (`$1`…) in which `{table}` stands for
    /// that table's rows of `tenant` (``SQLQuery``). Only PostgreSQL storages run SQL.
    func query(_ query: SQLQuery, tables: [TableDefinition], tenant: String) async throws -> [JSONObject]
    /// The query's nearest records of `tenant`'s `table`, most similar first (ties by id).
    /// The query was checked. By default, computed in process over pages of ``read(_:table:tenant:)``.
    func nearest(_ query: NearestQuery, table: TableDefinition, tenant: String) async throws -> [ScoredRecord]
    func close() async throws
}

extension TableStorage {
    package func nearest(_ query: NearestQuery, table: TableDefinition, tenant: String) async throws -> [ScoredRecord] {
        let norm = query.norm
        var best: [ScoredRecord] = []
        var seen = 0
        var page = RecordQuery(filters: query.filters, order: .oldestFirst, limit: RecordQuery.maximumLimit)
        repeat {
            let stored = try await read(page, table: table, tenant: tenant)
            seen += stored.records.count
            if seen > NearestQuery.maximumRecordsInProcess {
                throw TableReadError(
                    table: table.name,
                    message: "has more than \(NearestQuery.maximumRecordsInProcess) records to compare; a search over more needs "
                        + "a PostgreSQL storage, which computes similarity itself (or narrow it with where)"
                )
            }
            for record in stored.records {
                guard case .object(let object)? = try? JSONParser.parse(record.payload),
                    let value = object[query.field], let score = query.similarity(value, norm: norm)
                else { continue }
                ScoredRecord.insert(ScoredRecord(record: record, score: score), into: &best, keeping: query.limit)
            }
            page.cursor = stored.nextCursor
        } while page.cursor != nil
        return best
    }

    package func query(_ query: SQLQuery, tables: [TableDefinition], tenant: String) async throws -> [JSONObject] {
        throw TableReadError(
            table: tables.first?.name ?? "",
            message: "is kept in storage '\(name)', which runs no SQL; SQL queries need a PostgreSQL storage"
        )
    }
}

/// A read-only SQL query on the PostgreSQL storage that keeps a table, for what
/// ``Table/records(since:until:sinceSequence:where:order:limit:cursor:_:)`` does not cover (aggregates,
/// joins). Values are bound (`$1`, `$2`… in `bindings` order), never spliced. `{orders}`
/// stands for the rows of table `orders` that belong to the context's tenant, so a query
/// that names its tables that way reads nothing of another tenant's:
///
/// ```swift
/// let rows = try await orders.query(
///     "SELECT customer, sum(total) AS spent FROM {enriched_orders} WHERE _ingested_at > $1 GROUP BY customer",
///     bindings: [.string("2026-12-01T00:00:00Z")],
///     ctx
/// )
/// ```
///
/// The query runs in a read-only transaction with a 30 s statement timeout; each row comes
/// back as a JSON object of its columns. The tables it names must be kept in the same storage.
public struct SQLQuery: Sendable, Hashable {
    public var text: String
    public var bindings: [JSONValue]

    public init(_ text: String, bindings: [JSONValue] = []) {
        self.text = text
        self.bindings = bindings
    }

    /// The table names in `{…}` placeholders, in order of first appearance.
    package var tableNames: [String] {
        var names: [String] = []
        var rest = text[...]
        while let open = rest.firstIndex(of: "{"), let close = rest[open...].firstIndex(of: "}") {
            let name = String(rest[rest.index(after: open)..<close])
            if !names.contains(name) { names.append(name) }
            rest = rest[rest.index(after: close)...]
        }
        return names
    }
}

/// A storage failed, or refused what it was asked.
package struct StorageError: Error, Sendable, CustomStringConvertible {
    package var message: String
    /// The storage cannot be reached right now: the worker retries without counting attempts.
    package var isTransient: Bool
    /// The storage refuses the record itself (a value its database cannot hold): another
    /// attempt cannot help, so the record goes to the dead-letter subject at once.
    package var isRefusal: Bool
    /// The database's own error code (PostgreSQL's SQLSTATE), when it gave one.
    package var code: String?

    package init(_ message: String, transient: Bool = false, refusal: Bool = false, code: String? = nil) {
        self.message = message
        self.isTransient = transient
        self.isRefusal = refusal
        self.code = code
    }

    /// A row with the same key is there already (SQLSTATE 23505).
    package var isUniqueViolation: Bool { code == "23505" }

    package var description: String { message }
}

/// A read that cannot be answered: no storage keeps the table, or the query is malformed.
public struct TableReadError: Error, Sendable, CustomStringConvertible {
    public var table: String
    /// The parameter at fault (`limit`, `cursor`, `where`…), if any.
    public var field: String?
    public var message: String

    package init(table: String, field: String? = nil, message: String) {
        self.table = table
        self.field = field
        self.message = message
    }

    public var description: String { "reading table '\(table)': " + (field.map { "\($0) " } ?? "") + message }
}

/// Answers reads of the app's tables for one process: each kept table from its storage, and
/// the others (and reads by stream sequence) from their streams, when `streams` is given.
package final class TableReader: Sendable {
    /// The storage of each kept table, by table name.
    package let storages: [String: any TableStorage]
    /// Every table of the app, by name (SQL queries name them).
    package let tables: [String: TableDefinition]
    /// Reads tables from their streams.
    package let streams: (any TableStorage)?

    package init(storages: [String: any TableStorage], tables: [String: TableDefinition] = [:], streams: (any TableStorage)? = nil) {
        self.storages = storages
        self.tables = tables
        self.streams = streams
    }

    package func storage(of table: String) -> (any TableStorage)? { storages[table] }

    /// Whether reads of `table` can be answered here (from a storage or the stream).
    package func canRead(_ table: String) -> Bool { streams != nil || storages[table] != nil }

    package func read(_ query: RecordQuery, table: TableDefinition, tenant: String) async throws -> StoredPage {
        try await readable(table, query).read(query, table: table, tenant: tenant)
    }

    package func count(_ query: RecordQuery, table: TableDefinition, tenant: String) async throws -> Int {
        try await readable(table, query).count(query, table: table, tenant: tenant)
    }

    package func nearest(_ query: NearestQuery, table: TableDefinition, tenant: String) async throws -> [ScoredRecord] {
        if let (field, message) = query.problem { throw TableReadError(table: table.name, field: field, message: message) }
        return try await readable(table, RecordQuery(filters: query.filters)).nearest(query, table: table, tenant: tenant)
    }

    /// Runs `query` on the storage of `table`; every `{name}` must be a table kept there.
    package func query(
        _ query: SQLQuery,
        table: TableDefinition,
        tables: [String: TableDefinition],
        tenant: String
    ) async throws -> [JSONObject] {
        guard let storage = storages[table.name] else {
            throw TableReadError(table: table.name, message: "is not kept in a storage; bind it to a PostgreSQL storage to query it")
        }
        var named: [TableDefinition] = []
        for name in query.tableNames {
            guard let other = tables[name] else {
                throw TableReadError(table: table.name, field: "sql", message: "{\(name.prefix(64))} is not a table of the app")
            }
            guard storages[name]?.name == storage.name else {
                throw TableReadError(
                    table: table.name,
                    field: "sql",
                    message: "{\(name)} is not kept in storage '\(storage.name)', where the query runs"
                )
            }
            named.append(other)
        }
        return try await storage.query(query, tables: named, tenant: tenant)
    }

    private func readable(_ table: TableDefinition, _ query: RecordQuery) throws(TableReadError) -> any TableStorage {
        if let (field, message) = query.problem { throw TableReadError(table: table.name, field: field, message: message) }
        if query.sinceSequence != nil || !(storages[table.name]?.isReadable ?? false), let streams { return streams }
        guard let storage = storages[table.name] else {
            throw TableReadError(
                table: table.name,
                message: "is not kept in a storage; bind it to one (table(_:of:storage:) or \"tables\" in autonomous.json)"
            )
        }
        guard storage.isReadable else {
            throw TableReadError(table: table.name, message: "is kept in storage '\(storage.name)', which cannot be read back here")
        }
        return storage
    }
}

/// A context that can read kept tables: a handler's, a schedule's and a route's.
package protocol TableReading {
    var tableReader: TableReader? { get }
}

extension TableReading {
    /// The app's tables by name, for SQL placeholders.
    var readableTables: [String: TableDefinition]? { tableReader?.tables }
}

extension Table {
    /// A page of the table's records, newest first unless `order` says otherwise, from the
    /// storage that keeps it. Only the context's tenant's records are read.
    ///
    /// `where` compares top-level fields for equality. Pass the page's ``RecordPage/nextCursor``
    /// as `cursor` (with the same other arguments) for the next page.
    ///
    /// A table no readable storage keeps is read from its stream, within the stream's
    /// retention; so is any read with `sinceSequence` (records at or after that sequence of
    /// the table's stream).
    public func records(
        since: Date? = nil,
        until: Date? = nil,
        sinceSequence: UInt64? = nil,
        where filters: [String: JSONValue] = [:],
        order: RecordOrder = .newestFirst,
        limit: Int = 100,
        cursor: String? = nil,
        _ ctx: some AppendContext
    ) async throws -> RecordPage<Row> {
        let query = RecordQuery(
            since: since,
            until: until,
            filters: filters,
            order: order,
            limit: limit,
            cursor: cursor,
            sinceSequence: sinceSequence
        )
        let page = try await reader(ctx).read(query, table: definition, tenant: ctx.tenant)
        return RecordPage(entries: try Records<Row>.decoding(page.records).entries, nextCursor: page.nextCursor)
    }

    /// How many of the table's records match (the context's tenant's only).
    public func count(
        since: Date? = nil,
        until: Date? = nil,
        where filters: [String: JSONValue] = [:],
        _ ctx: some AppendContext
    ) async throws -> Int {
        let query = RecordQuery(since: since, until: until, filters: filters)
        return try await reader(ctx).count(query, table: definition, tenant: ctx.tenant)
    }

    /// The `limit` records whose `field`, an array of numbers such as an embedding, is most
    /// similar to `vector` by cosine similarity, most similar first (the context's tenant's
    /// only). Exact: a PostgreSQL storage compares every record itself; other storages, and a
    /// table read from its stream, compare at most ``NearestQuery/maximumRecordsInProcess``
    /// records in the process. Vectors have at most ``NearestQuery/maximumDimensions`` numbers.
    ///
    /// ```swift
    /// let hits = try await chunks.nearest(to: question.embedding, field: "embedding", limit: 5, ctx)
    /// for hit in hits { print(hit.score, hit.value.text) }
    /// ```
    public func nearest(
        to vector: [Double],
        field: String,
        limit: Int = 10,
        where filters: [String: JSONValue] = [:],
        _ ctx: some AppendContext
    ) async throws -> [Scored<Row>] {
        let query = NearestQuery(vector: vector, field: field, limit: limit, filters: filters)
        let found = try await reader(ctx).nearest(query, table: definition, tenant: ctx.tenant)
        let entries = try Records<Row>.decoding(found.map(\.record)).entries
        return zip(entries, found).map { Scored(entry: $0, score: $1.score) }
    }

    /// Runs a read-only SQL query on the PostgreSQL storage that keeps this table (see
    /// ``SQLQuery``): `{name}` stands for the context's tenant's rows of table `name`.
    public func query(_ sql: String, bindings: [JSONValue] = [], _ ctx: some AppendContext) async throws -> [JSONObject] {
        guard let tables = (ctx as? any TableReading)?.readableTables else {
            throw TableReadError(table: name, message: "cannot be queried from this context (no storage is configured in this process)")
        }
        return try await reader(ctx).query(SQLQuery(sql, bindings: bindings), table: definition, tables: tables, tenant: ctx.tenant)
    }

    private func reader(_ ctx: some AppendContext) throws(TableReadError) -> TableReader {
        guard let reader = (ctx as? any TableReading)?.tableReader else {
            throw TableReadError(table: name, message: "cannot be read from this context (no storage is configured in this process)")
        }
        return reader
    }
}
