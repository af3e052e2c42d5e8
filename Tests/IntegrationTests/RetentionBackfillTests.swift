import Autonomous
import AutonomousTesting
import ClusterCore
import Coordinator
import Foundation
import NATS
import NIOCore
import Testing

/// Per-table stream retention, and storages bound to tables that already have records.
@Suite("Stream retention and backfill", .serialized)
struct RetentionBackfillTests {
    /// Writes `json` as an autonomous.json in a new directory; the configuration reads it.
    static func deployment(_ json: String) throws -> (file: String, configure: @Sendable (inout RuntimeConfiguration) -> Void) {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("aut-retention-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let file = directory + "/autonomous.json"
        try Data(json.utf8).write(to: URL(fileURLWithPath: file))
        let deployment = try DeploymentConfiguration.load(path: file)
        return (
            file,
            {
                $0.storages = deployment.storages
                $0.tableSettings = deployment.tables
                $0.deploymentFile = file
            }
        )
    }

    @Test("Retention from the app and from autonomous.json (which wins); a full stream is read from what it keeps")
    func retention() async throws {
        var app = AppBuilder(name: "Retained")
        _ = app.table("clicks", retention: StreamRetention(maxAge: .seconds(3_600)))
        _ = app.table("audit", retention: StreamRetention(maxAge: .seconds(60), maxBytes: 1 << 20))
        let graph = try app.build()
        let (_, configure) = try Self.deployment(#"{"tables": {"audit": {"retention": {"max_age": "2d", "max_bytes": 4096}}}}"#)
        try await withRunningApp(graph, configure: configure) { app in
            let clicks = try #require(try await app.connection.streamState(Wire.tableStreamName(tenant: "default", table: "clicks")))
            #expect(clicks.maxAge == .seconds(3_600) && clicks.maxBytes == -1)
            let auditStream = Wire.tableStreamName(tenant: "default", table: "audit")
            let audit = try #require(try await app.connection.streamState(auditStream))
            #expect(audit.maxAge == .seconds(2 * 86_400) && audit.maxBytes == 4096)

            // 100 records of ~150 bytes into 4 KiB: the stream drops the oldest.
            let padding = String(repeating: "x", count: 100)
            let lines = (0..<100).map { #"{"n":\#($0),"pad":"\#(padding)"}"# }
            let posted = try await app.post(
                "/v1/tables/audit/records",
                body: lines.joined(separator: "\n"),
                contentType: "application/x-ndjson"
            )
            #expect(posted.status == 202)
            let state = try #require(try await app.connection.streamState(auditStream))
            #expect(state.lastSequence == 100 && state.firstSequence > 1 && state.messages < 100)
            let page = try await app.get("/v1/tables/audit/records?order=oldest&limit=1000")
            let sequences = page.body["records"].arrayValue?.compactMap { $0["sequence"].intValue } ?? []
            #expect(sequences.first.map(UInt64.init) == state.firstSequence)
            #expect(sequences.last == 100 && UInt64(sequences.count) == state.messages)
        }
    }

    @Test("autonomous.json's retention and backfill are checked, naming the path")
    func badSettings() throws {
        let cases: [(String, String)] = [
            (#"{"tables": {"a": {"retention": {"max_age": "forever"}}}}"#, "tables.a.retention.max_age: 'forever' is not a duration"),
            (#"{"tables": {"a": {"retention": {"max_bytes": 10}}}}"#, "tables.a.retention.max_bytes: must be between 1024"),
            (#"{"tables": {"a": {"retention": {"max_rows": 10}}}}"#, "tables.a.retention.max_rows: unknown key"),
            (#"{"tables": {"a": {"backfill": "yesterday"}}}"#, "tables.a.backfill: 'yesterday' is neither \"all\" nor an RFC 3339 time"),
        ]
        for (json, message) in cases {
            let file = FileManager.default.temporaryDirectory.appendingPathComponent("aut-bad-\(UUID().uuidString).json").path
            try Data(json.utf8).write(to: URL(fileURLWithPath: file))
            defer { try? FileManager.default.removeItem(atPath: file) }
            #expect {
                _ = try DeploymentConfiguration.load(path: file)
            } throws: { error in
                "\(error)".contains(file) && "\(error)".contains(message)
            }
        }
    }

    @Test("A storage bound to a table with records is backfilled from the stream: from a given time, or from the start")
    func backfill() async throws {
        var builder = AppBuilder(name: "Backfilled")
        _ = builder.table("ledger")
        _ = builder.table("journal")
        let graph = try builder.build()
        try await withTestNATSServer { server in
            // First without storages: the records are only in the streams.
            let cut = try await withRunningApp(graph, on: server) { app in
                func post(_ numbers: Range<Int>) async throws {
                    for table in ["ledger", "journal"] {
                        let lines = numbers.map { #"{"n":\#($0)}"# }.joined(separator: "\n")
                        #expect(
                            try await app.post("/v1/tables/\(table)/records", body: lines, contentType: "application/x-ndjson").status
                                == 202
                        )
                    }
                }
                try await post(0..<3)
                try await Task.sleep(for: .milliseconds(50))
                let cut = Date()
                try await Task.sleep(for: .milliseconds(50))
                try await post(3..<6)
                return cut
            }
            // Then kept in SQLite: ledger from the cut on, journal from its start.
            let (file, configure) = try Self.deployment(
                """
                {"storages": [{"name": "db", "type": "database", "url": "sqlite://kept.sqlite"}],
                 "tables": {"ledger": {"storage": "db", "backfill": "\(ISO8601.format(cut))"}, "journal": {"storage": "db", "backfill": "all"}}}
                """
            )
            defer { try? FileManager.default.removeItem(atPath: URL(fileURLWithPath: file).deletingLastPathComponent().path) }
            try await withRunningApp(graph, on: server, configure: configure) { app in
                #expect(try await app.post("/v1/tables/ledger/records", body: #"{"n":6}"#).status == 202)
                @Sendable func kept(_ table: String) async throws -> [Int] {
                    let page = try await app.get("/v1/tables/\(table)/records?order=oldest")
                    // Read from the storage: no stream sequences.
                    let records: [JSONValue] = page.body["records"].arrayValue ?? []
                    let fromStream = records.contains { $0["sequence"] != .null }
                    #expect(!fromStream)
                    return records.compactMap { $0["record"]["n"].intValue }
                }
                let ledger = try await eventually { try await kept("ledger") == [3, 4, 5, 6] }
                let ledgerKept = try await kept("ledger")
                #expect(ledger, "ledger kept \(ledgerKept)")
                let journal = try await eventually { try await kept("journal") == [0, 1, 2, 3, 4, 5] }
                let journalKept = try await kept("journal")
                #expect(journal, "journal kept \(journalKept)")
            }
        }
    }

    @Test("autonomous storages status: a sink behind its stream shows its lag; a caught-up one, none")
    func status() async throws {
        var builder = AppBuilder(name: "Lagging")
        _ = builder.table("ledger", storage: "db")
        _ = builder.table("loose")
        let graph = try builder.build().keeping([:]) { _ in nil }
        // No worker runs: the sink's consumer holds every record as pending.
        try await withTestNATSServer { server in
            try await Topology.provision(graph: graph, tenants: ["default"], configuration: .init(), connection: server.connection)
            for n in 0..<7 {
                _ = try await server.connection.publish(
                    OutgoingMessage(
                        subject: Wire.tableSubject(tenant: "default", table: "ledger"),
                        payload: ByteBuffer(string: #"{"n":\#(n)}"#)
                    )
                )
            }
            let path = FileManager.default.temporaryDirectory.appendingPathComponent("aut-status-\(UUID().uuidString).sqlite").path
            defer { try? FileManager.default.removeItem(atPath: path) }
            let store = try await SQLiteStore.open(path: path, logger: TestNATSServer.logger)
            try await store.migrate()
            try await store.createTenant("default")
            let administration = Administration(
                graph: graph,
                store: store,
                connection: server.connection,
                topology: .init(),
                logger: TestNATSServer.logger
            )
            let sinks = try await administration.storages(tenant: "default")
            try await store.close()
            #expect(sinks.map(\.table) == ["ledger"])
            let ledger = try #require(sinks.first)
            #expect(ledger.storage == "db" && ledger.state == "behind")
            #expect(ledger.lag == 7 && ledger.pending == 7 && ledger.keptThrough == 0 && ledger.lastSequence == 7)
        }

        // Through the CLI, against a running app whose sink has kept everything.
        let (_, configure) = try Self.deployment(
            #"{"storages": [{"name": "db", "type": "database", "url": "sqlite://kept.sqlite"}], "tables": {"ledger": {"storage": "db"}}}"#
        )
        let token = "status-admin-token-0123456789"
        try await withRunningApp(
            graph,
            configure: {
                configure(&$0)
                $0.adminPort = 0
                $0.adminToken = token
            }
        ) { app in
            #expect(
                try await app.post("/v1/tables/ledger/records", body: #"{"n":1}\#n{"n":2}"#, contentType: "application/x-ndjson").status
                    == 202
            )
            let caughtUp = try await eventually {
                let page = try await app.get("/v1/tables/ledger/records")
                return page.body["records"].arrayValue?.count == 2
            }
            #expect(caughtUp)
            let environment = ["AUTONOMOUS_ADMIN_TOKEN": token]
            let shown = try await eventuallyValue { () -> String? in
                let answer = try runAutonomousCLI(["storages", "status", "--admin-url", app.adminURL], environment: environment)
                return answer.status == 0 && answer.output.contains("caught up") ? answer.output : nil
            }
            let line = try #require(shown.split(separator: "\n").first { $0.hasPrefix("ledger") })
            #expect(
                line.split(separator: " ", omittingEmptySubsequences: true).map(String.init) == [
                    "ledger", "db", "caught", "up", "0", "0", "0", "0", "2", "2",
                ]
            )
            let json = try runAutonomousCLI(["storages", "--json", "--admin-url", app.adminURL], environment: environment)
            #expect(json.status == 0 && json.output.contains(#""keptThrough":2"#), "\(json.output)")
            let unknown = try runAutonomousCLI(
                ["storages", "status", "--tenant", "nobody", "--admin-url", app.adminURL],
                environment: environment
            )
            #expect(unknown.status != 0 && unknown.output.contains("no tenant 'nobody'"), "\(unknown.output)")
        }
    }
}
