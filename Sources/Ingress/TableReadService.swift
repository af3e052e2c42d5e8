import ClusterCore
import Foundation
import Logging
import NATS

/// Reads of kept tables for processes of another runtime (Python handlers and routes, whose
/// `table.records(...)` and `table.count(...)` come here): core NATS request/reply on
/// ``Wire/tableReadSubject`` in the queue group `readers`, answered by any ingress with the
/// same storages and rules as `GET /v1/tables/{table}/records` (docs/python.md, "Reads").
///
/// Request: `{"v": 1, "tenant", "table", "query": {"since", "until", "since_sequence", "where",
/// "order", "limit", "cursor"} (strings, as in the GET's query), "count": false}`. Reply: the
/// GET's page (`{"records", "next_cursor"}`), `{"count": n}`, or
/// `{"error": {"status", "code", "message", "field"}}`.
enum TableReadService {
    static func run(connection: NATSConnection, graph: AppGraph, reader: TableReader, logger: Logger) async {
        await JSONRequestService.serve(subject: Wire.tableReadSubject, queue: "readers", connection: connection, logger: logger) {
            payload in
            await answer(payload, graph: graph, reader: reader, logger: logger)
        }
    }

    static func answer(_ payload: [UInt8], graph: AppGraph, reader: TableReader, logger: Logger) async -> JSONValue {
        func refusal(_ status: Int, _ code: String, _ message: String, field: String? = nil) -> JSONValue {
            var error: JSONObject = ["status": .int(Int64(status)), "code": .string(code), "message": .string(message)]
            if let field { error["field"] = .string(field) }
            return ["error": .object(error)]
        }
        guard case .object(let request)? = try? JSONParser.parse(payload), request["v"]?.intValue == 1,
            let tenant = request["tenant"]?.stringValue, let name = request["table"]?.stringValue
        else {
            return refusal(400, "bad_request", "a table read is {\"v\": 1, \"tenant\", \"table\", \"query\"}")
        }
        if let problem = Names.problem(with: tenant, kind: "tenant") { return refusal(400, "invalid_tenant", problem, field: "tenant") }
        guard let table = graph.table(name) else {
            return refusal(404, "unknown_table", "no table named '\(name.prefix(64))'", field: "table")
        }
        var parameters: [String: String] = [:]
        if case .object(let query)? = request["query"] {
            for (key, value) in query {
                switch value {
                case .null: continue
                case .string(let text): parameters[key] = text
                default: parameters[key] = String(decoding: JSONWriter.encode(value), as: UTF8.self)
                }
            }
        }
        let query: RecordQuery
        do {
            query = try RecordReadQuery.parse(parameters)
        } catch {
            return refusal(error.status, error.code, error.message, field: error.field)
        }
        guard reader.canRead(table.name) else {
            return refusal(
                409,
                "not_kept",
                "table '\(table.name)' is not kept in a database storage; bind it to one to read it back",
                field: "table"
            )
        }
        do {
            if request["count"]?.boolValue == true {
                return ["count": .int(Int64(try await reader.count(query, table: table, tenant: tenant)))]
            }
            return RecordReadQuery.answer(try await reader.read(query, table: table, tenant: tenant))
        } catch let error as TableReadError {
            return error.field == nil
                ? refusal(409, "not_kept", error.description, field: "table")
                : refusal(400, "invalid_query", error.message, field: error.field)
        } catch {
            logger.warning("Reading a kept table failed", metadata: ["ingress.table": "\(table.name)", "error": "\(error)"])
            return refusal(503, "storage_unavailable", "the table's storage (or stream) did not answer; try again")
        }
    }
}
