import ClusterCore
import Foundation
import HTTPEndpoints
import HTTPTypes
import Hummingbird
import Logging
import NATS
import NIOCore

/// Routes implemented in another runtime (``ClusterCore/ExternalRuntime``): the ingress checks
/// the caller as for any route, then sends the request over core NATS request/reply to the
/// runtime's processes (queue group `routes` on `aut._route.<runtime>`) and answers with their
/// reply. docs/python.md, "Routes", defines both messages.
enum RouteForwarding {
    /// Headers the route's process never sees: the API key is the ingress's to check.
    static let withheldHeaders: Set<String> = ["authorization", "cookie", "proxy-authorization"]
    /// Headers of the reply the ingress sets itself.
    static let ownHeaders: Set<String> = ["content-length", "transfer-encoding", "connection", "content-type"]

    static func forward(
        route: RouteDefinition,
        runtime: String,
        request: RouteRequest,
        tenant: String,
        idempotencyKey: String?,
        traceparent: String?,
        state: IngressState
    ) async throws -> Response {
        var headers: JSONObject = [:]
        for (name, value) in request.headers.sorted(by: { $0.key < $1.key }) where !withheldHeaders.contains(name.lowercased()) {
            headers[name.lowercased()] = .string(value)
        }
        var envelope: JSONObject = [
            "v": 1,
            "tenant": .string(tenant),
            "method": .string(request.method),
            "path": .string(request.path),
            "route": .string(route.path),
            "query": .object(JSONObject(request.query.sorted { $0.key < $1.key }.map { ($0.key, JSONValue.string($0.value)) })),
            "parameters": .object(JSONObject(request.parameters.sorted { $0.key < $1.key }.map { ($0.key, JSONValue.string($0.value)) })),
            "headers": .object(headers),
            "body": .string(Data(request.body).base64EncodedString()),
        ]
        if let idempotencyKey { envelope["idempotency_key"] = .string(idempotencyKey) }
        if let traceparent { envelope["traceparent"] = .string(traceparent) }
        let payload = JSONWriter.encode(.object(envelope))
        // The whole request must fit one NATS message (the server's max_payload, 1 MiB by default).
        let limit = state.connection.maxPayload - 1024
        guard payload.count <= limit else {
            throw RouteError(
                status: 413,
                code: "body_too_large",
                message: "a body forwarded to a \(runtime) route may have about \(limit * 3 / 4) bytes (the NATS server's max_payload)",
                field: "body"
            )
        }
        let reply: CoreMessage
        do {
            reply = try await state.connection.request(
                CoreMessage(subject: Wire.routeSubject(runtime: runtime), payload: payload),
                timeout: state.configuration.routeTimeout
            )
        } catch let error as NATSError where error.code == .noResponders {
            var refusal = RouteError(
                status: 503,
                code: "route_unavailable",
                message: "no \(runtime) process serves routes right now; start the app's \(runtime) workers"
            )
            refusal.retryAfterSeconds = 5
            throw refusal
        } catch let error as NATSError where error.code == .timeout {
            throw RouteError(
                status: 504,
                code: "route_timeout",
                message: "the \(runtime) route did not answer within \(state.configuration.routeTimeout)"
            )
        }
        return try response(from: reply.payload, route: route, runtime: runtime, logger: state.logger)
    }

    /// The HTTP response a route's reply describes; a reply that describes none is a 502.
    static func response(from payload: [UInt8], route: RouteDefinition, runtime: String, logger: Logger) throws -> Response {
        func malformed(_ problem: String) -> RouteError {
            logger.error(
                "A forwarded route's reply is malformed",
                metadata: ["ingress.route": "\(route.method) \(route.path)", "runtime": "\(runtime)", "problem": "\(problem)"]
            )
            return RouteError(
                status: 502,
                code: "bad_route_reply",
                message: "the \(runtime) route's reply was malformed; see the ingress log"
            )
        }
        guard case .object(let reply)? = try? JSONParser.parse(payload) else { throw malformed("not a JSON object") }
        if case .object(let error)? = reply["error"] {
            guard let status = error["status"]?.intValue, (400...599).contains(status) else {
                throw malformed("error.status is not 400-599")
            }
            var refusal = RouteError(
                status: status,
                code: error["code"]?.stringValue ?? "route_error",
                message: error["message"]?.stringValue ?? "the route failed",
                field: error["field"]?.stringValue
            )
            refusal.retryAfterSeconds = error["retry_after"]?.intValue
            throw refusal
        }
        guard let status = reply["status"]?.intValue, (200...599).contains(status) else {
            throw malformed("status is not 200-599")
        }
        var response: Response
        if let json = reply["json"] {
            response = JSONResponse.make(status, json)
        } else if let text = reply["body"]?.stringValue {
            guard let bytes = Data(base64Encoded: text) else { throw malformed("body is not base64") }
            response = Response(status: .init(code: status), body: .init(byteBuffer: ByteBuffer(bytes: bytes)))
            if let type = reply["content_type"]?.stringValue { response.headers[.contentType] = type }
        } else {
            response = Response(status: .init(code: status))
        }
        if case .object(let headers)? = reply["headers"] {
            for (name, value) in headers {
                guard let text = value.stringValue, !ownHeaders.contains(name.lowercased()), let field = HTTPField.Name(name) else {
                    continue
                }
                response.headers[field] = text
            }
        }
        return response
    }
}
