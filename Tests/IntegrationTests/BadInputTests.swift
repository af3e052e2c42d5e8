import Autonomous
import AutonomousTesting
import ClusterCore
import Crypto
import Foundation
import NATS
import Testing

@Suite("Bad input gets a 4xx with a JSON error and loses nothing already accepted", .serialized)
struct BadInputTests {
    static func graph() throws -> AppGraph {
        var app = AppBuilder(name: "Strict")
        let readings = app.table("readings", of: Reading.self)
        _ = app.table("events")
        app.webhook("/signed", into: readings, verify: .slack(signingSecret: .secret("SIGNING_SECRET")))
        app.webhook("/github", into: app.table("pushes"), verify: .github(secret: .secret("GITHUB_SECRET")))
        app.post("/echo") { request, _ in .json(try request.json()) }
        return try app.build()
    }

    static let environment = ["SIGNING_SECRET": "s3cr3t", "GITHUB_SECRET": "It's a Secret to Everybody"]

    func expectError(
        _ response: (status: Int, body: JSONValue),
        status: Int,
        code: String,
        field: String? = nil,
        sourceLocation: SourceLocation = #_sourceLocation
    ) {
        #expect(response.status == status, "status", sourceLocation: sourceLocation)
        #expect(response.body["error"]["code"].stringValue == code, "code in \(response.body)", sourceLocation: sourceLocation)
        #expect(response.body["error"]["message"].stringValue?.isEmpty == false, "message", sourceLocation: sourceLocation)
        if let field {
            #expect(response.body["error"]["field"].stringValue == field, "field in \(response.body)", sourceLocation: sourceLocation)
        }
    }

    @Test("Each kind of bad request is refused with its own status and error body")
    func badRequests() async throws {
        try await withRunningApp(try Self.graph(), environment: Self.environment, configure: { $0.maxBodyBytes = 4096 }) { app in
            // Accepted first: it must survive everything below.
            let good = try await app.post("/v1/tables/events/records", body: #"{"keep":"me"}"#)
            #expect(good.status == 202)

            expectError(
                try await app.post("/v1/tables/events/records", body: #"{"a": 1,"#),
                status: 400,
                code: "invalid_json",
                field: "body"
            )
            expectError(
                try await app.post("/v1/tables/events/records", body: "\"just a string\""),
                status: 422,
                code: "not_an_object",
                field: "body"
            )
            expectError(
                try await app.post("/v1/tables/events/records", body: #"[{"a":1}, 42]"#),
                status: 422,
                code: "not_an_object",
                field: "records[1]"
            )
            expectError(
                try await app.post("/v1/tables/events/records", body: #"{"amount":1,"amount":1000000}"#),
                status: 422,
                code: "duplicate_key",
                field: "body"
            )
            expectError(
                try await app.post(
                    "/v1/tables/events/records",
                    body: "{\"ok\":1}\n{\"a\":{\"b\":1,\"b\":2}}",
                    contentType: "application/x-ndjson"
                ),
                status: 422,
                code: "duplicate_key",
                field: "line 2"
            )
            expectError(try await app.post("/v1/tables/nope/records", body: "{}"), status: 404, code: "unknown_table", field: "table")
            expectError(
                try await app.post("/v1/tables/Bad.Name/records", body: "{}"),
                status: 400,
                code: "invalid_table_name",
                field: "table"
            )
            let big = "{\"x\":\"" + String(repeating: "a", count: 8000) + "\"}"
            expectError(try await app.post("/v1/tables/events/records", body: big), status: 413, code: "body_too_large", field: "body")
            expectError(
                try await app.post("/v1/tables/events/records", body: "{\"a\":1}\n{oops}\n", contentType: "application/x-ndjson"),
                status: 400,
                code: "invalid_json",
                field: "line 2"
            )
            expectError(
                try await app.post("/v1/tables/events/records", body: "{\"a\":1}\n[1]\n", contentType: "application/x-ndjson"),
                status: 422,
                code: "not_an_object",
                field: "line 2"
            )
            expectError(try await app.post("/v1/tables/events/records", body: "[]"), status: 400, code: "no_records", field: "body")
            expectError(
                try await app.post("/v1/tables/events/records", body: "{}", contentType: "text/plain"),
                status: 415,
                code: "unsupported_media_type",
                field: "Content-Type"
            )
            expectError(
                try await app.post("/v1/tables/events/records", body: "{}", headers: [("Idempotency-Key", "no spaces allowed")]),
                status: 400,
                code: "invalid_idempotency_key",
                field: "Idempotency-Key"
            )
            // Typed table: the record must decode as a Reading.
            expectError(
                try await app.post("/v1/tables/readings/records", body: #"{"sensor":"s1"}"#),
                status: 422,
                code: "invalid_record",
                field: "value"
            )
            // Every missing field is named at once.
            let bare = try await app.post("/v1/tables/readings/records", body: #"{"note":"x"}"#)
            expectError(bare, status: 422, code: "invalid_record", field: "sensor")
            #expect(
                bare.body["error"]["message"].stringValue?.contains("missing required fields 'sensor', 'value'") == true,
                "\(bare.body)"
            )
            expectError(
                try await app.post("/v1/tables/readings/records", body: #"[{"sensor":"s1","value":1},{"sensor":"s2","value":"high"}]"#),
                status: 422,
                code: "invalid_record",
                field: "records[1].value"
            )
            expectError(try await app.post("/echo", body: "{nope"), status: 400, code: "invalid_json", field: "body")
            expectError(try await app.post("/nowhere", body: "{}"), status: 404, code: "not_found")
            expectError(try await app.get("/echo"), status: 405, code: "method_not_allowed")
            // Webhook signatures.
            expectError(try await app.post("/signed", body: #"{"sensor":"s","value":1}"#), status: 401, code: "invalid_signature")
            let body = #"{"sensor":"s","value":1}"#
            let timestamp = String(Int(Date().timeIntervalSince1970))
            expectError(
                try await app.post(
                    "/signed",
                    body: body,
                    headers: [("X-Slack-Request-Timestamp", timestamp), ("X-Slack-Signature", "v0=deadbeef")]
                ),
                status: 401,
                code: "invalid_signature",
                field: "X-Slack-Signature"
            )
            let signature = WebhookVerification.slackSignature(secret: "s3cr3t", timestamp: timestamp, body: Array(body.utf8))
            let signed = try await app.post(
                "/signed",
                body: body,
                headers: [("X-Slack-Request-Timestamp", timestamp), ("X-Slack-Signature", signature)]
            )
            #expect(signed.status == 200)

            // Nothing that was refused reached a table; what was accepted is there once.
            let events = try await app.records(in: "events", atLeast: 1, timeout: .seconds(5))
            #expect(events.map(\.text) == [#"{"keep":"me"}"#])
            let readings = try await app.records(in: "readings", atLeast: 1, timeout: .seconds(5))
            #expect(readings.count == 1)
        }
    }

    /// A body of `count` records, one JSON array.
    static func batch(_ count: Int) -> String {
        "[" + (0..<count).map { #"{"n":\#($0)}"# }.joined(separator: ",") + "]"
    }

    @Test("One request cannot go past the in-flight limit: records per request are capped (413), on both answer paths")
    func recordsPerRequest() async throws {
        try await withRunningApp(
            try Self.graph(),
            environment: Self.environment,
            configure: {
                $0.maxInFlightRecords = 100
                $0.maxBodyBytes = 1 << 20
            }
        ) { app in
            // 150 records (about 1.4 KB, the event-loop path) and 5,000 (about 60 KB, Hummingbird's)
            // against a limit of 100 in flight: refused, naming the limit, nothing stored.
            for count in [150, 5000] {
                let refused = try await app.post("/v1/tables/events/records", body: Self.batch(count))
                expectError(refused, status: 413, code: "too_many_records", field: "body")
                #expect(refused.body["error"]["message"].stringValue?.contains("100") == true, "\(refused.body)")
            }
            let accepted = try await app.post("/v1/tables/events/records", body: Self.batch(100))
            #expect(accepted.status == 202 && accepted.body["accepted"] == 100)
            let events = try await app.records(in: "events", atLeast: 100, timeout: .seconds(5))
            #expect(events.count == 100)
        }
        // The per-request cap on its own, below the in-flight limit.
        try await withRunningApp(try Self.graph(), environment: Self.environment, configure: { $0.maxRecordsPerRequest = 10 }) { app in
            expectError(
                try await app.post("/v1/tables/events/records", body: Self.batch(11)),
                status: 413,
                code: "too_many_records",
                field: "body"
            )
            #expect(try await app.post("/v1/tables/events/records", body: Self.batch(10)).status == 202)
        }
    }

    @Test("A repeated Authorization or Idempotency-Key header is refused (400) on both answer paths")
    func repeatedHeaders() async throws {
        try await withRunningApp(try Self.graph(), environment: Self.environment) { app in
            // 2 records take the event-loop path; 3,000 (about 36 KB) Hummingbird's.
            for body in [Self.batch(2), Self.batch(3000)] {
                expectError(
                    try await app.post(
                        "/v1/tables/events/records",
                        body: body,
                        headers: [("Idempotency-Key", "first"), ("Idempotency-Key", "second")]
                    ),
                    status: 400,
                    code: "repeated_header",
                    field: "Idempotency-Key"
                )
                expectError(
                    try await app.post(
                        "/v1/tables/events/records",
                        body: body,
                        headers: [
                            ("Authorization", "Bearer aut_aaaaaaaaaaaa_bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"),
                            ("Authorization", "Bearer other"),
                        ]
                    ),
                    status: 400,
                    code: "repeated_header",
                    field: "Authorization"
                )
            }
            // A route's idempotency key too.
            expectError(
                try await app.post("/echo", body: "{}", headers: [("Idempotency-Key", "a"), ("Idempotency-Key", "b")]),
                status: 400,
                code: "repeated_header",
                field: "Idempotency-Key"
            )
        }
    }

    @Test("A record larger than the NATS server's max payload is refused with 413 naming the limit, not a retryable 503")
    func recordOverMaxPayload() async throws {
        try await withRunningApp(try Self.graph(), environment: Self.environment) { app in
            // nats-server's default max payload is 1 MiB; the body limit (16 MiB) lets it through.
            let big = #"{"blob":""# + String(repeating: "x", count: 1_200_000) + #""}"#
            let refused = try await app.post("/v1/tables/events/records", body: big)
            expectError(refused, status: 413, code: "record_too_large", field: "body")
            #expect(refused.body["error"]["message"].stringValue?.contains("1048576") == true, "\(refused.body)")
            // In a batch, the record is named by its position.
            let batch = "[{\"small\":1}," + big + "]"
            expectError(
                try await app.post("/v1/tables/events/records", body: batch),
                status: 413,
                code: "record_too_large",
                field: "records[1]"
            )
            #expect(try await app.post("/v1/tables/events/records", body: #"{"small":true}"#).status == 202)
        }
    }

    @Test("An idempotency key makes a retried request a no-op, and the answer says it was a duplicate")
    func idempotencyKey() async throws {
        try await withRunningApp(try Self.graph(), environment: Self.environment) { app in
            let base = RecordIDGenerator.scopedKey("order-77", tenant: "default", caller: "", path: "")
            for attempt in 0..<3 {
                let response = try await app.post(
                    "/v1/tables/events/records",
                    body: #"[{"n":1},{"n":2}]"#,
                    headers: [("Idempotency-Key", "order-77")]
                )
                #expect(response.status == 202)
                #expect(response.body["ids"] == [.string(base + "-0"), .string(base + "-1")])
                #expect(response.body["duplicate"] == (attempt == 0 ? .null : true), "\(response.body)")
                #expect(response.body["duplicates"] == (attempt == 0 ? .null : 2))
            }
            let events = try await app.records(in: "events", atLeast: 2, timeout: .seconds(5))
            #expect(events.count == 2)
        }
    }

    /// Before the fix server ids were a per-process prefix and a counter, and a client key was
    /// the record id as sent: a client that sent the next server id as its key made the next
    /// key-less record vanish (JetStream took it for a duplicate; its sender still got 202).
    @Test("A client cannot claim ids the server gives others: server ids are unguessable and client keys scoped")
    func claimedIDs() async throws {
        try await withRunningApp(try Self.graph(), environment: Self.environment) { app in
            var seen: [String] = []
            for n in 0..<3 {
                let victim = try await app.post("/v1/tables/events/records", body: #"{"victim":\#(n)}"#)
                let id = try #require(victim.body["ids"][0].stringValue)
                #expect(id.hasPrefix("s") && id.count == 25, "\(id)")
                seen.append(id)
                // The attacker sends the id just seen, and guesses at the next, as keys. The
                // guess must change the last character: an id ending in "a" (one in 32) made it
                // repeat the first key, a true duplicate of this client's own, and CI failed.
                let guess = String(id.dropLast()) + (id.hasSuffix("a") ? "b" : "a")
                for claimed in [id, guess, "r\(n)"] {
                    let attack = try await app.post(
                        "/v1/tables/events/records",
                        body: #"{"attacker":true}"#,
                        headers: [("Idempotency-Key", claimed)]
                    )
                    #expect(attack.status == 202 && attack.body["ids"][0].stringValue?.hasPrefix("k") == true)
                    #expect(attack.body["duplicate"] == .null, "a client key never matches a server id")
                }
            }
            #expect(Set(seen).count == 3)
            let events = try await app.records(in: "events", atLeast: 3 + 9, timeout: .seconds(5))
            #expect(events.filter { $0.text.contains("victim") }.count == 3, "every victim record is stored")
        }
    }

    /// Before the fix each delivery got a new id: Slack's retries (the last five minutes after
    /// the first) and replays of a captured request were stored again.
    @Test("A signed Slack delivery is stored once however often it is retried or replayed: its event_id is its record id")
    func slackRetriesStoredOnce() async throws {
        try await withRunningApp(try Self.graph(), environment: Self.environment) { app in
            let body = #"{"sensor":"s1","value":1.5,"event_id":"Ev0PV52K21","type":"event_callback"}"#
            var answers: [(status: Int, body: JSONValue)] = []
            for delay in [0, 1] {
                // Each retry is signed afresh, with its own timestamp.
                let timestamp = String(Int(Date().timeIntervalSince1970) - delay)
                let signature = WebhookVerification.slackSignature(secret: "s3cr3t", timestamp: timestamp, body: Array(body.utf8))
                answers.append(
                    try await app.post(
                        "/signed",
                        body: body,
                        headers: [
                            ("X-Slack-Request-Timestamp", timestamp), ("X-Slack-Signature", signature), ("X-Slack-Retry-Num", "\(delay)"),
                        ]
                    )
                )
            }
            #expect(answers.map(\.status) == [200, 200])
            #expect(answers[0].body["id"] == answers[1].body["id"])
            #expect(answers[0].body["duplicate"] == .null && answers[1].body["duplicate"] == true, "\(answers)")
            let stored = try await app.records(in: "readings", atLeast: 1, timeout: .seconds(3))
            #expect(stored.count == 1)
            // The table's stream remembers ids as long as a signed timestamp is accepted.
            let window = try await app.connection.streamState("AUT_DEFAULT_tbl_readings")?.duplicateWindow
            #expect(window == .seconds(360))
        }
    }

    @Test("A GitHub delivery is verified by its signature and stored once however often it is redelivered")
    func githubRedelivery() async throws {
        try await withRunningApp(try Self.graph(), environment: Self.environment) { app in
            let body = #"{"ref":"refs/heads/main","after":"0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c"}"#
            var hmac = HMAC<SHA256>(key: SymmetricKey(data: Array("It's a Secret to Everybody".utf8)))
            hmac.update(data: Array(body.utf8))
            let signature = "sha256=" + hmac.finalize().map { String(format: "%02x", $0) }.joined()
            let headers = [("X-Hub-Signature-256", signature), ("X-GitHub-Delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958")]
            let first = try await app.post("/github", body: body, headers: headers)
            let again = try await app.post("/github", body: body, headers: headers)
            #expect(first.status == 200 && again.status == 200)
            #expect(first.body["id"] == again.body["id"] && again.body["duplicate"] == true, "\(again)")
            let forged = try await app.post("/github", body: body.replacingOccurrences(of: "main", with: "evil"), headers: headers)
            #expect(forged.status == 401 && forged.body["error"]["field"] == "X-Hub-Signature-256")
            let stored = try await app.records(in: "pushes", atLeast: 1, timeout: .seconds(3))
            #expect(stored.count == 1)
        }
    }

    @Test("Health and readiness")
    func health() async throws {
        try await withRunningApp(try Self.graph(), environment: Self.environment) { app in
            #expect(try await app.get("/healthz").status == 200)
            let ready = try await app.get("/readyz")
            #expect(ready.status == 200)
            #expect(ready.body["status"] == "ready")
        }
    }
}
