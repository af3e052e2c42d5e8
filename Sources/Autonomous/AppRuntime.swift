import ClusterCore
package import Coordinator
import Foundation
package import HTTPEndpoints
import Ingress
package import Logging
package import NATS
package import ServiceLifecycle
import Synchronization
package import Telemetry
import Tracing
package import UnixSignals
import Worker

/// Which parts of the app a process runs.
package struct Role: Sendable, Hashable, CustomStringConvertible {
    let runsIngress: Bool
    let runsWorker: Bool
    let runsCoordinator: Bool
    package let description: String

    package static let ingress = Role(runsIngress: true, runsWorker: false, runsCoordinator: false, description: "ingress")
    package static let worker = Role(runsIngress: false, runsWorker: true, runsCoordinator: false, description: "worker")
    package static let coordinator = Role(runsIngress: false, runsWorker: false, runsCoordinator: true, description: "coordinator")
    /// Every role in one process.
    package static let all = Role(runsIngress: true, runsWorker: true, runsCoordinator: true, description: "all")
}

/// Settings of a running app process. The command line fills it from flags and environment
/// variables; tests fill it directly.
package struct RuntimeConfiguration: Sendable {
    /// NATS server URL(s), comma separated. `nil` in `dev` starts an embedded nats-server.
    package var natsURL: String?
    /// TLS files for the NATS connections (``NATS/NATSConnection/Configuration/tls``).
    package var natsTLS: NATSConnection.Configuration.TLS?
    /// A NATS credentials file (``NATS/NATSConnection/Configuration/credentialsFile``).
    package var natsCredentialsFile: String?
    /// A NATS user and password (AUTONOMOUS_NATS_USER / AUTONOMOUS_NATS_PASSWORD); never logged.
    package var natsUser: String?
    package var natsPassword: String?
    /// HTTPS for the ingress (AUTONOMOUS_TLS_CERT / AUTONOMOUS_TLS_KEY).
    package var httpTLS: ServerTLS?
    /// HTTPS for the admin API (AUTONOMOUS_ADMIN_TLS_CERT / AUTONOMOUS_ADMIN_TLS_KEY); needs a
    /// port of its own, since the health port stays plain HTTP for probes.
    package var adminTLS: ServerTLS?
    /// The tenant this process serves.
    package var tenant: String = "default"
    package var httpHost: String = "127.0.0.1"
    package var httpPort: Int = 3000
    /// Worker: run only these handlers (`nil`: all).
    package var handlers: Set<String>?
    /// Worker: run every handler but these.
    package var excludedHandlers: Set<String> = []
    /// Port of `/healthz`, `/readyz` and `/metrics` (`nil`: none). The ingress answers
    /// `/healthz` and `/readyz` on its HTTP port too, never `/metrics`.
    package var healthPort: Int?
    /// Address the health port listens on: loopback unless the deployment chooses otherwise
    /// (`/metrics` names tenants and handlers).
    package var healthHost: String = "127.0.0.1"
    /// Address the admin API listens on: loopback unless the deployment chooses otherwise.
    package var adminHost: String = "127.0.0.1"
    /// PostgreSQL for the coordinator's state (`postgres://user@host:port/db`); `nil` keeps it
    /// in SQLite under `dataDirectory`.
    package var postgresURL: String?
    /// Where `dev` keeps NATS data and the coordinator's SQLite file.
    package var dataDirectory: String = ".autonomous"
    /// The storages of `autonomous.json` and the tables it binds to them.
    package var storages: [DeploymentConfiguration.Storage] = []
    package var tableSettings: [String: DeploymentConfiguration.TableSettings] = [:]
    /// The `autonomous.json` they were read from (`nil`: none was read), for messages.
    package var deploymentFile: String?
    /// `dev`: keep every table no storage keeps in SQLite (``tablesSQLitePath``), so that
    /// reads work with no configuration.
    package var keepUnboundTablesInSQLite = false
    /// Process environment, for secrets and component settings.
    package var environment: [String: String] = [:]
    package var topology = Topology.Configuration()
    package var connectTimeout: Duration = .seconds(30)
    package var publishTimeout: Duration = .seconds(5)
    package var maxBodyBytes: Int = 16 * 1024 * 1024
    package var maxInFlightRecords: Int = 200_000
    /// Most records one record-API request (or one route's append) may carry
    /// (``Ingress/Configuration/maxRecordsPerRequest``).
    package var maxRecordsPerRequest: Int = 10_000
    /// Ingress connection and request bounds (``Ingress/Configuration``): open connections,
    /// body bytes held in memory, and how long a client may take to send a request.
    package var maxConnections: Int = 10_000
    package var maxBufferedBodyBytes: Int = 256 * 1024 * 1024
    package var idleTimeout: Duration = .seconds(30)
    package var bodyTimeout: Duration = .seconds(60)
    package var unauthenticatedRequestsPerAddress: Int = 20
    /// NATS connections the ingress spreads tenants over (``Ingress/Configuration/publishLanes``).
    package var ingressLanes: Int = 4
    /// Small record-API requests publish through the event loops' own NATS connections
    /// (``Ingress/Configuration/eventLoopPublishing``).
    package var ingressEventLoopPublishing = true
    /// Where handler spans are exported (OpenTelemetry's `OTEL_*` variables); `nil`: nowhere.
    package var tracing: OTLPConfiguration?
    /// The ingress logs one `notice` line per request (AUTONOMOUS_ACCESS_LOG).
    package var accessLog = false
    /// How long the ingress holds a request of a tenant over its limit
    /// (``Ingress/Configuration/rateLimitMaxDelay``).
    package var rateLimitMaxDelay: Duration = .seconds(1)
    /// The time tenant limits refill by (a clock a test moves by hand).
    package var rateLimitClock: @Sendable () -> ContinuousClock.Instant = { .now }
    /// Whether tenant limits are shared among the ingress nodes alive
    /// (``Ingress/Configuration/shareLimitsAcrossNodes``) or enforced whole by each.
    package var shareRateLimitsAcrossNodes = true
    /// Longest time a graceful shutdown may take before the process stops anyway.
    package var shutdownTimeout: Duration = .seconds(30)
    /// Called with the HTTP port once the ingress listens.
    package var onListening: (@Sendable (Int) async -> Void)?
    /// Coordinator: port of the admin API (with `/healthz` and `/readyz`); 0 picks a free
    /// one. `nil`: the coordinator serves it on `healthPort` when it runs alone, else not at all.
    package var adminPort: Int?
    /// Coordinator: the bearer token of the admin API (`nil`: admin API disabled).
    package var adminToken: String?
    /// Called with the admin port once the coordinator's admin server listens.
    package var onAdminListening: (@Sendable (Int) async -> Void)?
    /// Ingress: refuse requests without an API key.
    package var requireAPIKey = false
    /// Coordinator: leader lease length.
    package var leaseTTL: Duration = .seconds(10)
    /// Coordinator: partition lease length for ordered handlers.
    package var partitionLeaseTTL: Duration = .seconds(6)
    /// How long a call to the coordinators waits for an answer.
    package var coordinatorCallTimeout: Duration = .seconds(5)
    /// Ingress: how long a route of another runtime may take to answer (AUTONOMOUS_ROUTE_TIMEOUT).
    package var routeTimeout: Duration = .seconds(30)
    /// Coordinator: this process's name in leases (`nil`: host, pid and a random suffix).
    package var coordinatorID: String?

    package init() {}

    package var sqlitePath: String { dataDirectory + "/coordinator.sqlite" }
    /// Where `dev` keeps tables.
    package var tablesSQLitePath: String { dataDirectory + "/tables.sqlite" }
}

/// Runs an app graph in one of its roles.
package struct AppRuntime: Sendable {
    package let graph: AppGraph
    package var configuration: RuntimeConfiguration

    package init(graph: AppGraph, configuration: RuntimeConfiguration) {
        self.graph = graph
        self.configuration = configuration
    }

    /// Connects to NATS, builds the role's services and runs them until SIGTERM/SIGINT (or
    /// until `shutdown` is triggered). Services stop in reverse order: ingress first, then
    /// workers finish their batches, then the coordinator, then the NATS connection.
    package func run(
        role: Role,
        logger: Logger,
        signals: [UnixSignal] = [.sigterm, .sigint],
        onStarted: (@Sendable (ServiceGroup) async -> Void)? = nil
    ) async throws {
        guard let url = configuration.natsURL else {
            throw ConfigurationError("no NATS URL configured (--nats-url or AUTONOMOUS_NATS_URL)")
        }
        if let problem = Names.problem(with: configuration.tenant, kind: "tenant") { throw ConfigurationError(problem) }
        let plan = try StoragePlan.make(graph: graph, configuration: configuration)
        ProcessMetrics.install()
        var natsConfiguration = NATSConnection.Configuration(url: url)
        natsConfiguration.name = "\(graph.name)-\(role)"
        natsConfiguration.connectTimeout = configuration.connectTimeout
        natsConfiguration.publishTimeout = configuration.publishTimeout
        natsConfiguration.tls = configuration.natsTLS
        natsConfiguration.credentialsFile = configuration.natsCredentialsFile
        natsConfiguration.user = configuration.natsUser
        natsConfiguration.password = configuration.natsPassword
        natsConfiguration.blockingThreads = max(8, graph.handlers.reduce(0) { $0 + $1.options.concurrency } + 4)
        let connection = try await NATSConnection.connect(configuration: natsConfiguration, logger: logger)
        let actorSystem = ClusterActorSystem(connection: connection, callTimeout: configuration.coordinatorCallTimeout, logger: logger)
        let coordinatorEndpoint = try CoordinatorEndpoint.remote(in: actorSystem)
        // The outer group: the NATS connection (first to start, last to stop), the PostgreSQL
        // pool, then the role's services. Those run in a group of their own that starts only
        // after the store is migrated and JetStream provisioned, so their first publish or
        // bind succeeds; a graceful shutdown of the outer group reaches them first.
        var services: [any Service] = [ConnectionService(connection: connection, actorSystem: actorSystem)]
        // The span exporter starts first and stops last, so the spans of the last batches
        // handled during a graceful shutdown are still sent.
        if let exporter = makeSpanExporter(role: role, logger: logger) { services.insert(exporter, at: 0) }
        var store: (any CoordinatorStore)?
        // Storages are opened by the processes that write (workers) or read (ingress, and
        // handlers in workers) kept tables; their pools run in the outer group.
        var storages: OpenedStorages?
        do {
            if role.runsWorker || role.runsIngress {
                let opened = try await plan.open(graph: graph, configuration: configuration, connection: connection, logger: logger)
                storages = opened
                services += opened.services
            }
            if role.runsCoordinator {
                if let url = configuration.postgresURL {
                    let postgres = try await PostgresStore.open(
                        url: url,
                        password: configuration.environment["AUTONOMOUS_POSTGRES_PASSWORD"],
                        logger: logger
                    )
                    services.append(postgres)
                    store = postgres
                } else {
                    store = try await SQLiteStore.open(path: configuration.sqlitePath, logger: logger)
                }
            }
        } catch {
            await storages?.close()
            await connection.close()
            throw error
        }
        let graph = plan.graph(self.graph, opened: storages)
        services.append(
            RoleServices(logger: logger) { [store, storages] in
                try await storages?.prepare(graph)
                return try await makeServices(
                    graph: graph,
                    role: role,
                    store: store,
                    storages: storages,
                    connection: connection,
                    actorSystem: actorSystem,
                    coordinatorEndpoint: coordinatorEndpoint,
                    logger: logger
                )
            }
        )
        var groupConfiguration = ServiceGroupConfiguration(
            services: services.map { .init(service: $0) },
            gracefulShutdownSignals: signals,
            cancellationSignals: [],
            logger: logger
        )
        // A handler that never returns cannot hold the process: after this long the services
        // still running are cancelled (their unacknowledged records are redelivered).
        groupConfiguration.maximumGracefulShutdownDuration = configuration.shutdownTimeout
        let group = ServiceGroup(configuration: groupConfiguration)
        if let onStarted { await onStarted(group) }
        do {
            try await group.run()
        } catch {
            try? await store?.close()
            await storages?.close()
            await connection.close()
            throw error
        }
        try? await store?.close()
        await storages?.close()
        await connection.close()
    }

    /// The OTLP exporter of `configuration.tracing`, its tracer bootstrapped for the process
    /// (the handlers' spans and any an app starts with `withSpan`). `nil` when tracing is not
    /// configured, or when the process bootstrapped a tracer of its own before (that one is kept).
    private func makeSpanExporter(role: Role, logger: Logger) -> OTLPExporter? {
        guard let tracing = configuration.tracing else { return nil }
        let exporter = OTLPExporter(
            configuration: tracing,
            service: "\(graph.name)-\(role)",
            attributes: [
                ("autonomous.app", graph.name), ("autonomous.role", role.description), ("autonomous.tenant", configuration.tenant),
            ],
            logger: logger
        )
        guard TracerBootstrap.install(exporter.tracer) else {
            logger.warning("A tracer was bootstrapped before the app started; OTEL_EXPORTER_OTLP_* settings are not used")
            return nil
        }
        return exporter
    }

    /// The role's services, once the store is migrated and the topology provisioned.
    private func makeServices(
        graph: AppGraph,
        role: Role,
        store: (any CoordinatorStore)?,
        storages: OpenedStorages?,
        connection: NATSConnection,
        actorSystem: ClusterActorSystem,
        coordinatorEndpoint: CoordinatorEndpoint,
        logger: Logger
    ) async throws -> [any Service] {
        var services: [any Service] = []
        if role.runsCoordinator {
            guard let coordinatorStore = store else { preconditionFailure("a coordinator role runs with a store") }
            try await coordinatorStore.migrate()
            // Provision before ingress and workers start so their first publish or bind
            // succeeds. A new NATS cluster answers JetStream requests only once it has
            // elected a meta leader, so keep trying until the connect timeout.
            let clock = ContinuousClock()
            let deadline = clock.now.advanced(by: configuration.connectTimeout)
            while true {
                do {
                    try await Topology.provision(
                        graph: graph,
                        tenants: [configuration.tenant],
                        configuration: configuration.topology,
                        connection: connection
                    )
                    break
                } catch let error as NATSError where clock.now < deadline {
                    logger.info("JetStream not ready for provisioning yet, retrying", metadata: ["error": "\(error)"])
                    try await Task.sleep(for: .milliseconds(500))
                }
            }
            var coordinatorConfiguration = Coordinator.Configuration(
                defaultTenant: configuration.tenant,
                topology: configuration.topology,
                instanceID: configuration.coordinatorID
            )
            coordinatorConfiguration.leaseTTL = configuration.leaseTTL
            coordinatorConfiguration.partitionLeaseTTL = configuration.partitionLeaseTTL
            services.append(
                Coordinator(
                    graph: graph,
                    configuration: coordinatorConfiguration,
                    connection: connection,
                    actorSystem: actorSystem,
                    store: coordinatorStore,
                    logger: logger
                )
            )
            let adminPort = configuration.adminPort ?? (role == .coordinator ? configuration.healthPort : nil)
            if let adminPort {
                if configuration.adminPort == nil, configuration.adminTLS != nil {
                    throw ConfigurationError(
                        "AUTONOMOUS_ADMIN_TLS_CERT is set but the admin API shares the plain-HTTP health port (no --admin-port): "
                            + "give the admin API a port of its own"
                    )
                }
                if configuration.adminPort == nil, configuration.adminHost != configuration.healthHost {
                    throw ConfigurationError(
                        "the admin API shares the health port (no --admin-port), but AUTONOMOUS_ADMIN_HOST (\(configuration.adminHost)) "
                            + "differs from AUTONOMOUS_HEALTH_HOST (\(configuration.healthHost)): give the admin API a port of its own"
                    )
                }
                services.append(
                    AdminServer(
                        host: configuration.adminHost,
                        port: adminPort,
                        adminToken: configuration.adminToken,
                        administration: Administration(
                            graph: graph,
                            store: coordinatorStore,
                            connection: connection,
                            topology: configuration.topology,
                            logger: logger
                        ),
                        connection: connection,
                        logger: logger,
                        tls: configuration.adminTLS,
                        onListening: configuration.onAdminListening
                    )
                )
            }
        }
        if role.runsWorker {
            var workerConfiguration = Worker.Configuration(tenants: [configuration.tenant], environment: configuration.environment)
            let known = Set(graph.handlers.filter { $0.runtime == nil }.map(\.name))
            for name in configuration.handlers.map({ $0.union(configuration.excludedHandlers) }) ?? configuration.excludedHandlers
            where !known.contains(name) {
                if let external = graph.handlers.first(where: { $0.name == name })?.runtime {
                    throw ConfigurationError("handler '\(name)' runs in \(external); start that runtime's workers for it (docs/python.md)")
                }
                throw ConfigurationError("unknown handler '\(name)'; the app has \(known.sorted().joined(separator: ", "))")
            }
            let selected = (configuration.handlers ?? known).subtracting(configuration.excludedHandlers)
            workerConfiguration.handlers = selected
            workerConfiguration.ackWait = configuration.topology.ackWait
            workerConfiguration.tenantDirectory = { try await coordinatorEndpoint.activeTenants() }
            workerConfiguration.partitionAssigner = { request in try await coordinatorEndpoint.assignPartitions(request) }
            workerConfiguration.tableReader = storages?.reader
            services.append(try Worker(graph: graph, configuration: workerConfiguration, connection: connection, logger: logger))
        }
        if role.runsIngress {
            var ingressConfiguration = Ingress.Configuration(tenant: configuration.tenant, environment: configuration.environment)
            ingressConfiguration.host = configuration.httpHost
            ingressConfiguration.port = configuration.httpPort
            ingressConfiguration.maxBodyBytes = configuration.maxBodyBytes
            ingressConfiguration.maxInFlightRecords = configuration.maxInFlightRecords
            ingressConfiguration.maxRecordsPerRequest = configuration.maxRecordsPerRequest
            ingressConfiguration.maxConnections = configuration.maxConnections
            ingressConfiguration.maxBufferedBodyBytes = configuration.maxBufferedBodyBytes
            ingressConfiguration.idleTimeout = configuration.idleTimeout
            ingressConfiguration.bodyTimeout = configuration.bodyTimeout
            ingressConfiguration.unauthenticatedRequestsPerAddress = configuration.unauthenticatedRequestsPerAddress
            ingressConfiguration.publishLanes = configuration.ingressLanes
            ingressConfiguration.rateLimitMaxDelay = configuration.rateLimitMaxDelay
            ingressConfiguration.rateLimitClock = configuration.rateLimitClock
            ingressConfiguration.shareLimitsAcrossNodes = configuration.shareRateLimitsAcrossNodes
            ingressConfiguration.eventLoopPublishing = configuration.ingressEventLoopPublishing
            ingressConfiguration.accessLog = configuration.accessLog
            ingressConfiguration.onListening = configuration.onListening
            ingressConfiguration.requireAPIKey = configuration.requireAPIKey
            ingressConfiguration.tls = configuration.httpTLS
            ingressConfiguration.tableReader = storages?.reader
            ingressConfiguration.routeTimeout = configuration.routeTimeout
            ingressConfiguration.accessForKeyHash = { hash in
                do {
                    return try await coordinatorEndpoint.access(forKeyHash: hash)
                } catch let error as ClusterCallError where error.isUnknownCall {
                    // A coordinator of the release before tenant limits (a rolling upgrade):
                    // the tenant alone, no limit.
                    return try await coordinatorEndpoint.tenant(forKeyHash: hash).map { TenantAccess(tenant: $0) }
                }
            }
            ingressConfiguration.limitsForTenant = { tenant in
                do {
                    return try await coordinatorEndpoint.limits(ofTenant: tenant)
                } catch let error as ClusterCallError where error.isUnknownCall {
                    return nil  // an older coordinator: no limit for key-less requests yet
                }
            }
            services.append(try Ingress(graph: graph, configuration: ingressConfiguration, connection: connection, logger: logger))
        }
        // One health port per process, unless the lone coordinator's admin server answers there.
        if let healthPort = configuration.healthPort, !(role == .coordinator && configuration.adminPort == nil) {
            services.append(HealthServer(host: configuration.healthHost, port: healthPort, connection: connection, logger: logger))
        }
        return services
    }
}

/// Prepares the role's services (migrations, provisioning) and runs them as a group of their
/// own inside the process's group, which shuts them down gracefully before the services
/// they depend on.
struct RoleServices: Service, CustomStringConvertible {
    var description: String { "RoleServices" }
    let logger: Logger
    let prepare: @Sendable () async throws -> [any Service]

    func run() async throws {
        let services = try await prepare()
        let group = ServiceGroup(
            configuration: ServiceGroupConfiguration(
                services: services.map { .init(service: $0) },
                gracefulShutdownSignals: [],
                cancellationSignals: [],
                logger: logger
            )
        )
        try await group.run()
    }
}

/// Keeps the NATS connection open for the services after it and closes it last; serves the
/// distributed actors' calls meanwhile.
struct ConnectionService: Service, CustomStringConvertible {
    var description: String { "ConnectionService(\(connection.configuration.name))" }
    let connection: NATSConnection
    let actorSystem: ClusterActorSystem

    func run() async throws {
        // Serves calls to this process's distributed actors until the graceful shutdown.
        await withDiscardingTaskGroup { group in
            group.addTask { await actorSystem.run() }
            try? await gracefulShutdown()
            actorSystem.shutdown()
        }
        await connection.drain()
    }
}

extension RuntimeConfiguration: CustomStringConvertible {
    /// Never the environment or the admin token: they hold the process's secrets.
    package var description: String {
        "RuntimeConfiguration(tenant: \(tenant), http: \(httpHost):\(httpPort), health: \(healthHost):\(healthPort.map(String.init) ?? "none"), admin: \(adminHost):\(adminPort.map(String.init) ?? "default"), dataDirectory: \(dataDirectory), postgres: \(postgresURL == nil ? "no" : "yes"), adminToken: \(adminToken == nil ? "none" : "set, not shown"), environment: \(environment.count) variables, not shown)"
    }
}

/// `InstrumentationSystem.bootstrap` may run once per process; an app run twice in one
/// process (tests) keeps the first tracer.
enum TracerBootstrap {
    // Guarded by the mutex: whether this process bootstrapped a tracer.
    private static let done = Mutex(false)

    /// Bootstraps `tracer` unless a tracer is already in place; returns whether it did.
    static func install(_ tracer: some Tracer) -> Bool {
        done.withLock { done in
            guard !done, InstrumentationSystem.tracer is NoOpTracer else { return false }
            InstrumentationSystem.bootstrap(tracer)
            done = true
            return true
        }
    }
}
