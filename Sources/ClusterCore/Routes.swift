import Crypto
package import Foundation

/// An HTTP request as a route handler sees it.
public struct RouteRequest: Sendable {
    public var method: String
    public var path: String
    /// Query parameters (last value wins).
    public var query: [String: String]
    /// Header values by lower-cased name.
    public var headers: [String: String]
    public var body: [UInt8]
    /// The values of the route's path parameters: `/orders/{id}` called as `/orders/A-1`
    /// has `parameters["id"] == "A-1"` (percent-decoded).
    public var parameters: [String: String]

    package init(
        method: String,
        path: String,
        query: [String: String] = [:],
        headers: [String: String] = [:],
        body: [UInt8],
        parameters: [String: String] = [:]
    ) {
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.body = body
        self.parameters = parameters
    }

    /// The body parsed as JSON. A malformed body makes the route answer 400.
    public func json() throws -> JSONValue {
        do {
            return try JSONParser.parse(body)
        } catch {
            throw RouteError(status: 400, code: "invalid_json", message: error.description, field: "body")
        }
    }

    /// The body decoded as `T`. A body that does not decode, or a ``Record`` that fails its
    /// ``Record/validate()``, makes the route answer 422.
    public func decode<T: Decodable>(_ type: T.Type = T.self) throws -> T {
        _ = try json()
        let value: T
        do {
            value = try JSONDecoder().decode(T.self, from: Data(body))
        } catch let error as DecodingError {
            let (field, message) = SchemaProbe.describe(error)
            throw RouteError(status: 422, code: "invalid_record", message: message, field: field)
        }
        if let record = value as? any Record {
            do {
                try record.validate()
            } catch let error as RecordValidationError {
                throw RouteError(status: 422, code: "invalid_record", message: error.description, field: error.field)
            }
        }
        return value
    }

    public func header(_ name: String) -> String? { headers[name.lowercased()] }
}

/// What a route answers.
public struct RouteResponse: Sendable {
    public var status: Int
    public var body: JSONValue?
    public var headers: [String: String]

    public init(status: Int, body: JSONValue? = nil, headers: [String: String] = [:]) {
        self.status = status
        self.body = body
        self.headers = headers
    }

    public static let ok = RouteResponse(status: 200, body: ["status": "ok"])
    public static let accepted = RouteResponse(status: 202, body: ["status": "accepted"])
    public static let created = RouteResponse(status: 201, body: ["status": "created"])
    public static let noContent = RouteResponse(status: 204)

    public static func json(_ body: JSONValue, status: Int = 200) -> RouteResponse {
        RouteResponse(status: status, body: body)
    }

    public static func status(_ status: Int) -> RouteResponse { RouteResponse(status: status) }
}

/// Throw from a route to answer with a 4xx/5xx and a JSON error body
/// `{"error": {"code": …, "message": …, "field": …}}`.
public struct RouteError: Error, Sendable, CustomStringConvertible {
    public var status: Int
    public var code: String
    public var message: String
    public var field: String?
    /// Seconds for `Retry-After` when this error knows them (a rate limit); otherwise the
    /// server's default goes with 429 and 503.
    public var retryAfterSeconds: Int?

    public init(status: Int, code: String, message: String, field: String? = nil) {
        self.status = status
        self.code = code
        self.message = message
        self.field = field
    }

    public var description: String { "\(status) \(code): \(message)" }

    public var body: JSONValue {
        var error: JSONObject = ["code": .string(code), "message": .string(message)]
        if let field { error["field"] = .string(field) }
        return ["error": .object(error)]
    }
}

public typealias RouteHandler = @Sendable (RouteRequest, RouteContext) async throws -> RouteResponse

public struct RouteDefinition: Sendable {
    public var method: String
    /// The path, with `{name}` for a whole segment that is a parameter (`/orders/{id}`).
    public var path: String
    /// Who may call the route (an API key unless said otherwise).
    public var verification: WebhookVerification
    package var handler: RouteHandler
    /// The runtime whose processes answer the route when it is not Swift code in this app
    /// (``ExternalRuntime``): the ingress forwards its requests there.
    package var runtime: String? = nil

    /// The path's segments when it has parameters; `nil` for a fixed path.
    package var pattern: RoutePattern? { RoutePattern(path) }
}

/// A route path with parameters: `/orders/{id}/items/{sku}`. Each `{name}` is one whole
/// segment; a request path matches when it has as many segments and the fixed ones are equal.
package struct RoutePattern: Sendable, Hashable {
    package enum Segment: Sendable, Hashable {
        case fixed(String)
        case parameter(String)
    }

    package let segments: [Segment]

    /// `nil` when `path` has no `{`.
    package init?(_ path: String) {
        guard path.contains("{") else { return nil }
        segments = path.split(separator: "/", omittingEmptySubsequences: false).dropFirst().map { part in
            if part.hasPrefix("{"), part.hasSuffix("}"), part.count > 2 { return .parameter(String(part.dropFirst().dropLast())) }
            return .fixed(String(part))
        }
    }

    /// What is wrong with the pattern, if anything.
    package var problem: String? {
        var names = Set<String>()
        for segment in segments {
            switch segment {
            case .parameter(let name):
                let valid =
                    name.first.map { $0.isLetter || $0 == "_" } == true
                    && name.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "_") }
                if !valid { return "path parameter '{\(name)}' must be a name of letters, digits and '_'" }
                if !names.insert(name).inserted { return "path parameter '{\(name)}' appears twice" }
            case .fixed(let text):
                if text.contains("{") || text.contains("}") {
                    return "'\(text)': a path parameter must be a whole segment, as in /orders/{id}"
                }
            }
        }
        return nil
    }

    /// The parameters' values when `path` matches (percent-decoded, non-empty), else `nil`.
    package func match(_ path: Substring) -> [String: String]? {
        let parts = path.split(separator: "/", omittingEmptySubsequences: false).dropFirst()
        guard parts.count == segments.count else { return nil }
        var values: [String: String] = [:]
        for (segment, part) in zip(segments, parts) {
            switch segment {
            case .fixed(let text):
                guard part == text else { return nil }
            case .parameter(let name):
                guard !part.isEmpty, part.utf8.count <= 1024, let decoded = String(part).removingPercentEncoding else { return nil }
                values[name] = decoded
            }
        }
        return values
    }
}

/// How a webhook or a route checks who sends a request.
///
/// The default, ``apiKey``, asks for an API key (`Authorization: Bearer <key>`) whenever the
/// ingress requires keys, and the request acts for the key's tenant. A provider's signature
/// (``slack(signingSecret:tolerance:)``, ``custom(_:)``) proves the sender instead, and the
/// request acts for the ingress's own tenant. ``unauthenticated`` accepts anyone: it must be
/// chosen explicitly, and the ingress says so in its startup log and in `describe`.
public struct WebhookVerification: Sendable {
    enum Kind: Sendable {
        case apiKey
        case unauthenticated
        case slack(signingSecret: Secret, tolerance: Duration)
        case signed(ProviderSignature)
        case custom(@Sendable (RouteRequest, [String: String]) throws -> Void)
    }

    let kind: Kind

    /// An API key, as the record API asks for (the default).
    public static let apiKey = WebhookVerification(kind: .apiKey)

    /// Accept every request, from anyone (for senders that can neither sign nor send a key).
    /// The ingress logs a warning for each such path at startup.
    public static let unauthenticated = WebhookVerification(kind: .unauthenticated)

    /// Slack's `X-Slack-Signature` (HMAC-SHA256 over `v0:<timestamp>:<body>`), rejecting
    /// timestamps older than `tolerance`.
    public static func slack(signingSecret: Secret, tolerance: Duration = .seconds(300)) -> WebhookVerification {
        WebhookVerification(kind: .slack(signingSecret: signingSecret, tolerance: tolerance))
    }

    /// GitHub's `X-Hub-Signature-256` (`sha256=` and the hex HMAC-SHA256 of the body). The
    /// delivery's `X-GitHub-Delivery` becomes the record id, so a redelivery is stored once.
    /// GitHub signs no timestamp: a replay is caught only while the stream remembers the id.
    public static func github(secret: Secret) -> WebhookVerification {
        WebhookVerification(kind: .signed(ProviderSignature(scheme: .github, secret: secret, tolerance: nil)))
    }

    /// Stripe's `Stripe-Signature` (`t=<timestamp>,v1=<hex HMAC-SHA256 of "t.body">`, any of
    /// several `v1`), refusing timestamps older than `tolerance`. The event's `id` becomes the
    /// record id.
    public static func stripe(signingSecret: Secret, tolerance: Duration = .seconds(300)) -> WebhookVerification {
        WebhookVerification(kind: .signed(ProviderSignature(scheme: .stripe, secret: signingSecret, tolerance: tolerance)))
    }

    /// Standard Webhooks (and Svix, with `svix-` headers): `webhook-id`, `webhook-timestamp` and
    /// `webhook-signature` (`v1,<base64 HMAC-SHA256 of "id.timestamp.body">`, space separated),
    /// with a `whsec_` base64 secret, refusing timestamps older than `tolerance`. The
    /// `webhook-id` becomes the record id.
    public static func standardWebhooks(secret: Secret, tolerance: Duration = .seconds(300)) -> WebhookVerification {
        WebhookVerification(kind: .signed(ProviderSignature(scheme: .standard, secret: secret, tolerance: tolerance)))
    }

    /// Shopify's `X-Shopify-Hmac-Sha256` (base64 HMAC-SHA256 of the body). The
    /// `X-Shopify-Webhook-Id` becomes the record id.
    public static func shopify(secret: Secret) -> WebhookVerification {
        WebhookVerification(kind: .signed(ProviderSignature(scheme: .shopify, secret: secret, tolerance: nil)))
    }

    /// Any sender that puts an HMAC-SHA256 of the body in a header: its name, the encoding,
    /// and a prefix before the digest (e.g. `sha256=`); `deliveryIDHeader` names a header whose
    /// value becomes the record id.
    public static func hmacSHA256(
        secret: Secret,
        header: String,
        encoding: SignatureEncoding = .hex,
        prefix: String = "",
        deliveryIDHeader: String? = nil
    ) -> WebhookVerification {
        let scheme = ProviderSignature.Scheme.hmac(header: header, encoding: encoding, prefix: prefix, deliveryIDHeader: deliveryIDHeader)
        return WebhookVerification(kind: .signed(ProviderSignature(scheme: scheme, secret: secret, tolerance: nil)))
    }

    /// Your own check: throw a ``RouteError`` (401/403) to reject the request. The second
    /// argument is the process environment, for secrets.
    public static func custom(_ verify: @escaping @Sendable (RouteRequest, [String: String]) throws -> Void) -> WebhookVerification {
        WebhookVerification(kind: .custom(verify))
    }

    package var secrets: [Secret] {
        switch kind {
        case .slack(let secret, _): return [secret]
        case .signed(let signature): return [signature.secret]
        default: return []
        }
    }

    /// How old a signed timestamp may be, for the schemes that sign one.
    package var tolerance: Duration? {
        switch kind {
        case .slack(_, let tolerance): return tolerance
        case .signed(let signature): return signature.tolerance
        default: return nil
        }
    }

    /// The caller proves itself with an API key (else with a signature, or not at all).
    package var usesAPIKey: Bool {
        if case .apiKey = kind { return true }
        return false
    }

    package var isUnauthenticated: Bool {
        if case .unauthenticated = kind { return true }
        return false
    }

    /// How long a captured request stays acceptable (its signed timestamp's tolerance plus
    /// the clock skew allowed ahead); `nil` when nothing bounds it.
    package var replayWindow: Duration? {
        switch kind {
        case .slack(_, let tolerance): return tolerance + .seconds(Self.allowedClockSkew)
        case .signed(let signature): return signature.tolerance.map { $0 + .seconds(Self.allowedClockSkew) }
        default: return nil
        }
    }

    /// The provider's id of one delivery, which its retries repeat (Slack's `event_id`,
    /// GitHub's `X-GitHub-Delivery`, …). It becomes the record id, so a retried or replayed
    /// delivery is stored once.
    package func deliveryID(of request: RouteRequest) -> String? {
        let id: String?
        switch kind {
        case .slack: id = (try? JSONParser.parse(request.body))?["event_id"].stringValue
        case .signed(let signature): id = signature.deliveryID(of: request)
        default: id = nil
        }
        guard let id, Names.isValidRecordID(id) else { return nil }
        return id
    }

    package var isSlack: Bool {
        if case .slack = kind { return true }
        return false
    }

    package var label: String {
        switch kind {
        case .apiKey: return "api-key"
        case .unauthenticated: return "unauthenticated"
        case .slack: return "slack"
        case .signed(let signature): return signature.label
        case .custom: return "custom"
        }
    }
}

public struct WebhookDefinition: Sendable {
    public var path: String
    public var table: String
    public var verification: WebhookVerification
}

extension WebhookVerification {
    /// Checks a signature on `request`; throws a ``RouteError`` (401) naming what is wrong. API
    /// keys are the ingress's to check.
    package func verify(_ request: RouteRequest, environment: [String: String], now: Date = Date()) throws {
        switch kind {
        case .apiKey, .unauthenticated:
            return
        case .custom(let check):
            try check(request, environment)
        case .signed(let signature):
            try signature.verify(request, key: try signature.secret.resolve(in: environment), now: now)
        case .slack(let secret, let tolerance):
            let key = try secret.resolve(in: environment)
            guard let timestamp = request.header("X-Slack-Request-Timestamp"), let seconds = Double(timestamp) else {
                throw RouteError(
                    status: 401,
                    code: "invalid_signature",
                    message: "missing X-Slack-Request-Timestamp header",
                    field: "X-Slack-Request-Timestamp"
                )
            }
            let age = now.timeIntervalSince1970 - seconds
            guard age <= Double(tolerance.components.seconds) else {
                throw RouteError(
                    status: 401,
                    code: "invalid_signature",
                    message: "request timestamp is too old",
                    field: "X-Slack-Request-Timestamp"
                )
            }
            // Ahead only by clock skew: a timestamp far in the future would keep a captured
            // request replayable for that much longer.
            guard age >= -Self.allowedClockSkew else {
                throw RouteError(
                    status: 401,
                    code: "invalid_signature",
                    message: "request timestamp is too far in the future (more than \(Int(Self.allowedClockSkew)) s ahead)",
                    field: "X-Slack-Request-Timestamp"
                )
            }
            guard let signature = request.header("X-Slack-Signature"), signature.hasPrefix("v0=") else {
                throw RouteError(
                    status: 401,
                    code: "invalid_signature",
                    message: "missing X-Slack-Signature header",
                    field: "X-Slack-Signature"
                )
            }
            let expected = Self.slackSignature(secret: key, timestamp: timestamp, body: request.body)
            guard constantTimeEqual(Array(expected.utf8), Array(signature.utf8)) else {
                throw RouteError(status: 401, code: "invalid_signature", message: "signature does not match", field: "X-Slack-Signature")
            }
        }
    }

    /// How far ahead of this machine's clock a signed timestamp may be, in seconds.
    static let allowedClockSkew: Double = 60

    /// Computes the `X-Slack-Signature` value for a body (for senders and tests).
    package static func slackSignature(secret: String, timestamp: String, body: [UInt8]) -> String {
        var hmac = HMAC<SHA256>(key: SymmetricKey(data: Array(secret.utf8)))
        hmac.update(data: Array("v0:\(timestamp):".utf8))
        hmac.update(data: body)
        return "v0=" + Wire.hex(hmac.finalize())
    }
}

func constantTimeEqual(_ a: [UInt8], _ b: [UInt8]) -> Bool {
    guard a.count == b.count else { return false }
    var difference: UInt8 = 0
    for i in a.indices { difference |= a[i] ^ b[i] }
    return difference == 0
}
