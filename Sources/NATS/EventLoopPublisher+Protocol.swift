import Foundation
import NIOCore

/// Splits what a NATS server sends into protocol messages, without IO: bytes in
/// (``append(_:)``), messages out (``next()``), `nil` while a message is incomplete.
struct NATSServerMessageParser {
    enum Message {
        case info(String)
        /// A message on `subject`; `status` is a header block's status (`NATS/1.0 503`).
        case msg(subject: ByteBufferView, status: Int?, payload: ByteBuffer)
        case ping
        case pong
        case ok
        case err(String)
    }

    /// Longest control line accepted (an INFO with many cluster URLs stays well below).
    static let maxLine = 64 * 1024

    /// Unparsed bytes; `nil` once all are parsed, so a read buffer is not held after its last
    /// message (NIO can then reuse its storage for the next read).
    private var unparsed: ByteBuffer?

    /// Bytes not yet parsed.
    var pendingBytes: Int { unparsed?.readableBytes ?? 0 }

    mutating func append(_ bytes: inout ByteBuffer) {
        guard var buffer = unparsed.take(), buffer.readableBytes > 0 else {
            unparsed = bytes
            return
        }
        // Keep only the unread tail: under steady load a read often ends mid-message, and
        // the consumed bytes in front would otherwise pile up.
        if buffer.readerIndex >= 16 * 1024 { buffer.discardReadBytes() }
        buffer.writeBuffer(&bytes)
        unparsed = buffer
    }

    /// The next complete message, `nil` when more bytes are needed; throws for a stream that is
    /// not the NATS protocol.
    mutating func next() throws(NATSError) -> Message? {
        // Taken out while parsing (so moving its reader index copies nothing), put back only
        // while bytes remain.
        guard var buffer = unparsed.take() else { return nil }
        defer { if buffer.readableBytes > 0 { unparsed = buffer } }
        return try Self.next(from: &buffer)
    }

    private static func next(from buffer: inout ByteBuffer) throws(NATSError) -> Message? {
        guard buffer.readableBytes > 0 else { return nil }
        let view = buffer.readableBytesView
        guard let lineEnd = Self.crlf(in: view) else {
            if view.count > Self.maxLine { throw NATSError(code: .connectionFailed, message: "NATS control line too long") }
            return nil
        }
        let line = view[view.startIndex..<lineEnd]
        let lineLength = lineEnd - view.startIndex + 2
        if line.starts(with: "MSG ".utf8) || line.starts(with: "HMSG ".utf8) {
            let hasHeaders = line.first == UInt8(ascii: "H")
            let arguments = line.split(separator: UInt8(ascii: " "), omittingEmptySubsequences: true).dropFirst()
            guard arguments.count >= (hasHeaders ? 4 : 3), let subject = arguments.first,
                let total = PubAckBody.number(arguments.last!).map(Int.init)
            else { throw NATSError(code: .connectionFailed, message: "unreadable MSG line from NATS") }
            let headerLength = hasHeaders ? PubAckBody.number(arguments[arguments.endIndex - 2]).map(Int.init) ?? -1 : 0
            guard headerLength >= 0, headerLength <= total else {
                throw NATSError(code: .connectionFailed, message: "unreadable HMSG line from NATS")
            }
            guard buffer.readableBytes >= lineLength + total + 2 else { return nil }  // wait for the rest
            let subjectView = ByteBufferView(buffer.getSlice(at: subject.startIndex, length: subject.count)!)
            var status: Int?
            if hasHeaders {
                // "NATS/1.0 503\r\n…": a status (no responders) on the first line.
                let block = buffer.getSlice(at: buffer.readerIndex + lineLength, length: headerLength)!.readableBytesView
                if block.count >= 12, block.starts(with: "NATS/1.0 ".utf8) {
                    status = PubAckBody.number(block.dropFirst(9)).map(Int.init)
                }
            }
            let payload = buffer.getSlice(at: buffer.readerIndex + lineLength + headerLength, length: total - headerLength)!
            buffer.moveReaderIndex(forwardBy: lineLength + total + 2)
            return .msg(subject: subjectView, status: status, payload: payload)
        }
        let message: Message
        if line.starts(with: "PING".utf8) {
            message = .ping
        } else if line.starts(with: "PONG".utf8) {
            message = .pong
        } else if line.starts(with: "INFO ".utf8) {
            message = .info(String(decoding: line.dropFirst(5), as: UTF8.self))
        } else if line.starts(with: "+OK".utf8) {
            message = .ok
        } else if line.starts(with: "-ERR".utf8) {
            message = .err(String(decoding: line.dropFirst(4), as: UTF8.self).trimmingCharacters(in: .whitespaces))
        } else {
            throw NATSError(
                code: .connectionFailed,
                message: "unexpected line from NATS: \(String(decoding: line.prefix(80), as: UTF8.self))"
            )
        }
        buffer.moveReaderIndex(forwardBy: lineLength)
        return message
    }

    static func crlf(in view: ByteBufferView) -> Int? {
        var i = view.startIndex
        while let cr = view[i...].firstIndex(of: 13) {
            let next = view.index(after: cr)
            if next < view.endIndex, view[next] == 10 { return cr }
            if next >= view.endIndex { return nil }
            i = next
        }
        return nil
    }
}

/// The event-loop publisher's connection, without IO: from the server's first INFO through
/// CONNECT and PING to its PONG, then connected. Events in, actions out.
struct PublisherHandshake {
    struct Settings {
        var name: String
        var user: String?
        var password: String?
        var token: String?
        /// Whether the client brings TLS settings (it then upgrades after INFO).
        var wantsTLS: Bool
        /// Where the server is, for messages.
        var server: String
    }

    enum State: Equatable {
        case awaitingInfo
        case awaitingPong
        case connected
        case failed
    }

    enum Action: Equatable {
        case none
        /// Start TLS (before the CONNECT, which waits behind the handshake), then write `bytes`.
        case upgradeAndSend(String)
        case send(String)
        /// The handshake is done: subscribe to the reply inbox, then it may publish.
        case connected
        /// The server answered a keep-alive PING.
        case alive
        /// The attempt failed.
        case fail(NATSError)
        /// A server error after the handshake: log it (the server closes the connection when
        /// it is fatal; a refused publish fails by its deadline).
        case log(NATSError)
    }

    let settings: Settings
    private(set) var state = State.awaitingInfo
    /// `max_payload` from the server's INFO, when it said.
    private(set) var maxPayload: Int?

    init(settings: Settings) { self.settings = settings }

    mutating func received(_ message: NATSServerMessageParser.Message) -> Action {
        switch message {
        case .info(let info):
            guard state == .awaitingInfo else { return .none }
            return greet(info)
        case .ping:
            return .send("PONG\r\n")
        case .pong:
            switch state {
            case .awaitingPong:
                state = .connected
                return .connected
            case .connected:
                return .alive
            case .awaitingInfo, .failed:
                return .none
            }
        case .err(let text):
            let error = NATSError(code: .connectionFailed, message: "NATS at \(settings.server) answered -ERR \(text)")
            // During the handshake it ends the attempt (authorization).
            guard state == .connected else {
                state = .failed
                return .fail(error)
            }
            return .log(error)
        case .ok, .msg:
            return .none
        }
    }

    /// Answers the server's first INFO with CONNECT and a PING (whose PONG ends the handshake).
    private mutating func greet(_ info: String) -> Action {
        func flag(_ key: String) -> Bool { info.contains("\"\(key)\":true") }
        func failing(_ message: String) -> Action {
            state = .failed
            return .fail(NATSError(code: .connectionFailed, message: "NATS at \(settings.server) \(message)"))
        }
        if settings.wantsTLS {
            guard flag("tls_required") || flag("tls_available") else { return failing("offers no TLS") }
        } else if flag("tls_required") {
            return failing("requires TLS")
        }
        if info.contains("\"headers\":false") { return failing("does not support headers") }
        if let range = info.range(of: "\"max_payload\":") {
            maxPayload = Int(info[range.upperBound...].prefix { $0.isNumber })
        }
        var connect = #"{"verbose":false,"pedantic":false,"headers":true,"no_responders":true,"lang":"swift","version":"1","protocol":1"#
        connect += #","name":"# + Self.quoted(settings.name)
        if let user = settings.user { connect += #","user":"# + Self.quoted(user) }
        if let password = settings.password { connect += #","pass":"# + Self.quoted(password) }
        if let token = settings.token { connect += #","auth_token":"# + Self.quoted(token) }
        connect += "}"
        state = .awaitingPong
        let greeting = "CONNECT \(connect)\r\nPING\r\n"
        return settings.wantsTLS ? .upgradeAndSend(greeting) : .send(greeting)
    }

    static func quoted(_ text: String) -> String {
        var out = "\""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case _ where scalar.value < 0x20:
                let hex = String(scalar.value, radix: 16)
                out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out + "\""
    }
}
