import ClusterCore
import NATS
import NIOCore

/// The records of one record-API request, validated and ready to publish.
struct RecordBatch {
    var messages: [OutgoingMessage]
    var ids: [String]
}

/// The record API's request handling that does not wait: shared by the Hummingbird responder
/// and the event-loop path (`RecordIngestHandler`), so both answer the same way.
extension IngressState {
    /// The table a request names, refusing a malformed or unknown name (400/404).
    func table(named name: String) throws(RouteError) -> TableDefinition {
        if let problem = Names.problem(with: name, kind: "table") {
            throw RouteError(status: 400, code: "invalid_table_name", message: problem, field: "table")
        }
        guard let table = graph.table(name) else {
            throw RouteError(status: 404, code: "unknown_table", message: "table '\(name)' does not exist", field: "table")
        }
        guard graph.acceptsRecordAPI(table) else {
            let writers = graph.writers(of: name)
            throw RouteError(
                status: 403,
                code: "table_not_writable",
                message: "table '\(name)' takes no records from the record API: "
                    + (writers.isEmpty
                        ? "it is declared closed"
                        : "handler \(writers.map { "'\($0)'" }.joined(separator: ", ")) writes it (open it with recordAPI: .open)"),
                field: "table"
            )
        }
        return table
    }

    /// The `Idempotency-Key` header's value, if any, after checking its form (400).
    static func idempotencyKey(_ value: String?) throws(RouteError) -> String? {
        guard let key = value else { return nil }
        guard Names.isValidRecordID(key) else {
            throw RouteError(
                status: 400,
                code: "invalid_idempotency_key",
                message: "Idempotency-Key must be 1-128 characters of A-Z a-z 0-9 . _ : -",
                field: "Idempotency-Key"
            )
        }
        return key
    }

    /// Splits and validates a record-API body (one object, an array of objects, or NDJSON per
    /// `contentType`) and builds one message per record with its id: the scoped idempotency
    /// key or a new server id, suffixed `-<index>` for several records.
    func prepareRecords(
        table name: String,
        tenant: String,
        contentType: String?,
        idempotencyKey key: String?,
        traceparent: String? = nil,
        body: ByteBuffer
    ) throws(RouteError) -> RecordBatch {
        let table = try self.table(named: name)
        let contentType = contentType?.lowercased() ?? "application/json"
        let isNDJSON =
            contentType.hasPrefix("application/x-ndjson") || contentType.hasPrefix("application/jsonl")
            || contentType.hasPrefix("application/ndjson")
        guard isNDJSON || contentType.hasPrefix("application/json") else {
            throw RouteError(
                status: 415,
                code: "unsupported_media_type",
                message: "send application/json (an object or an array of objects) or application/x-ndjson",
                field: "Content-Type"
            )
        }
        let payloads = try isNDJSON ? Self.splitNDJSON(body) : Self.splitJSON(body)
        guard !payloads.isEmpty else {
            throw RouteError(status: 400, code: "no_records", message: "the body contains no records", field: "body")
        }
        guard payloads.count <= configuration.recordsPerRequestCap else { throw tooManyRecords(payloads.count) }
        if table.isTyped {
            let many = isNDJSON || Self.isArray(body)
            for (i, payload) in payloads.enumerated() {
                if let (field, problem) = table.validate(Array(payload.readableBytesView)) {
                    let location = isNDJSON ? "line \(i + 1)" : (many ? "records[\(i)]" : "record")
                    throw RouteError(
                        status: 422,
                        code: "invalid_record",
                        message: "\(location): \(problem)",
                        field: field.map { many ? "\(location).\($0)" : $0 } ?? location
                    )
                }
            }
        }
        var batch = RecordBatch(messages: [], ids: [])
        batch.ids.reserveCapacity(payloads.count)
        batch.messages.reserveCapacity(payloads.count)
        // One id per request (the scoped key, or a new server id), suffixed per record.
        let base = key ?? ids.next()
        for (i, payload) in payloads.enumerated() {
            let id = payloads.count == 1 ? base : "\(base)-\(i)"
            batch.ids.append(id)
            var message = Wire.message(payload: payload, id: id, table: table, tenant: tenant, cause: nil)
            if let traceparent { message.headers.append((Wire.Header.traceparent, traceparent)) }
            if payload.readableBytes + 1024 > maxMessageBytes, Self.size(of: message) > maxMessageBytes {
                let many = isNDJSON || Self.isArray(body)
                let location = isNDJSON ? "line \(i + 1)" : (many ? "records[\(i)]" : "body")
                throw RouteError(
                    status: 413,
                    code: "record_too_large",
                    message:
                        "\(location == "body" ? "the record" : location) is \(Self.size(of: message)) bytes with its headers; the NATS server takes at most \(maxMessageBytes) bytes a record",
                    field: location
                )
            }
            batch.messages.append(message)
        }
        return batch
    }

    /// The refusal of a request with more records than one request may carry (413).
    func tooManyRecords(_ count: Int) -> RouteError {
        RouteError(
            status: 413,
            code: "too_many_records",
            message: "\(count) records in one request; the limit is \(configuration.recordsPerRequestCap): send them in smaller requests",
            field: "body"
        )
    }

    /// The 202 body: how many records were accepted and, up to 1,000, their ids; with
    /// `"duplicates": n` when n of them were stored before (a retried `Idempotency-Key`), and
    /// `"duplicate": true` when all were.
    static func acceptedAnswer(_ ids: [String], duplicates: Int = 0) -> JSONValue {
        var answer: JSONObject = ["accepted": .int(Int64(ids.count))]
        if ids.count <= 1000 { answer["ids"] = .array(ids.map { .string($0) }) }
        if duplicates > 0 {
            answer["duplicates"] = .int(Int64(duplicates))
            if duplicates == ids.count { answer["duplicate"] = true }
        }
        return .object(answer)
    }

    /// A message's size as NATS counts it against the max payload: payload and header block.
    static func size(of message: OutgoingMessage) -> Int {
        // "NATS/1.0\r\n", "name: value\r\n" each, "\r\n".
        message.payload.readableBytes + 12 + message.headers.reduce(0) { $0 + $1.0.utf8.count + $1.1.utf8.count + 4 }
    }

    static func isArray(_ body: ByteBuffer) -> Bool {
        body.readableBytesView.first { $0 != 0x20 && $0 != 0x0A && $0 != 0x0D && $0 != 0x09 } == UInt8(ascii: "[")
    }

    /// One object or an array of objects; returns each record's bytes (slices of `body`).
    static func splitJSON(_ body: ByteBuffer) throws(RouteError) -> [ByteBuffer] {
        let shape: JSONParser.Shape
        do {
            shape = try body.withUnsafeReadableBytes { raw in
                try JSONParser.validate(raw.bindMemory(to: UInt8.self))
            }
        } catch let error as JSONParseError {
            if error.duplicateKey != nil { throw RouteError(status: 422, code: "duplicate_key", message: error.description, field: "body") }
            throw RouteError(status: 400, code: "invalid_json", message: error.description, field: "body")
        } catch {
            throw RouteError(status: 400, code: "invalid_json", message: "\(error)", field: "body")
        }
        switch shape {
        case .object(let range):
            return [body.getSlice(at: body.readerIndex + range.lowerBound, length: range.count)!]
        case .array(let elements):
            var records: [ByteBuffer] = []
            records.reserveCapacity(elements.count)
            for (i, element) in elements.enumerated() {
                guard element.isObject else {
                    throw RouteError(
                        status: 422,
                        code: "not_an_object",
                        message: "records[\(i)] is not a JSON object; every record must be an object",
                        field: "records[\(i)]"
                    )
                }
                records.append(body.getSlice(at: body.readerIndex + element.range.lowerBound, length: element.range.count)!)
            }
            return records
        case .scalar:
            throw RouteError(status: 422, code: "not_an_object", message: "a record must be a JSON object", field: "body")
        }
    }

    /// One JSON object per line; blank lines are skipped.
    static func splitNDJSON(_ body: ByteBuffer) throws(RouteError) -> [ByteBuffer] {
        var records: [ByteBuffer] = []
        let view = body.readableBytesView
        var lineStart = view.startIndex
        var lineNumber = 0
        func handleLine(_ end: Int) throws(RouteError) {
            lineNumber += 1
            var lower = lineStart
            var upper = end
            while lower < upper, view[lower] == 0x20 || view[lower] == 0x09 || view[lower] == 0x0D { lower += 1 }
            while upper > lower, view[upper - 1] == 0x20 || view[upper - 1] == 0x09 || view[upper - 1] == 0x0D { upper -= 1 }
            guard lower < upper else { return }
            let slice = body.getSlice(at: lower, length: upper - lower)!
            let shape: JSONParser.Shape
            do {
                shape = try slice.withUnsafeReadableBytes { try JSONParser.validate($0.bindMemory(to: UInt8.self)) }
            } catch let error as JSONParseError {
                throw RouteError(
                    status: error.duplicateKey != nil ? 422 : 400,
                    code: error.duplicateKey != nil ? "duplicate_key" : "invalid_json",
                    message: "line \(lineNumber): \(error.description)",
                    field: "line \(lineNumber)"
                )
            } catch {
                throw RouteError(status: 400, code: "invalid_json", message: "line \(lineNumber): \(error)", field: "line \(lineNumber)")
            }
            guard case .object = shape else {
                throw RouteError(
                    status: 422,
                    code: "not_an_object",
                    message: "line \(lineNumber) is not a JSON object",
                    field: "line \(lineNumber)"
                )
            }
            records.append(slice)
        }
        var i = view.startIndex
        while i < view.endIndex {
            if view[i] == 0x0A {
                try handleLine(i)
                lineStart = i + 1
            }
            i += 1
        }
        if lineStart < view.endIndex { try handleLine(view.endIndex) }
        return records
    }
}
