import ClusterCore
import Crypto
import Foundation
package import HTTPEndpoints
import Hummingbird
import HummingbirdCore
import HummingbirdTLS
package import Logging
package import NATS
import NIOCore
import ServiceLifecycle

/// The coordinator's HTTP port, on Hummingbird's router: `/healthz`, `/readyz`, `/metrics`
/// (``HealthEndpoints``) and the admin API under `/v1/admin` (tenants, API keys, schedules),
/// protected by the admin token. See docs/api.md.
///
/// Without a configured admin token every admin path answers 403 `admin_disabled`.
package struct AdminServer: Service {
    let host: String
    let port: Int
    let adminToken: String?
    let administration: Administration
    let connection: NATSConnection
    let logger: Logger
    let onListening: (@Sendable (Int) async -> Void)?
    /// Serve HTTPS only (`AUTONOMOUS_ADMIN_TLS_CERT` / `_KEY`); `nil`: plain HTTP.
    let tls: ServerTLS?

    package init(
        host: String,
        port: Int,
        adminToken: String?,
        administration: Administration,
        connection: NATSConnection,
        logger: Logger,
        tls: ServerTLS? = nil,
        onListening: (@Sendable (Int) async -> Void)? = nil
    ) {
        self.tls = tls
        self.host = host
        self.port = port
        self.adminToken = adminToken.flatMap { $0.isEmpty ? nil : $0 }
        self.administration = administration
        self.connection = connection
        self.logger = logger
        self.onListening = onListening
    }

    package func run() async throws {
        let router = Router(context: BasicRequestContext.self)
        // Outermost: every error becomes a JSON answer; then the admin token, checked before
        // any admin path is matched (an unknown path with a wrong token is 401, not 404).
        router.add(middleware: AdminErrors(logger: logger))
        router.add(middleware: AdminAuthorization(adminToken: adminToken))
        HealthEndpoints(connection: connection).add(to: router)
        AdminRoutes(administration: administration).add(to: router.group("/v1/admin"))
        let onListening = self.onListening
        let server: HTTPServerBuilder = try tls.map { try .tls(.http1(), tlsConfiguration: try $0.configuration()) } ?? .http1()
        let app = Application(
            router: router,
            server: server,
            configuration: ApplicationConfiguration(address: .hostname(host, port: port), serverName: "autonomous-coordinator"),
            onServerRunning: { channel in
                if let onListening, let port = channel.localAddress?.port { await onListening(port) }
            },
            logger: logger
        )
        try await listening("the admin API", host: host, port: port, setting: "--admin-port or AUTONOMOUS_ADMIN_PORT") {
            try await app.run()
        }
    }
}

/// Answers every error as JSON (``APIError``): a route's, a failed cluster call's, the router's
/// own 404, and anything else as a logged 500.
struct AdminErrors<Context: RequestContext>: RouterMiddleware {
    let logger: Logger

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        do {
            return try await next(request, context)
        } catch let error as RouteError {
            throw APIError(error)
        } catch let error as ClusterCallError {
            throw APIError(error)
        } catch let error as APIError {
            throw error
        } catch let error as HTTPError where error.status == .notFound || error.status == .methodNotAllowed {
            let method = request.method.rawValue
            throw APIError(
                RouteError(
                    status: Int(error.status.code),
                    code: "not_found",
                    message: "no route for \(method) \(request.uri.path.prefix(200))"
                )
            )
        } catch {
            logger.error("Admin request failed", metadata: ["error": "\(error)"])
            throw APIError(RouteError(status: 500, code: "internal_error", message: "the coordinator failed; see its log"))
        }
    }
}

/// For every path under `/v1/admin/`: the admin token (without a configured token every
/// admin path answers 403 `admin_disabled`), then the body, which must be empty or a JSON
/// object of at most 64 KiB whether or not the route reads it.
struct AdminAuthorization<Context: RequestContext>: RouterMiddleware {
    let adminToken: String?

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        guard request.uri.path.hasPrefix("/v1/admin/") || request.uri.path == "/v1/admin" else { return try await next(request, context) }
        try authorize(request)
        var request = request
        let buffer: ByteBuffer
        do {
            buffer = try await request.collectBody(upTo: AdminRoutes.maximumBody)
        } catch {
            throw RouteError(status: 413, code: "body_too_large", message: "admin request bodies are at most 64 KiB", field: "body")
        }
        _ = try AdminRoutes.body(buffer)
        return try await next(request, context)
    }

    private func authorize(_ request: Request) throws {
        guard let adminToken else {
            throw RouteError(
                status: 403,
                code: "admin_disabled",
                message: "the admin API is disabled; start the coordinator with AUTONOMOUS_ADMIN_TOKEN set"
            )
        }
        guard let header = request.headers[.authorization], header.hasPrefix("Bearer ") else {
            throw RouteError(status: 401, code: "unauthorized", message: "send the admin token as Authorization: Bearer <token>")
        }
        let presented = SHA256.hash(data: Array(header.dropFirst(7).utf8))
        let expected = SHA256.hash(data: Array(adminToken.utf8))
        // Digests of equal length, compared without an early exit.
        var difference: UInt8 = 0
        for (x, y) in zip(presented, expected) { difference |= x ^ y }
        guard difference == 0 else {
            throw RouteError(status: 401, code: "unauthorized", message: "wrong admin token")
        }
    }
}

/// The admin API's routes (docs/api.md), under `/v1/admin`.
struct AdminRoutes: Sendable {
    let administration: Administration

    func add<Context: RequestContext>(to admin: RouterGroup<Context>) {
        let a = administration
        admin.get("tenants") { _, _ in try Self.encode(200, try await a.tenants()) }
        admin.post("tenants") { request, _ in
            try Self.encode(201, try await a.createTenant(try Self.string(try await Self.body(request), "name")))
        }
        let tenant = admin.group("tenants/:tenant")
        tenant.get { _, context in try Self.encode(200, try await a.tenant(try context.parameters.require("tenant"))) }
        tenant.post("disable") { _, context in try Self.encode(200, try await a.setDisabled(try context.parameters.require("tenant"), true))
        }
        tenant.post("enable") { _, context in try Self.encode(200, try await a.setDisabled(try context.parameters.require("tenant"), false))
        }
        tenant.put("limits") { request, context in
            let body = try await Self.body(request)
            let limits = TenantLimits(
                recordsPerSecond: try Self.optionalInteger(body, "recordsPerSecond"),
                burst: try Self.optionalInteger(body, "burst")
            )
            return try Self.encode(200, try await a.setLimits(try context.parameters.require("tenant"), limits))
        }
        tenant.get("keys") { _, context in try Self.encode(200, try await a.keys(tenant: try context.parameters.require("tenant"))) }
        tenant.post("keys") { _, context in try Self.encode(201, try await a.createKey(tenant: try context.parameters.require("tenant"))) }
        tenant.post("keys/:id/rotate") { _, context in
            try Self.encode(
                201,
                try await a.rotateKey(tenant: try context.parameters.require("tenant"), id: try context.parameters.require("id"))
            )
        }
        tenant.delete("keys/:id") { _, context in
            try Self.encode(
                200,
                try await a.revokeKey(tenant: try context.parameters.require("tenant"), id: try context.parameters.require("id"))
            )
        }
        tenant.get("storages") { _, context in
            try Self.encode(200, try await a.storages(tenant: try context.parameters.require("tenant")))
        }
        tenant.get("schedules") { _, context in
            try Self.encode(200, try await a.schedules(tenant: try context.parameters.require("tenant")))
        }
        tenant.get("schedules/:schedule") { _, context in
            try Self.encode(
                200,
                try await a.schedule(try context.parameters.require("schedule"), tenant: try context.parameters.require("tenant"))
            )
        }
        tenant.put("schedules/:schedule") { request, context in
            let body = try await Self.body(request)
            let cron = try Self.optionalString(body, "cron")
            let timeZone = try Self.optionalString(body, "timeZone")
            return try Self.encode(
                200,
                try await a.retime(
                    try context.parameters.require("schedule"),
                    tenant: try context.parameters.require("tenant"),
                    cron: cron,
                    timeZone: timeZone
                )
            )
        }
        for (action, paused) in [("pause", true), ("resume", false)] {
            tenant.post(RouterPath("schedules/:schedule/\(action)")) { _, context in
                try Self.encode(
                    200,
                    try await a.setPaused(
                        try context.parameters.require("schedule"),
                        tenant: try context.parameters.require("tenant"),
                        paused: paused
                    )
                )
            }
        }
        tenant.post("schedules/:schedule/trigger") { _, context in
            try Self.encode(
                202,
                try await a.trigger(try context.parameters.require("schedule"), tenant: try context.parameters.require("tenant"))
            )
        }
    }

    static let maximumBody = 64 * 1024

    /// The body as a JSON object (`[:]` when empty); ``AdminAuthorization`` has read it already.
    static func body(_ request: Request) async throws -> [String: JSONValue] {
        try body(try await request.body.collect(upTo: maximumBody))
    }

    static func body(_ buffer: ByteBuffer) throws -> [String: JSONValue] {
        guard buffer.readableBytes > 0 else { return [:] }
        let value: JSONValue
        do {
            value = try JSONParser.parse(Array(buffer.readableBytesView))
        } catch {
            throw RouteError(status: 400, code: "invalid_json", message: "\(error)")
        }
        guard let object = value.objectValue else {
            throw RouteError(status: 400, code: "invalid_json", message: "the body must be a JSON object")
        }
        return object.dictionary
    }

    static func string(_ body: [String: JSONValue], _ field: String) throws -> String {
        guard let value = body[field] else {
            throw RouteError(status: 422, code: "missing_field", message: "\(field) is required", field: field)
        }
        guard let string = value.stringValue else {
            throw RouteError(status: 422, code: "invalid_field", message: "\(field) must be a string", field: field)
        }
        return string
    }

    static func optionalString(_ body: [String: JSONValue], _ field: String) throws -> String? {
        guard let value = body[field], !value.isNull else { return nil }
        guard let string = value.stringValue else {
            throw RouteError(status: 422, code: "invalid_field", message: "\(field) must be a string or null", field: field)
        }
        return string
    }

    static func optionalInteger(_ body: [String: JSONValue], _ field: String) throws -> Int? {
        guard let value = body[field], !value.isNull else { return nil }
        guard let integer = value.intValue else {
            throw RouteError(status: 422, code: "invalid_field", message: "\(field) must be a whole number or null", field: field)
        }
        return integer
    }

    static func encode(_ status: Int, _ value: some Encodable) throws -> Response {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return Response(
            status: .init(code: status),
            headers: [.contentType: "application/json"],
            body: .init(byteBuffer: ByteBuffer(bytes: try encoder.encode(value)))
        )
    }

}

// What a service group logs for the admin server: never the admin token.
extension AdminServer: CustomStringConvertible {
    package var description: String {
        "AdminServer(address: \(host):\(port), token: \(adminToken == nil ? "none, admin API disabled" : "set, not shown"))"
    }
}
