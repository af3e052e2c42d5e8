import NIOCore
import Testing

@testable import NATS

@Suite("The event-loop publisher's protocol, without a socket")
struct EventLoopPublisherProtocolTests {
    /// Feeds `chunks` one read at a time; returns what the parser made of them.
    static func parse(_ chunks: [String]) throws -> [String] {
        var parser = NATSServerMessageParser()
        var seen: [String] = []
        for chunk in chunks {
            var bytes = ByteBuffer(string: chunk)
            parser.append(&bytes)
            while let message = try parser.next() {
                switch message {
                case .info(let info): seen.append("info \(info)")
                case .msg(let subject, let status, let payload):
                    seen.append(
                        "msg \(String(decoding: subject, as: UTF8.self)) \(status.map(String.init) ?? "-") \(String(buffer: payload))"
                    )
                case .ping: seen.append("ping")
                case .pong: seen.append("pong")
                case .ok: seen.append("ok")
                case .err(let text): seen.append("err \(text)")
                }
            }
        }
        return seen
    }

    @Test("Messages split anywhere across reads come out whole, in order")
    func splitReads() throws {
        let stream =
            "INFO {\"max_payload\":1048576}\r\n+OK\r\nPING\r\nMSG _INBOX.x.7 1 5\r\nhello\r\nHMSG _INBOX.x.8 2 16 16\r\nNATS/1.0 503\r\n\r\n\r\nPONG\r\n-ERR 'Authorization Violation'\r\n"
        let whole = try Self.parse([stream])
        #expect(
            whole == [
                "info {\"max_payload\":1048576}", "ok", "ping", "msg _INBOX.x.7 - hello", "msg _INBOX.x.8 503 ", "pong",
                "err 'Authorization Violation'",
            ]
        )
        let bytes = Array(stream.utf8)
        for cut in stride(from: 1, to: bytes.count, by: 7) {
            let pieces = [String(decoding: bytes[..<cut], as: UTF8.self), String(decoding: bytes[cut...], as: UTF8.self)]
            #expect(try Self.parse(pieces) == whole, "cut at \(cut)")
        }
        // Byte by byte.
        #expect(try Self.parse(bytes.map { String(decoding: [$0], as: UTF8.self) }) == whole)
    }

    @Test("A stream that is not the NATS protocol is refused")
    func garbage() throws {
        #expect(throws: NATSError.self) { try Self.parse(["HTTP/1.1 200 OK\r\n"]) }
        #expect(throws: NATSError.self) { try Self.parse(["MSG x\r\n"]) }
        #expect(throws: NATSError.self) { try Self.parse(["HMSG x 1 9 4\r\n"]) }
        #expect(throws: NATSError.self) { try Self.parse([String(repeating: "a", count: NATSServerMessageParser.maxLine + 1)]) }
        #expect(try Self.parse(["MSG x 1 10\r\nonly"]).isEmpty, "an incomplete message waits")
    }

    static func settings(tls: Bool = false) -> PublisherHandshake.Settings {
        .init(name: "ingress \"a\"", user: "u", password: "p\\w", token: nil, wantsTLS: tls, server: "127.0.0.1:4222")
    }

    @Test("INFO is answered with CONNECT and PING; the PONG connects; later PONGs keep it alive")
    func handshake() {
        var connection = PublisherHandshake(settings: Self.settings())
        let greeting = connection.received(.info(#"{"server_id":"x","headers":true,"max_payload":65536}"#))
        guard case .send(let text) = greeting else {
            Issue.record("\(greeting)")
            return
        }
        #expect(text.hasPrefix("CONNECT {") && text.hasSuffix("}\r\nPING\r\n"))
        #expect(text.contains(#""name":"ingress \"a\"""#) && text.contains(#""user":"u""#) && text.contains(#""pass":"p\\w""#))
        #expect(text.contains(#""headers":true"#) && text.contains(#""no_responders":true"#))
        #expect(connection.maxPayload == 65536)
        #expect(connection.received(.info("{}")) == .none, "only the first INFO is answered")
        #expect(connection.received(.ping) == .send("PONG\r\n"))
        #expect(connection.received(.pong) == .connected)
        #expect(connection.state == .connected)
        #expect(connection.received(.pong) == .alive)
        guard case .log = connection.received(.err("'Permissions Violation'")) else {
            Issue.record("an error after the handshake is logged, not fatal")
            return
        }
    }

    @Test("TLS offered or required, headers, and -ERR during the handshake decide the attempt")
    func refusals() {
        func outcome(_ info: String, tls: Bool) -> PublisherHandshake.Action {
            var connection = PublisherHandshake(settings: Self.settings(tls: tls))
            return connection.received(.info(info))
        }
        func failed(_ action: PublisherHandshake.Action, saying text: String) -> Bool {
            if case .fail(let error) = action { return error.message.contains(text) }
            return false
        }
        #expect(failed(outcome(#"{"tls_required":true}"#, tls: false), saying: "requires TLS"))
        #expect(failed(outcome(#"{}"#, tls: true), saying: "offers no TLS"))
        #expect(failed(outcome(#"{"headers":false}"#, tls: false), saying: "does not support headers"))
        if case .upgradeAndSend(let text) = outcome(#"{"tls_required":true}"#, tls: true) {
            #expect(text.hasPrefix("CONNECT "))
        } else {
            Issue.record("a TLS client upgrades before it sends CONNECT")
        }
        var connection = PublisherHandshake(settings: Self.settings())
        _ = connection.received(.info("{}"))
        #expect(failed(connection.received(.err("'Authorization Violation'")), saying: "Authorization Violation"))
        #expect(connection.state == .failed)
        #expect(connection.received(.pong) == .none, "a failed attempt does not connect")
    }
}
