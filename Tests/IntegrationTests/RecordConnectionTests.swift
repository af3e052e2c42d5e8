import Autonomous
import ClusterCore
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
import AutonomousTesting
#endif

/// The record API is answered on the event loop, everything else by Hummingbird's responder;
/// one connection may carry both. These tests speak raw HTTP/1.1 to see what a client sees.
@Suite("Record API connections: pipelining across both answer paths, keep-alive, close", .serialized)
struct RecordConnectionTests {
    static func graph() throws -> AppGraph {
        var app = AppBuilder(name: "Connections")
        _ = app.table("events")
        app.post("/echo") { request, _ in .json(try request.json()) }
        return try app.build()
    }

    @Test("Pipelined requests on one connection are answered in order, whichever path answers each")
    func pipelinedInOrder() async throws {
        try await withRunningApp(try Self.graph()) { app in
            let requests = [
                RawHTTP.post("/v1/tables/events/records", body: #"{"n":1}"#),
                "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
                RawHTTP.post("/v1/tables/events/records", body: #"{"n":"#),
                RawHTTP.post("/echo", body: #"{"echo":true}"#),
                RawHTTP.post("/v1/tables/events/records?source=test", body: "{\"n\":2}\n{\"n\":3}\n", contentType: "application/x-ndjson"),
                RawHTTP.post("/v1/tables/nope/records", body: "{}"),
                RawHTTP.post("/v1/tables/events/records", body: #"{"n":4}"#, headers: ["Idempotency-Key: pipelined-4"]),
            ]
            let connection = try RawHTTP(port: app.port)
            defer { connection.close() }
            try connection.send(requests.joined())
            let responses = try connection.read(count: requests.count)
            #expect(responses.map(\.status) == [202, 200, 400, 200, 202, 404, 202])
            #expect(responses[0].json["accepted"] == 1)
            #expect(responses[1].json["status"] == "ok")
            #expect(responses[2].json["error"]["code"] == "invalid_json")
            #expect(responses[3].json["echo"] == true)
            #expect(responses[4].json["accepted"] == 2)
            #expect(responses[5].json["error"]["field"] == "table")
            #expect(
                responses[6].json["ids"] == [.string(RecordIDGenerator.scopedKey("pipelined-4", tenant: "default", caller: "", path: ""))]
            )
            for response in responses {
                #expect(response.headers["content-type"] == "application/json")
                #expect(response.headers["date"] != nil)
            }
            // Keep-alive: the connection still serves.
            try connection.send(RawHTTP.post("/v1/tables/events/records", body: #"{"n":5}"#))
            #expect(try connection.read(count: 1).map(\.status) == [202])

            let records = try await app.records(in: "events", atLeast: 5, timeout: .seconds(5))
            #expect(records.compactMap { (try? JSONParser.parse($0.payload))?["n"].intValue }.sorted() == [1, 2, 3, 4, 5])
        }
    }

    @Test("Connection: close and HTTP/1.0 get their answer, then the server closes")
    func closeAfterAnswer() async throws {
        try await withRunningApp(try Self.graph()) { app in
            for request in [
                RawHTTP.post("/v1/tables/events/records", body: #"{"n":1}"#, headers: ["Connection: close"]),
                RawHTTP.post("/v1/tables/events/records", body: #"{"n":2}"#, version: "HTTP/1.0"),
            ] {
                let connection = try RawHTTP(port: app.port)
                defer { connection.close() }
                try connection.send(request)
                let responses = try connection.read(count: 1)
                #expect(responses.map(\.status) == [202])
                #expect(responses.first?.headers["connection"] == "close")
                #expect(try connection.readsEndOfStream(), "the server closes the connection")
            }
            let records = try await app.records(in: "events", atLeast: 2, timeout: .seconds(5))
            #expect(records.count == 2)
        }
    }

    @Test("Bytes that are not HTTP get a 400 after the answers already owed, then the connection closes")
    func malformedRequest() async throws {
        try await withRunningApp(try Self.graph()) { app in
            let connection = try RawHTTP(port: app.port)
            defer { connection.close() }
            try connection.send(RawHTTP.post("/v1/tables/events/records", body: #"{"n":1}"#) + "NOT HTTP AT ALL\r\n\r\n")
            let responses = try connection.read(count: 2)
            #expect(responses.map(\.status) == [202, 400])
            #expect(try connection.readsEndOfStream(), "the server closes the connection")
            // The server still serves.
            let other = try RawHTTP(port: app.port)
            defer { other.close() }
            try other.send(RawHTTP.post("/v1/tables/events/records", body: #"{"n":2}"#))
            #expect(try other.read(count: 1).map(\.status) == [202])
        }
    }

    @Test("A client that half-closes after its request still gets the answer")
    func halfClose() async throws {
        try await withRunningApp(try Self.graph()) { app in
            let connection = try RawHTTP(port: app.port)
            defer { connection.close() }
            try connection.send(RawHTTP.post("/v1/tables/events/records", body: #"{"n":1}"#))
            connection.shutdownWrite()
            let responses = try connection.read(count: 1)
            #expect(responses.map(\.status) == [202])
            let records = try await app.records(in: "events", atLeast: 1, timeout: .seconds(5))
            #expect(records.count == 1)
        }
    }

    @Test("A body over the limit is refused with 413 on either path and the connection stays usable")
    func bodyLimit() async throws {
        try await withRunningApp(try Self.graph(), configure: { $0.maxBodyBytes = 1024 }) { app in
            let connection = try RawHTTP(port: app.port)
            defer { connection.close() }
            // 5 KB is answered on the event loop, 50 KB (over its 32 KiB) by Hummingbird.
            let medium = "{\"x\":\"" + String(repeating: "a", count: 5_000) + "\"}"
            let big = "{\"x\":\"" + String(repeating: "a", count: 50_000) + "\"}"
            try connection.send(
                RawHTTP.post("/v1/tables/events/records", body: medium) + RawHTTP.post("/v1/tables/events/records", body: big)
                    + RawHTTP.post("/v1/tables/events/records", body: #"{"n":1}"#)
            )
            let responses = try connection.read(count: 3)
            #expect(responses.map(\.status) == [413, 413, 202])
            #expect(responses[0].json["error"]["code"] == "body_too_large")
            #expect(responses[1].json["error"]["code"] == "body_too_large")
            let records = try await app.records(in: "events", atLeast: 1, timeout: .seconds(5))
            #expect(records.map(\.text) == [#"{"n":1}"#])
        }
    }

    @Test("Expect: 100-continue gets 100 Continue before the body on either path; HTTP/1.0 gets none")
    func expectContinue() async throws {
        try await withRunningApp(try Self.graph()) { app in
            let connection = try RawHTTP(port: app.port)
            defer { connection.close() }
            // 1 KB is answered on the event loop, 50 KB by Hummingbird.
            for size in [1_000, 50_000] {
                let request = RawHTTP.post(
                    "/v1/tables/events/records",
                    body: #"{"x":""# + String(repeating: "a", count: size) + #""}"#,
                    headers: ["Expect: 100-continue"]
                )
                let split = try #require(request.range(of: "\r\n\r\n"))
                try connection.send(String(request[..<split.upperBound]))
                let interim = try connection.read(count: 1)
                #expect(interim.map(\.status) == [100], "\(size) bytes")
                try connection.send(String(request[split.upperBound...]))
                #expect(try connection.read(count: 1).map(\.status) == [202], "\(size) bytes")
            }
            let old = try RawHTTP(port: app.port)
            defer { old.close() }
            try old.send(
                RawHTTP.post("/v1/tables/events/records", body: #"{"n":1}"#, headers: ["Expect: 100-continue"], version: "HTTP/1.0")
            )
            #expect(try old.read(count: 1).map(\.status) == [202], "HTTP/1.0 ignores Expect")
            let records = try await app.records(in: "events", atLeast: 3, timeout: .seconds(5))
            #expect(records.count == 3)
        }
    }

    @Test("Large and chunked record batches are accepted whole")
    func largeBatches() async throws {
        try await withRunningApp(try Self.graph()) { app in
            let connection = try RawHTTP(port: app.port)
            defer { connection.close() }
            let lines = (0..<400).map { #"{"n":\#($0),"pad":"\#(String(repeating: "p", count: 100))"}"# }.joined(separator: "\n")
            var chunked =
                "POST /v1/tables/events/records HTTP/1.1\r\nHost: test\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n"
            let body = Array(lines.utf8)
            for start in stride(from: 0, to: body.count, by: 10_000) {
                let piece = body[start..<min(body.count, start + 10_000)]
                chunked += String(piece.count, radix: 16) + "\r\n" + String(decoding: piece, as: UTF8.self) + "\r\n"
            }
            chunked += "0\r\n\r\n"
            try connection.send(RawHTTP.post("/v1/tables/events/records", body: lines, contentType: "application/x-ndjson") + chunked)
            let responses = try connection.read(count: 2)
            #expect(responses.map(\.status) == [202, 202])
            #expect(responses.map { $0.json["accepted"] } == [400, 400])
            let records = try await app.records(in: "events", atLeast: 800, timeout: .seconds(10))
            #expect(records.count == 800)
        }
    }
}

/// A blocking HTTP/1.x client on one TCP connection, for tests that need to see the wire.
final class RawHTTP {
    struct Response {
        var status: Int
        var headers: [String: String]
        var body: [UInt8]
        var json: JSONValue { (try? JSONParser.parse(body)) ?? .null }
    }

    struct Failure: Error, CustomStringConvertible {
        var description: String
    }

    private let socket: Int32
    private var buffer: [UInt8] = []

    init(port: Int) throws {
        socket = Glibc.socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard socket >= 0 else { throw Failure(description: "socket() failed") }
        var timeout = timeval(tv_sec: 10, tv_usec: 0)
        setsockopt(socket, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(socket, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard connected == 0 else {
            Glibc.close(socket)
            throw Failure(description: "connect to port \(port) failed")
        }
    }

    static func post(
        _ path: String,
        body: String,
        contentType: String = "application/json",
        headers: [String] = [],
        version: String = "HTTP/1.1"
    ) -> String {
        var text = "POST \(path) \(version)\r\nHost: test\r\nContent-Type: \(contentType)\r\nContent-Length: \(body.utf8.count)\r\n"
        for header in headers { text += header + "\r\n" }
        return text + "\r\n" + body
    }

    func send(_ text: String) throws {
        try send(bytes: Array(text.utf8))
    }

    /// Sends raw bytes (which need not be UTF-8).
    func send(bytes: [UInt8]) throws {
        var sent = 0
        while sent < bytes.count {
            let n = bytes[sent...].withUnsafeBytes { Glibc.send(socket, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            guard n > 0 else { throw Failure(description: "send failed after \(sent) bytes") }
            sent += n
        }
    }

    /// Reads exactly `count` responses (each with a Content-Length body).
    func read(count: Int) throws -> [Response] {
        var responses: [Response] = []
        while responses.count < count {
            if let response = try parse() {
                responses.append(response)
            } else if try !fill() {
                throw Failure(description: "connection closed after \(responses.count) of \(count) responses")
            }
        }
        return responses
    }

    /// True when the server has closed the connection and nothing more arrives.
    func readsEndOfStream() throws -> Bool {
        try !fill() && buffer.isEmpty
    }

    func close() { Glibc.close(socket) }

    /// Tells the server nothing more will be sent (TCP half-close).
    func shutdownWrite() { _ = shutdown(socket, Int32(SHUT_WR)) }

    private func fill() throws -> Bool {
        var chunk = [UInt8](repeating: 0, count: 65536)
        let n = chunk.withUnsafeMutableBytes { recv(socket, $0.baseAddress, $0.count, 0) }
        if n < 0 { throw Failure(description: "no answer within 10 s (errno \(errno))") }
        buffer.append(contentsOf: chunk[0..<n])
        return n > 0
    }

    private func parse() throws -> Response? {
        let separator: [UInt8] = [13, 10, 13, 10]
        guard let end = buffer.indices.first(where: { buffer[$0...].starts(with: separator) }) else { return nil }
        let lines = String(decoding: buffer[0..<end], as: UTF8.self).components(separatedBy: "\r\n")
        let statusParts = lines[0].split(separator: " ")
        guard statusParts.count >= 2, let status = Int(statusParts[1]) else { throw Failure(description: "bad status line \(lines[0])") }
        var headers: [String: String] = [:]
        for line in lines.dropFirst() {
            guard let colon = line.firstIndex(of: ":") else { continue }
            headers[line[..<colon].lowercased()] = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
        }
        let length = Int(headers["content-length"] ?? "0") ?? 0
        let bodyStart = end + 4
        guard buffer.count >= bodyStart + length else { return nil }
        let body = Array(buffer[bodyStart..<(bodyStart + length)])
        buffer.removeFirst(bodyStart + length)
        return Response(status: status, headers: headers, body: body)
    }
}
