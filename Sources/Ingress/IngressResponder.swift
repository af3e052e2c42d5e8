import ClusterCore
import Foundation
import HTTPEndpoints
import HTTPTypes
import Hummingbird
import Logging
import Metrics
import NATS
import NIOCore
import NIOPosix
import Synchronization

/// Shared, immutable-after-init state of the ingress plus its in-flight counter.
final class IngressState: Sendable {
    let graph: AppGraph
    let configuration: Ingress.Configuration
    let connection: NATSConnection
    let logger: Logger
    let ids = RecordIDGenerator()
    let routes: [String: RouteDefinition]
    /// Routes with path parameters, tried in declaration order after the fixed paths.
    let patternRoutes: [(route: RouteDefinition, pattern: RoutePattern)]
    let webhooks: [String: WebhookDefinition]
    let paths: Set<String>
    let inFlight = Atomic<Int>(0)
    let streamReady = Atomic<Bool>(false)
    /// Whether the ingress's own tenant (key-less requests, signed webhooks) is enabled, as
    /// the coordinators last said; true until they have.
    let ownTenantActive = Atomic<Bool>(true)
    let keys: TenantKeyCache
    let limiter: TenantRateLimiter
    /// Open connections and request bodies held, against their caps.
    let capacity: IngressCapacity
    /// Requests without valid credentials, per client address.
    let addresses: AddressLimiter
    /// The NATS server's largest message, read at start: a record that would not fit is
    /// refused (413) instead of failing at publish (a retryable 503).
    let maxMessageBytes: Int
    let acceptedRecords = Counter(label: "autonomous_ingress_records_accepted_total")
    let rejectedRequests = Counter(label: "autonomous_ingress_requests_rejected_total")
    /// Per limited tenant: its records refused, and held until the limit let them in.
    private let limitCounters = Mutex<[String: (refused: Counter, delayed: Counter)]>([:])

    func limitCounters(of tenant: String) -> (refused: Counter, delayed: Counter) {
        limitCounters.withLock { counters in
            if let existing = counters[tenant] { return existing }
            let dimensions = [("tenant", tenant)]
            let made = (
                refused: Counter(label: "autonomous_ingress_records_rate_limited_total", dimensions: dimensions),
                delayed: Counter(label: "autonomous_ingress_records_delayed_total", dimensions: dimensions)
            )
            counters[tenant] = made
            return made
        }
    }

    /// Publish connections; `lanes[0]` is `connection`.
    let lanes: [NATSConnection]
    private let laneAssignment = Mutex<(byTenant: [String: Int], tenants: [Int])>(([:], []))
    /// Per event loop (by identity), one publisher per lane: how record-API requests answered
    /// on an event loop publish. Empty when they publish through `lanes`.
    let eventLoopPublishers: [ObjectIdentifier: [EventLoopPublisher]]

    init(
        graph: AppGraph,
        configuration: Ingress.Configuration,
        connection: NATSConnection,
        lanes: [NATSConnection],
        eventLoopPublishers: [ObjectIdentifier: [EventLoopPublisher]] = [:],
        logger: Logger
    ) {
        self.graph = graph
        self.configuration = configuration
        self.connection = connection
        self.lanes = lanes.isEmpty ? [connection] : lanes
        self.maxMessageBytes = connection.maxPayload
        self.eventLoopPublishers = eventLoopPublishers
        self.logger = logger
        let limiter = TenantRateLimiter(maxDelay: configuration.rateLimitMaxDelay, clock: configuration.rateLimitClock)
        self.limiter = limiter
        self.capacity = IngressCapacity(
            maxConnections: configuration.maxConnections,
            maxBufferedBodyBytes: max(configuration.maxBufferedBodyBytes, configuration.maxBodyBytes)
        )
        self.addresses = AddressLimiter(rate: configuration.unauthenticatedRequestsPerAddress, clock: configuration.rateLimitClock)
        self.keys = TenantKeyCache(
            resolve: configuration.accessForKeyHash,
            ttl: configuration.keyCacheTTL,
            onAccess: { access in limiter.update(access.tenant, limits: access.limits) }
        )
        var routes: [String: RouteDefinition] = [:]
        var patterns: [(route: RouteDefinition, pattern: RoutePattern)] = []
        var paths = Set<String>()
        for route in graph.routes {
            if let pattern = route.pattern {
                patterns.append((route, pattern))
            } else {
                routes["\(route.method) \(route.path)"] = route
                paths.insert(route.path)
            }
        }
        self.patternRoutes = patterns
        var webhooks: [String: WebhookDefinition] = [:]
        for webhook in graph.webhooks {
            webhooks[webhook.path] = webhook
            paths.insert(webhook.path)
        }
        self.routes = routes
        self.webhooks = webhooks
        self.paths = paths
    }

    /// Reserves room for `count` records in flight, or returns false when that would pass
    /// the limit. A request carries at most ``Ingress/Configuration/recordsPerRequestCap``
    /// records, so one always fits once the records in flight drain.
    func reserve(_ count: Int) -> Bool {
        let limit = configuration.maxInFlightRecords
        let after = inFlight.add(count, ordering: .relaxed).newValue
        if after > limit {
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
        return lanes[laneIndex(for: tenant)]
    }

    /// The publisher on `eventLoop` for `tenant`'s lane, if record-API requests answered there
    /// publish from the loop.
    func eventLoopPublisher(for tenant: String, on eventLoop: any EventLoop) -> EventLoopPublisher? {
        guard let publishers = eventLoopPublishers[ObjectIdentifier(eventLoop)], !publishers.isEmpty else { return nil }
        return publishers.count == 1 ? publishers[0] : publishers[laneIndex(for: tenant) % publishers.count]
    }

    private func laneIndex(for tenant: String) -> Int {
        laneAssignment.withLock { assignment -> Int in
            if let index = assignment.byTenant[tenant] { return index }
            if assignment.tenants.isEmpty { assignment.tenants = Array(repeating: 0, count: lanes.count) }
            let index = assignment.tenants.indices.min { assignment.tenants[$0] < assignment.tenants[$1] } ?? 0
            assignment.tenants[index] += 1
            assignment.byTenant[tenant] = index
            return index
        }
    }
}

struct IngressResponder: HTTPResponder {
    typealias Context = IngressRequestContext
    let state: IngressState
    /// `/healthz` and `/readyz` (also waiting for the tenant's stream); `/metrics` is on the
    /// health port, not on this public one.
    private let health: HealthEndpoints
    private let pipeline: RecordIngest

    init(state: IngressState) {
        self.state = state
        self.pipeline = RecordIngest(state: state)
        self.health = HealthEndpoints(connection: state.connection, servesMetrics: false) { [state] in
            guard !state.streamReady.load(ordering: .relaxed) else { return nil }
            let stream = Wire.streamName(tenant: state.configuration.tenant)
            guard (try? await state.connection.streamState(stream)) != nil else { return "stream \(stream) does not exist yet" }
            state.streamReady.store(true, ordering: .relaxed)
            return nil
        }
    }

    func respond(to request: Request, context: Context) async throws -> Response {
        let path = request.uri.path
        let method = request.method.rawValue
        let address = context.remoteAddress
        do {
            if let response = await health.respond(to: path) { return response }
            // An address that keeps sending refused credentials waits before anything is read.
            if state.addresses.isExhausted(address) { throw state.addresses.refusal }
            if method == "GET", let target = RecordIngest.readTarget(path: path[...]) {
                return try await readRecords(target, request: request)
            }
            if let target = try RecordIngest.target(method: method, path: path[...]) {
                return try await ingest(target, request: request, address: context.remoteAddress)
            }
            if let route = state.routes["\(method) \(path)"] {
                if route.verification.isUnauthenticated, !state.addresses.charge(address) { throw state.addresses.refusal }
                return try await runRoute(route, request: request)
            }
            var pathMatched = false
            for (route, pattern) in state.patternRoutes {
                guard let parameters = pattern.match(path[...]) else { continue }
                pathMatched = true
                guard route.method == method else { continue }
                if route.verification.isUnauthenticated, !state.addresses.charge(address) { throw state.addresses.refusal }
                return try await runRoute(route, request: request, parameters: parameters)
            }
            if pathMatched {
                throw RouteError(status: 405, code: "method_not_allowed", message: "\(method) is not allowed on this path")
            }
            if let webhook = state.webhooks[path] {
                guard method == "POST" else { throw RouteError(status: 405, code: "method_not_allowed", message: "use POST") }
                if webhook.verification.isUnauthenticated, !state.addresses.charge(address) { throw state.addresses.refusal }
                return try await receiveWebhook(webhook, request: request)
            }
            if state.paths.contains(path) {
                throw RouteError(status: 405, code: "method_not_allowed", message: "\(method) is not allowed on this path")
            }
            throw RouteError(status: 404, code: "not_found", message: "no route for \(method) \(path.prefix(200))")
        } catch let error as RouteError {
            if error.status == 401 { state.addresses.charge(address) }
            state.rejectedRequests.increment()
            return APIError(error, defaultRetryAfter: state.configuration.retryAfterSeconds).response
        }
    }

    // MARK: - Bodies

    /// Reads the body within the size limit and the ingress's memory budget, runs `body` with
    /// it, and gives the budget back when `body` is done (its records are then published).
    private func withBody<T>(_ request: Request, _ body: (ByteBuffer) async throws -> T) async throws -> T {
        let capacity = state.capacity
        let limit = state.configuration.maxBodyBytes
        var reserved = 0
        defer { capacity.releaseBody(reserved) }
        if let declared = request.headers[.contentLength].flatMap({ Int($0) }) {
            guard declared <= limit else { throw pipeline.bodyTooLarge }
            guard capacity.reserveBody(declared) else { throw IngressCapacity.bodiesFull }
            reserved = declared
        }
        var collected = ByteBuffer()
        for try await chunk in request.body {
            guard collected.readableBytes + chunk.readableBytes <= limit else { throw pipeline.bodyTooLarge }
            let more = collected.readableBytes + chunk.readableBytes - reserved
            if more > 0 {
                guard capacity.reserveBody(more) else { throw IngressCapacity.bodiesFull }
                reserved += more
            }
            if collected.readableBytes == 0 { collected = chunk } else { collected.writeImmutableBuffer(chunk) }
        }
        return try await body(collected)
    }

    private static let idempotencyKeyField = HTTPField.Name("Idempotency-Key")!
    private static let traceparentField = HTTPField.Name("traceparent")!

    /// The request's `Idempotency-Key` as a record id scoped to the tenant, the caller's API
    /// key and `path` (see ``RecordIDGenerator/scopedKey(_:tenant:caller:path:)``).
    private func scopedIdempotencyKey(_ request: Request, tenant: String, path: String) throws -> String? {
        let key = try IngressState.idempotencyKey(
            try RecordIngest.single(request.headers[values: Self.idempotencyKeyField], header: "Idempotency-Key")
        )
        let caller = RecordIngest.callerID(authorization: request.headers[values: .authorization])
        return key.map { RecordIDGenerator.scopedKey($0, tenant: tenant, caller: caller, path: path) }
    }

    // MARK: - Record API

    /// The record API through ``RecordIngest``, for requests the event-loop path leaves to
    /// Hummingbird: any body size, and API keys whose tenant is not cached yet.
    private func ingest(_ target: RecordIngest.Target, request: Request, address: SocketAddress?) async throws -> Response {
        let pipeline = self.pipeline
        let outcome: Result<RecordIngest.Accepted, RouteError>
        do {
            let authorization = request.headers[values: .authorization]
            let tenant = try await pipeline.tenant(authorization: authorization, named: target.tenant)
            let key = try pipeline.accept(table: target.table, idempotencyKey: request.headers[values: Self.idempotencyKeyField])
            let caller = RecordIngest.callerID(authorization: authorization)
            outcome = .success(
                try await withBody(request) { body in
                    let batch = try pipeline.prepare(
                        table: target.table,
                        tenant: tenant,
                        contentType: request.headers[.contentType],
                        key: key.map { RecordIDGenerator.scopedKey($0, tenant: tenant, caller: caller, path: "") },
                        traceparent: RecordIngest.traceparent(request.headers[values: Self.traceparentField]),
                        body: body
                    )
                    let duplicates = try await pipeline.publish(batch, tenant: tenant)
                    return RecordIngest.Accepted(ids: batch.ids, duplicates: duplicates)
                }
            )
        } catch let error as RouteError {
            outcome = .failure(error)
        }
        if case .failure(let error) = outcome, error.status == 401 { state.addresses.charge(address) }
        let answer = pipeline.answer(outcome)
        var response = Response(
            status: .init(code: answer.status),
            headers: [.contentType: "application/json"],
            body: .init(byteBuffer: answer.body)
        )
        if let retryAfter = answer.retryAfter { response.headers[.retryAfter] = retryAfter }
        return response
    }

    // MARK: - Reading kept tables

    /// `GET /v1/tables/{table}/records?since=&until=&where=&order=&limit=&cursor=`: a page of
    /// the caller's tenant's records from the storage that keeps the table.
    private func readRecords(_ target: RecordIngest.Target, request: Request) async throws -> Response {
        let tenant = try await pipeline.tenant(authorization: request.headers[values: .authorization], named: target.tenant)
        guard let table = state.graph.table(target.table) else {
            throw RouteError(status: 404, code: "unknown_table", message: "no table named '\(target.table.prefix(64))'", field: "table")
        }
        var parameters: [String: String] = [:]
        for (key, value) in request.uri.queryParameters {
            let name = String(key)
            guard parameters[name] == nil else {
                throw RouteError(status: 400, code: "repeated_parameter", message: "give \(name.prefix(40)) once", field: name)
            }
            parameters[name] = String(value)
        }
        let query = try RecordReadQuery.parse(parameters)
        guard let reader = state.configuration.tableReader, reader.canRead(table.name), table.kind == .table else {
            throw RouteError(
                status: 409,
                code: "not_kept",
                message: "table '\(table.name)' is not kept in a database storage; bind it to one to read it back",
                field: "table"
            )
        }
        let page: StoredPage
        do {
            page = try await reader.read(query, table: table, tenant: tenant)
        } catch let error as TableReadError {
            throw error.field == nil
                ? RouteError(status: 409, code: "not_kept", message: error.description, field: "table")
                : RouteError(status: 400, code: "invalid_query", message: error.message, field: error.field)
        } catch {
            state.logger.warning("Reading a kept table failed", metadata: ["ingress.table": "\(table.name)", "error": "\(error)"])
            throw RouteError(status: 503, code: "storage_unavailable", message: "the table's storage (or stream) did not answer; try again")
        }
        return JSONResponse.make(200, RecordReadQuery.answer(page))
    }

    // MARK: - Routes and webhooks

    private func routeRequest(_ request: Request, body: ByteBuffer, parameters: [String: String] = [:]) -> RouteRequest {
        var headers: [String: String] = [:]
        for field in request.headers { headers[field.name.canonicalName] = field.value }
        var query: [String: String] = [:]
        for (key, value) in request.uri.queryParameters { query[String(key)] = String(value) }
        return RouteRequest(
            method: request.method.rawValue,
            path: request.uri.path,
            query: query,
            headers: headers,
            body: Array(body.readableBytesView),
            parameters: parameters
        )
    }

    /// The tenant a route or webhook request acts for: its API key's, or, for a sender proven
    /// by a signature (checked here) or let in unauthenticated, the ingress's own.
    private func caller(of request: Request, routeRequest: RouteRequest, verification: WebhookVerification) async throws -> String {
        if verification.usesAPIKey {
            return try await pipeline.tenant(authorization: request.headers[values: .authorization], named: nil)
        }
        // Not read here, but never ambiguous: a repeated header is refused everywhere (400).
        _ = try RecordIngest.single(request.headers[values: .authorization], header: "Authorization")
        try verification.verify(routeRequest, environment: state.configuration.environment)
        return try pipeline.ownTenant()
    }

    private func runRoute(_ route: RouteDefinition, request: Request, parameters: [String: String] = [:]) async throws -> Response {
        if route.verification.usesAPIKey {
            // Before the body is read: a caller without a key reads nothing.
            _ = try await pipeline.tenant(authorization: request.headers[values: .authorization], named: nil)
        }
        return try await withBody(request) { body in
            let routeRequest = routeRequest(request, body: body, parameters: parameters)
            let tenant = try await caller(of: request, routeRequest: routeRequest, verification: route.verification)
            let idempotencyKey =
                try route.verification.deliveryID(of: routeRequest).map {
                    RecordIDGenerator.scopedKey($0, tenant: tenant, caller: "", path: "route \(route.method) \(route.path)")
                } ?? scopedIdempotencyKey(request, tenant: tenant, path: "route \(route.method) \(route.path)")
            let traceparent = RecordIngest.traceparent(request.headers[values: Self.traceparentField])
            if let runtime = route.runtime {
                return try await RouteForwarding.forward(
                    route: route,
                    runtime: runtime,
                    request: routeRequest,
                    tenant: tenant,
                    idempotencyKey: idempotencyKey,
                    traceparent: traceparent,
                    state: state
                )
            }
            let ctx = RouteContext(
                tenant: tenant,
                publisher: GuardedPublisher(state: state, tenant: tenant),
                ids: state.ids,
                idempotencyKey: idempotencyKey,
                traceparent: traceparent,
                logger: state.logger,
                tableReader: state.configuration.tableReader
            )
            let response: RouteResponse
            do {
                response = try await route.handler(routeRequest, ctx)
            } catch let error as RouteError {
                throw error
            } catch let error as ConfigurationError {
                throw RouteError(status: 422, code: "invalid_record", message: error.message)
            } catch let error as RecordValidationError {
                // A record the route appends breaks a rule of its type.
                throw RouteError(status: 422, code: "invalid_record", message: error.description, field: error.field)
            } catch let error as TableReadError {
                // A read the route makes: a table no storage keeps, or a malformed query.
                throw error.field == nil
                    ? RouteError(status: 409, code: "not_kept", message: error.description)
                    : RouteError(status: 400, code: "invalid_query", message: error.description, field: error.field)
            } catch let error as StorageError {
                state.logger.warning(
                    "A route's read failed",
                    metadata: ["ingress.route": "\(route.method) \(route.path)", "error": "\(error)"]
                )
                throw RouteError(status: 503, code: "storage_unavailable", message: "a storage the route reads did not answer; try again")
            } catch {
                state.logger.error("Route failed", metadata: ["ingress.route": "\(route.method) \(route.path)", "error": "\(error)"])
                throw RouteError(status: 500, code: "internal_error", message: "the route failed; see the ingress log")
            }
            var answer = response.body.map { JSONResponse.make(response.status, $0) } ?? Response(status: .init(code: response.status))
            for (name, value) in response.headers {
                if let field = HTTPField.Name(name) { answer.headers[field] = value }
            }
            return answer
        }
    }

    private func receiveWebhook(_ webhook: WebhookDefinition, request: Request) async throws -> Response {
        // JSON only: a cross-site form can post text/plain or form bodies without asking.
        try RecordIngest.requireJSON(contentType: request.headers[.contentType])
        if webhook.verification.usesAPIKey {
            _ = try await pipeline.tenant(authorization: request.headers[values: .authorization], named: nil)
        }
        return try await withBody(request) { body in
            let routeRequest = routeRequest(request, body: body)
            let tenant = try await caller(of: request, routeRequest: routeRequest, verification: webhook.verification)
            let payloads = try IngressState.splitJSON(body)
            guard payloads.count == 1, !IngressState.isArray(body) else {
                throw RouteError(status: 422, code: "not_an_object", message: "a webhook body must be one JSON object", field: "body")
            }
            // Slack's Events API checks a new endpoint with a challenge it expects echoed back
            // (signed, like every Slack request).
            if webhook.verification.isSlack, let value = try? JSONParser.parse(routeRequest.body), value["type"] == "url_verification",
                let challenge = value["challenge"].stringValue
            {
                return JSONResponse.make(200, ["challenge": .string(challenge)])
            }
            guard let table = state.graph.table(webhook.table) else {
                throw RouteError(status: 500, code: "internal_error", message: "webhook table is missing")
            }
            if let (field, problem) = table.validate(routeRequest.body) {
                throw RouteError(status: 422, code: "invalid_record", message: problem, field: field)
            }
            let scope = "webhook \(webhook.path)"
            let id =
                try webhook.verification.deliveryID(of: routeRequest).map {
                    RecordIDGenerator.scopedKey($0, tenant: tenant, caller: "", path: scope)
                } ?? scopedIdempotencyKey(request, tenant: tenant, path: scope) ?? state.ids.next()
            let acks = try await GuardedPublisher(state: state, tenant: tenant).publish(
                [
                    Wire.message(
                        payload: payloads[0],
                        id: id,
                        table: table,
                        tenant: tenant,
                        cause: nil,
                        traceparent: RecordIngest.traceparent(request.headers[values: Self.traceparentField])
                    )
                ]
            )
            var answer: JSONObject = ["status": "accepted", "id": .string(id)]
            if acks.first?.duplicate == true { answer["duplicate"] = true }
            return JSONResponse.make(200, .object(answer))
        }
    }

}

/// Every ingress publish goes through here: the tenant's rate limit, the connection check,
/// the in-flight limit, and the mapping of JetStream trouble to 429/503.
struct GuardedPublisher: MessagePublisher {
    let state: IngressState
    let tenant: String

    func publish(_ messages: [OutgoingMessage]) async throws -> [PublishAck] {
        let pacing = try admit(messages.count)
        let connection = state.lane(for: tenant)
        try reserve(messages.count, connected: connection.isConnected)
        let outcome: Result<[PublishAck], NATSError>
        do {
            if let pacing {
                outcome = .success(try await Self.publish(messages, pacedOver: pacing.delay, covered: pacing.covered, through: connection))
            } else {
                outcome = .success(try await connection.publish(messages))
            }
        } catch let error as NATSError {
            outcome = .failure(error)
        } catch {
            state.release(messages.count)
            throw error
        }
        _ = try settle(outcome, count: messages.count).get()
        return try outcome.get()
    }

    /// Publishes the first `covered` records at once and spreads the others evenly over
    /// `delay`, in steps of about 5 ms: a held batch reaches JetStream and the workers as a
    /// steady trickle at the tenant's rate, not as one burst that takes every core while other
    /// tenants' requests wait. Returns the PubAcks in the order of `messages`.
    static func publish(
        _ messages: [OutgoingMessage],
        pacedOver delay: Duration,
        covered: Int,
        through connection: NATSConnection
    ) async throws -> [PublishAck] {
        let start = ContinuousClock.now
        let paced = messages.count - covered
        let steps = max(1, min(paced, Int(delay / .milliseconds(5))))
        var slices: [(range: Range<Int>, at: ContinuousClock.Instant)] = []
        if covered > 0 { slices.append((0..<covered, start)) }
        for step in 0..<steps {
            let lower = covered + paced * step / steps
            let upper = covered + paced * (step + 1) / steps
            if upper > lower { slices.append((lower..<upper, start + delay * (Double(step + 1) / Double(steps)))) }
        }
        return try await withThrowingTaskGroup(of: (Int, [PublishAck]).self) { group in
            for (index, slice) in slices.enumerated() {
                group.addTask {
                    try? await Task.sleep(until: slice.at, clock: .continuous)
                    return (index, try await connection.publish(Array(messages[slice.range])))
                }
            }
            var acks = [[PublishAck]](repeating: [], count: slices.count)
            for try await (index, sliceAcks) in group { acks[index] = sliceAcks }
            return acks.flatMap { $0 }
        }
    }

    /// The same, for callers that must not wait: `completion` gets the outcome once (see
    /// `NATSConnection.publish(_:completion:)` for the thread it runs on).
    func publish(_ messages: [OutgoingMessage], completion: @escaping @Sendable (Result<Int, RouteError>) -> Void) {
        let count = messages.count
        let delay: Duration?
        do throws(RouteError) {
            delay = try admit(count)?.delay
        } catch {
            return completion(.failure(error))
        }
        @Sendable func send() {
            let connection = state.lane(for: tenant)
            do throws(RouteError) {
                try reserve(count, connected: connection.isConnected)
            } catch {
                return completion(.failure(error))
            }
            connection.publish(messages) { outcome in completion(settle(outcome, count: count)) }
        }
        guard let delay else { return send() }
        // A timer, not a task: nothing outlives the request but the timer's closure.
        MultiThreadedEventLoopGroup.singleton.any().scheduleTask(in: .nanoseconds(max(1, delay.nanoseconds))) { send() }
    }

    /// The same, through the publisher of the caller's event loop: call it on that loop;
    /// `completion` runs there.
    func publish(
        _ messages: [OutgoingMessage],
        through publisher: EventLoopPublisher,
        completion: @escaping (Result<Int, RouteError>) -> Void
    ) {
        let count = messages.count
        let delay: Duration?
        do throws(RouteError) {
            // Small requests (this path takes bodies up to 32 KiB) go whole after the delay.
            delay = try admit(count)?.delay
        } catch {
            return completion(.failure(error))
        }
        func send() {
            do throws(RouteError) {
                try reserve(count, connected: publisher.isConnected)
            } catch {
                return completion(.failure(error))
            }
            publisher.publish(messages) { outcome in completion(settle(outcome, count: count)) }
        }
        guard let delay else { return send() }
        publisher.eventLoop.assumeIsolated().scheduleTask(in: .nanoseconds(max(1, delay.nanoseconds))) { send() }
    }

    /// The tenant's rate limit: nil to go ahead now, how long to hold the request (and how
    /// many of its records had tokens at once), or a 429 `rate_limited` saying when to retry.
    /// The tokens are taken when admitted.
    private func admit(_ count: Int) throws(RouteError) -> (delay: Duration, covered: Int)? {
        switch state.limiter.admit(tenant, records: count) {
        case .admit:
            return nil
        case .delay(let delay, let covered):
            state.limitCounters(of: tenant).delayed.increment(by: count - covered)
            return (delay, covered)
        case .refuse(let retryAfter):
            state.limitCounters(of: tenant).refused.increment(by: count)
            let seconds = max(1, Int((retryAfter / .seconds(1)).rounded(.up)))
            let limit = state.limiter.limit(of: tenant)
            let described =
                limit.map { limit in
                    let share = Double(limit.rate) == limit.share ? "" : String(format: "; this ingress node's share %.0f/s", limit.share)
                    return "\(limit.rate) records/s (burst \(limit.burst)\(share))"
                } ?? "its limit"
            var error = RouteError(
                status: 429,
                code: "rate_limited",
                message: "tenant '\(tenant)' is over its limit of \(described); retry in \(seconds) s"
            )
            error.retryAfterSeconds = seconds
            throw error
        }
    }

    /// Refuses when the connection is down (503) or too many records are in flight (429);
    /// otherwise reserves room for `count` records, which `settle` releases. A refusal gives
    /// the tenant's tokens back.
    private func reserve(_ count: Int, connected: Bool) throws(RouteError) {
        guard count <= state.configuration.recordsPerRequestCap else {
            // A route appending more at once than could ever be in flight.
            state.limiter.refund(tenant, records: count)
            throw state.tooManyRecords(count)
        }
        guard connected else {
            state.limiter.refund(tenant, records: count)
            throw RouteError(status: 503, code: "unavailable", message: "JetStream is not reachable; retry later")
        }
        guard state.reserve(count) else {
            state.limiter.refund(tenant, records: count)
            throw RouteError(status: 429, code: "overloaded", message: "too many records in flight; retry later")
        }
    }

    /// Releases the room of `count` records and maps the publish's outcome.
    /// Releases the records' room in flight; the number of them JetStream had already, or the
    /// refusal.
    private func settle(_ outcome: Result<[PublishAck], NATSError>, count: Int) -> Result<Int, RouteError> {
        state.release(count)
        switch outcome {
        case .success(let acks):
            state.acceptedRecords.increment(by: count)
            return .success(acks.count(where: \.duplicate))
        case .failure(let error):
            return .failure(refusal(error))
        }
    }

    private func refusal(_ error: NATSError) -> RouteError {
        state.logger.warning("Publish failed", metadata: ["error": "\(error)"])
        return RouteError(status: 503, code: "unavailable", message: "JetStream did not acknowledge the records; retry later")
    }
}
