import ArgumentParser
import ClusterCore
import Configuration
import Coordinator
import Foundation
import HTTPEndpoints
import Logging
import NATS
import ServiceLifecycle
import Telemetry

/// The command line of every app binary.
struct AppCommand<App: AutonomousApp>: AsyncParsableCommand {
    static var configuration: CommandConfiguration {
        CommandConfiguration(
            commandName: App().name,
            abstract: "An Autonomous app. Pick the role this process plays.",
            discussion: """
                Environment: AUTONOMOUS_NATS_URL, AUTONOMOUS_TENANT, AUTONOMOUS_HTTP_HOST, \
                AUTONOMOUS_HTTP_PORT, AUTONOMOUS_HEALTH_PORT, AUTONOMOUS_HEALTH_HOST (default 127.0.0.1), \
                AUTONOMOUS_DATA_DIR, \
                AUTONOMOUS_DEPLOYMENT_FILE (the app's autonomous.json: storages and the tables they keep; \
                default ./autonomous.json when there is one), AUTONOMOUS_LOG_LEVEL (trace…critical), AUTONOMOUS_ACK_WAIT (seconds a record may \
                stay unacknowledged before redelivery; default 30), AUTONOMOUS_STREAM_REPLICAS \
                (1 for one server, 3 for a NATS cluster; default 1), AUTONOMOUS_POSTGRES_URL, \
                AUTONOMOUS_POSTGRES_PASSWORD, AUTONOMOUS_ADMIN_PORT, AUTONOMOUS_ADMIN_HOST (default \
                127.0.0.1), AUTONOMOUS_ADMIN_TOKEN (the coordinator's admin API token, at least 24 \
                characters), AUTONOMOUS_REQUIRE_API_KEY, \
                AUTONOMOUS_LEASE_TTL (seconds of the coordinators' leader lease; default 10), \
                AUTONOMOUS_ROUTE_TIMEOUT (seconds a route of another runtime, such as Python, may \
                take to answer before the ingress gives up with 504; default 30), \
                AUTONOMOUS_SHUTDOWN_TIMEOUT (seconds a graceful shutdown may take before what still \
                runs is cancelled; default 30), \
                AUTONOMOUS_INGRESS_LANES (NATS connections an ingress spreads tenants over; default 4), \
                AUTONOMOUS_INGRESS_MAX_BODY_BYTES (default 16 MiB), AUTONOMOUS_INGRESS_MAX_IN_FLIGHT_RECORDS \
                (records waiting for their PubAck before requests get 429; default 200000), \
                AUTONOMOUS_INGRESS_MAX_RECORDS_PER_REQUEST (413 beyond; default 10000, never more than \
                the in-flight limit), AUTONOMOUS_INGRESS_MAX_CONNECTIONS (default 10000), \
                AUTONOMOUS_INGRESS_MAX_BUFFERED_BYTES (request bodies held at once; default 256 MiB), \
                AUTONOMOUS_INGRESS_IDLE_TIMEOUT (seconds a connection may take to send a request head; \
                default 30), AUTONOMOUS_INGRESS_BODY_TIMEOUT (seconds for its body; default 60), \
                AUTONOMOUS_INGRESS_UNAUTHENTICATED_PER_ADDRESS (requests a second per client address \
                with refused keys or to unauthenticated paths; default 20), \
                AUTONOMOUS_INGRESS_EVENT_LOOP_PUBLISH (false: small record-API requests publish \
                through nats.c instead of the event loops' own connections; default true), \
                AUTONOMOUS_RATE_LIMIT_MAX_DELAY_MS (how long an ingress holds a request of a tenant \
                over its records/s limit before refusing it with 429; 0 refuses at once; \
                default 1000), AUTONOMOUS_RATE_LIMIT_PER_NODE (true: each ingress enforces a \
                tenant's whole limit; default false: the ingress nodes alive share it), \
                AUTONOMOUS_NATS_CA, AUTONOMOUS_NATS_CERT and AUTONOMOUS_NATS_KEY (PEM files: the \
                CA the NATS servers' certificates chain to, and a client certificate and key for \
                servers that verify clients; any of them turns TLS on), AUTONOMOUS_NATS_CREDS (a \
                NATS credentials file), AUTONOMOUS_NATS_USER and AUTONOMOUS_NATS_PASSWORD (a user \
                of the NATS server's authorization block), AUTONOMOUS_ACCESS_LOG (one log line per \
                ingress request), AUTONOMOUS_TLS_CERT and AUTONOMOUS_TLS_KEY \
                (PEM files: the ingress serves HTTPS only), AUTONOMOUS_ADMIN_TLS_CERT and \
                AUTONOMOUS_ADMIN_TLS_KEY (the same for the admin API, on a port of its own), AUTONOMOUS_CONFIG (a JSON settings file, the same keys \
                nested: AUTONOMOUS_INGRESS_LANES is {"ingress": {"lanes": 4}}). Flags win over the \
                environment, the environment over the file.
                """,
            subcommands: [
                DevCommand<App>.self,
                RoleCommand<App, IngressRole>.self,
                RoleCommand<App, WorkerRole>.self,
                RoleCommand<App, CoordinatorRole>.self,
                RoleCommand<App, AllRole>.self,
                DescribeCommand<App>.self,
            ]
        )
    }
}

/// Options every role shares (the `autonomous` command's `dev` and `serve` take them too).
package struct CommonOptions: ParsableArguments {
    package init() {}

    @Option(name: .customLong("nats-url"), help: "NATS server URL(s), comma separated. [env: AUTONOMOUS_NATS_URL]")
    var natsURL: String?

    @Option(help: "Tenant to serve. [env: AUTONOMOUS_TENANT, default: default]")
    var tenant: String?

    /// The `--tenant` flag, if given.
    package var tenantFlag: String? { tenant }

    @Option(help: "HTTP listen address. [env: AUTONOMOUS_HTTP_HOST, default: 127.0.0.1]")
    var host: String?

    @Option(help: "HTTP port; 0 picks a free one. [env: AUTONOMOUS_HTTP_PORT, default: 3000]")
    var port: Int?

    @Option(
        name: .customLong("health-port"),
        help:
            "Port of /healthz, /readyz and /metrics (the ingress answers /healthz and /readyz on its HTTP port too). [env: AUTONOMOUS_HEALTH_PORT, default: none]"
    )
    var healthPort: Int?

    @Option(
        name: .customLong("health-host"),
        help: "Listen address of the health port; /metrics names tenants and handlers. [env: AUTONOMOUS_HEALTH_HOST, default: 127.0.0.1]"
    )
    var healthHost: String?

    @Option(
        name: .customLong("postgres-url"),
        help:
            "Coordinator state in PostgreSQL (postgres://user@host:port/db; password via AUTONOMOUS_POSTGRES_PASSWORD). [env: AUTONOMOUS_POSTGRES_URL, default: SQLite in the data directory]"
    )
    var postgresURL: String?

    @Option(help: "Worker: run only these handlers (comma separated). [env: AUTONOMOUS_HANDLERS]")
    var handlers: String?

    @Option(name: .customLong("except-handlers"), help: "Worker: run every handler but these (comma separated).")
    var exceptHandlers: String?

    @Option(
        name: .customLong("data-dir"),
        help: "Directory for embedded NATS data and SQLite. [env: AUTONOMOUS_DATA_DIR, default: .autonomous]"
    )
    var dataDirectory: String?

    @Option(
        name: .customLong("log-level"),
        help: "trace, debug, info, notice, warning, error or critical. [env: AUTONOMOUS_LOG_LEVEL, default: info]"
    )
    var logLevel: String?

    @Option(
        name: .customLong("admin-port"),
        help:
            "Coordinator: port of the admin API (token in AUTONOMOUS_ADMIN_TOKEN); 0 picks a free one. [env: AUTONOMOUS_ADMIN_PORT, default: the health port for a lone coordinator, a free port in dev]"
    )
    var adminPort: Int?

    @Option(
        name: .customLong("admin-host"),
        help: "Coordinator: listen address of the admin API. [env: AUTONOMOUS_ADMIN_HOST, default: 127.0.0.1]"
    )
    var adminHost: String?

    @Flag(
        name: .customLong("require-api-key"),
        help: "Ingress: refuse record API calls and routes without an API key. [env: AUTONOMOUS_REQUIRE_API_KEY=true]"
    )
    var requireAPIKey = false

    @Option(
        name: .customLong("deployment-file"),
        help:
            "The app's autonomous.json, for its storages and the tables they keep. [env: AUTONOMOUS_DEPLOYMENT_FILE, default: ./autonomous.json when there is one]"
    )
    var deploymentFile: String?

    @Option(
        name: .customLong("config"),
        help:
            "A JSON settings file: keys as in the environment, nested (AUTONOMOUS_HTTP_PORT is {\"http\": {\"port\": 3000}}); flags, then the environment, win over it. [env: AUTONOMOUS_CONFIG]"
    )
    var settingsFile: String?

    /// The settings given as flags, by key.
    var flagSettings: [String: ConfigContent] {
        var flags: [String: ConfigContent] = [:]
        if let natsURL { flags["nats.url"] = .string(natsURL) }
        if let tenant { flags["tenant"] = .string(tenant) }
        if let host { flags["http.host"] = .string(host) }
        if let port { flags["http.port"] = .int(port) }
        if let healthPort { flags["health.port"] = .int(healthPort) }
        if let healthHost { flags["health.host"] = .string(healthHost) }
        if let adminHost { flags["admin.host"] = .string(adminHost) }
        if let postgresURL { flags["postgres.url"] = .string(postgresURL) }
        if let handlers { flags["handlers"] = .string(handlers) }
        if let dataDirectory { flags["dataDir"] = .string(dataDirectory) }
        if let deploymentFile { flags["deploymentFile"] = .string(deploymentFile) }
        if let logLevel { flags["logLevel"] = .string(logLevel) }
        if let adminPort { flags["admin.port"] = .int(adminPort) }
        if requireAPIKey { flags["requireApiKey"] = .bool(true) }
        return flags
    }

    /// The process's settings: flags, then `AUTONOMOUS_*` environment variables, then the
    /// settings file, then the defaults (``SettingsSources``).
    func settings() async throws -> SettingsSources {
        let environment = ProcessInfo.processInfo.environment
        return try await SettingsSources(
            flags: flagSettings,
            environment: environment,
            filePath: settingsFile ?? environment["AUTONOMOUS_CONFIG"]
        )
    }

    func runtimeConfiguration() async throws -> RuntimeConfiguration {
        try runtimeConfiguration(from: try await settings())
    }

    func runtimeConfiguration(from settings: SettingsSources) throws -> RuntimeConfiguration {
        let environment = ProcessInfo.processInfo.environment
        var configuration = RuntimeConfiguration()
        // Secrets and component settings are read from the process environment by name.
        configuration.environment = environment
        configuration.natsURL = settings.string(Setting("nats.url", flag: "--nats-url"))
        var nats = NATSConnection.Configuration(servers: [])
        do {
            try nats.readSecurity(from: environment)
        } catch {
            throw ValidationError(error.message)
        }
        configuration.natsTLS = nats.tls
        configuration.natsCredentialsFile = nats.credentialsFile
        configuration.natsUser = nats.user
        configuration.natsPassword = nats.password
        do {
            configuration.httpTLS = try ServerTLS.fromEnvironment(environment, prefix: "AUTONOMOUS_TLS")
            configuration.adminTLS = try ServerTLS.fromEnvironment(environment, prefix: "AUTONOMOUS_ADMIN_TLS")
        } catch {
            throw ValidationError(error.message)
        }
        do {
            configuration.tracing = try OTLPConfiguration.fromEnvironment(environment)
        } catch {
            throw ValidationError(error.description)
        }
        configuration.postgresURL = settings.string(Setting("postgres.url", flag: "--postgres-url"))
        if let url = configuration.postgresURL, let components = URLComponents(string: url), components.password != nil {
            throw ValidationError("the Postgres URL contains a password; pass it in AUTONOMOUS_POSTGRES_PASSWORD instead")
        }
        configuration.tenant = settings.string(Setting("tenant", flag: "--tenant")) ?? "default"
        configuration.httpHost = settings.string(Setting("http.host", flag: "--host")) ?? "127.0.0.1"
        let ports = 0...65535
        if let port = try settings.int(Setting("http.port", flag: "--port"), in: ports, problem: "is not a port number (0-65535)") {
            configuration.httpPort = port
        }
        configuration.healthPort = try settings.int(
            Setting("health.port", flag: "--health-port"),
            in: ports,
            problem: "is not a port number (0-65535)"
        )
        configuration.healthHost = settings.string(Setting("health.host", flag: "--health-host")) ?? "127.0.0.1"
        configuration.adminHost = settings.string(Setting("admin.host", flag: "--admin-host")) ?? "127.0.0.1"
        configuration.dataDirectory = settings.string(Setting("dataDir", flag: "--data-dir")) ?? ".autonomous"
        if let replicas = try settings.int(Setting("streamReplicas"), in: 1...5, problem: "must be 1 to 5") {
            configuration.topology.replicas = replicas
        }
        if let lanes = try settings.int(Setting("ingress.lanes"), in: 1...64, problem: "must be 1 to 64") {
            configuration.ingressLanes = lanes
        }
        if let bytes = try settings.int(
            Setting("ingress.maxBodyBytes"),
            in: 1024...(1 << 30),
            problem: "must be bytes between 1024 and 1073741824"
        ) {
            configuration.maxBodyBytes = bytes
        }
        if let records = try settings.int(
            Setting("ingress.maxInFlightRecords"),
            in: 1...10_000_000,
            problem: "must be a number of records between 1 and 10000000"
        ) {
            configuration.maxInFlightRecords = records
        }
        if let records = try settings.int(
            Setting("ingress.maxRecordsPerRequest"),
            in: 1...1_000_000,
            problem: "must be a number of records between 1 and 1000000"
        ) {
            configuration.maxRecordsPerRequest = records
        }
        if let connections = try settings.int(
            Setting("ingress.maxConnections"),
            in: 1...1_000_000,
            problem: "must be a number of connections between 1 and 1000000"
        ) {
            configuration.maxConnections = connections
        }
        if let bytes = try settings.int(
            Setting("ingress.maxBufferedBytes"),
            in: 1024...(1 << 40),
            problem: "must be bytes between 1024 and 1099511627776"
        ) {
            configuration.maxBufferedBodyBytes = bytes
        }
        if let seconds = try settings.seconds(Setting("ingress.idleTimeout"), in: 1...3600) {
            configuration.idleTimeout = seconds
        }
        if let seconds = try settings.seconds(Setting("ingress.bodyTimeout"), in: 1...3600) {
            configuration.bodyTimeout = seconds
        }
        if let requests = try settings.int(
            Setting("ingress.unauthenticatedPerAddress"),
            in: 1...1_000_000,
            problem: "must be requests per second between 1 and 1000000"
        ) {
            configuration.unauthenticatedRequestsPerAddress = requests
        }
        if let milliseconds = try settings.int(
            Setting("rateLimit.maxDelayMs"),
            in: 0...60_000,
            problem: "must be milliseconds between 0 and 60000"
        ) {
            configuration.rateLimitMaxDelay = .milliseconds(milliseconds)
        }
        if let perNode = try settings.bool(Setting("rateLimit.perNode")) {
            configuration.shareRateLimitsAcrossNodes = !perNode
        }
        if let accessLog = try settings.bool(Setting("accessLog")) {
            configuration.accessLog = accessLog
        }
        if let eventLoop = try settings.bool(Setting("ingress.eventLoopPublish")) {
            configuration.ingressEventLoopPublishing = eventLoop
        }
        if let timeout = try settings.seconds(Setting("routeTimeout"), in: 1...3600) {
            configuration.routeTimeout = timeout
        }
        if let ackWait = try settings.seconds(Setting("ackWait"), in: 1...3600) {
            configuration.topology.ackWait = ackWait
        }
        if let list = settings.string(Setting("handlers", flag: "--handlers")) {
            configuration.handlers = Set(list.split(separator: ",").map { String($0).trimmingCharacters(in: .whitespaces) })
        }
        if let list = exceptHandlers {
            configuration.excludedHandlers = Set(list.split(separator: ",").map { String($0).trimmingCharacters(in: .whitespaces) })
        }
        configuration.adminPort = try settings.int(
            Setting("admin.port", flag: "--admin-port"),
            in: ports,
            problem: "is not a port number (0-65535)"
        )
        configuration.adminToken = settings.string(Setting("admin.token")).flatMap { $0.isEmpty ? nil : $0 }
        if let token = configuration.adminToken, let problem = AdminToken.weakness(of: token) {
            throw ValidationError("AUTONOMOUS_ADMIN_TOKEN \(problem) (make one with: openssl rand -hex 32)")
        }
        if let required = try settings.bool(Setting("requireApiKey", flag: "--require-api-key")) {
            configuration.requireAPIKey = required
        }
        if let ttl = try settings.seconds(Setting("leaseTtl"), in: 1...300) {
            configuration.leaseTTL = ttl
        }
        if let timeout = try settings.seconds(Setting("shutdownTimeout"), in: 1...3600) {
            configuration.shutdownTimeout = timeout
        }
        if let problem = Names.problem(with: configuration.tenant, kind: "tenant") { throw ValidationError(problem) }
        let deploymentFile =
            settings.string(Setting("deploymentFile", flag: "--deployment-file"))
            ?? (FileManager.default.fileExists(atPath: "autonomous.json") ? "autonomous.json" : nil)
        if let deploymentFile {
            do {
                let deployment = try DeploymentConfiguration.load(path: deploymentFile)
                configuration.storages = deployment.storages
                configuration.tableSettings = deployment.tables
                configuration.deploymentFile = deploymentFile
            } catch {
                throw ValidationError(error.description)
            }
        }
        return configuration
    }

    func makeLogger(label: String, settings: SettingsSources) throws -> Logger {
        let text = settings.string(Setting("logLevel", flag: "--log-level")) ?? "info"
        guard let level = Logger.Level(rawValue: text.lowercased()) else {
            throw ValidationError("log level '\(text)' must be one of trace, debug, info, notice, warning, error, critical")
        }
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        var logger = Logger(label: label)
        logger.logLevel = level
        return logger
    }
}

protocol RoleName {
    static var role: Role { get }
    static var name: String { get }
    static var abstract: String { get }
}

enum IngressRole: RoleName {
    static let role = Role.ingress
    static let name = "ingress"
    static let abstract = "Serve HTTP routes, webhooks and the record API; publish to JetStream."
}

enum WorkerRole: RoleName {
    static let role = Role.worker
    static let name = "worker"
    static let abstract = "Run the app's handlers on records from JetStream."
}

enum CoordinatorRole: RoleName {
    static let role = Role.coordinator
    static let name = "coordinator"
    static let abstract = "Provision streams and consumers and fire schedules."
}

enum AllRole: RoleName {
    static let role = Role.all
    static let name = "all"
    static let abstract = "Run ingress, worker and coordinator in one process against an existing NATS."
}

struct RoleCommand<App: AutonomousApp, R: RoleName>: AsyncParsableCommand {
    static var configuration: CommandConfiguration {
        CommandConfiguration(commandName: R.name, abstract: R.abstract)
    }

    @OptionGroup var options: CommonOptions

    func run() async throws {
        try await GraphRoles.run(R.role, name: R.name, options: options) { try App.graph() }
    }
}

/// The roles and `dev` for any graph: an app binary's own, or one the `autonomous` command
/// read from an app in another language (docs/python.md).
package enum GraphRoles {
    /// Runs `role` of `graph` until SIGTERM or SIGINT.
    package static func run(
        _ role: Role,
        name: String,
        options: CommonOptions,
        graph makeGraph: () throws -> AppGraph
    ) async throws {
        let settings = try await options.settings()
        let logger = try options.makeLogger(label: "autonomous.\(name)", settings: settings)
        let configuration = try options.runtimeConfiguration(from: settings)
        guard configuration.natsURL != nil else {
            throw ValidationError("\(name) needs a NATS server: pass --nats-url or set AUTONOMOUS_NATS_URL")
        }
        let graph: AppGraph
        do { graph = try makeGraph() } catch { throw ValidationError("\(error)") }
        let runtime = AppRuntime(graph: graph, configuration: configuration)
        try await runtime.run(role: role, logger: logger)
    }

    /// Where `dev` runs, handed to `onReady` once the ingress listens (for processes of
    /// another runtime that serve the app's handlers and routes).
    package struct DevEnvironment: Sendable {
        package var natsURL: String
        package var tenant: String
        package var httpPort: Int
        package var dataDirectory: String
        package var logger: Logger
    }

    /// `dev`: every role in one process, with an embedded nats-server unless one is given.
    /// `onReady` runs once the ingress listens; `onStop` after the runtime has stopped.
    package static func dev(
        options: CommonOptions,
        graph makeGraph: () throws -> AppGraph,
        onReady: (@Sendable (DevEnvironment) async -> Void)? = nil,
        onStop: (@Sendable () async -> Void)? = nil
    ) async throws {
        let settings = try await options.settings()
        let logger = try options.makeLogger(label: "autonomous.dev", settings: settings)
        var configuration = try options.runtimeConfiguration(from: settings)
        configuration.keepUnboundTablesInSQLite = true
        let graph: AppGraph
        do { graph = try makeGraph() } catch { throw ValidationError("\(error)") }
        let plan: StoragePlan
        do { plan = try StoragePlan.make(graph: graph, configuration: configuration) } catch { throw ValidationError(error.message) }
        var embedded: NATSServerProcess?
        if configuration.natsURL == nil {
            let server = try await NATSServerProcess.start(directory: configuration.dataDirectory + "/nats", logger: logger)
            embedded = server
            configuration.natsURL = server.url
        }
        let natsURL = configuration.natsURL!
        let dataDirectory = configuration.dataDirectory
        let tenant = configuration.tenant
        let sqlite =
            configuration.postgresURL.map { url -> String in
                var components = URLComponents(string: url)
                components?.user = nil
                return components?.string ?? "postgres"
            } ?? "sqlite://" + configuration.sqlitePath
        let host = configuration.httpHost
        let tablesPath = configuration.tablesSQLitePath
        let adminHost = configuration.adminHost
        let requireAPIKey = configuration.requireAPIKey
        let isEmbedded = embedded != nil
        if configuration.adminPort == nil { configuration.adminPort = 0 }
        var generatedToken: String?
        if configuration.adminToken == nil {
            let token = APIKeys.generate().key.replacingOccurrences(of: "aut_", with: "adm_")
            configuration.adminToken = token
            generatedToken = token
        }
        let shownToken = generatedToken
        let adminScheme = configuration.adminTLS == nil ? "http" : "https"
        configuration.onAdminListening = { port in
            let shownHost = adminHost == "127.0.0.1" || adminHost == "0.0.0.0" ? "localhost" : adminHost
            // The base URL, as `autonomous tenants|keys|dlq` take it in AUTONOMOUS_ADMIN_URL.
            var line = "Admin API: \(adminScheme)://\(shownHost):\(port)"
            if let shownToken {
                line += "\n  export AUTONOMOUS_ADMIN_URL=\(adminScheme)://\(shownHost):\(port) AUTONOMOUS_ADMIN_TOKEN=\(shownToken)"
                line += "\n  (a token for this run; set AUTONOMOUS_ADMIN_TOKEN before starting to choose one)"
            } else {
                line += "\n  export AUTONOMOUS_ADMIN_URL=\(adminScheme)://\(shownHost):\(port)"
            }
            FileHandle.standardOutput.write(Data((line + "\n").utf8))
        }
        configuration.onListening = { port in
            let banner = DevBanner.render(
                graph: plan.graph(graph, opened: nil),
                storages: plan,
                tablesPath: tablesPath,
                tenant: tenant,
                host: host,
                port: port,
                natsURL: natsURL,
                embedded: isEmbedded,
                dataDirectory: dataDirectory,
                sqlitePath: sqlite,
                requireAPIKey: requireAPIKey
            )
            FileHandle.standardOutput.write(Data((banner + "\n").utf8))
            await onReady?(DevEnvironment(natsURL: natsURL, tenant: tenant, httpPort: port, dataDirectory: dataDirectory, logger: logger))
        }
        let runtime = AppRuntime(graph: graph, configuration: configuration)
        do {
            try await runtime.run(role: .all, logger: logger)
        } catch {
            await onStop?()
            await embedded?.stop()
            throw error
        }
        await onStop?()
        await embedded?.stop()
    }
}

struct DescribeCommand<App: AutonomousApp>: AsyncParsableCommand {
    static var configuration: CommandConfiguration {
        CommandConfiguration(commandName: "describe", abstract: "Print the app graph as JSON: tables, handlers, routes, schedules.")
    }

    @Option(help: "Tenant whose subjects to show. [default: default]")
    var tenant: String = "default"

    func run() async throws {
        let graph: AppGraph
        do { graph = try App.graph() } catch { throw ValidationError(error.description) }
        if let problem = Names.problem(with: tenant, kind: "tenant") { throw ValidationError(problem) }
        FileHandle.standardOutput.write(graph.description(tenant: tenant).encoded() + Data("\n".utf8))
    }
}

struct DevCommand<App: AutonomousApp>: AsyncParsableCommand {
    static var configuration: CommandConfiguration {
        CommandConfiguration(
            commandName: "dev",
            abstract: "Run everything in one process with embedded defaults.",
            discussion: """
                Starts nats-server -js as a child process on a free loopback port with its data in \
                <data-dir>/nats (unless --nats-url is given), keeps coordinator state in \
                <data-dir>/coordinator.sqlite, and serves HTTP on port 3000. Ctrl-C stops it all; \
                the next run reuses the stored data.
                """
        )
    }

    @OptionGroup var options: CommonOptions

    @Option(
        name: .customLong("python-app"),
        help:
            "A Python module (handlers.py) with the functions of the handlers this app declares as Python (runsIn: .python): dev runs its workers too. [env: AUTONOMOUS_PYTHON_APP]"
    )
    var pythonApp: String?

    @Option(name: .customLong("python-workers"), help: "Python worker processes for --python-app. [default: 1]")
    var pythonWorkers: Int = 1

    func run() async throws {
        let graph: AppGraph
        do { graph = try App.graph() } catch { throw ValidationError(error.description) }
        let module = pythonApp ?? ProcessInfo.processInfo.environment["AUTONOMOUS_PYTHON_APP"].flatMap { $0.isEmpty ? nil : $0 }
        let external = graph.handlers.filter { $0.runtime == ExternalRuntime.python.name }.map(\.name)
        guard let module else {
            if !external.isEmpty {
                FileHandle.standardError.write(
                    Data(
                        "note: handlers \(external.joined(separator: ", ")) run in Python; pass --python-app handlers.py to run them too\n"
                            .utf8
                    )
                )
            }
            try await GraphRoles.dev(options: options) { graph }
            return
        }
        guard FileManager.default.fileExists(atPath: module) else { throw ValidationError("--python-app \(module): no such file") }
        guard (1...64).contains(pythonWorkers) else { throw ValidationError("--python-workers must be 1 to 64") }
        let workers = PythonWorkers()
        let path = URL(fileURLWithPath: module).standardizedFileURL.path
        let count = pythonWorkers
        try await GraphRoles.dev(
            options: options,
            graph: { graph },
            onReady: { environment in
                // The Python workers read the app's graph: its tables' types and partitioning,
                // and the settings of the handlers they run.
                let file = URL(fileURLWithPath: environment.dataDirectory).standardizedFileURL.appendingPathComponent("python-graph.json")
                    .path
                FileManager.default.createFile(atPath: file, contents: graph.description(tenant: environment.tenant).encoded())
                var variables = ProcessInfo.processInfo.environment
                variables["AUTONOMOUS_NATS_URL"] = environment.natsURL
                variables["AUTONOMOUS_TENANT"] = environment.tenant
                workers.start(
                    count: count,
                    python: pythonInterpreter(nil),
                    app: path,
                    graph: file,
                    environment: variables,
                    logger: environment.logger
                )
            },
            onStop: { await workers.stop() }
        )
    }
}

/// What `dev` prints once it is up, in the shape of the original README.
enum DevBanner {
    static func render(
        graph: AppGraph,
        storages plan: StoragePlan? = nil,
        tablesPath: String = "",
        tenant: String,
        host: String,
        port: Int,
        natsURL: String,
        embedded: Bool,
        dataDirectory: String,
        sqlitePath: String,
        requireAPIKey: Bool = false
    ) -> String {
        let shownHost = host == "127.0.0.1" || host == "0.0.0.0" ? "localhost" : host
        var lines = ["", "\(graph.name) is running (tenant '\(tenant)'). Ctrl-C stops it.", ""]
        if requireAPIKey {
            lines.append("Access: API keys required (Authorization: Bearer <key>).")
        } else {
            lines.append("Access: OPEN. Requests without an API key act for tenant '\(tenant)': fine on your machine, not on a")
            lines.append("network. Deployments set AUTONOMOUS_REQUIRE_API_KEY=true (the Kubernetes and Nomad files do).")
        }
        lines += ["", "Live endpoints:"]
        for route in graph.routes {
            lines.append(
                "  \(shownHost):\(port)\(route.path) \(route.method)  (\(route.verification.label)\(route.runtime.map { ", \($0)" } ?? ""))"
            )
        }
        for webhook in graph.webhooks {
            lines.append("  \(shownHost):\(port)\(webhook.path) POST  (webhook → \(webhook.table), \(webhook.verification.label))")
        }
        let tables = graph.tables.filter { $0.kind == .table }
        let open = tables.filter { graph.acceptsRecordAPI($0) }.map(\.name)
        let closed = tables.filter { !graph.acceptsRecordAPI($0) }.map(\.name)
        lines.append(
            "  \(shownHost):\(port)/v1/tables/{table}/records POST  (tables: \(open.isEmpty ? "none" : open.joined(separator: ", "))"
                + (closed.isEmpty ? ")" : "; written by handlers only: \(closed.joined(separator: ", ")))")
        )
        lines.append("")
        lines.append("Live schedules:")
        if graph.schedules.isEmpty { lines.append("  (none)") }
        let width = (graph.schedules.map(\.name.count).max() ?? 0) + 4
        for schedule in graph.schedules {
            let padding = String(repeating: " ", count: max(1, width - schedule.name.count))
            lines.append("  \(schedule.name)\(padding)\(schedule.schedule.description)")
        }
        lines.append("")
        lines.append("Handlers:")
        for handler in graph.handlers {
            lines.append(
                "  \(handler.name) ← \(handler.source)\(handler.component.map { "  [\($0)]" } ?? "")\(handler.runtime.map { "  (\($0))" } ?? "")"
            )
        }
        lines.append("")
        lines.append("Storages online:")
        lines.append(
            "  \(natsURL) (JetStream\(embedded ? ", embedded, data in \(dataDirectory)/nats" : ""), streams \(Wire.tableStreamName(tenant: tenant, table: "<table>")) and \(Wire.streamName(tenant: tenant)))"
        )
        lines.append("  \(sqlitePath) (coordinator state)")
        if let plan {
            var kept: [String: [String]] = [:]
            for (table, storage) in plan.bindings { kept[storage, default: []].append(table) }
            for (storage, tables) in kept.sorted(by: { $0.key < $1.key }) {
                let place = storage == StoragePlan.devSQLite ? "sqlite://\(tablesPath)" : storage
                lines.append("  \(place) (keeps \(tables.sorted().joined(separator: ", ")); read them at /v1/tables/{table}/records GET)")
            }
            for note in plan.notes { lines.append("  note: \(note)") }
        }
        lines.append("")
        return lines.joined(separator: "\n")
    }
}

/// The admin token's minimum strength: it guards every tenant and key.
enum AdminToken {
    static let minimumLength = 24
    static let minimumDistinctCharacters = 10

    /// What makes `token` too weak, or `nil`.
    static func weakness(of token: String) -> String? {
        if token.count < minimumLength { return "must be at least \(minimumLength) characters (it has \(token.count))" }
        if Set(token).count < minimumDistinctCharacters {
            return "must have at least \(minimumDistinctCharacters) different characters (it has \(Set(token).count))"
        }
        return nil
    }
}
