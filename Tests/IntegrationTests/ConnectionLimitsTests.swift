import Autonomous
import AutonomousTesting
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The ingress against slow, idle, numerous and credential-less clients (issue 21 #5). Each
/// test asserts outcomes (closed, 408, 503, 429), never how long something took.
@Suite("Ingress connection limits", .serialized)
struct ConnectionLimitsTests {
    static func graph() throws -> AppGraph {
        var app = AppBuilder(name: "Limits")
        let notes = app.table("notes")
        app.webhook("/hooks/open", into: notes, verify: .unauthenticated)
        return try app.build()
    }

    static func fast(_ configuration: inout RuntimeConfiguration) {
        configuration.idleTimeout = .seconds(1)
        configuration.bodyTimeout = .seconds(1)
    }

    /// Before the fix 150 idle or slow connections stayed open for as long as they liked.
    @Test("Idle connections, trickled headers and trickled bodies are cut off (a trickled body gets 408); nothing of theirs is stored")
    func slowClients() async throws {
        try await withRunningApp(try Self.graph(), configure: Self.fast) { app in
            let idle = try RawHTTP(port: app.port)
            defer { idle.close() }
            #expect(try idle.readsEndOfStream(), "a connection that sends nothing is closed")

            let slowHead = try RawHTTP(port: app.port)
            defer { slowHead.close() }
            try slowHead.send("POST /v1/tables/notes/records HTTP/1.1\r\nHost: test\r\n")
            #expect(try slowHead.readsEndOfStream(), "a head that never ends is cut off")

            let slowBody = try RawHTTP(port: app.port)
            defer { slowBody.close() }
            try slowBody.send(
                "POST /v1/tables/notes/records HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"a\":"
            )
            let timedOut = try slowBody.read(count: 1)
            #expect(timedOut.first?.status == 408 && timedOut.first?.json["error"]["code"] == "request_timeout")
            #expect(try slowBody.readsEndOfStream())

            // A kept-alive connection serves, then is closed once idle.
            let kept = try RawHTTP(port: app.port)
            defer { kept.close() }
            try kept.send(RawHTTP.post("/v1/tables/notes/records", body: #"{"kept":true}"#))
            #expect(try kept.read(count: 1).first?.status == 202)
            #expect(try kept.readsEndOfStream())

            try await Task.sleep(for: .milliseconds(300))
            let stored = try await app.records(in: "notes", atLeast: 1, timeout: .seconds(3))
            #expect(stored.count == 1 && stored.first?.text.contains("kept") == true)
        }
    }

    @Test("Connections over the cap get 503 and are closed; once others close, new ones are served")
    func connectionCap() async throws {
        try await withRunningApp(try Self.graph(), configure: { $0.maxConnections = 4 }) { app in
            var open: [RawHTTP] = []
            defer { for connection in open { connection.close() } }
            var refused: RawHTTP.Response?
            for _ in 0..<5 {
                let connection = try RawHTTP(port: app.port)
                open.append(connection)
                try connection.send(RawHTTP.post("/v1/tables/notes/records", body: #"{"n":1}"#))
                let answer = try connection.read(count: 1)[0]
                if answer.status == 503 {
                    refused = answer
                    #expect(try connection.readsEndOfStream(), "a refused connection is closed")
                    break
                }
                #expect(answer.status == 202)
            }
            let refusal = try #require(refused, "five connections were taken with a cap of four")
            #expect(refusal.json["error"]["code"] == "overloaded" && refusal.headers["retry-after"] == "1")
            for connection in open { connection.close() }
            open = []
            #expect(
                try await eventually(timeout: .seconds(10)) {
                    (try? await app.post("/v1/tables/notes/records", body: #"{"n":2}"#).status) == 202
                }
            )
        }
    }

    /// Before the fix 50 bodies of 6 MB each were all held at once.
    @Test("Request bodies held in memory are bounded: past the budget a request gets 503 overloaded and stores nothing")
    func bodyBudget() async throws {
        try await withRunningApp(
            try Self.graph(),
            configure: {
                $0.maxBodyBytes = 64 * 1024
                $0.maxBufferedBodyBytes = 64 * 1024
            }
        ) { app in
            let record = #"{"text":"\#(String(repeating: "x", count: 40_000))"}"#
            // A body that is still arriving holds its declared size.
            let holder = try RawHTTP(port: app.port)
            defer { holder.close() }
            let full = RawHTTP.post("/v1/tables/notes/records", body: record)
            let split = full.index(full.startIndex, offsetBy: full.utf8.count - 100)
            try holder.send(String(full[..<split]))
            var refused = false
            var accepted = 0
            for _ in 0..<50 where !refused {
                let answer = try await app.post("/v1/tables/notes/records", body: record)
                if answer.status == 503 {
                    #expect(answer.body["error"]["code"] == "overloaded")
                    refused = true
                } else {
                    #expect(answer.status == 202)
                    accepted += 1
                    try await Task.sleep(for: .milliseconds(50))
                }
            }
            #expect(refused, "a second 40 KB body while one is held passes a 64 KB budget")
            try holder.send(String(full[split...]))
            #expect(try holder.read(count: 1).first?.status == 202)
            // The budget is given back: the same request goes through now.
            #expect(try await app.post("/v1/tables/notes/records", body: record).status == 202)
            let stored = try await app.records(in: "notes", atLeast: accepted + 2, timeout: .seconds(5))
            #expect(stored.count == accepted + 2)
        }
    }

    /// Before the fix a client could try API keys, or flood an open webhook, as fast as it
    /// liked from one address.
    @Test(
        "An address that keeps sending refused keys gets 429 on both answer paths until its bucket refills; open webhooks are limited per address"
    )
    func perAddressLimit() async throws {
        let clock = ManualClock()
        try await withRunningApp(
            try Self.graph(),
            configure: {
                $0.requireAPIKey = true
                $0.unauthenticatedRequestsPerAddress = 5  // a burst of 10
                $0.rateLimitClock = { clock.now }
                $0.adminPort = 0
                $0.adminToken = TenancyTests.adminToken
            }
        ) { app in
            let key = try #require(try await app.admin("POST", "/v1/admin/tenants/default/keys").body["key"].stringValue)
            let wrong = [("Authorization", "Bearer aut_AAAAAAAAAAAA_" + String(repeating: "B", count: 40))]
            var statuses: [Int] = []
            for i in 0..<12 {
                // Small bodies are answered on the event loop, large ones by Hummingbird: both count.
                let body = i % 2 == 0 ? #"{"n":1}"# : #"{"pad":"\#(String(repeating: "p", count: 40_000))"}"#
                statuses.append(try await app.post("/v1/tables/notes/records", body: body, headers: wrong).status)
            }
            #expect(statuses == Array(repeating: 401, count: 10) + [429, 429], "\(statuses)")
            let blocked = try await app.post("/v1/tables/notes/records", body: #"{"n":1}"#, headers: [("Authorization", "Bearer \(key)")])
            #expect(blocked.status == 429 && blocked.body["error"]["code"] == "too_many_requests", "the address waits, whatever it sends")
            clock.advance(.seconds(1))
            let allowed = try await app.post("/v1/tables/notes/records", body: #"{"n":1}"#, headers: [("Authorization", "Bearer \(key)")])
            #expect(allowed.status == 202, "\(allowed)")

            clock.advance(.seconds(10))
            var hooks: [Int] = []
            for _ in 0..<11 { hooks.append(try await app.post("/hooks/open", body: #"{"n":2}"#).status) }
            #expect(hooks == Array(repeating: 200, count: 10) + [429], "\(hooks)")
        }
    }
}
