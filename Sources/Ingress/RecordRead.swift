import ClusterCore
import Foundation

/// The query string of `GET /v1/tables/{table}/records` and the page it answers with.
enum RecordReadQuery {
    static let parameters: Set<String> = ["since", "until", "since_sequence", "where", "order", "limit", "cursor"]

    /// The query from the request's parameters; a malformed one is refused (400) naming the
    /// parameter.
    static func parse(_ parameters: [String: String]) throws(RouteError) -> RecordQuery {
        for name in parameters.keys.sorted() where !Self.parameters.contains(name) {
            throw invalid(
                name.count > 40 ? String(name.prefix(40)) + "…" : name,
                "is not a parameter of this API; use \(Self.parameters.sorted().joined(separator: ", "))"
            )
        }
        var query = RecordQuery()
        if let text = parameters["since"] { query.since = try time(text, "since") }
        if let text = parameters["until"] { query.until = try time(text, "until") }
        if let text = parameters["limit"] {
            guard let limit = Int(text), (1...RecordQuery.maximumLimit).contains(limit) else {
                throw invalid("limit", "must be a whole number between 1 and \(RecordQuery.maximumLimit)")
            }
            query.limit = limit
        }
        if let text = parameters["order"] {
            guard let order = RecordOrder(rawValue: text) else { throw invalid("order", "must be newest or oldest") }
            query.order = order
        }
        if let text = parameters["where"] {
            guard case .object(let object)? = try? JSONParser.parse(Array(text.utf8)) else {
                throw invalid("where", "must be a JSON object of top-level fields and the values they must equal")
            }
            query.filters = object.dictionary
        }
        if let text = parameters["since_sequence"] {
            guard let sequence = UInt64(text), sequence > 0 else {
                throw invalid("since_sequence", "must be a stream sequence: a whole number from 1")
            }
            query.sinceSequence = sequence
        }
        query.cursor = parameters["cursor"]
        if let (field, message) = query.problem { throw invalid(field, message) }
        return query
    }

    /// RFC 3339 (`2026-12-07T10:00:00Z`, fractions allowed) or seconds since 1970.
    private static func time(_ text: String, _ name: String) throws(RouteError) -> Date {
        if let date = ISO8601.parse(text) { return date }
        if let seconds = Double(text), seconds.isFinite, abs(seconds) < 1e11 { return Date(timeIntervalSince1970: seconds) }
        throw invalid(name, "must be an RFC 3339 time (2026-12-07T10:00:00Z) or seconds since 1970")
    }

    private static func invalid(_ field: String, _ message: String) -> RouteError {
        RouteError(status: 400, code: "invalid_query", message: "\(field) \(message)", field: field)
    }

    /// `{"records": [{"id", "ingest_time", "caused_by", "type", "sequence", "record"}], "next_cursor"}`
    /// (`sequence` when the page was read from the table's stream).
    static func answer(_ page: StoredPage) -> JSONValue {
        let records: [JSONValue] = page.records.map { stored in
            var entry: JSONObject = [
                "id": .string(stored.metadata.id),
                "ingest_time": .string(ISO8601.format(stored.metadata.ingestTime)),
                "record": (try? JSONParser.parse(stored.payload)) ?? .null,
            ]
            if let cause = stored.metadata.causedBy { entry["caused_by"] = .string(cause) }
            if let type = stored.metadata.semanticType { entry["type"] = .string(type) }
            // Read from the table's stream: where the record is in it.
            if stored.streamSequence > 0 { entry["sequence"] = .int(Int64(stored.streamSequence)) }
            return .object(entry)
        }
        return ["records": .array(records), "next_cursor": page.nextCursor.map(JSONValue.string) ?? .null]
    }
}
