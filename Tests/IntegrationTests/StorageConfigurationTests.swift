import Autonomous
import AutonomousTesting
import ClusterCore
import Deploy
import Foundation
import Testing

@testable import OrderFlow

/// Storage configuration that cannot work stops startup, saying which file, which entry and
/// what is wrong.
@Suite("Storage configuration errors", .serialized)
struct StorageConfigurationTests {
    /// Starts an OrderFlow worker with `json` as its autonomous.json; returns its exit status
    /// and output, and the file's path.
    func startWorker(_ json: String, environment: [String: String] = [:]) async throws -> (status: Int32, output: String, file: String) {
        try await withTestNATSServer { server in
            let directory = FileManager.default.temporaryDirectory.appendingPathComponent("aut-storage-config-\(UUID().uuidString)").path
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            defer { try? FileManager.default.removeItem(atPath: directory) }
            let file = directory + "/autonomous.json"
            try Data(json.utf8).write(to: URL(fileURLWithPath: file))
            let (status, output) = try await runProgram(
                FaultTests.orderFlow,
                ["worker", "--nats-url", server.url, "--deployment-file", file, "--data-dir", directory + "/data"],
                environment: environment
            )
            return (status, output, file)
        }
    }

    @Test("Unknown storage, unknown table, wrong scheme: refused while the file is read, naming file and path")
    func malformedFile() async throws {
        let unknown = try await startWorker(
            #"{"storages": [{"name": "db", "type": "database", "url": "postgres://u@127.0.0.1/x"}], "tables": {"orders": {"storage": "nope"}}}"#
        )
        #expect(unknown.status != 0)
        #expect(unknown.output.contains("\(unknown.file): tables.orders.storage: unknown storage 'nope'; \"storages\" names db"))

        let scheme = try await startWorker(#"{"storages": [{"name": "db", "type": "database", "url": "mysql://u@127.0.0.1/x"}]}"#)
        #expect(scheme.status != 0)
        #expect(scheme.output.contains("\(scheme.file): storages[0].url: a database URL must start with"))

        let password = try await startWorker(
            #"{"storages": [{"name": "db", "type": "database", "url": "postgres://u:hunter2@127.0.0.1/x"}]}"#
        )
        #expect(password.status != 0)
        #expect(password.output.contains("storages[0].url: contains a password"))
        #expect(!password.output.contains("hunter2"), "a password never reaches the output")

        let table = try await startWorker(
            #"{"storages": [{"name": "db", "type": "database", "url": "postgres://u@127.0.0.1/x"}], "tables": {"invoices": {"storage": "db"}}}"#
        )
        #expect(table.status != 0)
        #expect(table.output.contains("\(table.file): tables.invoices: the app has no table 'invoices'"))
    }

    @Test("A missing secret, an unreachable server and a malformed URL stop startup naming the storage")
    func unusableStorages() async throws {
        let secret = try await startWorker(
            #"{"storages": [{"name": "db", "type": "database", "url": {"secret": "AUT_TEST_UNSET_STORAGE_URL"}}], "tables": {"orders": {"storage": "db"}}}"#
        )
        #expect(secret.status != 0)
        #expect(
            secret.output.contains("\(secret.file): storages[0].url: the secret AUT_TEST_UNSET_STORAGE_URL is not set in the environment")
        )

        let port = LoopbackPorts.freeBase(spans: [0..<1])
        let unreachable = try await startWorker(
            #"{"storages": [{"name": "db", "type": "database", "url": "postgres://u@127.0.0.1:\#(port)/x"}], "tables": {"orders": {"storage": "db"}}}"#
        )
        #expect(unreachable.status != 0)
        #expect(unreachable.output.contains("\(unreachable.file): storages[0] (db): cannot connect to PostgreSQL at 127.0.0.1:\(port)"))

        let malformed = try await startWorker(
            #"{"storages": [{"name": "db", "type": "database", "url": {"secret": "AUT_TEST_STORAGE_URL"}}], "tables": {"orders": {"storage": "db"}}}"#,
            environment: ["AUT_TEST_STORAGE_URL": "postgres:///no-host"]
        )
        #expect(malformed.status != 0)
        #expect(malformed.output.contains("\(malformed.file): storages[0] (db): Postgres URL must look like"))

        let missingPassword = try await startWorker(
            #"{"storages": [{"name": "db", "type": "database", "url": "postgres://u@127.0.0.1:\#(port)/x", "password": {"secret": "AUT_TEST_UNSET_PASSWORD"}}], "tables": {"orders": {"storage": "db"}}}"#
        )
        #expect(missingPassword.status != 0)
        #expect(missingPassword.output.contains("storages[0].password: the secret AUT_TEST_UNSET_PASSWORD is not set in the environment"))
    }

    @Test("OrderFlow's autonomous.json names storages and tables the app has")
    func orderFlowFile() throws {
        let file = FaultTests.root.appendingPathComponent("Examples/OrderFlow/autonomous.json").path
        let configuration = try DeploymentConfiguration.load(path: file)
        #expect(configuration.storages.map(\.name) == ["orders-db", "lake"])
        var builder = AppBuilder(name: "OrderFlow")
        OrderFlowApp().build(&builder)
        let graph = try builder.build()
        #expect(configuration.tables.count == 4)
        for (table, settings) in configuration.tables {
            #expect(graph.table(table) != nil, "\(table)")
            #expect(configuration.storages.contains { $0.name == settings.storage })
        }
    }

    @Test("Relative sqlite:// and file:// paths are under autonomous.json's directory; a table kept as objects is read from its stream")
    func relativePaths() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("aut-relative-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let file = directory + "/autonomous.json"
        try Data(
            #"""
            {"storages": [{"name": "db", "type": "database", "url": "sqlite://kept/tables.sqlite"},
                          {"name": "lake", "type": "file", "url": "file://lake"}],
             "tables": {"orders": {"storage": "db"}, "enriched_orders": {"storage": "lake"}}}
            """#.utf8
        ).write(to: URL(fileURLWithPath: file))
        let deployment = try DeploymentConfiguration.load(path: file)
        var builder = AppBuilder(name: "OrderFlow")
        OrderFlowApp().build(&builder)
        let configure: (inout RuntimeConfiguration) -> Void = {
            $0.storages = deployment.storages
            $0.tableSettings = deployment.tables
            $0.deploymentFile = file
        }
        try await withRunningApp(try builder.build(), configure: configure) { app in
            let order = #"{"order_id":"R-1","customer":"ada","items":[{"sku":"book","quantity":2,"unit_price":12.5}]}"#
            #expect(try await app.post("/orders", body: order).status == 202)
            let written = try await eventually(timeout: .seconds(30)) {
                let lake = (try? FileManager.default.subpathsOfDirectory(atPath: directory + "/lake")) ?? []
                return lake.contains { $0.hasPrefix("table=enriched_orders/tenant=default/date=") && $0.hasSuffix(".jsonl.gz") }
            }
            #expect(written)
            #expect(FileManager.default.fileExists(atPath: directory + "/kept/tables.sqlite"))
            let kept = try await eventually { try await app.get("/v1/tables/orders/records").body["records"].arrayValue?.count == 1 }
            #expect(kept)
            // enriched_orders is kept as objects only, which cannot be read back: reads go to
            // its stream instead.
            let answer = try await app.get("/orders/R-1")
            #expect(answer.status == 200, "\(answer.body)")
            let enriched = try await app.get("/v1/tables/enriched_orders/records")
            #expect(enriched.status == 200)
            #expect(enriched.body["records"][0]["sequence"] == 1)
        }
    }

    @Test("A table the app binds to a storage nobody configured stops every role but dev")
    func appBindsUnknownStorage() async throws {
        var app = AppBuilder(name: "Unbound")
        _ = app.table("ledger", storage: "warehouse")
        let graph = try app.build()
        await #expect {
            try await withRunningApp(graph) { _ in }
        } throws: { error in
            "\(error)".contains("table 'ledger' is kept in storage 'warehouse', but no autonomous.json was read")
        }
        // dev keeps it in SQLite instead, and says so.
        try await withRunningApp(graph, configure: { $0.keepUnboundTablesInSQLite = true }) { app in
            #expect(try await app.post("/v1/tables/ledger/records", body: #"{"n":1}"#).status == 202)
            let kept = try await eventually { try await app.get("/v1/tables/ledger/records").body["records"].arrayValue?.count == 1 }
            #expect(kept)
        }
    }
}
