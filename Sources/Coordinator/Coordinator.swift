package import ClusterCore
import Foundation
package import Logging
package import NATS
import ServiceLifecycle
import Synchronization

/// The cluster's stateful role.
///
/// Every coordinator provisions the JetStream topology, hosts the ``CoordinatorEndpoint``
/// (tenant lookups and partition leases for workers and ingress nodes, answered from the
/// store) and stands for election. The leader alone fires schedules and provisions tenants
/// created since it took over. Run two or more for failover; they share one Postgres.
package struct Coordinator: Service {
    package struct Configuration: Sendable {
        /// The tenant created at startup (it serves records sent without an API key).
        package var defaultTenant: String
        package var topology: Topology.Configuration
        /// Leader lease length: a standby takes over at most this long (plus a tenth) after
        /// the leader's last renewal.
        package var leaseTTL: Duration = .seconds(10)
        /// Partition lease length for ordered handlers.
        package var partitionLeaseTTL: Duration = .seconds(6)
        /// This coordinator's name in leases (unique per process).
        package var instanceID: String

        package init(defaultTenant: String, topology: Topology.Configuration = .init(), instanceID: String? = nil) {
            self.defaultTenant = defaultTenant
            self.topology = topology
            self.instanceID = instanceID ?? Self.makeInstanceID()
        }

        package static func makeInstanceID() -> String {
            let host = ProcessInfo.processInfo.hostName.split(separator: ".").first.map(String.init) ?? "host"
            return "\(host)-\(ProcessInfo.processInfo.processIdentifier)-\(UUID().uuidString.prefix(8).lowercased())"
        }
    }

    let graph: AppGraph
    let configuration: Configuration
    let connection: NATSConnection
    let actorSystem: ClusterActorSystem
    let store: any CoordinatorStore
    let logger: Logger

    package init(
        graph: AppGraph,
        configuration: Configuration,
        connection: NATSConnection,
        actorSystem: ClusterActorSystem,
        store: any CoordinatorStore,
        logger: Logger
    ) {
        self.graph = graph
        self.configuration = configuration
        self.connection = connection
        self.actorSystem = actorSystem
        self.store = store
        var logger = logger
        logger[metadataKey: "coordinator.id"] = "\(configuration.instanceID)"
        self.logger = logger
    }

    package func run() async throws {
        try await store.migrate()
        do {
            try await store.createTenant(configuration.defaultTenant)
        } catch let error as StoreError where error.kind == .duplicate {
            // Created by an earlier start or another coordinator.
        }
        let backend = StoreBackend(graph: graph, store: store, partitionLeaseTTL: configuration.partitionLeaseTTL)
        let endpoint = CoordinatorEndpoint.host(in: actorSystem, backend: backend)
        let election = LeaderElection(store: store, holder: configuration.instanceID, ttl: configuration.leaseTTL, logger: logger)
        let duties = LeaderDuties(
            graph: graph,
            configuration: configuration,
            connection: connection,
            store: store,
            logger: logger
        )
        // Ordered handlers of another runtime lease their partitions over plain JSON.
        let servesPartitions = graph.handlers.contains { $0.runtime != nil && $0.options.ordering != nil }
        await cancelWhenGracefulShutdown {
            await withDiscardingTaskGroup { group in
                if servesPartitions {
                    group.addTask { [connection, logger] in
                        await PartitionService.run(connection: connection, backend: backend, logger: logger)
                    }
                }
                await election.run { leadership in await duties.run(leadership) }
                group.cancelAll()
            }
        }
        actorSystem.resignID(endpoint.id)
    }
}

/// What only the leader does: fire schedules and provision tenants, for every enabled tenant.
struct LeaderDuties: Sendable {
    let graph: AppGraph
    let configuration: Coordinator.Configuration
    let connection: NATSConnection
    let store: any CoordinatorStore
    let logger: Logger

    /// How often the leader looks for new, disabled and enabled tenants.
    static let tenantRefresh: Duration = .seconds(1)

    func run(_ leadership: Leadership) async {
        await withDiscardingTaskGroup { group in
            var schedulers: [String: [Scheduler]] = [:]
            var provisioned: Set<String> = []
            while !Task.isCancelled && leadership.isValid {
                if let tenants = try? await store.tenants() {
                    let enabled = Set(tenants.filter { !$0.disabled }.map(\.name))
                    for tenant in enabled.sorted() where schedulers[tenant] == nil {
                        if !provisioned.contains(tenant) {
                            do {
                                try await Topology.provision(
                                    graph: graph,
                                    tenants: [tenant],
                                    configuration: configuration.topology,
                                    connection: connection
                                )
                                provisioned.insert(tenant)
                            } catch {
                                logger.warning(
                                    "Cannot provision tenant yet",
                                    metadata: ["coordinator.tenant": "\(tenant)", "error": "\(error)"]
                                )
                                continue
                            }
                        }
                        schedulers[tenant] = startSchedulers(tenant: tenant, leadership: leadership, in: &group)
                    }
                    for (tenant, running) in schedulers where !enabled.contains(tenant) {
                        running.forEach { $0.stopped.store(true, ordering: .relaxed) }
                        schedulers[tenant] = nil
                    }
                }
                try? await Task.sleep(for: Self.tenantRefresh)
            }
            // Leadership ended: stop every scheduler now.
            group.cancelAll()
        }
    }

    private func startSchedulers(tenant: String, leadership: Leadership, in group: inout DiscardingTaskGroup) -> [Scheduler] {
        var started: [Scheduler] = []
        for definition in graph.schedules {
            guard let table = graph.tables.first(where: { $0.name == definition.name && $0.kind == .schedule }) else { continue }
            let scheduler = Scheduler(
                definition: definition,
                tenant: tenant,
                table: table,
                connection: connection,
                store: store,
                logger: logger
            )
            started.append(scheduler)
            let logger = self.logger
            group.addTask {
                var failures = 0
                while !Task.isCancelled && leadership.isValid && !scheduler.stopped.load(ordering: .relaxed) {
                    do {
                        try await scheduler.run(leadership: leadership)
                    } catch is LeadershipLost {
                        return
                    } catch is CancellationError {
                        return
                    } catch {
                        // A store or NATS failure: start over (re-reading state) after a pause.
                        failures += 1
                        logger.warning(
                            "Scheduler failed, restarting",
                            metadata: ["coordinator.schedule": "\(definition.name)", "error": "\(error)"]
                        )
                        try? await Task.sleep(for: .milliseconds(min(5000, 250 * failures)))
                    }
                }
            }
        }
        return started
    }
}

/// Creates the streams and consumers an app needs.
package enum Topology {
    package struct Configuration: Sendable {
        /// Stream replicas: 1 for a single server, 3 for a production cluster.
        package var replicas: Int = 1
        /// How long JetStream remembers message ids to drop duplicates.
        package var duplicateWindow: Duration = .seconds(120)
        /// How long records are kept (0 = forever).
        package var maxAge: Duration = .zero
        /// Largest stream size in bytes (-1 = unlimited).
        package var maxBytes: Int64 = -1
        /// Consumer ack wait: a record not acked within it is redelivered.
        package var ackWait: Duration = .seconds(30)
        /// Records delivered but not yet acked, per consumer (flow control).
        package var maxAckPending: Int = 65_536
        package var storage: StorageType = .file

        package init() {}
    }

    /// The tenant's stream: its schedule ticks, dead letters and run notes.
    package static func streamConfiguration(tenant: String, configuration: Configuration) -> StreamConfiguration {
        var stream = StreamConfiguration(name: Wire.streamName(tenant: tenant), subjects: Wire.streamSubjects(tenant: tenant))
        stream.description = "Autonomous schedule ticks, dead letters and run notes of tenant \(tenant)"
        return configured(stream, configuration)
    }

    /// The stream of one table of a tenant.
    package static func streamConfiguration(tenant: String, table: String, configuration: Configuration) -> StreamConfiguration {
        var stream = StreamConfiguration(
            name: Wire.tableStreamName(tenant: tenant, table: table),
            subjects: Wire.tableStreamSubjects(tenant: tenant, table: table)
        )
        stream.description = "Autonomous table \(table) of tenant \(tenant)"
        return configured(stream, configuration)
    }

    private static func configured(_ stream: StreamConfiguration, _ configuration: Configuration) -> StreamConfiguration {
        var stream = stream
        stream.replicas = configuration.replicas
        stream.duplicateWindow = configuration.duplicateWindow
        stream.maxAge = configuration.maxAge
        stream.maxBytes = configuration.maxBytes
        stream.storage = configuration.storage
        return stream
    }

    /// Creates or updates a tenant's streams (one per table of `graph`, and the tenant's own)
    /// and its handlers' consumers.
    ///
    /// A tenant stream of the earlier one-stream layout (`aut.<tenant>.>`, every table in it)
    /// is narrowed to schedules and dead letters once every handler has processed its records
    /// (the records stay: dead letters and ticks are used as before, table records remain as
    /// history until their max age); its handlers' consumers move to the tables' streams. While
    /// a handler still has records to process there, provisioning stops with an error naming
    /// the handlers and what to do, since narrowing would leave those records unread.
    package static func provision(
        graph: AppGraph,
        tenants: [String],
        configuration: Configuration,
        connection: NATSConnection
    ) async throws {
        for tenant in tenants {
            guard Names.isValid(tenant) else { throw ConfigurationError("invalid tenant name '\(tenant)'") }
            let tenantStream = streamConfiguration(tenant: tenant, configuration: configuration)
            if let existing = try await connection.streamState(tenantStream.name),
                existing.subjects.contains(Wire.legacyStreamSubject(tenant: tenant))
            {
                let legacyConsumers = graph.handlers.filter { $0.sourceKind == .table }.flatMap { handler in
                    [handler.consumerName]
                        + (0..<(handler.options.ordering?.partitions ?? 0)).map {
                            HandlerOrdering.consumerName(handler: handler.name, partition: $0)
                        }
                }
                if existing.messages > 0 {
                    var behind: [String] = []
                    for consumer in legacyConsumers {
                        if let state = try await connection.consumerState(stream: tenantStream.name, consumer: consumer),
                            state.numPending > 0 || state.numAckPending > 0
                        {
                            behind.append("\(consumer) (\(state.numPending) pending, \(state.numAckPending) unacknowledged)")
                        }
                    }
                    guard behind.isEmpty else {
                        throw ConfigurationError(
                            "stream \(tenantStream.name) holds tenant '\(tenant)' records in the one-stream layout of earlier versions "
                                + "(\(existing.messages) messages), and these consumers have not processed all of them: "
                                + behind.joined(separator: ", ") + ". This version keeps each table in a stream of its own (docs/wire.md). "
                                + "Stop sending records to the tenant, let workers of the earlier version catch up, then start this "
                                + "coordinator again: it moves the consumers and keeps the stream's dead letters"
                        )
                    }
                }
                // The handlers' consumers move to their tables' streams.
                for consumer in legacyConsumers {
                    try await connection.deleteConsumer(stream: tenantStream.name, consumer: consumer)
                }
                // Narrowed before the table streams are made: their subjects may not overlap it.
                try await connection.createOrUpdateStream(tenantStream)
            }
            for table in graph.tables where table.kind == .table {
                var stream = streamConfiguration(tenant: tenant, table: table.name, configuration: configuration)
                if let maxAge = table.retention.maxAge { stream.maxAge = maxAge }
                if let maxBytes = table.retention.maxBytes { stream.maxBytes = maxBytes }
                // A signed webhook's delivery id is its record id: JetStream must remember it as
                // long as the signature's timestamp is accepted, or a replay (or the provider's
                // own late retry) would be stored again.
                if let replay = graph.webhooks.filter({ $0.table == table.name }).compactMap(\.verification.replayWindow).max() {
                    stream.duplicateWindow = max(stream.duplicateWindow, replay)
                }
                try await connection.createOrUpdateStream(stream)
            }
            // Last: the ingress reports ready once the tenant stream exists.
            try await connection.createOrUpdateStream(tenantStream)
            for handler in graph.handlers {
                guard let source = graph.source(of: handler) else { continue }
                let stream = source.streamName(tenant: tenant)
                let maxAckPending = handler.options.maxAckPending ?? configuration.maxAckPending
                // A sink that backfills from a time starts at that time's sequence when its
                // consumer is created (an existing consumer keeps where it started).
                var startSequence: UInt64?
                if let time = handler.startTime {
                    let nanoseconds = Int64((time.timeIntervalSince1970 * 1e9).rounded(.up))
                    if let found = try await connection.firstSequence(stream: stream, atOrAfter: nanoseconds) {
                        startSequence = found
                    } else {
                        startSequence = (try await connection.streamState(stream)?.lastSequence ?? 0) + 1
                    }
                }
                if let ordering = handler.options.ordering {
                    // One consumer per partition. A worker that takes over a partition after
                    // a crash may re-create it at its ack floor, so existing ones are kept.
                    for partition in 0..<ordering.partitions {
                        let consumer = handler.partitionConsumer(
                            source: source,
                            tenant: tenant,
                            partition: partition,
                            ackWait: configuration.ackWait,
                            startSequence: startSequence
                        )
                        try await connection.createOrUpdateConsumer(stream: stream, consumer, updateExisting: false)
                    }
                    continue
                }
                var consumer = ConsumerConfiguration(durableName: handler.consumerName)
                consumer.filterSubject = source.filterSubject(tenant: tenant)
                consumer.ackWait = configuration.ackWait
                consumer.maxAckPending = maxAckPending
                consumer.startSequence = startSequence
                consumer.description = "Autonomous handler \(handler.name)"
                try await connection.createOrUpdateConsumer(stream: stream, consumer)
            }
        }
    }
}

// What a service group logs for the coordinator: short (the store and graph are large).
extension Coordinator: CustomStringConvertible {
    package var description: String {
        "Coordinator(app: \(graph.name), tenant: \(configuration.defaultTenant), id: \(configuration.instanceID))"
    }
}
