import Logging
import NIOCore
import NIOEmbedded
import NIOHTTP1
import Synchronization
import Testing

@testable import Ingress

/// Collects log entries (message and metadata) in memory.
final class CapturedLogs: Sendable {
    let entries = Mutex<[(level: Logger.Level, message: String, metadata: Logger.Metadata)]>([])

    var logger: Logger {
        Logger(label: "test") { _ in Handler(logs: self) }
    }

    struct Handler: LogHandler {
        let logs: CapturedLogs
        var metadata: Logger.Metadata = [:]
        var logLevel: Logger.Level = .trace
        subscript(metadataKey key: String) -> Logger.Metadata.Value? {
            get { metadata[key] }
            set { metadata[key] = newValue }
        }
        func log(event: LogEvent) {
            let merged = metadata.merging(event.metadata ?? [:]) { _, new in new }
            logs.entries.withLock { $0.append((event.level, "\(event.message)", merged)) }
        }
    }
}

@Suite("Access log")
struct AccessLogTests {
    func exchange(_ channel: EmbeddedChannel, _ head: HTTPRequestHead, body: String, status: HTTPResponseStatus) throws -> HTTPRequestHead {
        try channel.writeInbound(HTTPServerRequestPart.head(head))
        try channel.writeInbound(HTTPServerRequestPart.body(ByteBuffer(string: body)))
        try channel.writeInbound(HTTPServerRequestPart.end(nil))
        guard case .head(let forwarded) = try channel.readInbound(as: HTTPServerRequestPart.self) else {
            throw CancellationError()
        }
        while try channel.readInbound(as: HTTPServerRequestPart.self) != nil {}
        try channel.writeOutbound(HTTPServerResponsePart.head(HTTPResponseHead(version: .http1_1, status: status)))
        try channel.writeOutbound(HTTPServerResponsePart.body(.byteBuffer(ByteBuffer(string: #"{"accepted":1}"#))))
        try channel.writeOutbound(HTTPServerResponsePart.end(nil))
        return forwarded
    }

    @Test("One line per request with its id, method, path, status and sizes; never a header value, the query or the body")
    func lines() throws {
        let logs = CapturedLogs()
        let channel = EmbeddedChannel(handler: AccessLog(logger: logs.logger))
        var head = HTTPRequestHead(version: .http1_1, method: .POST, uri: "/v1/tables/orders/records?token=secret-in-query")
        head.headers.add(name: "Authorization", value: "Bearer aut_abcdefghijkl_0123456789012345678901234567890123456789")
        head.headers.add(name: "X-Request-Id", value: "req-42")
        let forwarded = try exchange(channel, head, body: #"{"card":"4111111111111111"}"#, status: .accepted)
        #expect(forwarded.headers["x-request-id"] == ["req-42"])
        var answer: HTTPResponseHead?
        while let part = try channel.readOutbound(as: HTTPServerResponsePart.self) {
            if case .head(let h) = part { answer = h }
        }
        #expect(answer?.headers["x-request-id"] == ["req-42"])

        // Without an id, one is made and given to both the request and the answer.
        let made = try exchange(channel, HTTPRequestHead(version: .http1_1, method: .GET, uri: "/healthz"), body: "", status: .ok)
        let madeID = try #require(made.headers["x-request-id"].first)
        #expect(AccessLog.isValid(madeID[...]))

        let entries = logs.entries.withLock { $0 }
        #expect(entries.count == 2)
        let first = try #require(entries.first)
        #expect(first.level == .notice)
        #expect(first.metadata["http.request_id"] == "req-42")
        #expect(first.metadata["http.method"] == "POST")
        #expect(first.metadata["http.path"] == "/v1/tables/orders/records")
        #expect(first.metadata["http.status"]?.description == "202")
        #expect(first.metadata["http.received_bytes"]?.description == "27")
        #expect(first.metadata["http.sent_bytes"]?.description == "14")
        #expect(entries[1].metadata["http.request_id"] == .string(madeID))
        let text = entries.map { "\($0.message) \($0.metadata)" }.joined()
        for secret in ["aut_abcdefghijkl", "secret-in-query", "4111111111111111", "Bearer"] {
            #expect(!text.contains(secret), "\(secret) reached the log")
        }
        _ = try channel.finish()
    }

    @Test("Without a logger the ids are still given, and nothing is logged")
    func idsOnly() throws {
        let channel = EmbeddedChannel(handler: AccessLog(logger: nil))
        var head = HTTPRequestHead(version: .http1_1, method: .GET, uri: "/readyz")
        head.headers.add(name: "X-Request-Id", value: String(repeating: "a", count: 129))
        let forwarded = try exchange(channel, head, body: "", status: .ok)
        #expect(forwarded.headers["x-request-id"].count == 1)
        #expect(forwarded.headers["x-request-id"].first?.count != 129, "an over-long id is replaced")
        _ = try channel.finish()
    }
}
