import Autonomous
import AutonomousTesting
import ClusterCore
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// A seeded generator, so a failing run can be replayed (the seed is printed).
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// 10,000+ generated malformed requests against a running ingress (issue 21): every answer is
/// a 4xx with a JSON error body (a request that happens to be valid may get its 2xx), nothing
/// crashes, and every record that reached a stream is a valid JSON object of its table.
@Suite("Fuzzing the ingress", .serialized)
struct FuzzTests {
    static let count = 10_000

    static func graph() throws -> AppGraph {
        var app = AppBuilder(name: "Fuzz")
        _ = app.table("readings", of: Reading.self)
        _ = app.table("events")
        app.webhook("/hooks/open", into: app.table("hooked"), verify: .unauthenticated)
        return try app.build()
    }

    /// One generated request: its bytes, what it is, and whether it may be accepted.
    struct Case {
        var kind: String
        var bytes: [UInt8]
        var mayBeValid = false
        /// An HTTP-level error: the server answers 400 and closes the connection.
        var malformedHTTP = false
    }

    static func request(
        _ path: String,
        method: String = "POST",
        body: [UInt8],
        contentType: String? = "application/json",
        headers: [String] = [],
        contentLength: Int? = nil
    ) -> [UInt8] {
        var head = "\(method) \(path) HTTP/1.1\r\nHost: fuzz\r\n"
        if let contentType { head += "Content-Type: \(contentType)\r\n" }
        head += "Content-Length: \(contentLength ?? body.count)\r\n"
        for header in headers { head += header + "\r\n" }
        return Array((head + "\r\n").utf8) + body
    }

    static func generate(_ rng: inout SplitMix64) -> Case {
        let valid = Array(#"{"sensor":"s-1","value":21.5}"#.utf8)
        func pick<T>(_ options: [T]) -> T { options[Int(rng.next() % UInt64(options.count))] }
        let table = pick(["/v1/tables/readings/records", "/v1/tables/events/records", "/hooks/open"])
        switch rng.next() % 14 {
        case 0:  // truncated JSON
            let cut = Int(rng.next() % UInt64(valid.count - 1))
            return Case(kind: "truncated", bytes: request(table, body: Array(valid[..<cut])))
        case 1:  // flipped bytes: mostly invalid, sometimes still valid JSON
            var body = valid
            for _ in 0..<(1 + rng.next() % 3) { body[Int(rng.next() % UInt64(body.count))] = UInt8(truncatingIfNeeded: rng.next()) }
            return Case(kind: "flipped", bytes: request(table, body: body), mayBeValid: true)
        case 2:  // huge numbers
            let number = pick([
                "1e999", "-1e999", "123456789012345678901234567890", "9223372036854775808", "0.0000000000000000000000001e-400",
            ])
            return Case(
                kind: "huge-number",
                bytes: request(table, body: Array(#"{"sensor":"s","value":\#(number)}"#.utf8)),
                mayBeValid: true
            )
        case 3:  // deep nesting
            let depth = 200 + Int(rng.next() % 2000)
            let open = pick(["[", "{\"a\":"])
            let close = open == "[" ? "]" : "}"
            let body = "{\"n\":" + String(repeating: open, count: depth) + "1" + String(repeating: close, count: depth) + "}"
            return Case(kind: "deep", bytes: request(table, body: Array(body.utf8)), mayBeValid: depth <= 255)
        case 4:  // invalid UTF-8 in a string
            let bad: [[UInt8]] = [
                [0xC3, 0x28], [0xA0, 0xA1], [0xE2, 0x28, 0xA1], [0xF0, 0x28, 0x8C, 0x28], [0xFF], [0xED, 0xA0, 0x80],
            ]
            let body = Array(#"{"sensor":""#.utf8) + pick(bad) + Array(#"","value":1}"#.utf8)
            return Case(kind: "bad-utf8", bytes: request(table, body: body))
        case 5:  // NUL bytes in the body
            var body = valid
            body.insert(0, at: Int(rng.next() % UInt64(body.count)))
            return Case(kind: "nul", bytes: request(table, body: body))
        case 6:  // duplicate keys
            return Case(kind: "duplicate-key", bytes: request(table, body: Array(#"{"sensor":"a","value":1,"value":2}"#.utf8)))
        case 7:  // repeated headers the ingress reads
            let header = pick(["Authorization: Bearer aut_AAAAAAAAAAAA_" + String(repeating: "B", count: 40), "Idempotency-Key: k-1"])
            return Case(kind: "repeated-header", bytes: request(table, body: valid, headers: [header, header]))
        case 8:  // wrong or missing content type
            let type = pick(["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "application/xml"])
            return Case(kind: "content-type", bytes: request(table, body: valid, contentType: type))
        case 9:  // wrong methods and unknown paths
            let method = pick(["GET", "PUT", "DELETE", "PATCH", "OPTIONS"])
            let path = pick([
                table, "/v1/tables/../records", "/v1/tables/%00/records", "/v1/tables/nope/records",
                "/v1/tenants/x/tables/readings/records", "/nothing",
            ])
            return Case(
                kind: "method-path",
                bytes: request(path, method: method, body: valid),
                // A GET of a table's records path reads it (from its stream here).
                mayBeValid: path.hasPrefix("/v1/tenants/x") == false && method == "POST"
                    || method == "GET" && path == table && table.hasPrefix("/v1/tables/")
            )
        case 10:  // oversized bodies (the test's limit is 64 KiB)
            let body = Array(#"{"sensor":""#.utf8) + [UInt8](repeating: UInt8(ascii: "x"), count: 70_000) + Array(#"","value":1}"#.utf8)
            return Case(kind: "oversized", bytes: request(table, body: body))
        case 11:  // malformed idempotency keys and API keys
            let header = pick([
                "Idempotency-Key: has space", "Idempotency-Key: " + String(repeating: "k", count: 200), "Authorization: Basic Zm9vOmJhcg==",
                "Authorization: Bearer short",
            ])
            // An open webhook reads no Authorization header: a malformed one is no error there.
            let ignored = table == "/hooks/open" && header.hasPrefix("Authorization")
            return Case(kind: "bad-key", bytes: request(table, body: valid, headers: [header]), mayBeValid: ignored)
        case 12:  // not one object
            let body = pick(["[]", "42", "\"text\"", "null", "[1,2]", "{}{}", "{} x", "", "\n\n"])
            return Case(
                kind: "shape",
                bytes: request(table, body: Array(body.utf8), contentType: pick(["application/json", "application/x-ndjson"])),
                mayBeValid: body == "{}{}"
            )
        default:  // HTTP-level garbage: the parser refuses it
            let garbage = pick([
                "POST /v1/tables/events/records HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\n{}",
                "POST /v1/tables/events/records HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
                "POST /v1/tables/events/records HTTP/1.1\r\nBad Header Line\r\n\r\n",
                "GARBAGE\r\n\r\n",
                "POST /v1/tables/events/records HTTP/9.9\r\n\r\n",
            ])
            return Case(kind: "http", bytes: Array(garbage.utf8), malformedHTTP: true)
        }
    }

    /// Sends the generated requests over keep-alive connections; returns the answers' statuses,
    /// the kinds sent and every problem seen.
    static func send(seed: UInt64, port: Int) throws -> (statuses: [Int: Int], kinds: [String: Int], problems: [String]) {
        var rng = SplitMix64(state: seed)
        var statuses: [Int: Int] = [:]
        var kinds: [String: Int] = [:]
        var problems: [String] = []
        var connection = try RawHTTP(port: port)
        defer { connection.close() }
        for _ in 0..<Self.count {
            let fuzzCase = Self.generate(&rng)
            kinds[fuzzCase.kind, default: 0] += 1
            let response: RawHTTP.Response
            do {
                try connection.send(bytes: fuzzCase.bytes)
                response = try connection.read(count: 1)[0]
            } catch {
                problems.append("\(fuzzCase.kind): no answer (\(error))")
                connection.close()
                connection = try RawHTTP(port: port)
                continue
            }
            statuses[response.status, default: 0] += 1
            let closes = response.headers["connection"]?.lowercased() == "close" || fuzzCase.malformedHTTP
            switch response.status {
            case 200..<300 where fuzzCase.mayBeValid:
                break
            case 400..<500:
                if response.json["error"]["code"].stringValue == nil {
                    problems.append(
                        "\(fuzzCase.kind): \(response.status) without a JSON error: \(String(decoding: response.body.prefix(200), as: UTF8.self))"
                    )
                }
            default:
                problems.append("\(fuzzCase.kind): status \(response.status) \(String(decoding: response.body.prefix(200), as: UTF8.self))")
            }
            if closes {
                connection.close()
                connection = try RawHTTP(port: port)
            }
        }
        return (statuses, kinds, problems)
    }

    @Test("10,000 generated malformed requests: 4xx with a JSON error each, no crash, nothing invalid in a stream")
    func fuzz() async throws {
        let seed = UInt64(ProcessInfo.processInfo.environment["FUZZ_SEED"] ?? "") ?? UInt64(Date().timeIntervalSince1970)
        try await withRunningApp(
            try Self.graph(),
            configure: {
                $0.maxBodyBytes = 64 * 1024
                $0.unauthenticatedRequestsPerAddress = 1_000_000  // refused keys are part of the test
            }
        ) { app in
            // Blocking socket I/O runs on a thread of its own, not on the concurrency pool the
            // ingress in this process answers with.
            let port = app.port
            let (statuses, kinds, problems) = try await withCheckedThrowingContinuation { continuation in
                Thread.detachNewThread {
                    continuation.resume(with: Result { try Self.send(seed: seed, port: port) })
                }
            }
            print(
                "fuzz: seed \(seed), \(Self.count) requests; kinds \(kinds.sorted { $0.key < $1.key }); statuses \(statuses.sorted { $0.key < $1.key })"
            )
            #expect(problems.isEmpty, "\(problems.count) problems, first: \(problems.prefix(5)) (FUZZ_SEED=\(seed))")
            #expect(statuses.keys.allSatisfy { $0 < 500 }, "no 5xx")

            // Still serving, and every stored record is a valid object of its table.
            #expect(try await app.post("/v1/tables/readings/records", body: #"{"sensor":"after","value":1}"#).status == 202)
            let readings = try await app.records(in: "readings", atLeast: 1, timeout: .seconds(5))
            for table in ["events", "hooked"] {
                let stored = (try? await app.records(in: table, atLeast: 0, timeout: .seconds(2))) ?? []
                for record in stored {
                    let valid = record.payload.withUnsafeBufferPointer { (try? JSONParser.validate($0)) }
                    if case .object = valid {} else { Issue.record("\(table) holds an invalid record: \(record.text.prefix(200))") }
                }
            }
            for record in readings {
                #expect(
                    (try? JSONDecoder().decode(Reading.self, from: Data(record.payload))) != nil,
                    "readings holds \(record.text.prefix(200))"
                )
            }
        }
    }
}
