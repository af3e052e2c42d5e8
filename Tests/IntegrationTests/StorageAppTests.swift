import Autonomous
import AutonomousTesting
import ClusterCore
import Deploy
import Foundation
import Testing

/// Kept tables as apps use them: written by sinks in the workers, read in routes and
/// handlers, and from outside through `GET /v1/tables/{table}/records`, per tenant.
@Suite("Kept tables in a running app", .serialized)
struct StorageAppTests {
    static let adminToken = "test-admin-token-0123456789"

    struct Note: Record {
        static let semanticType: SemanticType = "test.note@1"
        var text: String
    }

    struct Shout: Record {
        static let semanticType: SemanticType = "test.shout@1"
        var text: String
        var source: String
    }

    struct Lookup: Record {
        static let semanticType: SemanticType = "test.lookup@1"
        var source: String
    }

    static func graph() throws -> AppGraph {
        var app = AppBuilder(name: "Kept")
        let notes = app.table("notes", of: Note.self)
        let shouts = app.table("shouts", of: Shout.self)
        let lookups = app.table("lookups", of: Lookup.self)
        let found = app.table("found")
        notes.onNewRecords("shout", writes: [shouts]) { records, ctx in
            for entry in records.entries {
                try await shouts.append(Shout(text: entry.value.text.uppercased(), source: entry.metadata.id), causedBy: entry, ctx)
            }
        }
        // A handler that reads a kept table while it runs.
        lookups.onNewRecords("look-up", writes: [found]) { records, ctx in
            for lookup in records {
                let page = try await shouts.records(where: ["source": .string(lookup.source)], ctx)
                try await found.append(
                    ["source": .string(lookup.source), "texts": .array(page.entries.map { .string($0.value.text) })],
                    ctx
                )
            }
        }
        // A route that reads one back.
        app.get("/shouts") { request, ctx in
            let limit = Int(request.query["limit"] ?? "") ?? 100
            let page = try await shouts.records(order: .oldestFirst, limit: limit, ctx)
            return .json([
                "texts": .array(page.entries.map { .string($0.value.text) }),
                "total": .int(Int64(try await shouts.count(ctx))),
            ])
        }
        return try app.build()
    }

    @Test("dev with no configuration: a route and a handler read back what a handler wrote")
    func devDefault() async throws {
        try await withRunningApp(try Self.graph(), configure: { $0.keepUnboundTablesInSQLite = true }) { app in
            var ids: [String] = []
            for i in 0..<30 {
                let answer = try await app.post("/v1/tables/notes/records", body: #"{"text":"note \#(i)"}"#)
                #expect(answer.status == 202)
                ids += answer.body["ids"].arrayValue?.compactMap(\.stringValue) ?? []
            }
            #expect(ids.count == 30)
            let complete = try await eventually(timeout: .seconds(30)) {
                try await app.get("/shouts").body["total"] == 30
            }
            #expect(complete)
            let page = try await app.get("/shouts?limit=5")
            #expect(page.body["texts"].arrayValue?.count == 5)
            #expect(page.body["texts"][0] == "NOTE 0")
            // A handler reads the kept table: the shout of note 7, found by its source id.
            #expect(try await app.post("/v1/tables/lookups/records", body: #"{"source":"\#(ids[7])"}"#).status == 202)
            let found = try await app.records(in: "found", atLeast: 1)
            let value = try JSONParser.parse(found[0].payload)
            #expect(value["texts"] == ["NOTE 7"])

            // From outside, newest first, paged by cursor without gaps or repeats.
            var seen: [String] = []
            var cursor: String?
            repeat {
                let query = "/v1/tables/notes/records?limit=7" + (cursor.map { "&cursor=\($0)" } ?? "")
                let answer = try await app.get(query)
                #expect(answer.status == 200)
                seen += answer.body["records"].arrayValue?.compactMap { $0["record"]["text"].stringValue } ?? []
                cursor = answer.body["next_cursor"].stringValue
            } while cursor != nil
            #expect(seen == (0..<30).reversed().map { "note \($0)" })
            let filtered = try await app.get("/v1/tables/shouts/records?where=%7B%22text%22%3A%22NOTE%203%22%7D")
            #expect(filtered.body["records"].arrayValue?.count == 1)
            #expect(filtered.body["records"][0]["type"] == "test.shout@1")
            #expect(filtered.body["records"][0]["caused_by"] == .string(ids[3]))

            // Bad queries are refused, naming the parameter.
            for (query, field) in [
                ("limit=0", "limit"), ("limit=abc", "limit"), ("order=sideways", "order"), ("since=yesterday", "since"),
                ("cursor=bm9wZQ", "cursor"), ("where=%5B1%5D", "where"), ("tenant=acme", "tenant"),
                ("where=%7B%22a.b%22%3A1%7D", "where"), ("since=2026-12-02T00:00:00Z&until=2026-12-01T00:00:00Z", "until"),
            ] {
                let answer = try await app.get("/v1/tables/notes/records?" + query)
                #expect(answer.status == 400, "\(query)")
                #expect(answer.body["error"]["field"] == .string(field), "\(query)")
            }
            #expect(try await app.get("/v1/tables/nope/records").status == 404)
        }
    }

    @Test("A record PostgreSQL refuses (\\u0000 in jsonb) is dead-lettered at once; the rest of its batch is kept")
    func refusedRecord() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("aut-refused-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let server = try await LocalPostgres.start(
            directory: directory + "/pg",
            port: LoopbackPorts.freeBase(spans: [0..<1]),
            database: "kept",
            logger: TestNATSServer.logger
        )
        do {
            let file = directory + "/autonomous.json"
            try Data(
                #"{"storages": [{"name": "pg", "type": "database", "url": "\#(server.url)"}], "tables": {"notes": {"storage": "pg"}}}"#.utf8
            ).write(to: URL(fileURLWithPath: file))
            let deployment = try DeploymentConfiguration.load(path: file)
            var builder = AppBuilder(name: "Refused")
            _ = builder.table("notes")
            let configure: (inout RuntimeConfiguration) -> Void = {
                $0.storages = deployment.storages
                $0.tableSettings = deployment.tables
                $0.deploymentFile = file
            }
            try await withRunningApp(try builder.build(), configure: configure) { app in
                let lines = (0..<5).map { i in i == 2 ? #"{"n":2,"text":"nul \u0000 here"}"# : #"{"n":\#(i)}"# }
                let posted = try await app.post(
                    "/v1/tables/notes/records",
                    body: lines.joined(separator: "\n"),
                    contentType: "application/x-ndjson"
                )
                #expect(posted.status == 202)
                let dead = try await StreamAudit.read(
                    connection: app.connection,
                    stream: app.stream,
                    subject: Wire.deadLetterSubject(tenant: "default", handler: "store-notes"),
                    atLeast: 1
                )
                #expect(dead.count == 1)
                #expect(dead.first?.headers["Aut-Attempts"] == "1", "refused at once, not after ten attempts")
                let kept = try await eventually { try await app.get("/v1/tables/notes/records").body["records"].arrayValue?.count == 4 }
                #expect(kept)
                let numbers = try await app.get("/v1/tables/notes/records?order=oldest").body["records"].arrayValue?.compactMap {
                    $0["record"]["n"].intValue
                }
                #expect(numbers == [0, 1, 3, 4])
            }
            await server.stop()
        } catch {
            await server.stop()
            throw error
        }
    }

    @Test("A tenant's key reads only that tenant's records, through every read path")
    func tenantIsolation() async throws {
        let configure: (inout RuntimeConfiguration) -> Void = {
            $0.keepUnboundTablesInSQLite = true
            $0.adminPort = 0
            $0.adminToken = Self.adminToken
            $0.requireAPIKey = true
        }
        try await withRunningApp(try Self.graph(), configure: configure) { app in
            let keys = try await app.tenantsWithKeys(["acme", "globex"], adminToken: Self.adminToken)
            @Sendable func auth(_ tenant: String) -> [(String, String)] { keys[tenant] ?? [] }
            for (tenant, count) in [("acme", 3), ("globex", 2)] {
                for i in 0..<count {
                    let answer = try await app.http(
                        "POST",
                        app.baseURL + "/v1/tables/notes/records",
                        body: #"{"text":"\#(tenant) \#(i)"}"#,
                        headers: auth(tenant)
                    )
                    #expect(answer.status == 202)
                }
            }
            let kept = try await eventually(timeout: .seconds(30)) {
                // Both tables' sinks: the shouts and the notes they came from.
                let acme = try await app.http("GET", app.baseURL + "/shouts", headers: auth("acme")).body["total"]
                let globex = try await app.http("GET", app.baseURL + "/shouts", headers: auth("globex")).body["total"]
                let notesA = try await app.http("GET", app.baseURL + "/v1/tables/notes/records", headers: auth("acme")).body["records"]
                let notesB = try await app.http("GET", app.baseURL + "/v1/tables/notes/records", headers: auth("globex")).body["records"]
                return acme == 3 && globex == 2 && notesA.arrayValue?.count == 3 && notesB.arrayValue?.count == 2
            }
            #expect(kept)
            let acme = try await app.http("GET", app.baseURL + "/v1/tables/notes/records", headers: auth("acme"))
            #expect(
                Set(acme.body["records"].arrayValue?.compactMap { $0["record"]["text"].stringValue } ?? []) == [
                    "acme 0", "acme 1", "acme 2",
                ]
            )
            let globex = try await app.http("GET", app.baseURL + "/shouts", headers: auth("globex"))
            #expect(Set(globex.body["texts"].arrayValue?.compactMap(\.stringValue) ?? []) == ["GLOBEX 0", "GLOBEX 1"])
            // Naming the other tenant, or no key at all, reads nothing.
            let named = try await app.http("GET", app.baseURL + "/v1/tenants/globex/tables/notes/records", headers: auth("acme"))
            #expect(named.status == 403)
            #expect(try await app.http("GET", app.baseURL + "/v1/tenants/acme/tables/notes/records", headers: auth("acme")).status == 200)
            #expect(try await app.http("GET", app.baseURL + "/v1/tables/notes/records").status == 401)
            #expect(try await app.http("GET", app.baseURL + "/shouts").status == 401)
            // A cursor made from another tenant's page reads nothing of theirs.
            let page = try await app.http("GET", app.baseURL + "/v1/tables/notes/records?limit=1", headers: auth("globex"))
            let cursor = try #require(page.body["next_cursor"].stringValue)
            let crossed = try await app.http("GET", app.baseURL + "/v1/tables/notes/records?cursor=\(cursor)", headers: auth("acme"))
            #expect(crossed.body["records"].arrayValue?.allSatisfy { $0["record"]["text"].stringValue?.hasPrefix("acme") == true } == true)
        }
    }
}
