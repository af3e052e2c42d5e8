import ClusterCore
import Foundation
import HTTPTypes
import Hummingbird
import Logging
import Metrics
import NATS
import NIOCore
import Synchronization

/// Shared, immutable-after-init state of the ingress plus its in-flight counter.
final class IngressState: Sendable {
    let graph: AppGraph
    let configuration: Ingress.Configuration
    let connection: NATSConnection
    let logger: Logger
    let ids = RecordIDGenerator()
    let routes: [String: RouteDefinition]
    let webhooks: [String: WebhookDefinition]
    let paths: Set<String>
    let inFlight = Atomic<Int>(0)
    let streamReady = Atomic<Bool>(false)
    let keys: TenantKeyCache
    let acceptedRecords = Counter(label: "autonomous_ingress_records_accepted_total")
    let rejectedRequests = Counter(label: "autonomous_ingress_requests_rejected_total")

    /// Publish connections; `lanes[0]` is `connection`.
    let lanes: [NATSConnection]
    private let laneAssignment = Mutex<(byTenant: [String: Int], tenants: [Int])>(([:], []))

    init(graph: AppGraph, configuration: Ingress.Configuration, connection: NATSConnection, lanes: [NATSConnection], logger: Logger) {
        self.graph = graph
        self.configuration = configuration
        self.connection = connection
        self.lanes = lanes.isEmpty ? [connection] : lanes
        self.logger = logger
        self.keys = TenantKeyCache(resolve: configuration.tenantForKeyHash, ttl: configuration.keyCacheTTL)
        var routes: [String: RouteDefinition] = [:]
        var paths = Set<String>()
        for route in graph.routes {
            routes["\(route.method) \(route.path)"] = route
            paths.insert(route.path)
        }
        var webhooks: [String: WebhookDefinition] = [:]
        for webhook in graph.webhooks {
            webhooks[webhook.path] = webhook
            paths.insert(webhook.path)
        }
        self.routes = routes
        self.webhooks = webhooks
        self.paths = paths
    }

    /// Reserves room for `count` records in flight, or returns false when over the limit.
    func reserve(_ count: Int) -> Bool {
        let limit = configuration.maxInFlightRecords
        let after = inFlight.add(count, ordering: .relaxed).newValue
        if after > limit && after != count {
            inFlight.subtract(count, ordering: .relaxed)
            return false
        }
        return true
    }

    func release(_ count: Int) { inFlight.subtract(count, ordering: .relaxed) }

    /// The connection `tenant` publishes through: assigned at its first request to the lane
    /// with the fewest tenants, then kept (the map holds one entry per tenant served).
    func lane(for tenant: String) -> NATSConnection {
        guard lanes.count > 1 else { return connection }
        let index = laneAssignment.withLock { assignment -> Int in
            if let index = assignment.byTenant[tenant] { return index }
            if assignment.tenants.isEmpty { assignment.tenants = Array(repeating: 0, count: lanes.count) }
            let index = assignment.tenants.indices.min { assignment.tenants[$0] < assignment.tenants[$1] } ?? 0
            assignment.tenants[index] += 1
            assignment.byTenant[tenant] = index
            return index
        }
        return lanes[index]
    }
}

struct IngressResponder: HTTPResponder {
    typealias Context = BasicRequestContext
    let state: IngressState

    private static let recordsPrefix = "/v1/tables/"
    private static let tenantsPrefix = "/v1/tenants/"
    private static let recordsSuffix = "/records"

    func respond(to request: Request, context: Context) async throws -> Response {
        let path = request.uri.path
        let method = request.method.rawValue
        do {
            switch path {
            case "/healthz":
                return json(200, ["status": "ok"])
            case "/readyz":
                return await readiness()
            default:
                break
            }
            if path.hasPrefix(Self.recordsPrefix) && path.hasSuffix(Self.recordsSuffix)
                && path.utf8.count > Self.recordsPrefix.utf8.count + Self.recordsSuffix.utf8.count
            {
                guard method == "POST" else { throw RouteError(status: 405, code: "method_not_allowed", message: "use POST") }
                let start = path.index(path.startIndex, offsetBy: Self.recordsPrefix.count)
                let end = path.index(path.endIndex, offsetBy: -Self.recordsSuffix.count)
                let tenant = try await tenant(of: request, named: nil)
                return try await ingest(table: String(path[start..<end]), tenant: tenant, request: request)
            }
            if path.hasPrefix(Self.tenantsPrefix) {
                // /v1/tenants/{tenant}/tables/{table}/records
                let parts = path.split(separator: "/", omittingEmptySubsequences: false)
                if parts.count == 7, parts[4] == "tables", parts[6] == "records" {
                    guard method == "POST" else { throw RouteError(status: 405, code: "method_not_allowed", message: "use POST") }
                    let tenant = try await tenant(of: request, named: String(parts[3]))
                    return try await ingest(table: String(parts[5]), tenant: tenant, request: request)
                }
            }
            if let route = state.routes["\(method) \(path)"] {
                return try await runRoute(route, request: request)
            }
            if let webhook = state.webhooks[path] {
                guard method == "POST" else { throw RouteError(status: 405, code: "method_not_allowed", message: "use POST") }
                return try await receiveWebhook(webhook, request: request)
            }
            if state.paths.contains(path) {
                throw RouteError(status: 405, code: "method_not_allowed", message: "\(method) is not allowed on this path")
            }
            throw RouteError(status: 404, code: "not_found", message: "no route for \(method) \(path.prefix(200))")
        } catch let error as RouteError {
            state.rejectedRequests.increment()
            var response = json(error.status, error.body)
            if error.status == 429 || error.status == 503 {
                response.headers[.retryAfter] = String(state.configuration.retryAfterSeconds)
            }
            return response
        }
    }

    // MARK: - Tenants

    /// The tenant a request acts for: its API key's, else the ingress's default tenant.
    /// `named` is a tenant the path names; it must be that tenant.
    private func tenant(of request: Request, named: String?) async throws -> String {
        let tenant: String
        if let authorization = request.headers[.authorization] {
            guard authorization.hasPrefix("Bearer ") else {
                throw RouteError(status: 401, code: "unauthorized", message: "send the API key as Authorization: Bearer <key>", field: "Authorization")
            }
            let key = String(authorization.dropFirst(7))
            guard APIKeys.isWellFormed(key) else {
                throw RouteError(status: 401, code: "invalid_api_key", message: "the API key is malformed", field: "Authorization")
            }
            let resolved: String?
            do {
                resolved = try await state.keys.tenant(forKey: key)
            } catch TenantKeyCache.Unsupported.noResolver {
                throw RouteError(status: 401, code: "invalid_api_key", message: "this ingress does not accept API keys", field: "Authorization")
            } catch {
                state.logger.warning("Cannot check an API key", metadata: ["error": "\(error)"])
                throw RouteError(status: 503, code: "unavailable", message: "cannot check the API key now (no coordinator answered); retry later")
            }
            guard let resolved else {
                throw RouteError(status: 401, code: "invalid_api_key", message: "the API key is unknown, revoked, or its tenant is disabled", field: "Authorization")
            }
            tenant = resolved
        } else if state.configuration.requireAPIKey {
            throw RouteError(status: 401, code: "unauthorized", message: "an API key is required: send Authorization: Bearer <key>", field: "Authorization")
        } else {
            tenant = state.configuration.tenant
        }
        if let named, named != tenant {
            // The same answer whether or not the named tenant exists: nothing leaks.
            throw RouteError(status: 403, code: "forbidden", message: "this request may not act for tenant '\(named.prefix(64))'", field: "tenant")
        }
        return tenant
    }

    // MARK: - Health

    private func readiness() async -> Response {
        guard state.connection.isConnected else {
            return json(503, ["status": "unavailable", "reason": "NATS is not connected"])
        }
        if !state.streamReady.load(ordering: .relaxed) {
            let stream = Wire.streamName(tenant: state.configuration.tenant)
            guard (try? await state.connection.streamState(stream)) != nil else {
                return json(503, ["status": "unavailable", "reason": "stream \(stream) does not exist yet"])
            }
            state.streamReady.store(true, ordering: .relaxed)
        }
        return json(200, ["status": "ready"])
    }

    // MARK: - Bodies

    private func collectBody(_ request: Request) async throws -> ByteBuffer {
        do {
            return try await request.body.collect(upTo: state.configuration.maxBodyBytes)
        } catch is NIOTooManyBytesError {
            throw RouteError(
                status: 413,
                code: "body_too_large",
                message: "request body is larger than \(state.configuration.maxBodyBytes) bytes",
                field: "body"
            )
        }
    }

    private func idempotencyKey(_ request: Request) throws -> String? {
        guard let key = request.headers[HTTPField.Name("Idempotency-Key")!] else { return nil }
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

    // MARK: - Record API

    private func ingest(table name: String, tenant: String, request: Request) async throws -> Response {
        if let problem = Names.problem(with: name, kind: "table") {
            throw RouteError(status: 400, code: "invalid_table_name", message: problem, field: "table")
        }
        guard let table = state.graph.table(name) else {
            throw RouteError(status: 404, code: "unknown_table", message: "table '\(name)' does not exist", field: "table")
        }
        let key = try idempotencyKey(request)
        let body = try await collectBody(request)
        let contentType = request.headers[.contentType]?.lowercased() ?? "application/json"
        let isNDJSON = contentType.hasPrefix("application/x-ndjson") || contentType.hasPrefix("application/jsonl")
            || contentType.hasPrefix("application/ndjson")
        guard isNDJSON || contentType.hasPrefix("application/json") else {
            throw RouteError(
                status: 415,
                code: "unsupported_media_type",
                message: "send application/json (an object or an array of objects) or application/x-ndjson",
                field: "Content-Type"
            )
        }
        let payloads = try isNDJSON ? splitNDJSON(body) : splitJSON(body)
        guard !payloads.isEmpty else {
            throw RouteError(status: 400, code: "no_records", message: "the body contains no records", field: "body")
        }
        if table.isTyped {
            let many = isNDJSON || isArray(body)
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
        var ids: [String] = []
        ids.reserveCapacity(payloads.count)
        var messages: [OutgoingMessage] = []
        messages.reserveCapacity(payloads.count)
        for (i, payload) in payloads.enumerated() {
            let id = key.map { payloads.count == 1 ? $0 : "\($0)-\(i)" } ?? state.ids.next()
            ids.append(id)
            messages.append(Wire.message(payload: payload, id: id, table: table, tenant: tenant, cause: nil))
        }
        try await publish(messages, tenant: tenant)
        var answer: JSONObject = ["accepted": .int(Int64(ids.count))]
        if ids.count <= 1000 { answer["ids"] = .array(ids.map { .string($0) }) }
        return json(202, .object(answer))
    }

    private func isArray(_ body: ByteBuffer) -> Bool {
        body.readableBytesView.first { $0 != 0x20 && $0 != 0x0A && $0 != 0x0D && $0 != 0x09 } == UInt8(ascii: "[")
    }

    /// One object or an array of objects; returns each record's bytes (slices of `body`).
    private func splitJSON(_ body: ByteBuffer) throws -> [ByteBuffer] {
        let shape: JSONParser.Shape
        do {
            shape = try body.withUnsafeReadableBytes { raw in
                try JSONParser.validate(raw.bindMemory(to: UInt8.self))
            }
        } catch let error as JSONParseError {
            throw RouteError(status: 400, code: "invalid_json", message: error.description, field: "body")
        }
        switch shape {
        case .object(let range):
            return [body.getSlice(at: body.readerIndex + range.lowerBound, length: range.count)!]
        case .array(let elements):
            return try elements.enumerated().map { i, element in
                guard element.isObject else {
                    throw RouteError(
                        status: 422,
                        code: "not_an_object",
                        message: "records[\(i)] is not a JSON object; every record must be an object",
                        field: "records[\(i)]"
                    )
                }
                return body.getSlice(at: body.readerIndex + element.range.lowerBound, length: element.range.count)!
            }
        case .scalar:
            throw RouteError(status: 422, code: "not_an_object", message: "a record must be a JSON object", field: "body")
        }
    }

    /// One JSON object per line; blank lines are skipped.
    private func splitNDJSON(_ body: ByteBuffer) throws -> [ByteBuffer] {
        var records: [ByteBuffer] = []
        let view = body.readableBytesView
        var lineStart = view.startIndex
        var lineNumber = 0
        func handleLine(_ end: Int) throws {
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
                throw RouteError(status: 400, code: "invalid_json", message: "line \(lineNumber): \(error.description)", field: "line \(lineNumber)")
            }
            guard case .object = shape else {
                throw RouteError(status: 422, code: "not_an_object", message: "line \(lineNumber) is not a JSON object", field: "line \(lineNumber)")
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

    /// Publishes and waits for every PubAck, mapping JetStream trouble to 429/503.
    private func publish(_ messages: [OutgoingMessage], tenant: String) async throws {
        _ = try await GuardedPublisher(state: state, tenant: tenant).publish(messages)
    }

    // MARK: - Routes and webhooks

    private func routeRequest(_ request: Request, body: ByteBuffer) -> RouteRequest {
        var headers: [String: String] = [:]
        for field in request.headers { headers[field.name.canonicalName] = field.value }
        var query: [String: String] = [:]
        for (key, value) in request.uri.queryParameters { query[String(key)] = String(value) }
        return RouteRequest(
            method: request.method.rawValue,
            path: request.uri.path,
            query: query,
            headers: headers,
            body: Array(body.readableBytesView)
        )
    }

    private func runRoute(_ route: RouteDefinition, request: Request) async throws -> Response {
        let tenant = try await tenant(of: request, named: nil)
        let body = try await collectBody(request)
        let routeRequest = routeRequest(request, body: body)
        let ctx = RouteContext(
            tenant: tenant,
            publisher: GuardedPublisher(state: state, tenant: tenant),
            ids: state.ids,
            idempotencyKey: try idempotencyKey(request),
            logger: state.logger
        )
        let response: RouteResponse
        do {
            response = try await route.handler(routeRequest, ctx)
        } catch let error as RouteError {
            throw error
        } catch let error as ConfigurationError {
            throw RouteError(status: 422, code: "invalid_record", message: error.message)
        } catch {
            state.logger.error("Route failed", metadata: ["ingress.route": "\(route.method) \(route.path)", "error": "\(error)"])
            throw RouteError(status: 500, code: "internal_error", message: "the route failed; see the ingress log")
        }
        var answer = response.body.map { json(response.status, $0) } ?? Response(status: .init(code: response.status))
        for (name, value) in response.headers {
            if let field = HTTPField.Name(name) { answer.headers[field] = value }
        }
        return answer
    }

    private func receiveWebhook(_ webhook: WebhookDefinition, request: Request) async throws -> Response {
        let body = try await collectBody(request)
        let routeRequest = routeRequest(request, body: body)
        try webhook.verification.verify(routeRequest, environment: state.configuration.environment)
        let payloads = try splitJSON(body)
        guard payloads.count == 1, !isArray(body) else {
            throw RouteError(status: 422, code: "not_an_object", message: "a webhook body must be one JSON object", field: "body")
        }
        // Slack's Events API checks a new endpoint with a challenge it expects echoed back.
        if let value = try? JSONParser.parse(routeRequest.body), value["type"] == "url_verification",
            let challenge = value["challenge"].stringValue
        {
            return json(200, ["challenge": .string(challenge)])
        }
        guard let table = state.graph.table(webhook.table) else {
            throw RouteError(status: 500, code: "internal_error", message: "webhook table is missing")
        }
        if let (field, problem) = table.validate(routeRequest.body) {
            throw RouteError(status: 422, code: "invalid_record", message: problem, field: field)
        }
        let id = try idempotencyKey(request) ?? state.ids.next()
        try await publish(
            [Wire.message(payload: payloads[0], id: id, table: table, tenant: state.configuration.tenant, cause: nil)],
            tenant: state.configuration.tenant
        )
        return json(200, ["status": "accepted", "id": .string(id)])
    }

    private func json(_ status: Int, _ value: JSONValue) -> Response {
        var buffer = ByteBuffer()
        buffer.writeBytes(JSONWriter.encode(value))
        return Response(
            status: .init(code: status),
            headers: [.contentType: "application/json"],
            body: .init(byteBuffer: buffer)
        )
    }
}

/// Every ingress publish goes through here: the connection check, the in-flight limit, and
/// the mapping of JetStream trouble to 429/503.
struct GuardedPublisher: MessagePublisher {
    let state: IngressState
    let tenant: String

    func publish(_ messages: [OutgoingMessage]) async throws -> [PublishAck] {
        let connection = state.lane(for: tenant)
        guard connection.isConnected else {
            throw RouteError(status: 503, code: "unavailable", message: "JetStream is not reachable; retry later")
        }
        guard state.reserve(messages.count) else {
            throw RouteError(status: 429, code: "overloaded", message: "too many records in flight; retry later")
        }
        defer { state.release(messages.count) }
        do {
            let acks = try await connection.publish(messages)
            state.acceptedRecords.increment(by: messages.count)
            return acks
        } catch let error as NATSError {
            state.logger.warning("Publish failed", metadata: ["error": "\(error)"])
            throw RouteError(status: 503, code: "unavailable", message: "JetStream did not acknowledge the records; retry later")
        }
    }
}
