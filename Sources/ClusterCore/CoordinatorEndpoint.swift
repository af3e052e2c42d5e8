package import Distributed

/// What the coordinators answer for workers and ingress nodes (which never talk SQL).
package protocol CoordinatorBackend: Sendable {
    /// The tenant (and its ingest limits) of an active API key of an enabled tenant, by the
    /// key's hash (``APIKeys/hash(_:)``; keys themselves never cross the wire); `nil` for an
    /// unknown, revoked or disabled key.
    func access(forKeyHash hash: String) async throws -> TenantAccess?
    /// A tenant's ingest limits, for requests without an API key and signed webhooks (which
    /// an ingress takes in for its own tenant); `nil` for an unknown or disabled tenant.
    func limits(ofTenant tenant: String) async throws -> TenantLimits?
    /// Enabled tenants, whose records workers process.
    func activeTenants() async throws -> [String]
    /// Grants, renews and takes back partition leases of an ordered handler.
    func assignPartitions(_ request: PartitionRequest) async throws -> PartitionAssignment
}

/// A worker's view of one ordered handler's partitions, sent with every lease renewal.
package struct PartitionRequest: Codable, Sendable, Hashable {
    package var tenant: String
    package var handler: String
    /// The asking worker's unique id (a new one per process start).
    package var worker: String
    /// Partitions the worker holds and keeps processing.
    package var held: [Int]
    /// Partitions the worker stopped processing since its last request.
    package var released: [Int]

    package init(tenant: String, handler: String, worker: String, held: [Int], released: [Int]) {
        self.tenant = tenant
        self.handler = handler
        self.worker = worker
        self.held = held
        self.released = released
    }
}

/// The coordinator's answer: which partitions the worker may process until the lease TTL
/// has passed (counted from when it sent the request), and which it must give back.
package struct PartitionAssignment: Codable, Sendable, Hashable {
    /// Partition → fencing token, for every partition the worker holds now.
    package var granted: [Int: Int64]
    /// Partitions the worker holds but another worker should take: finish, then release.
    package var revoke: [Int]
    /// Lease length in milliseconds.
    package var ttlMilliseconds: Int

    package init(granted: [Int: Int64], revoke: [Int], ttlMilliseconds: Int) {
        self.granted = granted
        self.revoke = revoke
        self.ttlMilliseconds = ttlMilliseconds
    }
}

/// The coordinators' RPC surface. Every coordinator hosts one under
/// ``ClusterActorID/coordinator`` (a NATS queue group); workers and ingress nodes call it
/// through ``remote(in:)`` and get a ``ClusterCallError`` when none answers in time.
package distributed actor CoordinatorEndpoint {
    package typealias ActorSystem = ClusterActorSystem

    private let backend: (any CoordinatorBackend)?

    /// Hosts the endpoint in this process (coordinators only).
    package static func host(in system: ClusterActorSystem, backend: any CoordinatorBackend) -> CoordinatorEndpoint {
        ClusterActorSystem.withID(.coordinator) { CoordinatorEndpoint(actorSystem: system, backend: backend) }
    }

    /// The endpoint as seen from this process: local when this process hosts it, else a
    /// proxy that calls a coordinator over NATS.
    package static func remote(in system: ClusterActorSystem) throws -> CoordinatorEndpoint {
        try resolve(id: .coordinator, using: system)
    }

    init(actorSystem: ClusterActorSystem, backend: any CoordinatorBackend) {
        self.actorSystem = actorSystem
        self.backend = backend
    }

    private func requireBackend() throws -> any CoordinatorBackend {
        guard let backend else { throw ClusterCallError(.unavailable, "this process hosts no coordinator") }
        return backend
    }

    package distributed func access(forKeyHash hash: String) async throws -> TenantAccess? {
        try await requireBackend().access(forKeyHash: hash)
    }

    /// The tenant alone, for ingress nodes of the release before tenant limits (answered
    /// during a rolling upgrade).
    package distributed func tenant(forKeyHash hash: String) async throws -> String? {
        try await requireBackend().access(forKeyHash: hash)?.tenant
    }

    /// Throws `.invalidArgument` for a name that is not a valid tenant name.
    package distributed func limits(ofTenant tenant: String) async throws -> TenantLimits? {
        if let problem = Names.problem(with: tenant, kind: "tenant") { throw ClusterCallError(.invalidArgument, problem) }
        return try await requireBackend().limits(ofTenant: tenant)
    }

    package distributed func activeTenants() async throws -> [String] {
        try await requireBackend().activeTenants()
    }

    package distributed func assignPartitions(_ request: PartitionRequest) async throws -> PartitionAssignment {
        try await requireBackend().assignPartitions(request)
    }
}
