package import ClusterCore
import Coordinator
import Foundation
package import Logging
import NIOCore
import PostgresNIO
import ServiceLifecycle

/// Keeps tables in PostgreSQL: one SQL table per app table, shared by the tenants, with the
/// tenant in a column that every query the framework makes binds.
///
/// Why one table with a tenant column, not one per tenant: tenants are created at run time
/// (the admin API), and a table per tenant would mean DDL on the write path and a catalog that
/// grows with tenants × tables; one table is migrated once, at startup, and an operator can
/// query across tenants. Isolation is in the reads: each one filters on the caller's tenant,
/// taken from its API key, as a bound parameter.
///
/// Columns: `_tenant`, `_id` (the record id; with the tenant, the primary key), `_ingested_at`
/// (when JetStream stored the record), `_caused_by`, `_type` (semantic type), `_record` (the
/// whole record, `jsonb`), and one generated column per typed field. A batch is copied
/// (`COPY FROM STDIN`) into a temporary table and inserted with `ON CONFLICT DO NOTHING`, so
/// a redelivered batch leaves one row per record id.
package final class PostgresTableStorage: TableStorage, Service {
    package let name: String
    package let displayName: String
    package var isReadable: Bool { true }
    let client: PostgresClient
    let logger: Logger
    /// Finished when ``run()`` starts the pool; the first query waits for it.
    private let started: AsyncStream<Never>
    private let startedContinuation: AsyncStream<Never>.Continuation

    /// Connects to `url` (checked once now; see ``PostgresSettings``).
    package static func open(name: String, url: String, password: String?, logger: Logger) async throws -> PostgresTableStorage {
        let settings = try await PostgresSettings.connect(url: url, password: password, logger: logger)
        var configuration = settings.client
        configuration.options.maximumConnections = 8
        return PostgresTableStorage(
            name: name,
            client: PostgresClient(configuration: configuration, backgroundLogger: logger),
            displayName: settings.displayName,
            logger: logger
        )
    }

    private init(name: String, client: PostgresClient, displayName: String, logger: Logger) {
        self.name = name
        self.client = client
        self.displayName = displayName
        self.logger = logger
        (started, startedContinuation) = AsyncStream.makeStream(of: Never.self)
    }

    /// Runs the connection pool until a graceful shutdown or cancellation.
    package func run() async {
        startedContinuation.finish()
        await cancelWhenGracefulShutdown { await self.client.run() }
    }

    /// Opens a storage and runs its pool while `body` runs (tools and tests).
    package static func withStorage<T: Sendable>(
        name: String = "postgres",
        url: String,
        password: String? = nil,
        logger: Logger,
        _ body: (PostgresTableStorage) async throws -> T
    ) async throws -> T {
        let storage = try await open(name: name, url: url, password: password, logger: logger)
        return try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { await storage.run() }
            defer { group.cancelAll() }
            return try await body(storage)
        }
    }

    package func close() async throws {}

    private func waitUntilStarted() async {
        for await _ in started {}
    }

    // MARK: Schema

    package func prepare(_ table: TableDefinition) async throws {
        await waitUntilStarted()
        let sqlTable = SQL.identifier(table.name)
        let columns = TypedColumn.of(table)
        try await run(table: table.name) {
            try await self.client.withTransaction(logger: self.logger) { connection in
                // One process migrates a table at a time; the others then find it done.
                try await connection.query(
                    "SELECT pg_advisory_xact_lock(hashtext(\("autonomous-storage:" + table.name)))",
                    logger: self.logger
                )
                try await connection.query(
                    PostgresQuery(
                        unsafeSQL: """
                            CREATE TABLE IF NOT EXISTS \(sqlTable) (
                                _tenant TEXT NOT NULL,
                                _id TEXT NOT NULL,
                                _ingested_at TIMESTAMPTZ NOT NULL,
                                _caused_by TEXT,
                                _type TEXT,
                                _record JSONB NOT NULL,
                                PRIMARY KEY (_tenant, _id)
                            )
                            """
                    ),
                    logger: self.logger
                )
                try await connection.query(
                    PostgresQuery(
                        unsafeSQL:
                            "CREATE INDEX IF NOT EXISTS \(SQL.identifier(table.name + "_by_time")) ON \(sqlTable) (_tenant, _ingested_at, _id)"
                    ),
                    logger: self.logger
                )
                var existing: [String: (type: String, generated: Bool)] = [:]
                let rows = try await connection.query(
                    """
                    SELECT column_name, data_type, is_generated FROM information_schema.columns
                    WHERE table_schema = current_schema() AND table_name = \(table.name)
                    """,
                    logger: self.logger
                )
                for try await (column, type, generated) in rows.decode((String, String, String).self) {
                    existing[column] = (type, generated == "ALWAYS")
                }
                for column in columns {
                    let wanted = Self.sqlType(column.kind)
                    if let found = existing[column.field] {
                        guard found.generated, found.type == wanted else {
                            throw StorageError(
                                "table '\(table.name)' in storage '\(self.name)' (\(self.displayName)): column '\(column.field)' is "
                                    + (found.generated ? found.type : "a column Autonomous did not make (\(found.type))")
                                    + ", but field '\(column.field)' of \(table.typeName ?? "the record type") is now \(wanted). "
                                    + "Rename the field, or drop the column (ALTER TABLE \(sqlTable) DROP COLUMN \(SQL.identifier(column.field))) "
                                    + "and start again: it is then made anew from the kept records."
                            )
                        }
                        continue
                    }
                    try await connection.query(
                        PostgresQuery(
                            unsafeSQL: "ALTER TABLE \(sqlTable) ADD COLUMN \(SQL.identifier(column.field)) \(wanted) "
                                + "GENERATED ALWAYS AS (\(Self.expression(column))) STORED"
                        ),
                        logger: self.logger
                    )
                    self.logger.info(
                        "Storage table gained a column for a new field",
                        metadata: ["storage": "\(self.name)", "storage.table": "\(table.name)", "storage.column": "\(column.field)"]
                    )
                }
            }
        }
    }

    static func sqlType(_ kind: FieldKind) -> String {
        switch kind {
        case .text: return "text"
        case .integer: return "bigint"
        case .unsignedInteger: return "numeric"
        case .number: return "double precision"
        case .boolean: return "boolean"
        case .json: return "jsonb"
        }
    }

    /// The generated column's value: the field when it holds the kind of value the type says,
    /// else NULL (a generated column must never fail a write).
    static func expression(_ column: TypedColumn) -> String {
        let key = SQL.literal(column.field)
        let value = "_record -> \(key)"
        let text = "_record ->> \(key)"
        switch column.kind {
        case .text: return "CASE WHEN jsonb_typeof(\(value)) = 'string' THEN \(text) END"
        case .integer:
            return "CASE WHEN jsonb_typeof(\(value)) = 'number' AND (\(text)) ~ '^-?[0-9]{1,18}$' THEN (\(text))::bigint END"
        case .unsignedInteger: return "CASE WHEN jsonb_typeof(\(value)) = 'number' THEN (\(text))::numeric END"
        case .number:
            return "CASE WHEN jsonb_typeof(\(value)) = 'number' AND abs((\(text))::numeric) < 1e300 THEN (\(text))::double precision END"
        case .boolean: return "CASE WHEN jsonb_typeof(\(value)) = 'boolean' THEN (\(text))::boolean END"
        case .json: return value
        }
    }

    // MARK: Writing

    package func write(_ records: [IncomingRecord], table: TableDefinition, tenant: String) async throws {
        guard !records.isEmpty else { return }
        await waitUntilStarted()
        // First straight into the table, as fast as PostgreSQL takes rows. A record kept
        // before (a redelivered batch, or an id published twice after the stream's duplicate
        // window) fails the whole COPY with unique_violation and nothing of it is kept; the
        // batch then goes through the staging table, which skips the rows already there.
        precondition(Names.isValid(table.name), "table names are validated when the graph is built")
        var rows = CopyRows(tenant: tenant, capacity: records.reduce(0) { $0 + $1.payload.count + 128 })
        for record in records { rows.append(record) }
        let direct = rows.buffer
        do {
            try await run(table: table.name) {
                try await self.client.withConnection { connection in
                    // PostgresNIO quotes the name itself; table names are [a-z0-9_-] (Names).
                    try await connection.copyFrom(
                        table: table.name,
                        columns: ["_tenant", "_id", "_ingested_at", "_caused_by", "_type", "_record"],
                        logger: self.logger
                    ) { writer in
                        try await writer.write(direct)
                    }
                }
            }
            return
        } catch let error as StorageError where error.isUniqueViolation {
            // Some of the batch is kept already: below, idempotently.
        }
        var staged = CopyRows(tenant: nil, capacity: records.reduce(0) { $0 + $1.payload.count + 96 })
        for record in records { staged.append(record) }
        let data = staged.buffer
        try await run(table: table.name) {
            try await self.client.withTransaction(logger: self.logger) { connection in
                try await connection.query(
                    """
                    CREATE TEMP TABLE IF NOT EXISTS autonomous_staging (
                        _id TEXT, _ingested_us BIGINT, _caused_by TEXT, _type TEXT, _record TEXT
                    ) ON COMMIT DELETE ROWS
                    """,
                    logger: self.logger
                )
                try await connection.copyFrom(table: "autonomous_staging", logger: self.logger) { writer in
                    try await writer.write(data)
                }
                try await connection.query(
                    PostgresQuery(
                        unsafeSQL: """
                            INSERT INTO \(SQL.identifier(table.name)) (_tenant, _id, _ingested_at, _caused_by, _type, _record)
                            SELECT $1, _id, timestamptz 'epoch' + _ingested_us * interval '1 microsecond', _caused_by, _type, _record::jsonb
                            FROM autonomous_staging
                            ON CONFLICT (_tenant, _id) DO NOTHING
                            """,
                        binds: Self.binds(tenant)
                    ),
                    logger: self.logger
                )
            }
        }
    }

    static func binds(_ values: String...) -> PostgresBindings {
        var binds = PostgresBindings()
        for value in values { binds.append(value) }
        return binds
    }

    /// Rows of `COPY … FROM STDIN` text format: tab-separated, `\\N` for NULL, and the
    /// backslash, tab, newline and carriage return escaped in values.
    struct CopyRows {
        /// The kept table's own columns (`_tenant, _id, _ingested_at, _caused_by, _type,
        /// _record`) when set; else the staging table's (`_id, _ingested_us, …`).
        let tenant: String?
        var buffer = ByteBuffer()
        /// The last second formatted, and its text (`2026-12-07 10:00:00.`): a batch's
        /// records mostly share their seconds.
        private var second: Int64 = .min
        private var secondText = ""

        init(tenant: String?, capacity: Int) {
            self.tenant = tenant
            buffer.reserveCapacity(capacity)
        }

        mutating func append(_ record: IncomingRecord) {
            if let tenant {
                buffer.writeString(tenant)  // a valid tenant name: nothing to escape
                tab()
            }
            value(record.metadata.id)
            tab()
            let micros = RecordCursor.micros(record.metadata.ingestTime)
            if tenant != nil {
                let seconds = micros >= 0 ? micros / 1_000_000 : (micros - 999_999) / 1_000_000
                if seconds != second {
                    let parts = UTCParts(Date(timeIntervalSince1970: Double(seconds)))
                    second = seconds
                    secondText = "\(parts.year)-\(parts.month)-\(parts.day) \(parts.hour):\(parts.minute):\(parts.second)."
                }
                buffer.writeString(secondText)
                let fraction = micros - seconds * 1_000_000
                var divisor: Int64 = 100_000
                while divisor > 0 {
                    buffer.writeInteger(UInt8(ascii: "0") + UInt8((fraction / divisor) % 10))
                    divisor /= 10
                }
                buffer.writeStaticString("+00")
            } else {
                buffer.writeString(String(micros))
            }
            tab()
            optional(record.metadata.causedBy)
            tab()
            optional(record.metadata.semanticType)
            tab()
            record.payload.withUnsafeBytes { value($0) }
            buffer.writeInteger(UInt8(ascii: "\n"))
        }

        private mutating func tab() { buffer.writeInteger(UInt8(ascii: "\t")) }

        private mutating func optional(_ text: String?) {
            if let text { value(text) } else { buffer.writeStaticString("\\N") }
        }

        private mutating func value(_ text: String) {
            var text = text
            text.withUTF8 { value(UnsafeRawBufferPointer($0)) }
        }

        /// Writes the runs that need no escaping whole.
        private mutating func value(_ bytes: UnsafeRawBufferPointer) {
            var start = 0
            for index in 0..<bytes.count {
                let escaped: StaticString
                switch bytes[index] {
                case UInt8(ascii: "\\"): escaped = "\\\\"
                case UInt8(ascii: "\t"): escaped = "\\t"
                case UInt8(ascii: "\n"): escaped = "\\n"
                case UInt8(ascii: "\r"): escaped = "\\r"
                default: continue
                }
                buffer.writeBytes(UnsafeRawBufferPointer(rebasing: bytes[start..<index]))
                buffer.writeStaticString(escaped)
                start = index + 1
            }
            buffer.writeBytes(UnsafeRawBufferPointer(rebasing: bytes[start...]))
        }
    }

    // MARK: Reading

    package func read(_ query: RecordQuery, table: TableDefinition, tenant: String) async throws -> StoredPage {
        await waitUntilStarted()
        var binds = PostgresBindings()
        let conditions = Self.conditions(query, tenant: tenant, cursor: true, binds: &binds)
        let direction = query.order == .newestFirst ? "DESC" : "ASC"
        binds.append(query.limit + 1)
        let sql = """
            SELECT _id, (extract(epoch FROM _ingested_at) * 1000000)::bigint, _caused_by, _type, _record::text
            FROM \(SQL.identifier(table.name)) WHERE \(conditions)
            ORDER BY _ingested_at \(direction), _id \(direction) LIMIT $\(binds.count)
            """
        var records: [IncomingRecord] = []
        var micros: [Int64] = []
        try await run(table: table.name) {
            let rows = try await self.client.query(PostgresQuery(unsafeSQL: sql, binds: binds), logger: self.logger)
            for try await (id, time, cause, type, body) in rows.decode((String, Int64, String?, String?, String).self) {
                micros.append(time)
                records.append(.kept(id: id, micros: time, causedBy: cause, type: type, body: body, table: table.name, tenant: tenant))
            }
        }
        return Self.page(records, micros: micros, limit: query.limit)
    }

    package func count(_ query: RecordQuery, table: TableDefinition, tenant: String) async throws -> Int {
        await waitUntilStarted()
        var binds = PostgresBindings()
        let conditions = Self.conditions(query, tenant: tenant, cursor: false, binds: &binds)
        var total = 0
        try await run(table: table.name) {
            let rows = try await self.client.query(
                PostgresQuery(unsafeSQL: "SELECT count(*) FROM \(SQL.identifier(table.name)) WHERE \(conditions)", binds: binds),
                logger: self.logger
            )
            for try await n in rows.decode(Int.self) { total = n }
        }
        return total
    }

    /// Computed in PostgreSQL over every record of the tenant's table (a scan: no vector
    /// index), from the field's JSON array; elements that are not numbers, or an array of
    /// another length, leave the record out.
    package func nearest(_ query: NearestQuery, table: TableDefinition, tenant: String) async throws -> [ScoredRecord] {
        await waitUntilStarted()
        var binds = PostgresBindings()
        let conditions = Self.conditions(RecordQuery(filters: query.filters), tenant: tenant, cursor: false, binds: &binds)
        func bind(_ value: some PostgresNonThrowingEncodable & Sendable) -> String {
            binds.append(value)
            return "$\(binds.count)"
        }
        let field = bind(query.field)
        let vector = bind(query.vector)
        let dimensions = bind(query.vector.count)
        let norm = bind(query.norm)
        let limit = bind(query.limit)
        let number = "CASE WHEN jsonb_typeof(e.x) = 'number' THEN (e.x)::text::float8 END"
        let sql = """
            SELECT _id, micros, _caused_by, _type, body, score FROM (
                SELECT t._id, (extract(epoch FROM t._ingested_at) * 1000000)::bigint AS micros, t._caused_by, t._type,
                    t._record::text AS body,
                    (SELECT CASE WHEN count(*) = \(dimensions) AND bool_and(jsonb_typeof(e.x) = 'number')
                        THEN sum((\(number)) * (\(vector)::float8[])[e.i]) / NULLIF(sqrt(sum((\(number)) ^ 2)) * \(norm), 0) END
                     FROM jsonb_array_elements(CASE WHEN jsonb_typeof(t._record -> \(field)) = 'array'
                         THEN t._record -> \(field) ELSE '[]'::jsonb END) WITH ORDINALITY AS e(x, i)) AS score
                FROM \(SQL.identifier(table.name)) t WHERE \(conditions)
            ) scored
            WHERE score IS NOT NULL ORDER BY score DESC, _id COLLATE "C" LIMIT \(limit)
            """
        var found: [ScoredRecord] = []
        try await run(table: table.name) {
            let rows = try await self.client.query(PostgresQuery(unsafeSQL: sql, binds: binds), logger: self.logger)
            for try await (id, time, cause, type, body, score) in rows.decode((String, Int64, String?, String?, String, Double).self) {
                found.append(
                    ScoredRecord(
                        record: .kept(id: id, micros: time, causedBy: cause, type: type, body: body, table: table.name, tenant: tenant),
                        score: score
                    )
                )
            }
        }
        return found
    }

    // MARK: SQL

    package func query(_ query: SQLQuery, tables: [TableDefinition], tenant: String) async throws -> [JSONObject] {
        await waitUntilStarted()
        var binds = PostgresBindings()
        for value in query.bindings {
            switch value {
            case .null: binds.appendNull()
            case .bool(let flag): binds.append(flag)
            case .int(let number): binds.append(Int(number))
            case .double(let number): binds.append(number)
            case .string(let text): binds.append(text)
            case .array, .object: binds.append(String(decoding: JSONWriter.encode(value), as: UTF8.self))
            }
        }
        var text = query.text
        if !tables.isEmpty {
            binds.append(tenant)
            let tenantParameter = "$\(binds.count)"
            for table in tables {
                let name = SQL.identifier(table.name)
                text = text.replacingOccurrences(
                    of: "{\(table.name)}",
                    with: "(SELECT * FROM \(name) WHERE _tenant = \(tenantParameter)) AS \(name)"
                )
            }
        }
        let statement = PostgresQuery(unsafeSQL: text, binds: binds)
        var rows: [JSONObject] = []
        try await run(table: tables.first?.name ?? "") {
            try await self.client.withTransaction(logger: self.logger) { connection in
                try await connection.query("SET TRANSACTION READ ONLY", logger: self.logger)
                try await connection.query("SET LOCAL statement_timeout = '30s'", logger: self.logger)
                for try await row in try await connection.query(statement, logger: self.logger) {
                    var object = JSONObject()
                    for cell in row { object[cell.columnName] = Self.value(cell) }
                    rows.append(object)
                }
            }
        }
        return rows
    }

    /// A column's value as JSON: numbers, booleans, JSON as parsed, times as RFC 3339, the
    /// rest as text.
    static func value(_ cell: PostgresCell) -> JSONValue {
        guard cell.bytes != nil else { return .null }
        switch cell.dataType {
        case .bool: return (try? cell.decode(Bool.self)).map(JSONValue.bool) ?? .null
        case .int2, .int4, .int8: return (try? cell.decode(Int64.self)).map(JSONValue.int) ?? .null
        case .float4, .float8: return (try? cell.decode(Double.self)).map(JSONValue.double) ?? .null
        case .numeric:
            guard let decimal = try? cell.decode(Decimal.self) else { return .null }
            let text = "\(decimal)"
            if let whole = Int64(text) { return .int(whole) }
            return Double(text).map(JSONValue.double) ?? .string(text)
        case .json, .jsonb:
            guard let text = try? cell.decode(String.self) else { return .null }
            return (try? JSONParser.parse(Array(text.utf8))) ?? .string(text)
        case .timestamptz, .timestamp:
            return (try? cell.decode(Date.self)).map { .string(ISO8601.format($0)) } ?? .null
        default:
            return (try? cell.decode(String.self)).map(JSONValue.string) ?? .null
        }
    }

    /// The WHERE clause of a query; every value is a bound parameter.
    static func conditions(_ query: RecordQuery, tenant: String, cursor useCursor: Bool, binds: inout PostgresBindings) -> String {
        var conditions: [String] = []
        func bind(_ value: some PostgresNonThrowingEncodable & Sendable) -> String {
            binds.append(value)
            return "$\(binds.count)"
        }
        func micros(_ value: Int64) -> String { "timestamptz 'epoch' + \(bind(value))::bigint * interval '1 microsecond'" }
        conditions.append("_tenant = \(bind(tenant))")
        if let since = query.since { conditions.append("_ingested_at >= \(micros(RecordCursor.micros(since)))") }
        if let until = query.until { conditions.append("_ingested_at < \(micros(RecordCursor.micros(until)))") }
        if !query.filters.isEmpty {
            // Containment of a JSON object of scalars: each field equals its value.
            let object = JSONValue.object(JSONObject(query.filters))
            conditions.append("_record @> \(bind(String(decoding: JSONWriter.encode(object), as: UTF8.self)))::jsonb")
        }
        if useCursor, let text = query.cursor, let cursor = RecordCursor(text) {
            let comparison = query.order == .newestFirst ? "<" : ">"
            conditions.append("(_ingested_at, _id) \(comparison) (\(micros(cursor.micros)), \(bind(cursor.id)))")
        }
        return conditions.joined(separator: " AND ")
    }

    /// The page of `limit` records from `limit + 1` read, with the cursor after its last.
    static func page(_ records: [IncomingRecord], micros: [Int64], limit: Int) -> StoredPage {
        guard records.count > limit else { return StoredPage(records: records, nextCursor: nil) }
        let last = limit - 1
        return StoredPage(
            records: Array(records.prefix(limit)),
            nextCursor: RecordCursor(micros: micros[last], id: records[last].metadata.id).text
        )
    }

    /// Runs `body`, turning PostgreSQL's errors into ``StorageError``s: transient when the
    /// server cannot be reached or is shutting down, so the sink retries without end.
    private func run(table: String, _ body: () async throws -> Void) async throws {
        do {
            do {
                try await body()
            } catch let error as PostgresTransactionError {
                throw error.beginError ?? error.closureError ?? error.commitError ?? error.rollbackError ?? error
            }
        } catch let error as StorageError {
            throw error
        } catch let error as PSQLError {
            let state = error.serverInfo?[.sqlState] ?? ""
            let transient =
                error.serverInfo == nil
                || state.hasPrefix("08") || state.hasPrefix("53") || state.hasPrefix("57") || state == "40001" || state == "40P01"
            // Classes 22 (data exception: a value jsonb or a column cannot hold, such as
            // \u0000) and 23 (integrity): the records are refused, not the storage down.
            throw StorageError(
                "storage '\(name)' (\(displayName)), table '\(table)': \(PostgresStore.describe(error))",
                transient: transient,
                refusal: !transient && (state.hasPrefix("22") || state.hasPrefix("23")),
                code: state.isEmpty ? nil : state
            )
        }
    }
}
