import ClusterCore
import CoreMetrics
import Foundation
import HummingbirdCore
import Logging
import NATS
import NIOCore
import NIOHTTP1
import NIOHTTPTypes
import NIOHTTPTypesHTTP1
import Synchronization

/// The ingress's HTTP/1 connection: Hummingbird's pipeline plus `RecordIngestHandler`, which
/// answers small record-API requests on the connection's event loop. Every other request
/// (routes, webhooks, health, the tenant-scoped record path, API keys not yet cached, bodies
/// over 32 KiB or without a length) goes on to Hummingbird's responder as before.
///
/// Why: a request through Hummingbird's async responder costs two thread hops (event loop →
/// Swift executor → event loop) and a task; for single-record POSTs that was most of the
/// ingress's CPU. Here a record-API request is parsed, validated and published on the event
/// loop, and the answer is written from the PubAck callback with one hop back to it.
///
/// Pipelining assistance is on, so a connection has one request in progress at a time and
/// answers stay in request order whichever side answers; NIO's pipelining handler also closes
/// connections once their last answer is out when the server shuts down.
struct IngressChannel: ServerChildChannel, HTTPChannelHandler {
    typealias Value = NIOAsyncChannel<HTTPRequestPart, HTTPResponsePart>

    let responder: HTTPChannelHandler.Responder
    let state: IngressState

    func setup(channel: any Channel, logger: Logger) -> EventLoopFuture<Value> {
        channel.eventLoop.makeCompletedFuture {
            try channel.pipeline.syncOperations.configureHTTPServerPipeline(
                withPipeliningAssistance: true,
                withErrorHandling: false,  // parse errors reach Hummingbird's loop, which answers 400
                withOutboundHeaderValidation: false  // HTTPTypes validates fields already
            )
            // Before the HTTPTypes conversion: the requests it answers skip it.
            try channel.pipeline.syncOperations.addHandler(RecordIngestHandler(state: state))
            try channel.pipeline.syncOperations.addHandler(HTTP1ToHTTPServerCodec(secure: false))
            return try NIOAsyncChannel(
                wrappingChannelSynchronously: channel,
                configuration: .init(isOutboundHalfClosureEnabled: true)
            )
        }
    }

    func handle(value: Value, logger: Logger) async {
        await handleHTTP(asyncChannel: value, logger: logger)
    }
}

/// Answers `POST /v1/tables/{table}/records` with a body of up to `inlineBodyLimit` bytes
/// without leaving the event loop, exactly as
/// `IngressResponder` would (same validation, ids, status codes and bodies; 2xx only after
/// every PubAck). Requests it does not take pass through untouched.
///
/// Not `Sendable`: used only on its channel's event loop. The PubAck callback comes back to it
/// through `NIOLoopBound`, which checks that.
final class RecordIngestHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias InboundOut = HTTPServerRequestPart
    typealias OutboundIn = HTTPServerResponsePart
    typealias OutboundOut = HTTPServerResponsePart

    private enum Mode {
        /// Between requests.
        case idle
        /// A request for Hummingbird, until its end has been passed on.
        case forwarding
        /// A record-API request whose body is arriving.
        case collecting(Request)
        /// A record-API request waiting for its PubAcks.
        case answering
    }

    private struct Request {
        var table: String
        var tenant: String
        var contentType: String?
        var idempotencyKey: String?
        var version: HTTPVersion
        var keepAlive: Bool
        /// Set when the body grew past the limit; the rest is read and dropped.
        var refusal: RouteError?
    }

    /// The largest body answered on the event loop (about a hundred typical records).
    static let inlineBodyLimit = 32 * 1024

    private static let prefix = "/v1/tables/".utf8
    private static let suffix = "/records".utf8

    private let state: IngressState
    private var mode = Mode.idle
    /// The body of the request being collected (kept outside `mode` so appending does not copy).
    private var body = ByteBuffer()
    private var isActive = true
    /// The client half-closed while a request of this handler waited for its PubAcks: passed
    /// on once it is answered (Hummingbird's loop ends its side of the connection when it sees it).
    private var inputClosedHeld = false

    init(state: IngressState) {
        self.state = state
    }

    func channelInactive(context: ChannelHandlerContext) {
        isActive = false
        context.fireChannelInactive()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        isActive = false
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? ChannelEvent, event == .inputClosed, case .answering = mode {
            inputClosedHeld = true
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            continueIfExpected(head, context: context)
            if case .idle = mode, let request = take(head) {
                body = ByteBuffer()
                mode = .collecting(request)
            } else {
                mode = .forwarding
                context.fireChannelRead(data)
            }
        case .body(let chunk):
            guard case .collecting(var request) = mode else { return context.fireChannelRead(data) }
            guard request.refusal == nil else { return }
            if body.readableBytes + chunk.readableBytes > state.configuration.maxBodyBytes {
                request.refusal = RouteError(
                    status: 413,
                    code: "body_too_large",
                    message: "request body is larger than \(state.configuration.maxBodyBytes) bytes",
                    field: "body"
                )
                body = ByteBuffer()
                mode = .collecting(request)
            } else if body.readableBytes == 0 {
                body = chunk
            } else {
                body.writeImmutableBuffer(chunk)
            }
        case .end:
            switch mode {
            case .collecting(let request):
                mode = .answering
                let payload = body
                body = ByteBuffer()
                ingest(request, body: payload, context: context)
            case .forwarding:
                mode = .idle
                context.fireChannelRead(data)
            case .idle, .answering:
                context.fireChannelRead(data)
            }
        }
    }

    /// Answers `Expect: 100-continue` (HTTP/1.1) with `100 Continue`, for every request of the
    /// connection: clients that ask (curl for bodies over 1 MiB, many HTTP libraries always)
    /// otherwise wait a second or more before they send the body. A body declared larger than
    /// the limit gets no `100` and is answered 413 as before.
    private func continueIfExpected(_ head: HTTPRequestHead, context: ChannelHandlerContext) {
        guard head.version.major == 1, head.version.minor >= 1,
            head.headers["expect"].contains(where: { $0.lowercased() == "100-continue" })
        else { return }
        if let length = head.headers.first(name: "content-length").flatMap({ Int($0) }), length > state.configuration.maxBodyBytes {
            return
        }
        context.writeAndFlush(wrapOutboundOut(.head(HTTPResponseHead(version: head.version, status: .continue))), promise: nil)
    }

    /// The record-API request `head` starts, if this handler answers it: the plain record path,
    /// and a tenant known without waiting (no API key, or a key whose tenant is cached).
    private func take(_ head: HTTPRequestHead) -> Request? {
        // Large batches (and bodies of unknown length) go to Hummingbird's responder: splitting
        // and publishing thousands of records here would hold up every other connection of
        // this event loop for milliseconds.
        guard head.method == .POST, let length = head.headers.first(name: "content-length").flatMap({ Int($0) }),
            length <= Self.inlineBodyLimit
        else { return nil }
        var path = head.uri
        if let query = path.utf8.firstIndex(of: UInt8(ascii: "?")) { path = String(path[..<query]) }
        let utf8 = path.utf8
        guard utf8.count > Self.prefix.count + Self.suffix.count, utf8.starts(with: Self.prefix),
            utf8.reversed().starts(with: Self.suffix.reversed())
        else { return nil }
        let table = String(decoding: utf8.dropFirst(Self.prefix.count).dropLast(Self.suffix.count), as: UTF8.self)
        let tenant: String
        if let authorization = head.headers.first(name: "authorization") {
            guard authorization.hasPrefix("Bearer ") else { return nil }
            let key = String(authorization.dropFirst(7))
            guard APIKeys.isWellFormed(key), let cached = state.keys.cachedTenant(forKey: key), let known = cached else {
                return nil  // Hummingbird's path asks the coordinator or answers the error
            }
            tenant = known
        } else if state.configuration.requireAPIKey {
            return nil
        } else {
            tenant = state.configuration.tenant
        }
        return Request(
            table: table,
            tenant: tenant,
            contentType: head.headers.first(name: "content-type"),
            idempotencyKey: head.headers.first(name: "idempotency-key"),
            version: head.version,
            keepAlive: head.isKeepAlive
        )
    }

    private func ingest(_ request: Request, body: ByteBuffer, context: ChannelHandlerContext) {
        let batch: RecordBatch
        do throws(RouteError) {
            _ = try state.table(named: request.table)
            let key = try IngressState.idempotencyKey(request.idempotencyKey)
            if let refusal = request.refusal { throw refusal }
            batch = try state.prepareRecords(
                table: request.table,
                tenant: request.tenant,
                contentType: request.contentType,
                idempotencyKey: key,
                body: body
            )
        } catch {
            return answer(encode(error), request: request, context: context)
        }
        let ids = batch.ids
        let retryAfter = String(state.configuration.retryAfterSeconds)
        let publisher = GuardedPublisher(state: state, tenant: request.tenant)
        if let eventLoopPublisher = state.eventLoopPublisher(for: request.tenant, on: context.eventLoop) {
            // The PubAcks come back on this loop: answer right there.
            return publisher.publish(batch.messages, through: eventLoopPublisher) { outcome in
                self.answer(EncodedResponse(outcome, ids: ids, retryAfter: retryAfter), request: request, context: context)
            }
        }
        let target = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        publisher.publish(batch.messages) { outcome in
            let response = EncodedResponse(outcome, ids: ids, retryAfter: retryAfter)
            target.eventLoop.execute {
                let (handler, context) = target.value
                handler.answer(response, request: request, context: context)
            }
        }
    }

    private func answer(_ response: EncodedResponse, request: Request, context: ChannelHandlerContext) {
        // Idle before the end is written: the pipelining handler may hand over the next
        // request from inside that write.
        mode = .idle
        // Counted as the Hummingbird path counts its refusals.
        if response.status >= 400 { state.rejectedRequests.increment() }
        guard isActive else { return }
        var headers = HTTPHeaders()
        headers.reserveCapacity(6)
        headers.add(name: "content-type", value: "application/json")
        headers.add(name: "content-length", value: String(response.body.readableBytes))
        headers.add(name: "date", value: HTTPDate.now())
        headers.add(name: "server", value: "autonomous")
        if let retryAfter = response.retryAfter { headers.add(name: "retry-after", value: retryAfter) }
        if !request.keepAlive { headers.add(name: "connection", value: "close") }
        let head = HTTPResponseHead(version: request.version, status: .init(statusCode: response.status), headers: headers)
        context.write(wrapOutboundOut(.head(head)), promise: nil)
        context.write(wrapOutboundOut(.body(.byteBuffer(response.body))), promise: nil)
        if request.keepAlive {
            context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
            if inputClosedHeld {
                inputClosedHeld = false
                context.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
            }
        } else {
            context.writeAndFlush(wrapOutboundOut(.end(nil))).assumeIsolated().whenComplete { _ in
                context.close(promise: nil)
            }
        }
    }

    private struct EncodedResponse: Sendable {
        var status: Int
        var body: ByteBuffer
        var retryAfter: String?

        init(status: Int, body: JSONValue) {
            self.status = status
            self.body = ByteBuffer(bytes: JSONWriter.encode(body))
        }

        /// The answer to a publish: 202 with the ids, or the error's.
        init(_ outcome: Result<Void, RouteError>, ids: [String], retryAfter: String) {
            switch outcome {
            case .success: self.init(status: 202, body: IngressState.acceptedAnswer(ids))
            case .failure(let error): self.init(error, retryAfter: retryAfter)
            }
        }

        /// An error's answer; 429 and 503 (whose cause passes) say when to retry.
        init(_ error: RouteError, retryAfter: String) {
            self.init(status: error.status, body: error.body)
            if error.status == 429 || error.status == 503 { self.retryAfter = error.retryAfterSeconds.map(String.init) ?? retryAfter }
        }
    }

    private func encode(_ error: RouteError) -> EncodedResponse {
        EncodedResponse(error, retryAfter: String(state.configuration.retryAfterSeconds))
    }
}

/// The `Date` header's value, formatted once per second.
enum HTTPDate {
    private static let cache = Mutex<(second: Int, text: String)>((-1, ""))

    static func now() -> String {
        let second = time(nil)
        return cache.withLock { cache in
            if cache.second == second { return cache.text }
            var moment = second
            var parts = tm()
            gmtime_r(&moment, &parts)
            let text = withUnsafeTemporaryAllocation(of: CChar.self, capacity: 40) { buffer in
                let count = strftime(buffer.baseAddress!, 40, "%a, %d %b %Y %H:%M:%S GMT", &parts)
                return String(decoding: UnsafeRawBufferPointer(start: buffer.baseAddress, count: count), as: UTF8.self)
            }
            cache = (second, text)
            return text
        }
    }
}
