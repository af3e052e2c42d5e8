import AsyncHTTPClient
import Autonomous
import AutonomousTesting
import Foundation
import Logging
import NATS
import NIOCore
import NIOHTTP1
import Testing

/// Runs the real `OrderFlow dev` binary as a user would.
@Suite("OrderFlow dev mode", .serialized)
struct DevModeTests {
    static let packageRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent()

    final class DevProcess: Sendable {
        let process: Process
        let output: String
        let errors: String

        init(
            dataDirectory: String,
            port: Int = 0,
            app: String = "OrderFlow",
            environment: [String: String] = [:],
            logLevel: String = "warning"
        ) throws {
            let binary = DevModeTests.packageRoot.appendingPathComponent(".build/debug/\(app)").path
            guard FileManager.default.isExecutableFile(atPath: binary) else {
                throw ConfigurationError("\(binary) is missing; run `swift build --build-tests` first")
            }
            output = dataDirectory + ".stdout"
            errors = dataDirectory + ".stderr"
            _ = FileManager.default.createFile(atPath: output, contents: nil)
            _ = FileManager.default.createFile(atPath: errors, contents: nil)
            let process = Process()
            process.executableURL = URL(fileURLWithPath: binary)
            process.arguments = ["dev", "--port", String(port), "--data-dir", dataDirectory, "--log-level", logLevel]
            process.standardOutput = try FileHandle(forWritingTo: URL(fileURLWithPath: output))
            process.standardError = try FileHandle(forWritingTo: URL(fileURLWithPath: errors))
            if !environment.isEmpty {
                process.environment = ProcessInfo.processInfo.environment.merging(environment) { _, new in new }
            }
            try process.run()
            self.process = process
        }

        /// Waits for the banner and returns (HTTP port, NATS URL).
        func waitForBanner() async throws -> (port: Int, natsURL: String) {
            for _ in 0..<600 {
                let text = (try? String(contentsOfFile: output, encoding: .utf8)) ?? ""
                if text.contains("Storages online:"),
                    let port = text.firstMatch(of: /localhost:(\d+)\/v1\/tables/).flatMap({ Int($0.1) }),
                    let url = text.firstMatch(of: /(nats:\/\/127\.0\.0\.1:\d+)/).map({ String($0.1) })
                {
                    return (port, url)
                }
                guard process.isRunning else { throw ConfigurationError("OrderFlow dev exited early:\n\(text)") }
                try await Task.sleep(for: .milliseconds(50))
            }
            throw ConfigurationError("no banner from OrderFlow dev")
        }

        func stop(signal: Int32) async -> Int32 {
            kill(process.processIdentifier, signal)
            for _ in 0..<400 where process.isRunning { try? await Task.sleep(for: .milliseconds(50)) }
            if process.isRunning {
                kill(process.processIdentifier, SIGKILL)
                return -1
            }
            return process.terminationStatus
        }
    }

    func post(_ url: String, _ body: String) async throws -> Int {
        var request = HTTPClientRequest(url: url)
        request.method = .POST
        request.headers.add(name: "Content-Type", value: "application/json")
        request.body = .bytes(ByteBuffer(string: body))
        return Int(try await HTTPClient.shared.execute(request, timeout: .seconds(30)).status.code)
    }

    func enrichedOrders(natsURL: String, atLeast: Int) async throws -> [AuditedRecord] {
        var configuration = NATSConnection.Configuration(url: natsURL)
        configuration.connectTimeout = .seconds(5)
        let connection = try await NATSConnection.connect(configuration: configuration, logger: TestNATSServer.logger)
        do {
            let records = try await StreamAudit.read(
                connection: connection,
                stream: "AUT_DEFAULT_tbl_enriched_orders",
                subject: "aut.default.tbl.enriched_orders",
                atLeast: atLeast,
                timeout: .seconds(20)
            )
            await connection.close()
            return records
        } catch {
            await connection.close()
            throw error
        }
    }

    @Test("dev prints an admin URL and token the CLI takes as they are, warns of no missing coordinator, and names a port in use")
    func devAdminAndPorts() async throws {
        let dataDirectory = FileManager.default.temporaryDirectory.appendingPathComponent("aut-dev-\(UUID().uuidString)").path
        defer {
            for path in [dataDirectory, dataDirectory + ".stdout", dataDirectory + ".stderr"] {
                try? FileManager.default.removeItem(atPath: path)
            }
        }
        let dev = try DevProcess(dataDirectory: dataDirectory)
        let (port, _) = try await dev.waitForBanner()
        let text = try String(contentsOfFile: dev.output, encoding: .utf8)
        // dev says that it runs open, and which tables the record API takes.
        #expect(text.contains("Access: OPEN. Requests without an API key act for tenant 'default'"), "\(text)")
        #expect(text.contains("(tables: orders; written by handlers only: enriched_orders, order_reviews, order_summaries)"), "\(text)")
        #expect(text.contains("/webhooks/orders POST  (webhook → orders, api-key)"), "\(text)")
        let exported = try #require(text.firstMatch(of: /export AUTONOMOUS_ADMIN_URL=(\S+) AUTONOMOUS_ADMIN_TOKEN=(\S+)/), "\(text)")
        let environment = ["AUTONOMOUS_ADMIN_URL": String(exported.1), "AUTONOMOUS_ADMIN_TOKEN": String(exported.2)]
        let listed = try await runAutonomousCLIAsync(["tenants", "list"], environment: environment)
        #expect(listed.status == 0 && listed.output.contains("default"), "\(listed.output)")
        // The API's path in the URL is taken too.
        var withPath = environment
        withPath["AUTONOMOUS_ADMIN_URL"] = String(exported.1) + "/v1/admin/"
        let again = try await runAutonomousCLIAsync(["tenants", "list"], environment: withPath)
        #expect(again.status == 0 && again.output.contains("default"), "\(again.output)")

        // A second dev on the same HTTP port stops and says which port.
        let other = FileManager.default.temporaryDirectory.appendingPathComponent("aut-dev-\(UUID().uuidString)").path
        defer {
            for path in [other, other + ".stdout", other + ".stderr"] { try? FileManager.default.removeItem(atPath: path) }
        }
        let clash = try DevProcess(dataDirectory: other, port: port)
        for _ in 0..<600 where clash.process.isRunning { try await Task.sleep(for: .milliseconds(50)) }
        let clashText =
            (try String(contentsOfFile: clash.errors, encoding: .utf8)) + (try String(contentsOfFile: clash.output, encoding: .utf8))
        #expect(!clash.process.isRunning)
        if !clash.process.isRunning { #expect(clash.process.terminationStatus != 0) } else { _ = await clash.stop(signal: SIGKILL) }
        #expect(clashText.contains("\(port)") && clashText.contains("in use"), "\(clashText)")

        #expect(await dev.stop(signal: SIGTERM) == 0)
        let warnings = try String(contentsOfFile: dev.errors, encoding: .utf8)
        #expect(!warnings.contains("aut._coord.rpc"), "dev runs its own coordinator: \(warnings)")
    }

    @Test("SIGTERM with a handler that never returns: the process stops after AUTONOMOUS_SHUTDOWN_TIMEOUT")
    func shutdownTimeout() async throws {
        let dataDirectory = FileManager.default.temporaryDirectory.appendingPathComponent("aut-dev-\(UUID().uuidString)").path
        let started = dataDirectory + ".started"
        defer {
            for path in [dataDirectory, dataDirectory + ".stdout", dataDirectory + ".stderr", started] {
                try? FileManager.default.removeItem(atPath: path)
            }
        }
        let dev = try DevProcess(
            dataDirectory: dataDirectory,
            app: "ClusterFixture",
            environment: ["AUTONOMOUS_SHUTDOWN_TIMEOUT": "2", "FIXTURE_STUCK_SECONDS": "3600", "FIXTURE_STARTED_FILE": started]
        )
        let (port, _) = try await dev.waitForBanner()
        #expect(try await post("http://127.0.0.1:\(port)/v1/tables/stuck_in/records", #"{"n":1}"#) == 202)
        var running = false
        for _ in 0..<600 where !running {
            running = FileManager.default.fileExists(atPath: started)
            if !running { try await Task.sleep(for: .milliseconds(50)) }
        }
        #expect(running, "the handler started")
        // Without the timeout the worker would wait an hour for its batch; the test gives up
        // (and kills it) after 20 s.
        let status = await dev.stop(signal: SIGTERM)
        #expect(status != -1, "the process stopped by itself")
        let pidText = try String(contentsOfFile: dataDirectory + "/nats/nats-server.pid", encoding: .utf8)
        if let natsPID = Int32(pidText.trimmingCharacters(in: .whitespacesAndNewlines)) {
            #expect(kill(natsPID, 0) != 0, "the embedded nats-server stopped with it")
        }
    }

    @Test("A debug run logs no secret: not the admin token, the Postgres password, nor any other environment value")
    func noSecretsInDebugLogs() async throws {
        let dataDirectory = FileManager.default.temporaryDirectory.appendingPathComponent("aut-secrets-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: dataDirectory) }
        let secrets = [
            "AUTONOMOUS_ADMIN_TOKEN": "adm-token-3c1f9e27b84d5a6e0f",
            "AUTONOMOUS_POSTGRES_PASSWORD": "pg-password-7a52d0e1",
            "OPENAI_API_KEY": "sk-test-5d8e2b9f41c7",
        ]
        let dev = try DevProcess(dataDirectory: dataDirectory, environment: secrets, logLevel: "debug")
        let (port, _) = try await dev.waitForBanner()
        #expect(
            try await post(
                "http://127.0.0.1:\(port)/v1/tables/orders/records",
                #"{"order_id":"A-1","customer":"ada","items":[{"sku":"tv","quantity":1,"unit_price":1500}]}"#
            ) == 202
        )
        _ = await dev.stop(signal: SIGTERM)
        let logs =
            ((try? String(contentsOfFile: dev.output, encoding: .utf8)) ?? "")
            + ((try? String(contentsOfFile: dev.errors, encoding: .utf8)) ?? "")
        #expect(logs.contains("debug"), "the run logged at debug level")
        for (name, value) in secrets {
            #expect(!logs.contains(value), "\(name)'s value is in the log")
        }
    }

    @Test("A true/false setting with another value stops the process with a message naming it")
    func badFlags() async throws {
        let binary = Self.packageRoot.appendingPathComponent(".build/debug/OrderFlow").path
        for name in ["AUTONOMOUS_RATE_LIMIT_PER_NODE", "AUTONOMOUS_INGRESS_EVENT_LOOP_PUBLISH", "AUTONOMOUS_REQUIRE_API_KEY"] {
            let (status, output) = try await runProgram(
                binary,
                ["ingress", "--nats-url", "nats://127.0.0.1:1"],
                environment: [name: "maybe"]
            )
            #expect(status != 0 && output.contains("\(name) 'maybe' must be true or false"), "\(name): \(output)")
        }
    }

    @Test("dev starts NATS, runs the pipeline, stops the child on SIGTERM and reuses its data")
    func devLifecycle() async throws {
        let dataDirectory = FileManager.default.temporaryDirectory.appendingPathComponent("aut-dev-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: dataDirectory) }

        let first = try DevProcess(dataDirectory: dataDirectory)
        let (port, natsURL) = try await first.waitForBanner()
        let status = try await post(
            "http://127.0.0.1:\(port)/webhooks/orders",
            #"{"order_id":"A-1","customer":"ada","items":[{"sku":"tv","quantity":1,"unit_price":1500}]}"#
        )
        #expect(status == 200)
        let enriched = try await enrichedOrders(natsURL: natsURL, atLeast: 1)
        #expect(enriched.count == 1)
        let order = try JSONParser.parse(try #require(enriched.first).payload)
        #expect(order["total"].doubleValue == 1500)
        #expect(order["high_value"] == true)

        let pidText = try String(contentsOfFile: dataDirectory + "/nats/nats-server.pid", encoding: .utf8)
        let natsPID = try #require(Int32(pidText.trimmingCharacters(in: .whitespacesAndNewlines)))
        #expect(kill(natsPID, 0) == 0)
        #expect(await first.stop(signal: SIGTERM) == 0)
        #expect(kill(natsPID, 0) != 0, "the embedded nats-server must stop with dev")

        // A second run finds the first run's records.
        let second = try DevProcess(dataDirectory: dataDirectory)
        let (_, secondURL) = try await second.waitForBanner()
        let again = try await enrichedOrders(natsURL: secondURL, atLeast: 1)
        #expect(again.count == 1)
        #expect(await second.stop(signal: SIGINT) == 0)
    }
}
