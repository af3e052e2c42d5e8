import Autonomous
import AutonomousTesting
import Foundation
import NATS
import Synchronization
import Testing

/// A coordinator backend with canned answers, counting calls.
final class FakeBackend: CoordinatorBackend {
    let calls = Atomic<Int>(0)

    func access(forKeyHash hash: String) async throws -> TenantAccess? {
        calls.add(1, ordering: .relaxed)
        if hash == "boom" { throw ClusterCallError(.forbidden, "no keys for you") }
        if hash == "crash" { throw CocoaError(.fileNoSuchFile) }
        return hash == APIKeys.hash("good") ? TenantAccess(tenant: "acme", limits: TenantLimits(recordsPerSecond: 500, burst: 900)) : nil
    }

    func limits(ofTenant tenant: String) async throws -> TenantLimits? {
        calls.add(1, ordering: .relaxed)
        return tenant == "acme" ? TenantLimits(recordsPerSecond: 500, burst: 900) : nil
    }

    func activeTenants() async throws -> [String] {
        calls.add(1, ordering: .relaxed)
        return ["acme", "globex"]
    }

    func assignPartitions(_ request: PartitionRequest) async throws -> PartitionAssignment {
        calls.add(1, ordering: .relaxed)
        return PartitionAssignment(
            granted: Dictionary(uniqueKeysWithValues: request.held.map { ($0, 7) }),
            revoke: request.released,
            ttlMilliseconds: 1234
        )
    }
}

@Suite("Distributed actors over NATS")
struct ClusterActorSystemTests {
    @Test("Calls cross connections as JSON envelopes; errors keep their code; no coordinator is a clear error")
    func remoteCalls() async throws {
        try await withTestNATSServer { server in
            let other = try await NATSConnection.connect(configuration: .init(url: server.url), logger: TestNATSServer.logger)
            defer { Task { await other.close() } }
            let hostSystem = ClusterActorSystem(connection: server.connection, logger: TestNATSServer.logger)
            let callerSystem = ClusterActorSystem(connection: other, callTimeout: .seconds(2), logger: TestNATSServer.logger)
            // The host serves calls from run(), as the runtime's connection service does.
            try await withThrowingDiscardingTaskGroup { serving in
                serving.addTask { await hostSystem.run() }

                // Nobody hosts the coordinator yet.
                let proxy = try CoordinatorEndpoint.remote(in: callerSystem)
                // Reported as such, not as a timeout (errors compare by code).
                await #expect(throws: ClusterCallError(.unavailable, "")) { _ = try await proxy.activeTenants() }

                let backend = FakeBackend()
                let endpoint = CoordinatorEndpoint.host(in: hostSystem, backend: backend)
                // The subscription may need a moment to reach the server.
                try await Task.sleep(for: .milliseconds(100))
                #expect(try await proxy.activeTenants() == ["acme", "globex"])
                #expect(
                    try await proxy.access(forKeyHash: APIKeys.hash("good"))
                        == TenantAccess(tenant: "acme", limits: TenantLimits(recordsPerSecond: 500, burst: 900))
                )
                #expect(try await proxy.access(forKeyHash: APIKeys.hash("bad")) == nil)
                #expect(
                    try await proxy.tenant(forKeyHash: APIKeys.hash("good")) == "acme",
                    "the call of ingress nodes before tenant limits"
                )
                #expect(try await proxy.limits(ofTenant: "acme") == TenantLimits(recordsPerSecond: 500, burst: 900))
                #expect(try await proxy.limits(ofTenant: "globex") == nil)
                // A bad name is refused before it reaches the backend.
                await #expect(throws: ClusterCallError(.invalidArgument, "")) { _ = try await proxy.limits(ofTenant: "Not A Tenant") }
                let request = PartitionRequest(tenant: "acme", handler: "h", worker: "w1", held: [1, 3], released: [2])
                let assignment = try await proxy.assignPartitions(request)
                #expect(assignment == PartitionAssignment(granted: [1: 7, 3: 7], revoke: [2], ttlMilliseconds: 1234))
                do {
                    _ = try await proxy.tenant(forKeyHash: "boom")
                    Issue.record("expected an error")
                } catch let error as ClusterCallError {
                    #expect(error.code == .forbidden && error.message == "no keys for you")
                }
                await #expect(throws: ClusterCallError(.internal, "")) { _ = try await proxy.tenant(forKeyHash: "crash") }
                #expect(backend.calls.load(ordering: .relaxed) == 9, "every call with a valid argument reached the host over NATS")
                // What the ingress takes for a coordinator of an earlier release (rolling upgrade).
                #expect(ClusterCallError(.versionMismatch, "no such call").isUnknownCall)
                #expect(ClusterCallError(.internal, "targetAccessorNotFound(\"$s…\")").isUnknownCall)
                #expect(!ClusterCallError(.internal, "database down").isUnknownCall)
                #expect(!ClusterCallError(.unavailable, "").isUnknownCall)

                // Within the hosting process the endpoint resolves to the local actor.
                let local = try CoordinatorEndpoint.remote(in: hostSystem)
                #expect(try await local.activeTenants() == ["acme", "globex"])

                // A peer speaking another envelope version gets a typed error, not silence.
                let raw = try await other.request(
                    CoreMessage(subject: "aut._coord.rpc", payload: Array(#"{"v":99,"target":"x","generics":[],"arguments":[]}"#.utf8)),
                    timeout: .seconds(2)
                )
                #expect(String(decoding: raw.payload, as: UTF8.self).contains("versionMismatch"))
                // So does a call this release does not know (a newer peer's): ingress nodes fall back
                // to `tenant(forKeyHash:)` on it when a coordinator predates `access(forKeyHash:)`.
                let unknown = try await other.request(
                    CoreMessage(
                        subject: "aut._coord.rpc",
                        payload: Array(
                            #"{"v":1,"target":"$s11ClusterCore19CoordinatorEndpointC7unknownyyYaKFTE","generics":[],"arguments":[]}"#.utf8
                        )
                    ),
                    timeout: .seconds(2)
                )
                #expect(
                    String(decoding: unknown.payload, as: UTF8.self).contains("versionMismatch"),
                    "\(String(decoding: unknown.payload, as: UTF8.self))"
                )

                #expect(endpoint.id == .coordinator, "(keeps the hosted actor alive until here)")
                // Once the host stops serving, callers get `.unavailable` again.
                hostSystem.shutdown()
                try await Task.sleep(for: .milliseconds(100))
                await #expect(throws: ClusterCallError(.unavailable, "")) { _ = try await proxy.activeTenants() }
            }
        }
    }
}
