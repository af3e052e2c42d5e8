import ClusterCore
import CoreMetrics
import HTTPEndpoints
import Logging
import NATS
import NIOCore
import Synchronization

/// The record API's one pipeline: find the target → know the caller → parse and validate →
/// admit (tenant limit, in-flight room) → publish → answer. Both ways a record-API request is
/// served call it: Hummingbird's responder (``IngressResponder``, any body size, API keys not
/// cached yet) and the event-loop handler (``RecordIngestHandler``, small bodies, answered
/// without leaving the loop). Every rule of the record API is written here once.
struct RecordIngest: Sendable {
    let state: IngressState

    /// The record-API request a path names.
    struct Target: Equatable {
        var table: String
        /// The tenant `/v1/tenants/{tenant}/…` names; the caller must act for it.
        var tenant: String?
    }

    private static let tablesPrefix = "/v1/tables/".utf8
    private static let tenantsPrefix = "/v1/tenants/".utf8
    private static let suffix = "/records".utf8

    /// `POST /v1/tables/{table}/records` and `POST /v1/tenants/{tenant}/tables/{table}/records`
    /// (`path` without its query); `nil` for any other path. Another method is refused (405).
    static func target(method: String, path: Substring) throws(RouteError) -> Target? {
        let utf8 = path.utf8
        let target: Target
        if utf8.count > tablesPrefix.count + suffix.count, utf8.starts(with: tablesPrefix), utf8.reversed().starts(with: suffix.reversed())
        {
            target = Target(table: String(decoding: utf8.dropFirst(tablesPrefix.count).dropLast(suffix.count), as: UTF8.self))
        } else if utf8.starts(with: tenantsPrefix) {
            // /v1/tenants/{tenant}/tables/{table}/records
            let parts = path.split(separator: "/", omittingEmptySubsequences: false)
            guard parts.count == 7, parts[4] == "tables", parts[6] == "records" else { return nil }
            target = Target(table: String(parts[5]), tenant: String(parts[3]))
        } else {
            return nil
        }
        guard method == "POST" else { throw RouteError(status: 405, code: "method_not_allowed", message: "use POST") }
        return target
    }

    /// The table (and tenant) a `GET …/records` path names; `nil` for any other path.
    static func readTarget(path: Substring) -> Target? {
        let utf8 = path.utf8
        if utf8.count > tablesPrefix.count + suffix.count, utf8.starts(with: tablesPrefix), utf8.reversed().starts(with: suffix.reversed())
        {
            return Target(table: String(decoding: utf8.dropFirst(tablesPrefix.count).dropLast(suffix.count), as: UTF8.self))
        }
        if utf8.starts(with: tenantsPrefix) {
            let parts = path.split(separator: "/", omittingEmptySubsequences: false)
            guard parts.count == 7, parts[4] == "tables", parts[6] == "records" else { return nil }
            return Target(table: String(parts[5]), tenant: String(parts[3]))
        }
        return nil
    }

    /// Who a request acts for, as far as is known without waiting.
    enum Caller: Equatable {
        case tenant(String)
        /// An API key whose tenant is not cached: ``tenant(forKey:)`` asks the coordinators.
        case key(String)
    }

    /// The one value of a header that may appear once, refusing repeats (400): two
    /// `Authorization` or `Idempotency-Key` values would otherwise be read differently by
    /// whichever part looks first.
    static func single(_ values: [String], header: String) throws(RouteError) -> String? {
        guard values.count <= 1 else {
            throw RouteError(status: 400, code: "repeated_header", message: "send \(header) once, not \(values.count) times", field: header)
        }
        return values.first
    }

    /// The caller from the `Authorization` header's values: an API key's tenant, else the
    /// ingress's default tenant (unless keys are required). A malformed or repeated header is
    /// refused (401, 400).
    func caller(authorization values: [String]) throws(RouteError) -> Caller {
        guard let authorization = try Self.single(values, header: "Authorization") else {
            guard !state.configuration.requireAPIKey else {
                throw RouteError(
                    status: 401,
                    code: "unauthorized",
                    message: "an API key is required: send Authorization: Bearer <key>",
                    field: "Authorization"
                )
            }
            return .tenant(try ownTenant())
        }
        guard authorization.hasPrefix("Bearer ") else {
            throw RouteError(
                status: 401,
                code: "unauthorized",
                message: "send the API key as Authorization: Bearer <key>",
                field: "Authorization"
            )
        }
        let key = String(authorization.dropFirst(7))
        guard APIKeys.isWellFormed(key) else {
            throw RouteError(status: 401, code: "invalid_api_key", message: "the API key is malformed", field: "Authorization")
        }
        if let cached = state.keys.cachedTenant(forKey: key) {
            guard let tenant = cached else { throw Self.unknownKey }
            return .tenant(tenant)
        }
        return .key(key)
    }

    /// The id of the API key in `Authorization` (empty without a well-formed key): what client
    /// idempotency keys are scoped to besides the tenant.
    static func callerID(authorization values: [String]) -> String {
        guard values.count == 1, values[0].hasPrefix("Bearer ") else { return "" }
        let key = String(values[0].dropFirst(7))
        guard APIKeys.isWellFormed(key) else { return "" }
        return String(key.split(separator: "_")[1])
    }

    /// The ingress's own tenant, for requests without a key and signed webhooks; 403 while
    /// the coordinators say it is disabled (or does not exist).
    func ownTenant() throws(RouteError) -> String {
        guard state.ownTenantActive.load(ordering: .relaxed) else {
            throw RouteError(
                status: 403,
                code: "tenant_disabled",
                message: "tenant '\(state.configuration.tenant)' is disabled",
                field: "tenant"
            )
        }
        return state.configuration.tenant
    }

    /// Refuses a body that is not declared JSON (`application/json` or `…+json`), 415.
    static func requireJSON(contentType: String?) throws(RouteError) {
        let type = contentType?.split(separator: ";").first.map { $0.filter { $0 != " " && $0 != "\t" }.lowercased() } ?? ""
        guard type == "application/json" || (type.hasPrefix("application/") && type.hasSuffix("+json")) else {
            throw RouteError(
                status: 415,
                code: "unsupported_media_type",
                message: "send the body as Content-Type: application/json" + (type.isEmpty ? "" : " (not \(type.prefix(64)))"),
                field: "Content-Type"
            )
        }
    }

    private static let unknownKey = RouteError(
        status: 401,
        code: "invalid_api_key",
        message: "the API key is unknown, revoked, or its tenant is disabled",
        field: "Authorization"
    )

    /// The tenant of an API key not cached yet, asking the coordinators (401, or 503 when
    /// none answers).
    func tenant(forKey key: String) async throws(RouteError) -> String {
        let resolved: String?
        do {
            resolved = try await state.keys.tenant(forKey: key)
        } catch is TenantKeyCache.Throttled {
            var error = RouteError(
                status: 429,
                code: "too_many_key_checks",
                message: "too many API keys this ingress does not know yet are being checked; retry shortly",
                field: "Authorization"
            )
            error.retryAfterSeconds = 1
            throw error
        } catch TenantKeyCache.Unsupported.noResolver {
            throw RouteError(status: 401, code: "invalid_api_key", message: "this ingress does not accept API keys", field: "Authorization")
        } catch {
            state.logger.warning("Cannot check an API key", metadata: ["error": "\(error)"])
            throw RouteError(
                status: 503,
                code: "unavailable",
                message: "cannot check the API key now (no coordinator answered); retry later"
            )
        }
        guard let resolved else { throw Self.unknownKey }
        return resolved
    }

    /// The caller's tenant, waiting for the coordinators if the key is not cached.
    func tenant(authorization: [String], named: String?) async throws(RouteError) -> String {
        let tenant: String
        switch try caller(authorization: authorization) {
        case .tenant(let known): tenant = known
        case .key(let key): tenant = try await self.tenant(forKey: key)
        }
        try Self.check(tenant, actsFor: named)
        return tenant
    }

    /// A path that names a tenant must name the caller's (403, the same whether or not the
    /// named tenant exists: nothing leaks).
    static func check(_ tenant: String, actsFor named: String?) throws(RouteError) {
        guard let named, named != tenant else { return }
        throw RouteError(
            status: 403,
            code: "forbidden",
            message: "this request may not act for tenant '\(named.prefix(64))'",
            field: "tenant"
        )
    }

    /// The refusal of a body over the limit (413).
    var bodyTooLarge: RouteError {
        RouteError(
            status: 413,
            code: "body_too_large",
            message: "request body is larger than \(state.configuration.maxBodyBytes) bytes",
            field: "body"
        )
    }

    /// What is checked before the body is read: the table's name and existence, and the
    /// `Idempotency-Key` header's form. Returns the key.
    func accept(table: String, idempotencyKey values: [String]) throws(RouteError) -> String? {
        _ = try state.table(named: table)
        return try IngressState.idempotencyKey(try Self.single(values, header: "Idempotency-Key"))
    }

    /// Parses and validates the body (content type, the records' shape and fields) into
    /// messages with their ids.
    func prepare(
        table: String,
        tenant: String,
        contentType: String?,
        key: String?,
        traceparent: String? = nil,
        body: ByteBuffer
    ) throws(RouteError) -> RecordBatch {
        try state.prepareRecords(
            table: table,
            tenant: tenant,
            contentType: contentType,
            idempotencyKey: key,
            traceparent: traceparent,
            body: body
        )
    }

    /// A W3C `traceparent` (version 00: `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`,
    /// lower case, ids not all zero) from the request's headers; anything else is ignored, as
    /// the Trace Context specification asks, and never stored.
    static func traceparent(_ values: [String]) -> String? {
        guard values.count == 1 else { return nil }
        let value = values[0].utf8
        guard value.count == 55 else { return nil }
        var allZero = (trace: true, parent: true)
        for (i, byte) in value.enumerated() {
            switch i {
            case 2, 35, 52:
                guard byte == UInt8(ascii: "-") else { return nil }
            default:
                guard (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte) || (UInt8(ascii: "a")...UInt8(ascii: "f")).contains(byte)
                else { return nil }
                if byte != UInt8(ascii: "0") {
                    if (3..<35).contains(i) { allZero.trace = false }
                    if (36..<52).contains(i) { allZero.parent = false }
                }
            }
        }
        guard values[0].hasPrefix("00-"), !allZero.trace, !allZero.parent else { return nil }
        return values[0]
    }

    /// Records a request got stored: their ids, and how many JetStream had already (a retry
    /// with the same `Idempotency-Key`).
    struct Accepted: Sendable {
        var ids: [String]
        var duplicates: Int
    }

    /// Admits and publishes, returning after every PubAck (Hummingbird's path) with how many
    /// records were already stored.
    func publish(_ batch: RecordBatch, tenant: String) async throws(RouteError) -> Int {
        do {
            return try await GuardedPublisher(state: state, tenant: tenant).publish(batch.messages).count(where: \.duplicate)
        } catch let error as RouteError {
            throw error
        } catch {
            throw RouteError(status: 503, code: "unavailable", message: "JetStream did not acknowledge the records; retry later")
        }
    }

    /// Admits and publishes without waiting; `completion` gets the outcome once, on
    /// `eventLoop` when the event loop has a publisher of its own, else on a nats.c thread.
    func publish(
        _ batch: RecordBatch,
        tenant: String,
        on eventLoop: any EventLoop,
        completion: @escaping @Sendable (Result<Int, RouteError>) -> Void
    ) {
        let publisher = GuardedPublisher(state: state, tenant: tenant)
        if let loopPublisher = state.eventLoopPublisher(for: tenant, on: eventLoop) {
            publisher.publish(batch.messages, through: loopPublisher, completion: completion)
        } else {
            publisher.publish(batch.messages, completion: completion)
        }
    }

    /// The answer: 202 with the records' ids, or the error's (counted as a refused request).
    func answer(_ outcome: Result<Accepted, RouteError>) -> Answer {
        switch outcome {
        case .success(let accepted):
            return Answer(
                status: 202,
                body: ByteBuffer(bytes: JSONWriter.encode(IngressState.acceptedAnswer(accepted.ids, duplicates: accepted.duplicates))),
                retryAfter: nil
            )
        case .failure(let error):
            state.rejectedRequests.increment()
            let answer = APIError(error, defaultRetryAfter: state.configuration.retryAfterSeconds)
            return Answer(status: error.status, body: answer.encoded, retryAfter: answer.retryAfter)
        }
    }

    /// An answer's parts, written by either path.
    struct Answer: Sendable {
        var status: Int
        var body: ByteBuffer
        var retryAfter: String?
    }
}
