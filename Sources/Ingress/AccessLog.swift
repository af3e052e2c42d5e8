import Logging
import NIOCore
import NIOHTTP1

/// Gives every request an id and, when asked, logs one line per answered request.
///
/// The id is the request's `X-Request-Id` when that is 1–128 of `[A-Za-z0-9._:-]`, else one
/// made here (a per-connection random prefix and a counter); it is set on the request (so both
/// of the ingress's paths see it) and on the answer. The access log line (`notice`, logger
/// metadata `http.*`) has the id, method, path without the query, status, bytes received and
/// sent, duration and client address: never a header's value, the query or a body, so no API
/// key or signature reaches the log.
///
/// Sits after the pipelining handler, so it sees one request at a time. Not `Sendable`: used
/// only on its channel's event loop.
final class AccessLog: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias InboundOut = HTTPServerRequestPart
    typealias OutboundIn = HTTPServerResponsePart
    typealias OutboundOut = HTTPServerResponsePart

    static let header = "x-request-id"

    private let logger: Logger?
    private let prefix: String
    private var counter: UInt64 = 0
    private var remote = "-"

    /// The request being answered.
    private var id: String?
    private var method = ""
    private var path = ""
    private var started = NIODeadline.now()
    private var received = 0
    private var sent = 0
    private var status = 0

    /// `logger`: where access lines go; `nil` gives ids without logging.
    init(logger: Logger?) {
        self.logger = logger
        var generator = SystemRandomNumberGenerator()
        let value = UInt32.random(in: 0...UInt32.max, using: &generator)
        let hex = String(value, radix: 16)
        self.prefix = String(repeating: "0", count: 8 - hex.count) + hex
    }

    /// Whether `value` may be used as a request id as sent.
    static func isValid(_ value: Substring) -> Bool {
        guard !value.isEmpty, value.utf8.count <= 128 else { return false }
        return value.utf8.allSatisfy { byte in
            switch byte {
            case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
                UInt8(ascii: "."), UInt8(ascii: "_"), UInt8(ascii: ":"), UInt8(ascii: "-"):
                return true
            default:
                return false
            }
        }
    }

    func channelActive(context: ChannelHandlerContext) {
        if let address = context.channel.remoteAddress { remote = address.ipAddress ?? "-" }
        context.fireChannelActive()
    }

    func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive, let address = context.channel.remoteAddress { remote = address.ipAddress ?? "-" }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(var head):
            let given = head.headers[Self.header]
            let id: String
            if given.count == 1, Self.isValid(given[0][...]) {
                id = given[0]
            } else {
                counter += 1
                id = "\(prefix)-\(counter)"
                head.headers.replaceOrAdd(name: Self.header, value: id)
            }
            self.id = id
            method = head.method.rawValue
            path = String(head.uri.prefix { $0 != "?" }.prefix(256))
            started = .now()
            received = 0
            sent = 0
            status = 0
            context.fireChannelRead(wrapInboundOut(.head(head)))
        case .body(let buffer):
            received += buffer.readableBytes
            context.fireChannelRead(data)
        case .end:
            context.fireChannelRead(data)
        }
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        switch unwrapOutboundIn(data) {
        case .head(var head):
            status = Int(head.status.code)
            // 1xx answers (100 Continue) come before the real one.
            guard status >= 200 else { return context.write(data, promise: promise) }
            if let id { head.headers.replaceOrAdd(name: Self.header, value: id) }
            context.write(wrapOutboundOut(.head(head)), promise: promise)
        case .body(let body):
            switch body {
            case .byteBuffer(let buffer): sent += buffer.readableBytes
            case .fileRegion(let region): sent += region.readableBytes
            }
            context.write(data, promise: promise)
        case .end:
            context.write(data, promise: promise)
            guard status >= 200 else { return }
            if let logger {
                let elapsed = NIODeadline.now() - started
                logger.notice(
                    "HTTP request",
                    metadata: [
                        "http.request_id": .string(id ?? "-"),
                        "http.method": .string(id == nil ? "-" : method),
                        "http.path": .string(id == nil ? "-" : path),
                        "http.status": .stringConvertible(status),
                        "http.received_bytes": .stringConvertible(received),
                        "http.sent_bytes": .stringConvertible(sent),
                        "http.duration_ms": .string(String(Double(elapsed.nanoseconds / 1000) / 1000)),
                        "http.client": .string(remote),
                    ]
                )
            }
            id = nil
        }
    }
}
