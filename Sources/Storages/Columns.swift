import ClusterCore
import Foundation

/// The columns a storage keeps for every table: the record's metadata and the whole record.
/// Their names start with `_`, so that no typed field of a record collides with them unless
/// it is named so on purpose (such a field stays in `_record` only).
enum SystemColumn {
    static let tenant = "_tenant"
    static let id = "_id"
    static let ingestedAt = "_ingested_at"
    static let causedBy = "_caused_by"
    static let type = "_type"
    static let record = "_record"
    static let all: Set<String> = [tenant, id, ingestedAt, causedBy, type, record]
}

/// A typed field of a record kept in a column of its own, computed by the database from the
/// kept record (a generated column), so adding a field to the type adds a column filled for
/// the records already kept.
struct TypedColumn: Sendable, Hashable {
    var field: String
    var kind: FieldKind

    /// The typed columns of `table`: its known fields, except names no column can carry
    /// (longer than 63 bytes, with a NUL, or a system column's name).
    static func of(_ table: TableDefinition) -> [TypedColumn] {
        (table.knownFields ?? []).compactMap { field in
            guard !field.isEmpty, field.utf8.count <= 63, !field.utf8.contains(0), !SystemColumn.all.contains(field) else { return nil }
            return TypedColumn(field: field, kind: table.fieldKinds[field] ?? .json)
        }
    }
}

enum SQL {
    /// A quoted identifier: any name (a table's, a field's) is data, never SQL.
    static func identifier(_ name: String) -> String {
        "\"" + name.replacingOccurrences(of: "\"", with: "\"\"") + "\""
    }

    /// A quoted string literal (standard conforming strings: only `'` is special), for the
    /// JSON keys in generated columns' expressions, which cannot take parameters.
    static func literal(_ text: String) -> String {
        "'" + text.replacingOccurrences(of: "'", with: "''") + "'"
    }
}

extension IncomingRecord {
    /// A record read back from a row of a database storage.
    static func kept(
        id: String,
        micros: Int64,
        causedBy: String?,
        type: String?,
        body: String,
        table: String,
        tenant: String
    ) -> IncomingRecord {
        IncomingRecord(
            metadata: RecordMetadata(
                id: id,
                table: table,
                tenant: tenant,
                ingestTime: Date(timeIntervalSince1970: Double(micros) / 1_000_000),
                causedBy: causedBy,
                semanticType: type
            ),
            payload: Array(body.utf8)
        )
    }
}

/// A UTC calendar time's parts, zero-padded: object partitions and SigV4 timestamps.
struct UTCParts {
    let year, month, day, hour, minute, second: String

    init(_ date: Date) {
        var seconds = time_t(date.timeIntervalSince1970.rounded(.down))
        var parts = tm()
        gmtime_r(&seconds, &parts)
        func pad(_ value: Int32, _ width: Int) -> String {
            let text = String(value)
            return String(repeating: "0", count: max(0, width - text.count)) + text
        }
        year = pad(parts.tm_year + 1900, 4)
        month = pad(parts.tm_mon + 1, 2)
        day = pad(parts.tm_mday, 2)
        hour = pad(parts.tm_hour, 2)
        minute = pad(parts.tm_min, 2)
        second = pad(parts.tm_sec, 2)
    }
}
