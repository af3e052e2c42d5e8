package import ClusterCore
import Foundation
package import Logging
import SQLiteNIO

/// Keeps tables in one SQLite file: `dev`'s default (`.autonomous/tables.sqlite`), and a
/// `sqlite://` database storage for one machine. The layout is PostgreSQL's
/// (``PostgresTableStorage``): one table per app table with the tenant in a column, the
/// record's metadata and JSON in `_`-named columns, and a generated (virtual) column per
/// typed field. `INSERT OR IGNORE` on the (tenant, id) key keeps a redelivered record once.
package actor SQLiteTableStorage: TableStorage {
    package nonisolated let name: String
    package nonisolated let displayName: String
    package nonisolated var isReadable: Bool { true }
    private let connection: SQLiteConnection
    private let logger: Logger
    /// One operation at a time on the connection. The actor alone does not do it: at every
    /// `await` another call may start, and one write's `BEGIN IMMEDIATE` (or `ROLLBACK`) landed
    /// inside another write's transaction, failing it (a sink then waited out its backoff).
    private let exclusive = SerialGate()

    /// Opens (creating if needed) the database at `path`.
    package static func open(name: String = "sqlite", path: String, logger: Logger) async throws -> SQLiteTableStorage {
        let directory = (path as NSString).deletingLastPathComponent
        if !directory.isEmpty {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        }
        let connection: SQLiteConnection
        do {
            connection = try await SQLiteConnection.open(storage: .file(path: path), logger: logger)
            _ = try await connection.query("PRAGMA journal_mode=WAL")
            _ = try await connection.query("PRAGMA busy_timeout=5000")
        } catch {
            throw ConfigurationError("cannot open the SQLite storage at \(path): \(error)")
        }
        return SQLiteTableStorage(name: name, connection: connection, displayName: "sqlite://\(path)", logger: logger)
    }

    private init(name: String, connection: SQLiteConnection, displayName: String, logger: Logger) {
        self.name = name
        self.connection = connection
        self.displayName = displayName
        self.logger = logger
    }

    package func close() async throws {
        try await connection.close()
    }

    // MARK: Schema

    package func prepare(_ table: TableDefinition) async throws {
        let sqlTable = SQL.identifier(table.name)
        try await run(table: table.name) {
            _ = try await connection.query(
                """
                CREATE TABLE IF NOT EXISTS \(sqlTable) (
                    _tenant TEXT NOT NULL,
                    _id TEXT NOT NULL,
                    _ingested_at INTEGER NOT NULL,
                    _caused_by TEXT,
                    _type TEXT,
                    _record TEXT NOT NULL,
                    PRIMARY KEY (_tenant, _id)
                ) WITHOUT ROWID
                """
            )
            _ = try await connection.query(
                "CREATE INDEX IF NOT EXISTS \(SQL.identifier(table.name + "_by_time")) ON \(sqlTable) (_tenant, _ingested_at, _id)"
            )
            var existing: [String: (type: String, generated: Bool)] = [:]
            for row in try await connection.query("PRAGMA table_xinfo(\(sqlTable))") {
                guard let column = row.column("name")?.string else { continue }
                let hidden = row.column("hidden")?.integer ?? 0
                existing[column] = (row.column("type")?.string ?? "", hidden == 2 || hidden == 3)
            }
            // A JSON path names the field in double quotes: a name with a quote or a
            // backslash in it stays in _record only.
            for column in TypedColumn.of(table) where !column.field.contains("\"") && !column.field.contains("\\") {
                let wanted = Self.sqlType(column.kind)
                if let found = existing[column.field] {
                    guard found.generated, found.type.uppercased() == wanted else {
                        throw StorageError(
                            "table '\(table.name)' in storage '\(name)' (\(displayName)): column '\(column.field)' is "
                                + (found.generated ? found.type : "a column Autonomous did not make (\(found.type))")
                                + ", but field '\(column.field)' of \(table.typeName ?? "the record type") is now \(wanted). "
                                + "Rename the field, or drop the column and start again: it is then made anew from the kept records."
                        )
                    }
                    continue
                }
                _ = try await connection.query(
                    "ALTER TABLE \(sqlTable) ADD COLUMN \(SQL.identifier(column.field)) \(wanted) "
                        + "GENERATED ALWAYS AS (\(Self.expression(column))) VIRTUAL"
                )
            }
        }
    }

    static func sqlType(_ kind: FieldKind) -> String {
        switch kind {
        case .text: return "TEXT"
        case .integer: return "INTEGER"
        case .unsignedInteger: return "NUMERIC"
        case .number: return "REAL"
        case .boolean: return "BOOLEAN"
        case .json: return "JSON"
        }
    }

    static func path(_ field: String) -> String { "$.\"" + field + "\"" }

    static func expression(_ column: TypedColumn) -> String {
        let path = SQL.literal(Self.path(column.field))
        let type = "json_type(_record, \(path))"
        let value = "json_extract(_record, \(path))"
        switch column.kind {
        case .text: return "CASE WHEN \(type) = 'text' THEN \(value) END"
        case .integer: return "CASE WHEN \(type) = 'integer' THEN \(value) END"
        case .unsignedInteger, .number: return "CASE WHEN \(type) IN ('integer', 'real') THEN \(value) END"
        case .boolean: return "CASE WHEN \(type) IN ('true', 'false') THEN \(value) END"
        case .json: return value
        }
    }

    // MARK: Writing

    package func write(_ records: [IncomingRecord], table: TableDefinition, tenant: String) async throws {
        guard !records.isEmpty else { return }
        let sql = """
            INSERT OR IGNORE INTO \(SQL.identifier(table.name)) (_tenant, _id, _ingested_at, _caused_by, _type, _record)
            VALUES (?, ?, ?, ?, ?, ?)
            """
        try await run(table: table.name) {
            _ = try await connection.query("BEGIN IMMEDIATE")
            do {
                for record in records {
                    _ = try await connection.query(
                        sql,
                        [
                            .text(tenant),
                            .text(record.metadata.id),
                            .integer(Int(RecordCursor.micros(record.metadata.ingestTime))),
                            record.metadata.causedBy.map(SQLiteData.text) ?? .null,
                            record.metadata.semanticType.map(SQLiteData.text) ?? .null,
                            .text(String(decoding: record.payload, as: UTF8.self)),
                        ]
                    )
                }
                _ = try await connection.query("COMMIT")
            } catch {
                _ = try? await connection.query("ROLLBACK")
                throw error
            }
        }
    }

    // MARK: Reading

    package func read(_ query: RecordQuery, table: TableDefinition, tenant: String) async throws -> StoredPage {
        var binds: [SQLiteData] = []
        let conditions = Self.conditions(query, tenant: tenant, cursor: true, binds: &binds)
        let direction = query.order == .newestFirst ? "DESC" : "ASC"
        binds.append(.integer(query.limit + 1))
        let sql = """
            SELECT _id, _ingested_at, _caused_by, _type, _record FROM \(SQL.identifier(table.name))
            WHERE \(conditions) ORDER BY _ingested_at \(direction), _id \(direction) LIMIT ?
            """
        var records: [IncomingRecord] = []
        var micros: [Int64] = []
        try await run(table: table.name) {
            for row in try await connection.query(sql, binds) {
                guard let id = row.column("_id")?.string, let time = row.column("_ingested_at")?.integer,
                    let body = row.column("_record")?.string
                else { continue }
                micros.append(Int64(time))
                records.append(
                    .kept(
                        id: id,
                        micros: Int64(time),
                        causedBy: row.column("_caused_by")?.string,
                        type: row.column("_type")?.string,
                        body: body,
                        table: table.name,
                        tenant: tenant
                    )
                )
            }
        }
        return PostgresTableStorage.page(records, micros: micros, limit: query.limit)
    }

    package func count(_ query: RecordQuery, table: TableDefinition, tenant: String) async throws -> Int {
        var binds: [SQLiteData] = []
        let conditions = Self.conditions(query, tenant: tenant, cursor: false, binds: &binds)
        var total = 0
        try await run(table: table.name) {
            let rows = try await connection.query("SELECT count(*) AS n FROM \(SQL.identifier(table.name)) WHERE \(conditions)", binds)
            total = rows.first?.column("n")?.integer ?? 0
        }
        return total
    }

    /// The WHERE clause; every value, JSON paths included, is a bound parameter.
    static func conditions(_ query: RecordQuery, tenant: String, cursor useCursor: Bool, binds: inout [SQLiteData]) -> String {
        var conditions = ["_tenant = ?"]
        binds.append(.text(tenant))
        if let since = query.since {
            conditions.append("_ingested_at >= ?")
            binds.append(.integer(Int(RecordCursor.micros(since))))
        }
        if let until = query.until {
            conditions.append("_ingested_at < ?")
            binds.append(.integer(Int(RecordCursor.micros(until))))
        }
        for (field, value) in query.filters.sorted(by: { $0.key < $1.key }) {
            let path = SQLiteData.text(Self.path(field))
            switch value {
            case .null:
                conditions.append("json_type(_record, ?) = 'null'")
                binds.append(path)
            case .bool(let flag):
                conditions.append("json_type(_record, ?) = ?")
                binds += [path, .text(flag ? "true" : "false")]
            case .string(let text):
                conditions.append("json_type(_record, ?) = 'text' AND json_extract(_record, ?) = ?")
                binds += [path, path, .text(text)]
            case .int(let number):
                conditions.append("json_type(_record, ?) IN ('integer', 'real') AND json_extract(_record, ?) = ?")
                binds += [path, path, .integer(Int(number))]
            case .double(let number):
                conditions.append("json_type(_record, ?) IN ('integer', 'real') AND json_extract(_record, ?) = ?")
                binds += [path, path, .float(number)]
            default:
                conditions.append("0")  // refused before (RecordQuery.problem)
            }
        }
        if useCursor, let text = query.cursor, let cursor = RecordCursor(text) {
            let comparison = query.order == .newestFirst ? "<" : ">"
            conditions.append("(_ingested_at, _id) \(comparison) (?, ?)")
            binds += [.integer(Int(cursor.micros)), .text(cursor.id)]
        }
        return conditions.joined(separator: " AND ")
    }

    private func run(table: String, _ body: () async throws -> Void) async throws {
        await exclusive.enter()
        defer { exclusive.leave() }
        do {
            try await body()
        } catch let error as StorageError {
            throw error
        } catch {
            // SQLITE_BUSY past the busy timeout is the only failure worth waiting out.
            let text = "\(error)"
            throw StorageError(
                "storage '\(name)' (\(displayName)), table '\(table)': \(text)",
                transient: text.contains("busy") || text.contains("locked")
            )
        }
    }
}
