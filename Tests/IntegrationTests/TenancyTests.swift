import AsyncHTTPClient
import Autonomous
import AutonomousTesting
import Foundation
import NATS
import NIOCore
import NIOHTTP1
import Synchronization
import Testing

/// Tenants, API keys, isolation and the admin API, in one process against a real nats-server
/// (coordinator state in SQLite; the same store contract runs on Postgres).
@Suite("Tenancy and the admin API", .serialized)
struct TenancyTests {
    static let adminToken = "test-admin-token-0123456789"

    static func graph() throws -> AppGraph {
        var app = AppBuilder(name: "Tenants")
        let notes = app.table("notes")
        let out = app.table("notes_out")
        notes.onNewRecords("copy-notes") { records, ctx in
            try await out.append(records.map { ["text": $0["text"], "tenant": .string(ctx.tenant)] }, ctx)
        }
        app.schedule("hourly", .cron("0 * * * *", timeZone: "Europe/Berlin")) { _, _ in }
        return try app.build()
    }

    func configure(_ configuration: inout RuntimeConfiguration) {
        configuration.adminPort = 0
        configuration.adminToken = Self.adminToken
        configuration.requireAPIKey = true
    }

    @Test("A key of one tenant never reads or writes another's tables; every admin path refuses tenant keys")
    func isolation() async throws {
        try await withRunningApp(try Self.graph(), configure: configure) { app in
            let admin = [("Authorization", "Bearer \(Self.adminToken)")]
            func adminCall(
                _ method: String,
                _ path: String,
                body: String? = nil,
                headers: [(String, String)]? = nil
            ) async throws -> (status: Int, body: JSONValue) {
                try await app.http(method, app.adminURL + path, body: body, headers: headers ?? admin)
            }
            // Tenants.
            #expect(try await adminCall("POST", "/v1/admin/tenants", body: #"{"name":"acme"}"#).status == 201)
            #expect(try await adminCall("POST", "/v1/admin/tenants", body: #"{"name":"globex"}"#).status == 201)
            let duplicate = try await adminCall("POST", "/v1/admin/tenants", body: #"{"name":"acme"}"#)
            #expect(duplicate.status == 409 && duplicate.body["error"]["message"].stringValue?.contains("acme") == true)
            let invalid = try await adminCall("POST", "/v1/admin/tenants", body: #"{"name":"Not OK!"}"#)
            #expect(invalid.status == 422)
            let missing = try await adminCall("POST", "/v1/admin/tenants", body: "{}")
            #expect(missing.status == 422 && missing.body["error"]["field"] == "name")
            let listed = try await adminCall("GET", "/v1/admin/tenants")
            #expect(listed.body.arrayValue?.compactMap { $0["name"].stringValue } == ["acme", "default", "globex"])

            // Keys: shown once, listed without the secret.
            let createdA = try await adminCall("POST", "/v1/admin/tenants/acme/keys")
            let createdB = try await adminCall("POST", "/v1/admin/tenants/globex/keys")
            #expect(createdA.status == 201 && createdB.status == 201)
            let keyA = try #require(createdA.body["key"].stringValue)
            let keyB = try #require(createdB.body["key"].stringValue)
            let idA = try #require(createdA.body["id"].stringValue)
            let keyList = try await adminCall("GET", "/v1/admin/tenants/acme/keys")
            #expect(keyList.body.arrayValue?.count == 1 && keyList.body[0]["key"].isNull)
            #expect(try await adminCall("POST", "/v1/admin/tenants/nope/keys").status == 404)

            // Writes land in the key's tenant only.
            @Sendable func write(_ key: String?, _ text: String, path: String = "/v1/tables/notes/records") async throws -> Int {
                let headers = key.map { [("Authorization", "Bearer \($0)")] } ?? []
                return try await app.http("POST", app.baseURL + path, body: #"{"text":"\#(text)"}"#, headers: headers).status
            }
            #expect(try await write(keyA, "a1") == 202)
            #expect(try await write(keyB, "b1") == 202)
            #expect(try await write(keyA, "a2", path: "/v1/tenants/acme/tables/notes/records") == 202)
            #expect(try await write(keyA, "x1", path: "/v1/tenants/globex/tables/notes/records") == 403, "A's key cannot name B")
            #expect(try await write(keyB, "x2", path: "/v1/tenants/acme/tables/notes/records") == 403, "B's key cannot name A")
            #expect(try await write(keyA, "x3", path: "/v1/tenants/default/tables/notes/records") == 403)
            #expect(try await write(nil, "x4") == 401, "keys are required")
            #expect(try await write("aut_AAAAAAAAAAAA_" + String(repeating: "A", count: 40), "x5") == 401, "an unknown key")
            #expect(try await write("not-a-key", "x6") == 401)
            let headerTrick = try await app.http(
                "POST",
                app.baseURL + "/v1/tables/notes/records?tenant=globex",
                body: #"{"text":"a3"}"#,
                headers: [("Authorization", "Bearer \(keyA)"), ("Aut-Tenant", "globex")]
            )
            #expect(headerTrick.status == 202, "tenant hints in query or headers are ignored; the key decides")

            let notesA = try await app.records(in: "notes", tenant: "acme", atLeast: 3)
            let notesB = try await app.records(in: "notes", tenant: "globex", atLeast: 1)
            #expect(Set(notesA.compactMap { try? JSONParser.parse($0.payload)["text"].stringValue }) == ["a1", "a2", "a3"])
            #expect(notesB.compactMap { try? JSONParser.parse($0.payload)["text"].stringValue } == ["b1"])
            #expect(notesA.allSatisfy { $0.headers["Aut-Tenant"] == "acme" } == true)
            // Workers picked the new tenants up and processed each in its own stream.
            let outA = try await app.records(in: "notes_out", tenant: "acme", atLeast: 3)
            let outB = try await app.records(in: "notes_out", tenant: "globex", atLeast: 1)
            let outATenants = Set(outA.compactMap { try? JSONParser.parse($0.payload)["tenant"].stringValue })
            let outBTenants = Set(outB.compactMap { try? JSONParser.parse($0.payload)["tenant"].stringValue })
            #expect(outATenants == ["acme"] && outBTenants == ["globex"])
            for table in ["notes", "notes_out"] {
                let defaultState = try await app.connection.streamState(Wire.tableStreamName(tenant: "default", table: table))
                #expect(defaultState?.messages == 0, "nothing crossed into the default tenant's \(table)")
            }

            // Every admin path with a tenant's key (its own or another's): 401.
            let adminPaths: [(String, String)] = [
                ("GET", "/v1/admin/tenants"), ("POST", "/v1/admin/tenants"),
                ("GET", "/v1/admin/tenants/acme"), ("GET", "/v1/admin/tenants/globex"),
                ("POST", "/v1/admin/tenants/globex/disable"), ("POST", "/v1/admin/tenants/acme/enable"),
                ("GET", "/v1/admin/tenants/globex/keys"), ("POST", "/v1/admin/tenants/globex/keys"),
                ("POST", "/v1/admin/tenants/globex/keys/\(idA)/rotate"), ("DELETE", "/v1/admin/tenants/acme/keys/\(idA)"),
                ("GET", "/v1/admin/tenants/globex/schedules"), ("GET", "/v1/admin/tenants/globex/schedules/hourly"),
                ("PUT", "/v1/admin/tenants/globex/schedules/hourly"), ("POST", "/v1/admin/tenants/globex/schedules/hourly/pause"),
                ("POST", "/v1/admin/tenants/globex/schedules/hourly/resume"), ("POST", "/v1/admin/tenants/globex/schedules/hourly/trigger"),
            ]
            for key in [keyA, keyB] {
                for (method, path) in adminPaths {
                    let answer = try await adminCall(
                        method,
                        path,
                        body: method == "GET" || method == "DELETE" ? nil : "{}",
                        headers: [("Authorization", "Bearer \(key)")]
                    )
                    #expect(answer.status == 401, "\(method) \(path) answered \(answer.status)")
                }
            }
            #expect(try await adminCall("GET", "/v1/admin/tenants", headers: []).status == 401)
            #expect(
                try await adminCall("GET", "/v1/admin/tenants", headers: [("Authorization", "Bearer wrong-token-0000000000")]).status == 401
            )
            #expect(try await adminCall("GET", "/v1/admin/tenants/acme/keys").status == 200, "the admin token still works")

            // Revocation and rotation take effect within seconds.
            #expect(try await adminCall("DELETE", "/v1/admin/tenants/acme/keys/\(idA)").status == 200)
            // Until every ingress node has heard of the revocation (at once on a quiet machine,
            // later on a busy one) a write may still be accepted; each one accepted is stored.
            let acceptedLate = Mutex(0)
            #expect(
                try await eventually(timeout: .seconds(5)) {
                    let status = try await write(keyA, "late")
                    if status == 202 { acceptedLate.withLock { $0 += 1 } }
                    return status == 401
                },
                "a revoked key stops working"
            )
            #expect(try await write(keyA, "later") == 401, "and stays revoked")
            let rotated = try await adminCall("POST", "/v1/admin/tenants/globex/keys/\(createdB.body["id"].stringValue!)/rotate")
            #expect(rotated.status == 201)
            let keyB2 = try #require(rotated.body["key"].stringValue)
            #expect(keyB2 != keyB)
            #expect(try await write(keyB2, "b2") == 202)
            #expect(try await eventually(timeout: .seconds(5)) { try await write(keyB, "old") == 401 }, "the rotated-out key stops working")

            // Disabling a tenant stops its keys.
            #expect(try await adminCall("POST", "/v1/admin/tenants/globex/disable").body["disabled"] == true)
            #expect(try await eventually(timeout: .seconds(5)) { try await write(keyB2, "off") == 401 })
            #expect(try await adminCall("POST", "/v1/admin/tenants/globex/enable").body["disabled"] == false)
            #expect(try await eventually(timeout: .seconds(5)) { try await write(keyB2, "on") == 202 })
            let expectedA = 3 + acceptedLate.withLock { $0 }
            let finalA = try await app.records(in: "notes", tenant: "acme", atLeast: expectedA)
            #expect(finalA.count == expectedA, "only the writes answered 202 are stored; none refused got in")
        }
    }

    @Test("Schedules over the admin API: list, pause, resume, retime with clear errors, trigger by hand")
    func schedules() async throws {
        try await withRunningApp(try Self.graph(), configure: configure) { app in
            func call(_ method: String, _ path: String, body: String? = nil) async throws -> (status: Int, body: JSONValue) {
                try await app.admin(method, path, body: body)
            }
            let list = try await call("GET", "/v1/admin/tenants/default/schedules")
            #expect(list.status == 200)
            #expect(list.body[0]["name"] == "hourly" && list.body[0]["timeZone"] == "Europe/Berlin" && list.body[0]["paused"] == false)
            #expect(list.body[0]["nextFire"].stringValue?.hasSuffix(":00:00.000Z") == true)

            #expect(try await call("POST", "/v1/admin/tenants/default/schedules/hourly/pause").body["paused"] == true)
            #expect(try await call("GET", "/v1/admin/tenants/default/schedules/hourly").body["paused"] == true)
            #expect(try await call("POST", "/v1/admin/tenants/default/schedules/hourly/resume").body["paused"] == false)

            let badCron = try await call("PUT", "/v1/admin/tenants/default/schedules/hourly", body: #"{"cron":"61 * * * *"}"#)
            #expect(badCron.status == 422 && badCron.body["error"]["field"] == "cron")
            #expect(badCron.body["error"]["message"].stringValue?.contains("minute '61'") == true)
            let badZone = try await call(
                "PUT",
                "/v1/admin/tenants/default/schedules/hourly",
                body: #"{"cron":"0 3 * * *","timeZone":"Mars/Olympus"}"#
            )
            #expect(badZone.status == 422 && badZone.body["error"]["field"] == "timeZone")
            let retimed = try await call(
                "PUT",
                "/v1/admin/tenants/default/schedules/hourly",
                body: #"{"cron":"30 2 * * *","timeZone":"America/New_York"}"#
            )
            #expect(retimed.status == 200 && retimed.body["overridden"] == true && retimed.body["schedule"] == "30 2 * * *")
            #expect(retimed.body["timeZone"] == "America/New_York")
            let restored = try await call("PUT", "/v1/admin/tenants/default/schedules/hourly", body: #"{"cron":null}"#)
            #expect(restored.body["overridden"] == false && restored.body["timeZone"] == "Europe/Berlin")

            #expect(try await call("GET", "/v1/admin/tenants/default/schedules/nope").status == 404)
            #expect(try await call("POST", "/v1/admin/tenants/ghost/schedules/hourly/pause").status == 404)
            #expect(try await call("POST", "/v1/admin/tenants/default/schedules/hourly/explode").status == 404)
            #expect(try await call("POST", "/v1/admin/tenants/default/schedules/hourly/pause", body: "{not json").status == 400)

            let triggered = try await call("POST", "/v1/admin/tenants/default/schedules/hourly/trigger")
            #expect(triggered.status == 202)
            let ticks = try await StreamAudit.read(
                connection: app.connection,
                stream: "AUT_DEFAULT",
                subject: "aut.default.sched.hourly",
                atLeast: 1,
                timeout: .seconds(10)
            )
            #expect(ticks.count == 1)
            #expect(try JSONParser.parse(ticks[0].payload)["manual"] == true)
        }
    }

    @Test("A paused every-second schedule publishes nothing until it is resumed")
    func pauseStopsTicks() async throws {
        var builder = AppBuilder(name: "Pausing")
        builder.schedule("second", .every(.seconds(1))) { _, _ in }
        let graph = try builder.build()
        try await withRunningApp(graph, configure: configure) { app in
            let admin = [("Authorization", "Bearer \(Self.adminToken)")]
            let subject = "aut.default.sched.second"
            @Sendable func count() async throws -> Int {
                try await app.connection.readAll(stream: "AUT_DEFAULT", subject: subject, headers: [], atLeast: 0, timeout: .seconds(1))
                    .count
            }
            #expect(try await eventually(timeout: .seconds(10)) { try await count() >= 2 }, "ticks flow")
            #expect(
                try await app.http("POST", app.adminURL + "/v1/admin/tenants/default/schedules/second/pause", headers: admin).status == 200
            )
            // The scheduler re-reads its controls at least every 2 s.
            try await Task.sleep(for: .seconds(3))
            let paused = try await count()
            try await Task.sleep(for: .seconds(3))
            #expect(try await count() == paused, "no tick while paused")
            // Its last fire is the last tick published, not one skipped while paused.
            let ticks = try await app.connection.readAll(
                stream: "AUT_DEFAULT",
                subject: subject,
                headers: [],
                atLeast: paused,
                timeout: .seconds(5)
            )
            let lastPublished = ticks.compactMap { try? JSONParser.parse($0.payload)["fire_time"].stringValue }.max()
            let info = try await app.http("GET", app.adminURL + "/v1/admin/tenants/default/schedules/second", headers: admin)
            #expect(info.status == 200 && info.body["paused"] == true)
            #expect(info.body["lastFire"].stringValue == lastPublished, "\(info.body) against \(lastPublished ?? "none")")
            #expect(
                try await app.http("POST", app.adminURL + "/v1/admin/tenants/default/schedules/second/resume", headers: admin).status == 200
            )
            #expect(try await eventually(timeout: .seconds(10)) { try await count() >= paused + 2 }, "ticks resume")
        }
    }

    @Test("autonomous tenants, keys and schedules drive the admin API and print its errors")
    func commandLine() async throws {
        try await withRunningApp(try Self.graph(), configure: configure) { app in
            let environment = ["AUTONOMOUS_ADMIN_TOKEN": Self.adminToken, "AUTONOMOUS_ADMIN_URL": app.adminURL]
            func cli(_ arguments: String...) async throws -> (status: Int32, output: String) {
                try await runAutonomousCLIAsync(arguments, environment: environment)
            }
            let created = try await cli("tenants", "create", "initech")
            #expect(created.status == 0 && created.output.contains("AUT_INITECH"), "\(created.output)")
            let duplicate = try await cli("tenants", "create", "initech")
            #expect(
                duplicate.status != 0 && duplicate.output.contains("already exists") && duplicate.output.contains("409"),
                "\(duplicate.output)"
            )
            let listed = try await cli("tenants", "list")
            #expect(listed.output.contains("initech") && listed.output.contains("default"), "\(listed.output)")

            let key = try await cli("keys", "create", "--tenant", "initech", "--json")
            #expect(key.status == 0, "\(key.output)")
            let value = try JSONParser.parse(Array(key.output.utf8))
            let secret = try #require(value["key"].stringValue)
            #expect(
                try await app.http(
                    "POST",
                    app.baseURL + "/v1/tables/notes/records",
                    body: #"{"text":"cli"}"#,
                    headers: [("Authorization", "Bearer \(secret)")]
                ).status == 202
            )
            let keys = try await cli("keys", "list", "--tenant", "initech")
            #expect(keys.output.contains(value["id"].stringValue!) && !keys.output.contains(secret), "keys are listed without the secret")
            let revoked = try await cli("keys", "revoke", "--tenant", "initech", value["id"].stringValue!)
            #expect(revoked.status == 0, "\(revoked.output)")

            let badCron = try await cli("schedules", "set", "hourly", "--tenant", "initech", "--cron", "* * *")
            #expect(
                badCron.status != 0 && badCron.output.contains("expected 5 or 6 fields") && badCron.output.contains("(cron)"),
                "\(badCron.output)"
            )
            let badZone = try await cli("schedules", "set", "hourly", "--cron", "0 3 * * *", "--time-zone", "Nowhere/Special")
            #expect(badZone.status != 0 && badZone.output.contains("unknown time zone"), "\(badZone.output)")
            let paused = try await cli("schedules", "pause", "hourly", "--tenant", "initech")
            #expect(paused.status == 0 && paused.output.contains("true"), "\(paused.output)")
            let unknown = try await cli("schedules", "pause", "nope", "--tenant", "initech")
            #expect(unknown.status != 0 && unknown.output.contains("no schedule 'nope'"), "\(unknown.output)")
            let ghost = try await cli("keys", "list", "--tenant", "ghost")
            #expect(ghost.status != 0 && ghost.output.contains("no tenant 'ghost'"), "\(ghost.output)")

            let limited = try await cli("tenants", "limit", "initech", "--records-per-second", "5000", "--json")
            #expect(
                limited.status == 0
                    && (try? JSONParser.parse(Array(limited.output.utf8)))?["limits"] == ["recordsPerSecond": 5000, "burst": 5000],
                "\(limited.output)"
            )
            let table = try await cli("tenants", "list")
            #expect(table.output.contains("limits.recordsPerSecond") && table.output.contains("5000"), "\(table.output)")
            let badLimit = try await cli("tenants", "limit", "initech", "--records-per-second", "0")
            #expect(
                badLimit.status != 0 && badLimit.output.contains("(recordsPerSecond)") && badLimit.output.contains("422"),
                "\(badLimit.output)"
            )
            let noRate = try await cli("tenants", "limit", "initech")
            #expect(noRate.status != 0 && noRate.output.contains("--none"), "\(noRate.output)")
            let unlimited = try await cli("tenants", "limit", "initech", "--none", "--json")
            #expect(
                unlimited.status == 0 && (try? JSONParser.parse(Array(unlimited.output.utf8)))?["limits"]["recordsPerSecond"] == .null,
                "\(unlimited.output)"
            )

            let noToken = try await runAutonomousCLIAsync(
                ["tenants", "list", "--admin-url", app.adminURL],
                environment: ["AUTONOMOUS_ADMIN_TOKEN": ""]
            )
            #expect(noToken.status != 0 && noToken.output.contains("AUTONOMOUS_ADMIN_TOKEN"), "\(noToken.output)")
        }
    }

    @Test("A tenant over its records/s limit is held, then refused with 429 and Retry-After; only what got 202 is stored")
    func rateLimit() async throws {
        // The ingress holds an over-limit request up to a second (the default) before refusing it.
        // Its buckets refill only when the test moves their clock, so every decision below is
        // the same on a fast machine and a slow one.
        let clock = ManualClock()
        try await withRunningApp(
            try Self.graph(),
            configure: {
                configure(&$0)
                $0.rateLimitClock = { clock.now }
            }
        ) { app in
            func adminCall(_ method: String, _ path: String, body: String? = nil) async throws -> (status: Int, body: JSONValue) {
                try await app.admin(method, path, body: body)
            }
            #expect(try await adminCall("POST", "/v1/admin/tenants", body: #"{"name":"acme"}"#).status == 201)
            let key = try #require(try await adminCall("POST", "/v1/admin/tenants/acme/keys").body["key"].stringValue)
            #expect(try await adminCall("GET", "/v1/admin/tenants/acme").body["limits"] == ["recordsPerSecond": nil, "burst": nil])

            // Bad limits name the field; unknown tenants are 404.
            for (body, field) in [
                (#"{"recordsPerSecond":0}"#, "recordsPerSecond"), (#"{"recordsPerSecond":"fast"}"#, "recordsPerSecond"),
                (#"{"recordsPerSecond":1.5}"#, "recordsPerSecond"), (#"{"burst":5}"#, "burst"),
                (#"{"recordsPerSecond":10,"burst":-1}"#, "burst"),
            ] {
                let answer = try await adminCall("PUT", "/v1/admin/tenants/acme/limits", body: body)
                #expect(answer.status == 422 && answer.body["error"]["field"].stringValue == field, "\(body): \(answer)")
            }
            #expect(try await adminCall("PUT", "/v1/admin/tenants/nope/limits", body: #"{"recordsPerSecond":10}"#).status == 404)
            let set = try await adminCall("PUT", "/v1/admin/tenants/acme/limits", body: #"{"recordsPerSecond":10,"burst":10}"#)
            #expect(set.status == 200 && set.body["limits"] == ["recordsPerSecond": 10, "burst": 10], "\(set)")

            let accepted = Tally()
            /// Posts `count` records as a JSON array; counts those the ingress accepted.
            @Sendable func post(_ count: Int, text: String = "n") async throws -> (status: Int, retryAfter: Int?, body: JSONValue) {
                var request = HTTPClientRequest(url: app.baseURL + "/v1/tables/notes/records")
                request.method = .POST
                request.headers.add(name: "Content-Type", value: "application/json")
                request.headers.add(name: "Authorization", value: "Bearer \(key)")
                let record = #"{"text":"\#(text)"}"#
                let body = count == 1 ? record : "[" + Array(repeating: record, count: count).joined(separator: ",") + "]"
                request.body = .bytes(ByteBuffer(string: body))
                let response = try await HTTPClient.shared.execute(request, timeout: .seconds(30))
                let bytes = try await response.body.collect(upTo: 1024 * 1024)
                let status = Int(response.status.code)
                if status == 202 { accepted.add(count) }
                let value = (try? JSONParser.parse(Array(bytes.readableBytesView))) ?? .null
                return (status, response.headers.first(name: "Retry-After").flatMap { Int($0) }, value)
            }

            // A request larger than the bucket passes when it is full, and leaves it 40 records
            // (4 s) in debt: a single record (answered on the event loop) and a large batch
            // (answered by Hummingbird) are both refused, saying when to come back.
            #expect(try await post(50).status == 202)
            let single = try await post(1)
            #expect(single.status == 429 && single.body["error"]["code"] == "rate_limited", "\(single)")
            #expect(single.body["error"]["message"].stringValue?.contains("10 records/s") == true, "\(single.body)")
            #expect((3...4).contains(single.retryAfter ?? 0), "\(single)")
            let large = try await post(3000)
            #expect(
                large.status == 429 && large.body["error"]["code"] == "rate_limited" && (3...5).contains(large.retryAfter ?? 0),
                "\(large)"
            )

            // A higher limit applies within the key cache's lifetime.
            #expect(try await adminCall("PUT", "/v1/admin/tenants/acme/limits", body: #"{"recordsPerSecond":1000}"#).status == 200)
            #expect(try await eventually(timeout: .seconds(5)) { try await post(1).status == 202 })
            clock.advance(.seconds(2))
            #expect(try await post(1000).status == 202, "a full bucket takes its burst at once")
            @Sendable func delayed() async throws -> Double {
                let metrics = try await MetricsTests.get(app.adminURL + "/metrics").text
                return MetricsTests.value(metrics, #"autonomous_ingress_records_delayed_total{tenant="acme"}"#) ?? 0
            }
            let delayedBefore = try await delayed()
            // 900 more: held while the bucket refills (0.9 s), then accepted. Another 900 sent
            // once the first is held would wait 1.8 s, more than a second: refused.
            async let heldAnswer = post(900)
            #expect(try await eventually { try await delayed() >= delayedBefore + 900 }, "the first 900 are held")
            let refused = try await post(900)
            #expect(refused.status == 429 && refused.retryAfter == 1, "\(refused)")
            let held = try await heldAnswer
            #expect(held.status == 202, "\(held)")
            // A large batch (answered by Hummingbird) with half a bucket: the records with tokens
            // go at once, the rest trickle out over the half second the bucket needs.
            clock.advance(.milliseconds(1400))
            let paced = try await post(2500, text: "paced")
            #expect(paced.status == 202 && paced.body["accepted"] == 2500, "\(paced)")
            let messages = try await app.connection.readAll(
                stream: Wire.tableStreamName(tenant: "acme", table: "notes"),
                subject: Wire.tableSubject(tenant: "acme", table: "notes"),
                headers: [],
                atLeast: accepted.value,
                timeout: .seconds(30)
            )
            let pacedTimes = messages.filter { String(decoding: $0.payload, as: UTF8.self).contains("paced") }.map(\.timestamp)
            #expect(pacedTimes.count == 2500)
            // A lower bound only: the ingress sleeps between the parts, and a slow machine can only
            // stretch the spread.
            let spread = Double((pacedTimes.max() ?? 0) - (pacedTimes.min() ?? 0)) / 1e6
            #expect(spread >= 200, "the held records reached the stream over \(spread) ms, not at once")

            // The refusals and holds are counted per tenant.
            let metrics = try await MetricsTests.get(app.adminURL + "/metrics").text
            let refusedCount = MetricsTests.value(metrics, #"autonomous_ingress_records_rate_limited_total{tenant="acme"}"#) ?? 0
            let delayedCount = MetricsTests.value(metrics, #"autonomous_ingress_records_delayed_total{tenant="acme"}"#) ?? 0
            #expect(refusedCount >= 1 + 3000 + 900 && delayedCount >= 900, "refused \(refusedCount), held \(delayedCount)")

            // No limit: everything goes.
            #expect(try await adminCall("PUT", "/v1/admin/tenants/acme/limits", body: #"{"recordsPerSecond":null}"#).status == 200)
            #expect(
                try await eventually(timeout: .seconds(5)) {
                    let first = try await post(3000).status
                    let second = try await post(3000).status
                    return first == 202 && second == 202
                }
            )

            // Exactly the records that got 202 are in the table.
            let total = accepted.value
            let stored = try await app.records(in: "notes", tenant: "acme", atLeast: total)
            try await Task.sleep(for: .milliseconds(300))
            let again = try await app.records(in: "notes", tenant: "acme", atLeast: total)
            #expect(stored.count == total && again.count == total, "\(stored.count) and \(again.count) stored, \(total) accepted")
        }
    }

    /// Before the fix a webhook took any request with no key, as text/plain, and for a
    /// disabled tenant; no verification was the silent default.
    @Test("Webhooks and routes need an API key or a signature; unauthenticated is explicit; JSON only; disabled tenants refused")
    func webhookAuthentication() async throws {
        var builder = AppBuilder(name: "Hooks")
        let notes = builder.table("notes")
        builder.webhook("/hooks/keyed", into: notes)
        builder.webhook("/hooks/slack", into: notes, verify: .slack(signingSecret: .secret("SIGNING_SECRET")))
        builder.webhook("/hooks/open", into: notes, verify: .unauthenticated)
        builder.post("/notes") { request, ctx in
            try await notes.append(try request.json(), ctx)
            return .json(["tenant": .string(ctx.tenant)], status: 202)
        }
        let graph = try builder.build()
        let description = graph.description(tenant: "default")
        #expect(
            description.routes.map { "\($0.path) \($0.verification ?? "-")" }.sorted()
                == ["/hooks/keyed api-key", "/hooks/open unauthenticated", "/hooks/slack slack", "/notes api-key"]
        )
        try await withRunningApp(graph, environment: ["SIGNING_SECRET": "s3cr3t"], configure: configure) { app in
            #expect(try await app.admin("POST", "/v1/admin/tenants", body: #"{"name":"acme"}"#).status == 201)
            let key = try #require(try await app.admin("POST", "/v1/admin/tenants/acme/keys").body["key"].stringValue)
            let auth = [("Authorization", "Bearer \(key)")]
            let body = #"{"text":"hi"}"#

            let noKey = try await app.post("/hooks/keyed", body: body)
            #expect(noKey.status == 401 && noKey.body["error"]["field"] == "Authorization", "\(noKey)")
            let plain = try await app.post("/hooks/keyed", body: body, contentType: "text/plain", headers: auth)
            #expect(plain.status == 415 && plain.body["error"]["code"] == "unsupported_media_type", "\(plain)")
            let form = try await app.post("/hooks/open", body: "a=1", contentType: "application/x-www-form-urlencoded")
            #expect(form.status == 415, "a cross-site form cannot post to a webhook")
            let keyed = try await app.post("/hooks/keyed", body: body, headers: auth)
            #expect(keyed.status == 200, "\(keyed)")
            #expect(try await app.post("/notes", body: body).status == 401)
            let routed = try await app.post("/notes", body: body, headers: auth)
            #expect(routed.status == 202 && routed.body["tenant"] == "acme", "a route acts for its key's tenant")
            let unsigned = try await app.post("/hooks/slack", body: body)
            #expect(unsigned.status == 401 && unsigned.body["error"]["code"] == "invalid_signature")
            let open = try await app.post("/hooks/open", body: body)
            #expect(open.status == 200, "unauthenticated is allowed when chosen: \(open)")
            let stored = try await app.records(in: "notes", tenant: "acme", atLeast: 2)
            #expect(stored.count == 2, "the keyed webhook and the route wrote to the key's tenant")

            // A disabled tenant's key is refused; so are key-less and signed requests for a
            // disabled ingress tenant.
            #expect(try await app.admin("POST", "/v1/admin/tenants/acme/disable").status == 200)
            #expect(
                try await eventually(timeout: .seconds(10)) { try await app.post("/hooks/keyed", body: body, headers: auth).status == 401 }
            )
            #expect(try await app.admin("POST", "/v1/admin/tenants/\(app.tenant)/disable").status == 200)
            let timestamp = String(Int(Date().timeIntervalSince1970))
            let signature = WebhookVerification.slackSignature(secret: "s3cr3t", timestamp: timestamp, body: Array(body.utf8))
            let signed = [("X-Slack-Request-Timestamp", timestamp), ("X-Slack-Signature", signature)]
            #expect(
                try await eventually(timeout: .seconds(10)) {
                    let answer = try await app.post("/hooks/slack", body: body, headers: signed)
                    return answer.status == 403 && answer.body["error"]["code"] == "tenant_disabled"
                }
            )
            #expect(try await app.post("/hooks/open", body: body).status == 403)
            #expect(try await app.admin("POST", "/v1/admin/tenants/\(app.tenant)/enable").status == 200)
            #expect(
                try await eventually(timeout: .seconds(10)) {
                    try await app.post("/hooks/slack", body: body, headers: signed).status == 200
                }
            )
        }
    }

    @Test("An Idempotency-Key is scoped to the API key that sends it: another client's same key stores its own record")
    func idempotencyKeyScope() async throws {
        try await withRunningApp(try Self.graph(), configure: configure) { app in
            #expect(try await app.admin("POST", "/v1/admin/tenants", body: #"{"name":"acme"}"#).status == 201)
            let first = try #require(try await app.admin("POST", "/v1/admin/tenants/acme/keys").body["key"].stringValue)
            let second = try #require(try await app.admin("POST", "/v1/admin/tenants/acme/keys").body["key"].stringValue)
            func post(_ key: String, _ text: String) async throws -> (status: Int, body: JSONValue) {
                try await app.post(
                    "/v1/tables/notes/records",
                    body: #"{"text":"\#(text)"}"#,
                    headers: [("Authorization", "Bearer \(key)"), ("Idempotency-Key", "invoice-1")]
                )
            }
            let a = try await post(first, "from the first client")
            let b = try await post(second, "from the second client")
            let again = try await post(first, "from the first client")
            #expect(a.status == 202 && b.status == 202 && again.status == 202)
            #expect(a.body["ids"] != b.body["ids"], "two callers, two records")
            #expect(b.body["duplicate"] == .null)
            #expect(again.body["ids"] == a.body["ids"] && again.body["duplicate"] == true, "the same caller's retry is a duplicate")
            let stored = try await app.records(in: "notes", tenant: "acme", atLeast: 2)
            #expect(stored.count == 2)
        }
    }

    @Test("Requests without a key and webhooks count against the ingress tenant's limit")
    func ownTenantLimit() async throws {
        var builder = AppBuilder(name: "OwnTenant")
        let notes = builder.table("notes")
        builder.webhook("/hooks/slack", into: notes, verify: .slack(signingSecret: .secret("SIGNING_SECRET")))
        let graph = try builder.build()
        try await withRunningApp(
            graph,
            environment: ["SIGNING_SECRET": "s3cr3t"],
            configure: { configuration in
                configuration.adminPort = 0
                configuration.adminToken = Self.adminToken
            }
        ) { app in
            let limit = try await app.admin("PUT", "/v1/admin/tenants/\(app.tenant)/limits", body: #"{"recordsPerSecond":10,"burst":10}"#)
            #expect(limit.status == 200, "\(limit)")
            @Sendable func post(_ count: Int) async throws -> (status: Int, body: JSONValue) {
                let record = #"{"text":"n"}"#
                return try await app.post(
                    "/v1/tables/notes/records",
                    body: count == 1 ? record : "[" + Array(repeating: record, count: count).joined(separator: ",") + "]"
                )
            }
            // The ingress asks for its tenant's limits every 2 s. Once it has them, 50 records
            // pass with the bucket full and leave it 40 records (4 s) in debt.
            #expect(
                try await eventually(timeout: .seconds(6)) {
                    guard try await post(50).status == 202 else { return false }
                    return try await post(1).status == 429
                }
            )
            let body = #"{"text":"hook"}"#
            let timestamp = String(Int(Date().timeIntervalSince1970))
            let signature = WebhookVerification.slackSignature(secret: "s3cr3t", timestamp: timestamp, body: Array(body.utf8))
            let hook = try await app.post(
                "/hooks/slack",
                body: body,
                headers: [("X-Slack-Request-Timestamp", timestamp), ("X-Slack-Signature", signature)]
            )
            #expect(hook.status == 429 && hook.body["error"]["code"] == "rate_limited", "\(hook)")

            // Without the limit everything goes again.
            #expect(try await app.admin("PUT", "/v1/admin/tenants/\(app.tenant)/limits", body: #"{"recordsPerSecond":null}"#).status == 200)
            #expect(try await eventually(timeout: .seconds(6)) { try await post(1).status == 202 })
            let again = try await app.post(
                "/hooks/slack",
                body: body,
                headers: [("X-Slack-Request-Timestamp", timestamp), ("X-Slack-Signature", signature)]
            )
            #expect(again.status == 200, "\(again)")
        }
    }

    @Test("A tenant limit is shared among the ingress nodes alive: another node's announcements halve this one's share")
    func sharedLimit() async throws {
        try await withRunningApp(try Self.graph(), configure: configure) { app in
            #expect(try await app.admin("POST", "/v1/admin/tenants", body: #"{"name":"acme"}"#).status == 201)
            let key = try #require(try await app.admin("POST", "/v1/admin/tenants/acme/keys").body["key"].stringValue)
            #expect(try await app.admin("PUT", "/v1/admin/tenants/acme/limits", body: #"{"recordsPerSecond":10,"burst":10}"#).status == 200)
            @Sendable func post(_ count: Int) async throws -> (status: Int, body: JSONValue) {
                let record = #"{"text":"n"}"#
                let body = count == 1 ? record : "[" + Array(repeating: record, count: count).joined(separator: ",") + "]"
                return try await app.post("/v1/tables/notes/records", body: body, headers: [("Authorization", "Bearer \(key)")])
            }
            // A second ingress node as the wire shows it: announcements on aut._ingress.alive.
            let subject = "aut._ingress.alive"
            let peer = Task {
                while !Task.isCancelled {
                    try? app.connection.publishCore(CoreMessage(subject: subject, payload: Array(#"{"node":"test-peer-1"}"#.utf8)))
                    try? await Task.sleep(for: .milliseconds(200))
                }
            }
            try await Task.sleep(for: .milliseconds(600))
            // Two nodes: this one lets 5 records/s through, with a burst of 5. A larger request
            // passes with the bucket full and leaves it 15 records (3 s) in debt.
            #expect(try await post(20).status == 202)
            let shared = try await post(1)
            let message = shared.body["error"]["message"].stringValue ?? ""
            #expect(shared.status == 429 && message.contains("10 records/s (burst 10; this ingress node's share 5/s)"), "\(shared)")

            // The other node leaves: this one takes the whole limit again at once.
            peer.cancel()
            _ = await peer.value
            try app.connection.publishCore(CoreMessage(subject: subject, payload: Array(#"{"node":"test-peer-1","leaving":true}"#.utf8)))
            try await Task.sleep(for: .milliseconds(300))
            let whole = try await post(40)
            let wholeMessage = whole.body["error"]["message"].stringValue ?? ""
            #expect(whole.status == 429 && wholeMessage.contains("10 records/s (burst 10)") && !wholeMessage.contains("share"), "\(whole)")

            // Announcements that are not another node's are ignored: still the whole limit.
            for payload in [#"{"node":"Bad Id!"}"#, "not json", #"{"other":"x"}"#] {
                try app.connection.publishCore(CoreMessage(subject: subject, payload: Array(payload.utf8)))
            }
            try await Task.sleep(for: .milliseconds(300))
            let still = try await post(40)
            #expect(still.status == 429 && !(still.body["error"]["message"].stringValue ?? "").contains("share"), "\(still)")
        }
    }
}

extension RunningApp {
    /// A call to the admin API with the suite's admin token.
    func admin(_ method: String, _ path: String, body: String? = nil) async throws -> (status: Int, body: JSONValue) {
        try await http(method, adminURL + path, body: body, headers: [("Authorization", "Bearer \(TenancyTests.adminToken)")])
    }
}

/// A thread-safe running sum.
final class Tally: Sendable {
    private let sum = Mutex(0)
    func add(_ count: Int) { sum.withLock { $0 += count } }
    var value: Int { sum.withLock { $0 } }
}
