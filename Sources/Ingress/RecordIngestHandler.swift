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
import NIOSSL
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
    /// TLS first when the ingress serves HTTPS.
    let sslContext: NIOSSLContext?

    func setup(channel: any Channel, logger: Logger) -> EventLoopFuture<Value> {
        let capacity = state.capacity
        let admitted = capacity.openConnection()
        if admitted { channel.closeFuture.whenComplete { _ in capacity.closeConnection() } }
        return channel.eventLoop.makeCompletedFuture {
            // Over the cap: a 503 the client can read, then the connection closes; nothing it
            // sends reaches the HTTP handlers.
            if let sslContext {
                try channel.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: sslContext))
                try channel.pipeline.syncOperations.addHandler(CloseOnTLSError())
            }
            if !admitted { try channel.pipeline.syncOperations.addHandler(RefuseConnection()) }
            try channel.pipeline.syncOperations.configureHTTPServerPipeline(
                withPipeliningAssistance: true,
                withErrorHandling: false,  // parse errors reach Hummingbird's loop, which answers 400
                withOutboundHeaderValidation: false  // HTTPTypes validates fields already
            )
            try channel.pipeline.syncOperations.addHandler(
                ConnectionGuard(idleTimeout: state.configuration.idleTimeout, bodyTimeout: state.configuration.bodyTimeout)
            )
            // Request ids and access lines cost a handler pass and two header writes per
            // request, on the hottest path (single-record POSTs): only when asked.
            if state.configuration.accessLog { try channel.pipeline.syncOperations.addHandler(AccessLog(logger: state.logger)) }
            // Before the HTTPTypes conversion: the requests it answers skip it.
            try channel.pipeline.syncOperations.addHandler(RecordIngestHandler(state: state))
            try channel.pipeline.syncOperations.addHandler(HTTP1ToHTTPServerCodec(secure: sslContext != nil))
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

/// Closes a connection whose TLS failed (plain HTTP to the HTTPS port, a client that refused the
/// certificate) at once, instead of leaving it open until the idle timeout.
///
/// Not `Sendable`: used only on its channel's event loop.
final class CloseOnTLSError: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = NIOAny

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if error is NIOSSLError || error is BoringSSLError {
            context.close(promise: nil)
            return
        }
        context.fireErrorCaught(error)
    }
}

/// Answers record-API requests (``RecordIngest``) with a body of up to `inlineBodyLimit` bytes
/// without leaving the event loop, through the same pipeline as `IngressResponder` (so the
/// same validation, ids, status codes and bodies; 2xx only after every PubAck). Requests it
/// does not take (other paths, bigger bodies, API keys whose tenant is not cached) pass
/// through untouched.
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
        var idempotencyKey: [String]
        /// The request's valid W3C `traceparent`, carried into the records' headers.
        var traceparent: String?
        /// The API key's id (empty without a key): client keys are scoped to it.
        var caller: String
        var version: HTTPVersion
        var keepAlive: Bool
        /// The caller may not send this request (its API key, or the tenant the path names).
        var callerRefusal: RouteError?
        /// Set when the body grew past the limit; the rest is read and dropped.
        var bodyRefusal: RouteError?
        /// Bytes of the ingress's body budget this request holds until it is answered.
        var reserved = 0
    }

    /// The largest body answered on the event loop (about a hundred typical records).
    static let inlineBodyLimit = 32 * 1024

    private let state: IngressState
    private let pipeline: RecordIngest
    private var mode = Mode.idle
    /// The body of the request being collected (kept outside `mode` so appending does not copy).
    private var body = ByteBuffer()
    private var isActive = true
    /// The client half-closed while a request of this handler waited for its PubAcks: passed
    /// on once it is answered (Hummingbird's loop ends its side of the connection when it sees it).
    private var inputClosedHeld = false

    init(state: IngressState) {
        self.state = state
        self.pipeline = RecordIngest(state: state)
    }

    func channelInactive(context: ChannelHandlerContext) {
        isActive = false
        releaseCollecting()
        context.fireChannelInactive()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        isActive = false
        releaseCollecting()
    }

    /// A request whose body was still arriving holds no budget once its connection is gone
    /// (one that is being answered releases it when answered).
    private func releaseCollecting() {
        guard case .collecting(var request) = mode else { return }
        state.capacity.releaseBody(request.reserved)
        request.reserved = 0
        mode = .collecting(request)
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
            if case .idle = mode, let request = take(head, remoteAddress: context.remoteAddress) {
                body = ByteBuffer()
                mode = .collecting(request)
            } else {
                mode = .forwarding
                context.fireChannelRead(data)
            }
        case .body(let chunk):
            guard case .collecting(var request) = mode else { return context.fireChannelRead(data) }
            guard request.bodyRefusal == nil else { return }
            if body.readableBytes + chunk.readableBytes > state.configuration.maxBodyBytes {
                request.bodyRefusal = pipeline.bodyTooLarge
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

    /// The record-API request `head` starts, if this handler answers it: a small body, and a
    /// caller known without waiting (no API key, a malformed one, or one whose tenant is cached).
    private func take(_ head: HTTPRequestHead, remoteAddress: SocketAddress?) -> Request? {
        // Large batches (and bodies of unknown length) go to Hummingbird's responder: splitting
        // and publishing thousands of records here would hold up every other connection of
        // this event loop for milliseconds.
        guard head.method == .POST, let length = head.headers.first(name: "content-length").flatMap({ Int($0) }),
            length <= Self.inlineBodyLimit
        else { return nil }
        let path = head.uri.utf8.firstIndex(of: UInt8(ascii: "?")).map { head.uri[..<$0] } ?? head.uri[...]
        guard let target = try? RecordIngest.target(method: "POST", path: path) else { return nil }
        var tenant = ""
        var refusal: RouteError?
        do throws(RouteError) {
            if state.addresses.isExhausted(remoteAddress) { throw state.addresses.refusal }
            switch try pipeline.caller(authorization: head.headers["authorization"]) {
            case .tenant(let known):
                tenant = known
                try RecordIngest.check(known, actsFor: target.tenant)
            case .key:
                return nil  // Hummingbird's path asks the coordinators
            }
        } catch {
            if error.status == 401 { state.addresses.charge(remoteAddress) }
            refusal = error
        }
        var request = Request(
            table: target.table,
            tenant: tenant,
            contentType: head.headers.first(name: "content-type"),
            idempotencyKey: head.headers["idempotency-key"],
            traceparent: head.headers.contains(name: "traceparent") ? RecordIngest.traceparent(head.headers["traceparent"]) : nil,
            caller: RecordIngest.callerID(authorization: head.headers["authorization"]),
            version: head.version,
            keepAlive: head.isKeepAlive,
            callerRefusal: refusal
        )
        // The body's room in the ingress's memory budget, held until the request is answered.
        if refusal == nil {
            if state.capacity.reserveBody(length) {
                request.reserved = length
            } else {
                request.bodyRefusal = IngressCapacity.bodiesFull
            }
        }
        return request
    }

    private func ingest(_ request: Request, body: ByteBuffer, context: ChannelHandlerContext) {
        let batch: RecordBatch
        do throws(RouteError) {
            if let refusal = request.callerRefusal { throw refusal }
            let key = try pipeline.accept(table: request.table, idempotencyKey: request.idempotencyKey)
            if let refusal = request.bodyRefusal { throw refusal }
            batch = try pipeline.prepare(
                table: request.table,
                tenant: request.tenant,
                contentType: request.contentType,
                key: key.map { RecordIDGenerator.scopedKey($0, tenant: request.tenant, caller: request.caller, path: "") },
                traceparent: request.traceparent,
                body: body
            )
        } catch {
            return answer(pipeline.answer(.failure(error)), request: request, context: context)
        }
        let ids = batch.ids
        let pipeline = self.pipeline
        let target = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        pipeline.publish(batch, tenant: request.tenant, on: context.eventLoop) { outcome in
            let answer = pipeline.answer(outcome.map { RecordIngest.Accepted(ids: ids, duplicates: $0) })
            // On the loop when it has its own publisher (the PubAcks came back to it).
            if target.eventLoop.inEventLoop {
                let (handler, context) = target.value
                handler.answer(answer, request: request, context: context)
            } else {
                target.eventLoop.execute {
                    let (handler, context) = target.value
                    handler.answer(answer, request: request, context: context)
                }
            }
        }
    }

    private func answer(_ response: RecordIngest.Answer, request: Request, context: ChannelHandlerContext) {
        state.capacity.releaseBody(request.reserved)
        // Idle before the end is written: the pipelining handler may hand over the next
        // request from inside that write.
        mode = .idle
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
