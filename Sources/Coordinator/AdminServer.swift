import ClusterCore
import Crypto
import Foundation
import Hummingbird
package import Logging
package import NATS
import NIOCore
import ServiceLifecycle

/// The coordinator's HTTP port: `/healthz`, `/readyz`, `/metrics` and the admin API under `/v1/admin`
/// (tenants, API keys, schedules), protected by the admin token. See docs/api.md.
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

    package init(
        host: String,
        port: Int,
        adminToken: String?,
        administration: Administration,
        connection: NATSConnection,
        logger: Logger,
        onListening: (@Sendable (Int) async -> Void)? = nil
    ) {
        self.host = host
        self.port = port
        self.adminToken = adminToken.flatMap { $0.isEmpty ? nil : $0 }
        self.administration = administration
        self.connection = connection
        self.logger = logger
        self.onListening = onListening
    }

    package func run() async throws {
        let responder = AdminResponder(adminToken: adminToken, administration: administration, connection: connection, logger: logger)
        let onListening = self.onListening
        let app = Application(
            responder: responder,
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

struct AdminResponder: HTTPResponder {
    typealias Context = BasicRequestContext
    let adminToken: String?
    let administration: Administration
    let connection: NATSConnection
    let logger: Logger

    func respond(to request: Request, context: BasicRequestContext) async throws -> Response {
        do {
            return try await route(request)
        } catch let error as RouteError {
            return Self.json(error.status, error.body)
        } catch let error as ClusterCallError {
            let status: Int
            switch error.code {
            case .notFound: status = 404
            case .duplicate: status = 409
            case .invalidArgument: status = 422
            case .unauthorized: status = 401
            case .forbidden: status = 403
            case .unavailable, .timeout: status = 503
            case .versionMismatch, .internal: status = 500
            }
            var code = error.code.rawValue
            var message = error.message
            var field: String?
            // "field: problem" messages name the field separately.
            if status == 422, let colon = message.firstIndex(of: ":"), !message[..<colon].contains(" ") {
                field = String(message[..<colon])
                message = String(message[message.index(after: colon)...]).trimmingCharacters(in: .whitespaces)
                code = "invalid_field"
            }
            return Self.json(status, RouteError(status: status, code: code, message: message, field: field).body)
        } catch {
            logger.error("Admin request failed", metadata: ["error": "\(error)"])
            return Self.json(500, RouteError(status: 500, code: "internal_error", message: "the coordinator failed; see its log").body)
        }
    }

    private func route(_ request: Request) async throws -> Response {
        let path = request.uri.path
        let method = request.method.rawValue
        switch (method, path) {
        case ("GET", "/healthz"): return Self.json(200, ["status": "ok"])
        case ("GET", "/readyz"):
            return connection.isConnected
                ? Self.json(200, ["status": "ready"]) : Self.json(503, ["status": "unavailable", "reason": "NATS is not connected"])
        case ("GET", "/metrics"):
            guard let text = MetricsExport.render() else {
                throw RouteError(status: 404, code: "not_found", message: "no metrics backend in this process")
            }
            return Response(
                status: .ok,
                headers: [.contentType: MetricsExport.contentType],
                body: .init(byteBuffer: ByteBuffer(bytes: text))
            )
        default: break
        }
        let segments = path.split(separator: "/", omittingEmptySubsequences: false).dropFirst().map(String.init)
        guard segments.count >= 3, segments[0] == "v1", segments[1] == "admin" else {
            throw RouteError(status: 404, code: "not_found", message: "no route for \(method) \(path.prefix(200))")
        }
        try authorize(request)
        let rest = Array(segments.dropFirst(2))
        let body = try await parseBody(request)
        let a = administration
        switch (method, rest.count, rest.first) {
        case ("GET", 1, "tenants"):
            return try Self.encode(200, try await a.tenants())
        case ("POST", 1, "tenants"):
            return try Self.encode(201, try await a.createTenant(try Self.string(body, "name")))
        case (_, _, "tenants"):
            break
        default:
            throw RouteError(status: 404, code: "not_found", message: "no route for \(method) \(path.prefix(200))")
        }
        let tenant = rest[1]
        switch (method, Array(rest.dropFirst(2))) {
        case ("GET", []): return try Self.encode(200, try await a.tenant(tenant))
        case ("POST", ["disable"]): return try Self.encode(200, try await a.setDisabled(tenant, true))
        case ("POST", ["enable"]): return try Self.encode(200, try await a.setDisabled(tenant, false))
        case ("PUT", ["limits"]):
            let limits = TenantLimits(
                recordsPerSecond: try Self.optionalInteger(body, "recordsPerSecond"),
                burst: try Self.optionalInteger(body, "burst")
            )
            return try Self.encode(200, try await a.setLimits(tenant, limits))
        case ("GET", ["keys"]): return try Self.encode(200, try await a.keys(tenant: tenant))
        case ("POST", ["keys"]): return try Self.encode(201, try await a.createKey(tenant: tenant))
        case ("POST", let p) where p.count == 3 && p[0] == "keys" && p[2] == "rotate":
            return try Self.encode(201, try await a.rotateKey(tenant: tenant, id: p[1]))
        case ("DELETE", let p) where p.count == 2 && p[0] == "keys":
            return try Self.encode(200, try await a.revokeKey(tenant: tenant, id: p[1]))
        case ("GET", ["schedules"]): return try Self.encode(200, try await a.schedules(tenant: tenant))
        case ("GET", let p) where p.count == 2 && p[0] == "schedules":
            return try Self.encode(200, try await a.schedule(p[1], tenant: tenant))
        case ("PUT", let p) where p.count == 2 && p[0] == "schedules":
            let cron = try Self.optionalString(body, "cron")
            let timeZone = try Self.optionalString(body, "timeZone")
            return try Self.encode(200, try await a.retime(p[1], tenant: tenant, cron: cron, timeZone: timeZone))
        case ("POST", let p) where p.count == 3 && p[0] == "schedules" && p[2] == "pause":
            return try Self.encode(200, try await a.setPaused(p[1], tenant: tenant, paused: true))
        case ("POST", let p) where p.count == 3 && p[0] == "schedules" && p[2] == "resume":
            return try Self.encode(200, try await a.setPaused(p[1], tenant: tenant, paused: false))
        case ("POST", let p) where p.count == 3 && p[0] == "schedules" && p[2] == "trigger":
            return try Self.encode(202, try await a.trigger(p[1], tenant: tenant))
        default:
            throw RouteError(status: 404, code: "not_found", message: "no route for \(method) \(path.prefix(200))")
        }
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

    private func parseBody(_ request: Request) async throws -> [String: JSONValue] {
        let buffer: ByteBuffer
        do {
            buffer = try await request.body.collect(upTo: 64 * 1024)
        } catch {
            throw RouteError(status: 413, code: "body_too_large", message: "admin request bodies are at most 64 KiB", field: "body")
        }
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

    static func json(_ status: Int, _ value: JSONValue) -> Response {
        Response(
            status: .init(code: status),
            headers: [.contentType: "application/json"],
            body: .init(byteBuffer: ByteBuffer(bytes: JSONWriter.encode(value)))
        )
    }
}
