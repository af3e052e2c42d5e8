import AsyncHTTPClient
import Autonomous
import AutonomousTesting
import Foundation
import Logging
import NATS
import NIOCore
import NIOHTTP1
import ServiceLifecycle
import Synchronization
import Testing

/// An app running in-process (role `all`) against a test nats-server, on a free HTTP port.
struct RunningApp: Sendable {
    let server: TestNATSServer
    let port: Int
    let graph: AppGraph
    let tenant: String
    /// The coordinator's admin port, when the configuration asked for one.
    var adminPort: Int?

    var baseURL: String { "http://127.0.0.1:\(port)" }
    var adminURL: String { "http://127.0.0.1:\(adminPort ?? 0)" }

    /// Creates `tenants` through the admin API (authorized by `adminToken`) with a key each;
    /// returns each tenant's `Authorization` header.
    func tenantsWithKeys(_ tenants: [String], adminToken: String) async throws -> [String: [(String, String)]] {
        let admin = [("Authorization", "Bearer \(adminToken)")]
        var headers: [String: [(String, String)]] = [:]
        for tenant in tenants {
            let created = try await http("POST", adminURL + "/v1/admin/tenants", body: #"{"name":"\#(tenant)"}"#, headers: admin)
            guard created.status == 201 else { throw ConfigurationError("creating tenant \(tenant): \(created.status) \(created.body)") }
            let key = try await http("POST", adminURL + "/v1/admin/tenants/\(tenant)/keys", headers: admin).body["key"].stringValue
            guard let key else { throw ConfigurationError("no key was created for tenant \(tenant)") }
            headers[tenant] = [("Authorization", "Bearer \(key)")]
        }
        return headers
    }

    /// Any request; the body of the answer parsed as JSON (`.null` when it is not JSON).
    func http(
        _ method: String,
        _ url: String,
        body: String? = nil,
        headers: [(String, String)] = []
    ) async throws -> (status: Int, body: JSONValue) {
        var request = HTTPClientRequest(url: url)
        request.method = .init(rawValue: method)
        if let body {
            // JSON unless the caller names the content type.
            if !headers.contains(where: { $0.0.lowercased() == "content-type" }) {
                request.headers.add(name: "Content-Type", value: "application/json")
            }
            request.body = .bytes(ByteBuffer(string: body))
        }
        for (name, value) in headers { request.headers.add(name: name, value: value) }
        let response = try await HTTPClient.shared.execute(request, timeout: .seconds(30))
        let bytes = try await response.body.collect(upTo: 16 * 1024 * 1024)
        return (Int(response.status.code), (try? JSONParser.parse(Array(bytes.readableBytesView))) ?? .null)
    }

    func records(in table: String, tenant: String, atLeast: Int, timeout: Duration = .seconds(30)) async throws -> [AuditedRecord] {
        try await StreamAudit.read(
            connection: connection,
            stream: Wire.tableStreamName(tenant: tenant, table: table),
            subject: Wire.tableSubject(tenant: tenant, table: table),
            atLeast: atLeast,
            timeout: timeout
        )
    }
    /// The tenant's stream: schedule ticks and dead letters.
    var stream: String { Wire.streamName(tenant: tenant) }
    var connection: NATSConnection { server.connection }

    func records(in table: String, atLeast: Int, timeout: Duration = .seconds(30)) async throws -> [AuditedRecord] {
        try await StreamAudit.read(
            connection: connection,
            stream: Wire.tableStreamName(tenant: tenant, table: table),
            subject: Wire.tableSubject(tenant: tenant, table: table),
            atLeast: atLeast,
            timeout: timeout
        )
    }

    func post(
        _ path: String,
        body: String,
        contentType: String? = "application/json",
        headers: [(String, String)] = []
    ) async throws -> (status: Int, body: JSONValue) {
        var request = HTTPClientRequest(url: baseURL + path)
        request.method = .POST
        if let contentType { request.headers.add(name: "Content-Type", value: contentType) }
        for (name, value) in headers { request.headers.add(name: name, value: value) }
        request.body = .bytes(ByteBuffer(string: body))
        let response = try await HTTPClient.shared.execute(request, timeout: .seconds(60))
        let bytes = try await response.body.collect(upTo: 64 * 1024 * 1024)
        let value = (try? JSONParser.parse(Array(bytes.readableBytesView))) ?? .null
        return (Int(response.status.code), value)
    }

    func get(_ path: String) async throws -> (status: Int, body: JSONValue) {
        let response = try await HTTPClient.shared.execute(HTTPClientRequest(url: baseURL + path), timeout: .seconds(10))
        let bytes = try await response.body.collect(upTo: 1024 * 1024)
        return (Int(response.status.code), (try? JSONParser.parse(Array(bytes.readableBytesView))) ?? .null)
    }
}

/// Starts nats-server and the app, runs `body`, then shuts the app down gracefully.
/// `natsServerArguments` go to nats-server; `natsTLS` is every connection's, the app's and the
/// test's.
func withRunningApp<T: Sendable>(
    _ graph: AppGraph,
    environment: [String: String] = [:],
    natsServerArguments: [String] = [],
    natsTLS: NATSConnection.Configuration.TLS? = nil,
    configure: (inout RuntimeConfiguration) -> Void = { _ in },
    _ body: @Sendable (RunningApp) async throws -> T
) async throws -> T {
    try await withTestNATSServer(serverArguments: natsServerArguments, tls: natsTLS) { server in
        try await withRunningApp(graph, on: server, environment: environment, natsTLS: natsTLS, configure: configure, body)
    }
}

/// The same, on a NATS server that outlives the app (to start an app again on the same streams).
func withRunningApp<T: Sendable>(
    _ graph: AppGraph,
    on server: TestNATSServer,
    environment: [String: String] = [:],
    natsTLS: NATSConnection.Configuration.TLS? = nil,
    configure: (inout RuntimeConfiguration) -> Void = { _ in },
    _ body: @Sendable (RunningApp) async throws -> T
) async throws -> T {
    do {
        var configuration = RuntimeConfiguration()
        configuration.natsURL = server.url
        configuration.natsTLS = natsTLS
        configuration.httpPort = 0
        configuration.environment = environment
        configuration.dataDirectory = FileManager.default.temporaryDirectory.appendingPathComponent("aut-app-\(UUID().uuidString)").path
        configuration.connectTimeout = .seconds(5)
        configure(&configuration)
        let (portStream, portContinuation) = AsyncStream.makeStream(of: Int.self)
        configuration.onListening = { port in portContinuation.yield(port) }
        let (adminStream, adminContinuation) = AsyncStream.makeStream(of: Int.self)
        configuration.onAdminListening = { port in adminContinuation.yield(port) }
        let wantsAdmin = configuration.adminPort != nil
        let groupBox = GroupBox()
        let runtime = AppRuntime(graph: graph, configuration: configuration)
        let dataDirectory = configuration.dataDirectory
        return try await withThrowingTaskGroup(of: T?.self) { group in
            group.addTask {
                defer {
                    portContinuation.finish()
                    adminContinuation.finish()
                }
                try await runtime.run(role: .all, logger: TestNATSServer.logger, signals: []) { serviceGroup in
                    groupBox.value.withLock { $0 = serviceGroup }
                }
                return nil
            }
            var iterator = portStream.makeAsyncIterator()
            guard let port = await iterator.next() else {
                // The runtime ended before listening; surface its error.
                while let _ = try await group.next() {}
                throw ConfigurationError("app stopped before listening")
            }
            var app = RunningApp(server: server, port: port, graph: graph, tenant: configuration.tenant)
            if wantsAdmin {
                var adminIterator = adminStream.makeAsyncIterator()
                app.adminPort = await adminIterator.next()
            }
            let result: T
            do {
                result = try await body(app)
            } catch {
                if let serviceGroup = groupBox.value.withLock({ $0 }) { await serviceGroup.triggerGracefulShutdown() }
                try? await group.waitForAll()
                try? FileManager.default.removeItem(atPath: dataDirectory)
                throw error
            }
            if let serviceGroup = groupBox.value.withLock({ $0 }) { await serviceGroup.triggerGracefulShutdown() }
            try await group.waitForAll()
            try? FileManager.default.removeItem(atPath: dataDirectory)
            return result
        }
    }
}

/// Polls `condition` until it holds or `timeout` passes.
func eventually(timeout: Duration = .seconds(20), _ condition: @Sendable () async throws -> Bool) async throws -> Bool {
    let clock = ContinuousClock()
    let deadline = clock.now.advanced(by: timeout)
    while clock.now < deadline {
        if try await condition() { return true }
        try await Task.sleep(for: .milliseconds(50))
    }
    return try await condition()
}

final class GroupBox: Sendable {
    let value = Mutex<ServiceGroup?>(nil)
}

/// Runs the built `autonomous` command in `directory` and returns its exit status and output.
@discardableResult
func runAutonomousCLI(
    _ arguments: [String],
    in directory: String = FileManager.default.temporaryDirectory.path,
    environment: [String: String] = [:]
) throws -> (status: Int32, output: String) {
    let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    let cli = root.appendingPathComponent(".build/debug/autonomous").path
    guard FileManager.default.isExecutableFile(atPath: cli) else {
        throw ConfigurationError("\(cli) is missing; run `swift build --build-tests` first")
    }
    let process = Process()
    process.executableURL = URL(fileURLWithPath: cli)
    process.arguments = arguments
    process.currentDirectoryURL = URL(fileURLWithPath: directory)
    if !environment.isEmpty {
        process.environment = ProcessInfo.processInfo.environment.merging(environment) { _, new in new }
    }
    let pipe = Pipe()
    process.standardOutput = pipe
    process.standardError = pipe
    try process.run()
    let data = pipe.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return (process.terminationStatus, String(decoding: data, as: UTF8.self))
}

/// ``runAutonomousCLI(_:in:environment:)`` on a thread of its own, for tests whose app runs in
/// this process (a blocked cooperative thread could starve it).
func runAutonomousCLIAsync(_ arguments: [String], environment: [String: String] = [:]) async throws -> (status: Int32, output: String) {
    try await runProgram(FaultTests.root.appendingPathComponent(".build/debug/autonomous").path, arguments, environment: environment)
}

/// Runs a program on a thread of its own; returns its exit status and combined output.
func runProgram(_ path: String, _ arguments: [String], environment: [String: String] = [:]) async throws -> (status: Int32, output: String)
{
    try await withCheckedThrowingContinuation { continuation in
        Thread.detachNewThread {
            let process = Process()
            process.executableURL = URL(fileURLWithPath: path)
            process.arguments = arguments
            if !environment.isEmpty {
                process.environment = ProcessInfo.processInfo.environment.merging(environment) { _, new in new }
            }
            let pipe = Pipe()
            process.standardOutput = pipe
            process.standardError = pipe
            do {
                try process.run()
            } catch {
                continuation.resume(throwing: error)
                return
            }
            let data = pipe.fileHandleForReading.readDataToEndOfFile()
            process.waitUntilExit()
            continuation.resume(returning: (process.terminationStatus, String(decoding: data, as: UTF8.self)))
        }
    }
}
