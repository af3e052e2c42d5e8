package import ClusterCore
import Foundation
package import Logging
package import NATS
import Synchronization

/// Operations on tenants, API keys and schedules, shared by the admin HTTP API and by the
/// coordinators' RPC endpoint. Every failure is a ``ClusterCallError`` whose code maps to an
/// HTTP status (404 unknown, 409 duplicate, 422 invalid, 503 unavailable).
package struct Administration: Sendable {
    let graph: AppGraph
    let store: any CoordinatorStore
    let connection: NATSConnection
    let topology: Topology.Configuration
    let logger: Logger

    package init(graph: AppGraph, store: any CoordinatorStore, connection: NATSConnection, topology: Topology.Configuration, logger: Logger)
    {
        self.graph = graph
        self.store = store
        self.connection = connection
        self.topology = topology
        self.logger = logger
    }

    // MARK: Tenants

    package struct TenantInfo: Codable, Sendable {
        package var name: String
        package var disabled: Bool
        package var createdAt: String
        package var stream: String
        /// Ingest limit of the cluster (shared among the ingress nodes); `null` fields: no limit.
        package var limits: Limits

        package struct Limits: Codable, Sendable {
            package var recordsPerSecond: Int?
            package var burst: Int?

            // Encoded with explicit nulls, so a reader sees "no limit" rather than a missing field.
            package func encode(to encoder: any Encoder) throws {
                var container = encoder.container(keyedBy: CodingKeys.self)
                try container.encode(recordsPerSecond, forKey: .recordsPerSecond)
                try container.encode(burst, forKey: .burst)
            }
        }
    }

    func info(_ record: TenantRecord) -> TenantInfo {
        TenantInfo(
            name: record.name,
            disabled: record.disabled,
            createdAt: ISO8601.format(record.createdAt),
            stream: Wire.streamName(tenant: record.name),
            limits: .init(recordsPerSecond: record.limits.recordsPerSecond, burst: record.limits.effectiveBurst)
        )
    }

    /// Creates the tenant and its stream and consumers.
    package func createTenant(_ name: String) async throws -> TenantInfo {
        if let problem = Names.problem(with: name, kind: "tenant") { throw ClusterCallError(.invalidArgument, problem) }
        do {
            try await store.createTenant(name)
        } catch let error as StoreError where error.kind == .duplicate {
            throw ClusterCallError(.duplicate, error.message)
        }
        do {
            try await Topology.provision(graph: graph, tenants: [name], configuration: topology, connection: connection)
        } catch {
            // The leader provisions every tenant it does not know yet, so this heals itself.
            logger.warning(
                "Tenant created; its stream will be provisioned later",
                metadata: ["coordinator.tenant": "\(name)", "error": "\(error)"]
            )
        }
        logger.notice("Tenant created", metadata: ["coordinator.tenant": "\(name)"])
        return try await tenant(name)
    }

    package func tenants() async throws -> [TenantInfo] {
        try await store.tenants().map(info)
    }

    package func tenant(_ name: String) async throws -> TenantInfo {
        guard Names.isValid(name), let record = try await store.tenants().first(where: { $0.name == name }) else {
            throw ClusterCallError(.notFound, "no tenant '\(name.prefix(100))'")
        }
        return info(record)
    }

    /// Sets how fast the tenant may ingest through the ingress nodes together (no `recordsPerSecond`:
    /// no limit). Ingress nodes apply it within their key cache lifetime.
    package func setLimits(_ name: String, _ limits: TenantLimits) async throws -> TenantInfo {
        if let problem = limits.problem { throw ClusterCallError(.invalidArgument, problem) }
        _ = try await tenant(name)
        try await store.setTenantLimits(name, limits: limits)
        logger.notice(
            "Tenant limits set",
            metadata: [
                "coordinator.tenant": "\(name)",
                "coordinator.records_per_second": "\(limits.recordsPerSecond.map(String.init) ?? "unlimited")",
                "coordinator.burst": "\(limits.effectiveBurst.map(String.init) ?? "-")",
            ]
        )
        return try await tenant(name)
    }

    /// Disables (or enables) a tenant: its keys stop resolving within the ingress cache
    /// lifetime, workers stop its handlers and the leader stops its schedules. Data stays.
    package func setDisabled(_ name: String, _ disabled: Bool) async throws -> TenantInfo {
        _ = try await tenant(name)
        try await store.setTenantDisabled(name, disabled: disabled)
        logger.notice(disabled ? "Tenant disabled" : "Tenant enabled", metadata: ["coordinator.tenant": "\(name)"])
        return try await tenant(name)
    }

    // MARK: API keys

    package struct KeyInfo: Codable, Sendable {
        package var id: String
        package var tenant: String
        package var createdAt: String
        package var revokedAt: String?
        /// The key itself: only in the answer that created it.
        package var key: String?
    }

    package func createKey(tenant name: String) async throws -> KeyInfo {
        _ = try await tenant(name)
        let (id, key) = APIKeys.generate()
        try await store.insertAPIKey(id: id, tenant: name, hash: APIKeys.hash(key))
        logger.notice("API key created", metadata: ["coordinator.tenant": "\(name)", "coordinator.key_id": "\(id)"])
        return KeyInfo(id: id, tenant: name, createdAt: ISO8601.format(Date()), revokedAt: nil, key: key)
    }

    package func keys(tenant name: String) async throws -> [KeyInfo] {
        _ = try await tenant(name)
        return try await store.apiKeys(tenant: name).map {
            KeyInfo(
                id: $0.id,
                tenant: $0.tenant,
                createdAt: ISO8601.format($0.createdAt),
                revokedAt: $0.revokedAt.map(ISO8601.format),
                key: nil
            )
        }
    }

    package func revokeKey(tenant name: String, id: String) async throws -> KeyInfo {
        _ = try await tenant(name)
        guard APIKeys.isWellFormedID(id) else { throw ClusterCallError(.notFound, "tenant '\(name)' has no key '\(id.prefix(40))'") }
        do {
            try await store.revokeAPIKey(id: id, tenant: name)
        } catch let error as StoreError where error.kind == .notFound {
            throw ClusterCallError(.notFound, error.message)
        }
        logger.notice("API key revoked", metadata: ["coordinator.tenant": "\(name)", "coordinator.key_id": "\(id)"])
        guard let record = try await store.apiKeys(tenant: name).first(where: { $0.id == id }) else {
            throw ClusterCallError(.notFound, "tenant '\(name)' has no key '\(id)'")
        }
        return KeyInfo(
            id: id,
            tenant: name,
            createdAt: ISO8601.format(record.createdAt),
            revokedAt: record.revokedAt.map(ISO8601.format),
            key: nil
        )
    }

    /// Issues a new key and revokes `id`: the new key is shown once.
    package func rotateKey(tenant name: String, id: String) async throws -> KeyInfo {
        let existing = try await keys(tenant: name)
        guard let old = existing.first(where: { $0.id == id }) else {
            throw ClusterCallError(.notFound, "tenant '\(name)' has no key '\(id.prefix(40))'")
        }
        guard old.revokedAt == nil else { throw ClusterCallError(.invalidArgument, "key '\(id)' is already revoked; create a new one") }
        let fresh = try await createKey(tenant: name)
        _ = try await revokeKey(tenant: name, id: id)
        return fresh
    }

    // MARK: Schedules

    // MARK: Storages

    /// How far one storage sink of one tenant is behind its table's stream.
    package struct SinkStatus: Codable, Sendable {
        package var table: String
        package var storage: String
        package var tenant: String
        package var handler: String
        /// Records the sink has not kept yet: not delivered, or delivered and being written.
        package var lag: UInt64
        /// Records in the stream not yet delivered to the sink.
        package var pending: UInt64
        /// Records delivered to the sink and not yet acknowledged (being written).
        package var unacknowledged: Int64
        /// Records delivered more than once (a worker died, or a write failed and was retried).
        package var redelivered: Int64
        /// The stream sequence up to which every record is kept.
        package var keptThrough: UInt64
        /// The stream's last sequence, and how many records it holds (within its retention).
        package var lastSequence: UInt64
        package var streamRecords: UInt64
        /// Where the sink started when it was created (`backfill` in autonomous.json).
        package var backfillFrom: String?
        /// `caught up`, `behind`, or `not provisioned` (the tenant's consumer does not exist yet).
        package var state: String
    }

    /// Each storage sink's lag for the tenant, from its consumers on the table's stream.
    package func storages(tenant name: String) async throws -> [SinkStatus] {
        _ = try await tenant(name)
        var result: [SinkStatus] = []
        for handler in graph.handlers where handler.isSink {
            guard let table = graph.table(handler.source), let storage = table.storage else { continue }
            let stream = Wire.tableStreamName(tenant: name, table: table.name)
            let consumers =
                handler.options.ordering.map { ordering in
                    (0..<ordering.partitions).map { HandlerOrdering.consumerName(handler: handler.name, partition: $0) }
                } ?? [handler.consumerName]
            var status = SinkStatus(
                table: table.name,
                storage: storage,
                tenant: name,
                handler: handler.name,
                lag: 0,
                pending: 0,
                unacknowledged: 0,
                redelivered: 0,
                keptThrough: 0,
                lastSequence: 0,
                streamRecords: 0,
                backfillFrom: handler.startTime.map(ISO8601.format),
                state: "caught up"
            )
            do {
                if let state = try await connection.streamState(stream) {
                    status.lastSequence = state.lastSequence
                    status.streamRecords = state.messages
                }
                var floors: [UInt64] = []
                for consumer in consumers {
                    guard let state = try await connection.consumerState(stream: stream, consumer: consumer) else {
                        status.state = "not provisioned"
                        continue
                    }
                    status.pending += state.numPending
                    status.unacknowledged += state.numAckPending
                    status.redelivered += state.numRedelivered
                    floors.append(state.ackFloorStreamSequence)
                }
                status.keptThrough = floors.min() ?? 0
            } catch let error as NATSError {
                throw ClusterCallError(.unavailable, "cannot read the sink of table '\(table.name)': \(error.message)")
            }
            status.lag = status.pending + UInt64(max(0, status.unacknowledged))
            if status.state != "not provisioned" && status.lag > 0 { status.state = "behind" }
            result.append(status)
        }
        return result.sorted { $0.table < $1.table }
    }

    package struct ScheduleInfo: Codable, Sendable {
        package var name: String
        package var tenant: String
        /// The timing in effect (the app's, or an override).
        package var schedule: String
        package var timeZone: String
        package var overridden: Bool
        package var paused: Bool
        package var catchUp: String
        package var lastFire: String?
        package var nextFire: String?
    }

    func definition(_ name: String) throws -> ScheduleDefinition {
        guard let definition = graph.schedules.first(where: { $0.name == name }) else {
            let known = graph.schedules.map(\.name).sorted().joined(separator: ", ")
            throw ClusterCallError(
                .notFound,
                "no schedule '\(name.prefix(100))'" + (known.isEmpty ? "; the app has none" : "; the app has \(known)")
            )
        }
        return definition
    }

    package func schedules(tenant name: String) async throws -> [ScheduleInfo] {
        _ = try await tenant(name)
        var result: [ScheduleInfo] = []
        for definition in graph.schedules {
            result.append(try await schedule(definition.name, tenant: name))
        }
        return result
    }

    package func schedule(_ scheduleName: String, tenant name: String) async throws -> ScheduleInfo {
        _ = try await tenant(name)
        let definition = try definition(scheduleName)
        let control = try await store.scheduleControl(tenant: name, schedule: scheduleName)
        let effective = ScheduleTimeline.effective(definition.schedule, controls: control)
        // Handled through `last` (published or skipped); the last tick that fired is reported.
        let last = try await store.lastFire(tenant: name, schedule: scheduleName)
        let published = try await store.lastPublishedFire(tenant: name, schedule: scheduleName)
        return ScheduleInfo(
            name: scheduleName,
            tenant: name,
            schedule: control.expression ?? definition.schedule.description,
            timeZone: effective.timeZoneIdentifier,
            overridden: control.expression != nil,
            paused: control.paused,
            catchUp: effective.catchUpPolicy.description,
            lastFire: published.map(ISO8601.format),
            nextFire: effective.nextFire(after: max(Date(), last ?? .distantPast)).map(ISO8601.format)
        )
    }

    package func setPaused(_ scheduleName: String, tenant name: String, paused: Bool) async throws -> ScheduleInfo {
        _ = try await tenant(name)
        _ = try definition(scheduleName)
        try await store.setPaused(tenant: name, schedule: scheduleName, paused: paused)
        logger.notice(
            paused ? "Schedule paused" : "Schedule resumed",
            metadata: ["coordinator.tenant": "\(name)", "coordinator.schedule": "\(scheduleName)"]
        )
        return try await schedule(scheduleName, tenant: name)
    }

    /// Replaces the schedule's timing for one tenant with a cron expression (`nil`: back to
    /// the app's own timing).
    package func retime(_ scheduleName: String, tenant name: String, cron: String?, timeZone: String?) async throws -> ScheduleInfo {
        _ = try await tenant(name)
        let definition = try definition(scheduleName)
        if let cron {
            let candidate = Schedule.cron(cron, timeZone: timeZone ?? definition.schedule.timeZoneIdentifier)
            if let problem = candidate.problem {
                throw ClusterCallError(.invalidArgument, problem.contains("time zone") ? "timeZone: \(problem)" : "cron: \(problem)")
            }
        } else if timeZone != nil {
            throw ClusterCallError(.invalidArgument, "timeZone: only allowed together with cron")
        }
        try await store.setScheduleOverride(tenant: name, schedule: scheduleName, expression: cron, timeZone: cron == nil ? nil : timeZone)
        return try await schedule(scheduleName, tenant: name)
    }

    /// Publishes a tick now, outside the schedule (marked `manual`).
    package func trigger(_ scheduleName: String, tenant name: String) async throws -> [String: String] {
        let info = try await tenant(name)
        if info.disabled { throw ClusterCallError(.invalidArgument, "tenant '\(name)' is disabled") }
        let definition = try definition(scheduleName)
        guard let table = graph.tables.first(where: { $0.name == scheduleName && $0.kind == .schedule }) else {
            throw ClusterCallError(.notFound, "no schedule '\(scheduleName)'")
        }
        let scheduler = Scheduler(definition: definition, tenant: name, table: table, connection: connection, store: store, logger: logger)
        let now = Date()
        do {
            _ = try await scheduler.publishTick(at: now, manual: true)
        } catch let error as NATSError {
            throw ClusterCallError(.unavailable, "cannot publish the tick: \(error.message)")
        }
        logger.notice("Schedule triggered by hand", metadata: ["coordinator.tenant": "\(name)", "coordinator.schedule": "\(scheduleName)"])
        return ["schedule": scheduleName, "tenant": name, "fireTime": ISO8601.format(now)]
    }
}

/// Answers the workers' and ingress nodes' calls from the store. Any coordinator can answer
/// (leases and tenants live in the store, not in one coordinator's memory).
struct StoreBackend: CoordinatorBackend {
    let graph: AppGraph
    let store: any CoordinatorStore
    let partitionLeaseTTL: Duration
    /// Every tenant's limits and when they were read (``limits(ofTenant:)``).
    private let tenantLimits = TenantLimitsCache()

    final class TenantLimitsCache: Sendable {
        let state = Mutex<(read: ContinuousClock.Instant, limits: [String: TenantLimits])?>(nil)
    }

    init(graph: AppGraph, store: any CoordinatorStore, partitionLeaseTTL: Duration) {
        self.graph = graph
        self.store = store
        self.partitionLeaseTTL = partitionLeaseTTL
    }

    func access(forKeyHash hash: String) async throws -> TenantAccess? {
        guard hash.utf8.count == 64, hash.utf8.allSatisfy({ (48...57).contains($0) || (97...102).contains($0) }) else { return nil }
        return try await store.accessForAPIKey(hash: hash)
    }

    func activeTenants() async throws -> [String] {
        try await store.tenants().filter { !$0.disabled }.map(\.name)
    }

    /// Every ingress node asks this for its own tenant every 2 s: answered from a tenant list
    /// at most a second old, so the store sees at most one query a second per coordinator
    /// however many ingress nodes there are.
    func limits(ofTenant tenant: String) async throws -> TenantLimits? {
        let now = ContinuousClock.now
        if let cached = tenantLimits.state.withLock({ $0 }), now - cached.read < .seconds(1) { return cached.limits[tenant] }
        var limits: [String: TenantLimits] = [:]
        // A disabled tenant has none: the ingress refuses its key-less requests and webhooks.
        for record in try await store.tenants() where !record.disabled { limits[record.name] = record.limits }
        tenantLimits.state.withLock { $0 = (now, limits) }
        return limits[tenant]
    }

    /// Rendezvous hashing with bounded load: each partition goes to the live worker with the
    /// highest hash(worker, partition) that holds fewer than ⌈partitions / workers⌉, so every
    /// worker gets a fair share and a join or leave moves few partitions. Every coordinator
    /// computes the same owners from the same members.
    static func owners(partitions: Int, among workers: [String]) -> [Int: String] {
        guard !workers.isEmpty else { return [:] }
        let capacity = (partitions + workers.count - 1) / workers.count
        var load: [String: Int] = [:]
        var owners: [Int: String] = [:]
        for partition in 0..<partitions {
            let ranked = workers.sorted { score($0, partition) > score($1, partition) }
            if let owner = ranked.first(where: { load[$0, default: 0] < capacity }) {
                owners[partition] = owner
                load[owner, default: 0] += 1
            }
        }
        return owners
    }

    static func score(_ worker: String, _ partition: Int) -> UInt64 {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in "\(worker)#\(partition)".utf8 {
            hash ^= UInt64(byte)
            hash &*= 0x100_0000_01b3
        }
        // Finalise (splitmix64) so similar names spread well.
        hash ^= hash >> 30
        hash &*= 0xbf58_476d_1ce4_e5b9
        hash ^= hash >> 27
        hash &*= 0x94d0_49bb_1331_11eb
        hash ^= hash >> 31
        return hash
    }

    static func leaseName(tenant: String, handler: String, partition: Int) -> String { "part/\(tenant)/\(handler)/\(partition)" }
    static func memberPrefix(tenant: String, handler: String) -> String { "member/\(tenant)/\(handler)/" }

    func assignPartitions(_ request: PartitionRequest) async throws -> PartitionAssignment {
        guard Names.isValid(request.tenant), let handler = graph.handlers.first(where: { $0.name == request.handler }),
            let ordering = handler.options.ordering
        else {
            throw ClusterCallError(
                .notFound,
                "no ordered handler '\(request.handler.prefix(100))' for tenant '\(request.tenant.prefix(100))'"
            )
        }
        guard !request.worker.isEmpty, request.worker.utf8.count <= 200 else {
            throw ClusterCallError(.invalidArgument, "worker id must be 1-200 bytes")
        }
        let prefix = Self.memberPrefix(tenant: request.tenant, handler: request.handler)
        _ = try await store.acquireLease(name: prefix + request.worker, holder: request.worker, ttl: partitionLeaseTTL)
        for partition in Set(request.released) where (0..<ordering.partitions).contains(partition) {
            try await store.releaseLease(
                name: Self.leaseName(tenant: request.tenant, handler: request.handler, partition: partition),
                holder: request.worker
            )
        }
        let members = try await store.liveLeases(prefix: prefix).map(\.holder)
        let owners = Self.owners(partitions: ordering.partitions, among: members)
        let held = Set(request.held).subtracting(request.released)
        var granted: [Int: Int64] = [:]
        var revoke: [Int] = []
        for partition in 0..<ordering.partitions {
            let mine = owners[partition] == request.worker
            guard mine || held.contains(partition) else { continue }
            let name = Self.leaseName(tenant: request.tenant, handler: request.handler, partition: partition)
            if let token = try await store.acquireLease(name: name, holder: request.worker, ttl: partitionLeaseTTL) {
                granted[partition] = token
                if !mine { revoke.append(partition) }
            }
        }
        return PartitionAssignment(granted: granted, revoke: revoke, ttlMilliseconds: Int(partitionLeaseTTL.inSeconds * 1000))
    }
}
