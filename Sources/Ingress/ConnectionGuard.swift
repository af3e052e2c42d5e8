import ClusterCore
import NIOCore
import NIOHTTP1
import Synchronization

/// What the ingress holds at once across all connections and event loops: open connections and
/// request bodies in memory. Both are counted with atomics and checked before taking more.
final class IngressCapacity: Sendable {
    let maxConnections: Int
    let maxBufferedBodyBytes: Int
    private let connections = Atomic<Int>(0)
    private let bufferedBytes = Atomic<Int>(0)

    init(maxConnections: Int, maxBufferedBodyBytes: Int) {
        self.maxConnections = maxConnections
        self.maxBufferedBodyBytes = maxBufferedBodyBytes
    }

    var openConnections: Int { connections.load(ordering: .relaxed) }
    var bufferedBodyBytes: Int { bufferedBytes.load(ordering: .relaxed) }

    /// Counts a new connection, or returns false when the cap is reached.
    func openConnection() -> Bool {
        if connections.add(1, ordering: .relaxed).newValue > maxConnections {
            connections.subtract(1, ordering: .relaxed)
            return false
        }
        return true
    }

    func closeConnection() { connections.subtract(1, ordering: .relaxed) }

    /// Reserves room for `bytes` of body, or returns false when that would pass the bound.
    func reserveBody(_ bytes: Int) -> Bool {
        guard bytes > 0 else { return true }
        if bufferedBytes.add(bytes, ordering: .relaxed).newValue > maxBufferedBodyBytes {
            bufferedBytes.subtract(bytes, ordering: .relaxed)
            return false
        }
        return true
    }

    func releaseBody(_ bytes: Int) {
        if bytes > 0 { bufferedBytes.subtract(bytes, ordering: .relaxed) }
    }

    /// The refusal of a body that does not fit in memory now (503, retryable).
    static let bodiesFull: RouteError = {
        var error = RouteError(
            status: 503,
            code: "overloaded",
            message: "the ingress holds as many request bodies as it may; retry shortly"
        )
        error.retryAfterSeconds = 1
        return error
    }()

    /// What a connection over the cap is told before it is closed.
    static let refusal: String = {
        let body = #"{"error":{"code":"overloaded","message":"too many open connections; retry shortly"}}"#
        return "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n"
            + "connection: close\r\ncontent-length: \(body.utf8.count)\r\n\r\n" + body
    }()
}

/// Bounds how long a connection may take to send a request. A request head must arrive within
/// `idleTimeout` of the connection opening or of the previous answer, else the connection is
/// closed (an idle keep-alive connection and one trickling its headers alike); a body must
/// arrive within `bodyTimeout` of its head, else the client gets 408 and the connection is
/// closed. While the server works on an answer no timer runs.
///
/// Sits after the HTTP pipelining handler, so it sees one request at a time. Not `Sendable`:
/// used only on its channel's event loop.
final class ConnectionGuard: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias InboundOut = HTTPServerRequestPart
    typealias OutboundIn = HTTPServerResponsePart
    typealias OutboundOut = HTTPServerResponsePart

    private enum Phase {
        /// Waiting for a request head: close at the deadline.
        case awaitingHead(NIODeadline)
        /// Receiving a body: 408 at the deadline.
        case receiving(NIODeadline)
        /// The server's turn: no deadline.
        case answering
    }

    private let idleTimeout: TimeAmount
    private let bodyTimeout: TimeAmount
    private var phase = Phase.answering
    /// One timer per connection, at or before the current deadline. A request only moves the
    /// deadline (no timer is scheduled per request); the timer, when it fires early, moves
    /// itself to the deadline.
    private var timer: Scheduled<Void>?
    private var timerAt: NIODeadline?
    private var version = HTTPVersion.http1_1

    init(idleTimeout: Duration, bodyTimeout: Duration) {
        self.idleTimeout = .nanoseconds(Int64(idleTimeout.inNanoseconds))
        self.bodyTimeout = .nanoseconds(Int64(bodyTimeout.inNanoseconds))
    }

    func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { enter(.awaitingHead(.now() + idleTimeout), context) }
    }

    func channelActive(context: ChannelHandlerContext) {
        enter(.awaitingHead(.now() + idleTimeout), context)
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        cancel()
        context.fireChannelInactive()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        cancel()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            version = head.version
            enter(.receiving(.now() + bodyTimeout), context)
        case .body:
            break
        case .end:
            phase = .answering
        }
        context.fireChannelRead(data)
    }

    /// Set when the bytes were not HTTP: the 400 Hummingbird then answers (after the answers
    /// already owed) gets a JSON error body, as every other refusal has.
    private var parseFailed = false
    private var rewritingParseError = false

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if error is HTTPParserError { parseFailed = true }
        context.fireErrorCaught(error)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        switch unwrapOutboundIn(data) {
        case .head(var head) where parseFailed && head.status == .badRequest:
            rewritingParseError = true
            head.headers.replaceOrAdd(name: "content-type", value: "application/json")
            head.headers.replaceOrAdd(name: "content-length", value: String(Self.notHTTP.readableBytes))
            context.write(wrapOutboundOut(.head(head)), promise: promise)
            return
        case .end where rewritingParseError:
            rewritingParseError = false
            context.write(wrapOutboundOut(.body(.byteBuffer(Self.notHTTP))), promise: nil)
            enter(.awaitingHead(.now() + idleTimeout), context)
        case .end:
            enter(.awaitingHead(.now() + idleTimeout), context)
        default:
            break
        }
        context.write(data, promise: promise)
    }

    private static let notHTTP = ByteBuffer(
        string: #"{"error":{"code":"malformed_request","message":"the request is not valid HTTP/1.1; the connection is closed"}}"#
    )

    private func enter(_ next: Phase, _ context: ChannelHandlerContext) {
        phase = next
        let deadline: NIODeadline
        switch next {
        case .awaitingHead(let at), .receiving(let at): deadline = at
        case .answering: return
        }
        // A timer already due at or before the deadline checks again when it fires.
        if let timerAt, timerAt <= deadline { return }
        schedule(at: deadline, context)
    }

    private func schedule(at deadline: NIODeadline, _ context: ChannelHandlerContext) {
        timer?.cancel()
        timerAt = deadline
        timer = context.eventLoop.assumeIsolated().scheduleTask(deadline: deadline) { [self] in
            timer = nil
            timerAt = nil
            fire(context)
        }
    }

    private func fire(_ context: ChannelHandlerContext) {
        let now = NIODeadline.now()
        switch phase {
        case .answering:
            return  // the next request moves the deadline and schedules again
        case .awaitingHead(let deadline):
            if now >= deadline { context.close(promise: nil) } else { schedule(at: deadline, context) }
        case .receiving(let deadline):
            if now >= deadline { requestTimedOut(context) } else { schedule(at: deadline, context) }
        }
    }

    private func cancel() {
        timer?.cancel()
        timer = nil
        timerAt = nil
    }

    private func requestTimedOut(_ context: ChannelHandlerContext) {
        phase = .answering
        let body = #"{"error":{"code":"request_timeout","message":"the request body did not arrive in time","field":"body"}}"#
        var headers = HTTPHeaders()
        headers.add(name: "content-type", value: "application/json")
        headers.add(name: "content-length", value: String(body.utf8.count))
        headers.add(name: "connection", value: "close")
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: version, status: .requestTimeout, headers: headers))), promise: nil)
        context.write(wrapOutboundOut(.body(.byteBuffer(ByteBuffer(string: body)))), promise: nil)
        context.writeAndFlush(wrapOutboundOut(.end(nil))).assumeIsolated().whenComplete { _ in context.close(promise: nil) }
    }
}

extension Duration {
    var inNanoseconds: Int64 {
        let (seconds, attoseconds) = components
        return seconds * 1_000_000_000 + attoseconds / 1_000_000_000
    }
}

/// The first handler of a connection over the cap: answers 503 (``IngressCapacity/refusal``)
/// as soon as the connection is active, drops whatever the client sends, and closes.
/// Not `Sendable`: used only on its channel's event loop.
final class RefuseConnection: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private var answered = false

    func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { refuse(context) }
    }

    func channelActive(context: ChannelHandlerContext) {
        refuse(context)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {}

    private func refuse(_ context: ChannelHandlerContext) {
        guard !answered else { return }
        answered = true
        // Ends the output only: closing outright with the client's request unread would reset
        // the connection and lose the answer. What the client still sends is read and dropped
        // until it closes, or for a second at most.
        context.writeAndFlush(wrapOutboundOut(ByteBuffer(string: IngressCapacity.refusal))).assumeIsolated().whenComplete { _ in
            context.close(mode: .output, promise: nil)
            context.eventLoop.assumeIsolated().scheduleTask(in: .seconds(1)) { context.close(promise: nil) }
        }
    }
}
