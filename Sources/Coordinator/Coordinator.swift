public import ClusterCore
import Foundation
public import Logging
public import NATS
public import ServiceLifecycle

/// The cluster's stateful role: provisions the JetStream topology and fires schedules.
///
/// Provisioning is idempotent (create or update), so every coordinator start, and `dev`,
/// brings streams and consumers in line with the app graph and configuration.
public struct Coordinator: Service {
    public struct Configuration: Sendable {
        public var tenants: [String]
        public var topology: Topology.Configuration

        public init(tenants: [String], topology: Topology.Configuration = .init()) {
            self.tenants = tenants
            self.topology = topology
        }
    }

    let graph: AppGraph
    let configuration: Configuration
    let connection: NATSConnection
    let store: any CoordinatorStore
    let logger: Logger

    public init(
        graph: AppGraph,
        configuration: Configuration,
        connection: NATSConnection,
        store: any CoordinatorStore,
        logger: Logger
    ) {
        self.graph = graph
        self.configuration = configuration
        self.connection = connection
        self.store = store
        self.logger = logger
    }

    public func run() async throws {
        try await store.migrate()
        try await provisionWithRetry()
        do {
            try await runSchedulers()
        } catch is CancellationError {
            // Graceful shutdown cancels the schedulers' sleeps; that is a normal stop.
        }
        // With no schedules there is nothing to run, but the role stays up until shutdown
        // (a service that returns early stops its whole group).
        try? await gracefulShutdown()
    }

    private func runSchedulers() async throws {
        try await cancelWhenGracefulShutdown {
            try await withThrowingDiscardingTaskGroup { group in
                for tenant in configuration.tenants {
                    for schedule in graph.schedules {
                        let scheduler = Scheduler(
                            definition: schedule,
                            tenant: tenant,
                            table: graph.tables.first { $0.name == schedule.name && $0.kind == .schedule }!,
                            connection: connection,
                            store: store,
                            logger: logger
                        )
                        group.addTask { try await scheduler.run() }
                    }
                }
            }
        }
    }

    private func provisionWithRetry() async throws {
        var attempt = 0
        while true {
            do {
                try await Topology.provision(graph: graph, tenants: configuration.tenants, configuration: configuration.topology, connection: connection)
                logger.info("JetStream topology provisioned", metadata: ["coordinator.tenants": "\(configuration.tenants.joined(separator: ","))"])
                return
            } catch let error as NATSError where error.isTransient {
                attempt += 1
                if attempt == 1 { logger.warning("Provisioning failed, retrying", metadata: ["error": "\(error)"]) }
                try await Task.sleep(for: .milliseconds(min(2000, 100 * attempt)))
            }
        }
    }
}

/// Creates the streams and consumers an app needs.
public enum Topology {
    public struct Configuration: Sendable {
        /// Stream replicas: 1 for a single server, 3 for a production cluster.
        public var replicas: Int = 1
        /// How long JetStream remembers message ids to drop duplicates.
        public var duplicateWindow: Duration = .seconds(120)
        /// How long records are kept (0 = forever).
        public var maxAge: Duration = .zero
        /// Largest stream size in bytes (-1 = unlimited).
        public var maxBytes: Int64 = -1
        /// Consumer ack wait: a record not acked within it is redelivered.
        public var ackWait: Duration = .seconds(30)
        /// Records delivered but not yet acked, per consumer (flow control).
        public var maxAckPending: Int = 65_536
        public var storage: StorageType = .file

        public init() {}
    }

    public static func streamConfiguration(tenant: String, configuration: Configuration) -> StreamConfiguration {
        var stream = StreamConfiguration(name: Wire.streamName(tenant: tenant), subjects: Wire.streamSubjects(tenant: tenant))
        stream.replicas = configuration.replicas
        stream.duplicateWindow = configuration.duplicateWindow
        stream.maxAge = configuration.maxAge
        stream.maxBytes = configuration.maxBytes
        stream.storage = configuration.storage
        stream.description = "Autonomous records of tenant \(tenant)"
        return stream
    }

    public static func provision(
        graph: AppGraph,
        tenants: [String],
        configuration: Configuration,
        connection: NATSConnection
    ) async throws {
        for tenant in tenants {
            guard Names.isValid(tenant) else { throw ConfigurationError("invalid tenant name '\(tenant)'") }
            let stream = streamConfiguration(tenant: tenant, configuration: configuration)
            try await connection.createOrUpdateStream(stream)
            for handler in graph.handlers {
                var consumer = ConsumerConfiguration(durableName: handler.consumerName)
                consumer.filterSubject =
                    handler.sourceKind == .table
                    ? Wire.tableSubject(tenant: tenant, table: handler.source)
                    : Wire.scheduleSubject(tenant: tenant, schedule: handler.source)
                consumer.ackWait = configuration.ackWait
                consumer.maxAckPending = handler.options.maxAckPending ?? configuration.maxAckPending
                consumer.description = "Autonomous handler \(handler.name)"
                try await connection.createOrUpdateConsumer(stream: stream.name, consumer)
            }
        }
    }
}
