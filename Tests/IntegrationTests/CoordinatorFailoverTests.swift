import Autonomous
import AutonomousTesting
import Coordinator
import Deploy
import Foundation
import NATS
import Testing

/// Coordinators as real processes sharing one Postgres.
@Suite("Coordinator failover", .serialized)
struct CoordinatorFailoverTests {
    static let fixture = FaultTests.root.appendingPathComponent(".build/debug/ClusterFixture").path

    /// The pid inside a coordinator id (`<host>-<pid>-<random>`).
    static func pid(of holder: String) -> Int32? {
        let parts = holder.split(separator: "-")
        return parts.count >= 3 ? Int32(parts[parts.count - 2]) : nil
    }

    @Test(
        "kill -9 of the leader hands leadership to a standby within the lease TTL; an every-second schedule fires each tick exactly once across two failovers"
    )
    func failover() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("aut-failover-\(UUID().uuidString)").path
        var specification = ProcessCluster.Specification(app: Self.fixture, directory: directory)
        specification.useFreePorts()
        specification.logLevel = "notice"
        specification.replicas = ["ingress": 0, "worker": 1, "coordinator": 2]
        specification.postgres = .init(port: LoopbackPorts.freeBase(spans: [0..<1]), database: "failover")
        let ttl = 3.0
        specification.environment = ["AUTONOMOUS_LEASE_TTL": "\(Int(ttl))"]
        let cluster = try await ProcessCluster.up(specification, logger: TestNATSServer.logger)
        do {
            let postgresURL = try #require(cluster.postgresURL)
            try await PostgresStore.withStore(url: postgresURL, logger: TestNATSServer.logger) { store in
                @Sendable func leader() async throws -> Lease? { try await store.liveLeases(prefix: "leader").first }
                #expect(try await eventually(timeout: .seconds(20)) { try await leader() != nil }, "a coordinator leads")
                let start = Date()
                var takeovers: [Double] = []
                var tokens: [Int64] = [try await leader()!.token]
                for _ in 0..<2 {
                    try await Task.sleep(for: .seconds(7))
                    let old = try #require(try await leader())
                    let pid = try #require(Self.pid(of: old.holder))
                    let coordinators = await cluster.processIDs()["coordinator"] ?? []
                    #expect(coordinators.contains(pid), "the lease names a running coordinator")
                    let killed = ContinuousClock.now
                    kill(pid, SIGKILL)
                    var next: Lease?
                    // How soon is the lease logic's to keep (its own tests, on a clock); here only
                    // that a standby takes over, with a larger fencing token.
                    while ContinuousClock.now - killed < .seconds(120) {
                        if let current = try await leader(), current.holder != old.holder {
                            next = current
                            break
                        }
                        try await Task.sleep(for: .milliseconds(50))
                    }
                    let elapsed = ContinuousClock.now - killed
                    let taken = try #require(next, "nobody took over within 120 s")
                    takeovers.append(elapsed.inSeconds)
                    tokens.append(taken.token)
                    #expect(taken.token > old.token, "the fencing token grows")
                }
                try await Task.sleep(for: .seconds(8))
                let end = Date()
                print("failover: takeovers after \(takeovers.map { String(format: "%.2f s", $0) }) (lease TTL \(ttl) s), tokens \(tokens)")

                var configuration = NATSConnection.Configuration(url: cluster.operatorURL)
                configuration.connectTimeout = .seconds(10)
                let connection = try await NATSConnection.connect(configuration: configuration, logger: TestNATSServer.logger)
                let first = Int(start.timeIntervalSince1970.rounded(.up)) + 1
                let last = Int(end.timeIntervalSince1970.rounded(.down)) - 1
                let ticks = try await StreamAudit.read(
                    connection: connection,
                    stream: "AUT_DEFAULT",
                    subject: "aut.default.sched.beat",
                    atLeast: last - first + 1,
                    timeout: .seconds(20)
                )
                await connection.close()
                var counts: [Int: Int] = [:]
                for tick in ticks {
                    guard let text = try? JSONParser.parse(tick.payload)["fire_time"].stringValue, let date = ISO8601.parse(text) else {
                        continue
                    }
                    counts[Int(date.timeIntervalSince1970), default: 0] += 1
                }
                let window = first...last
                let missing = window.filter { counts[$0] == nil }
                let doubled = counts.filter { $0.value > 1 }.map(\.key).sorted()
                print("failover: \(window.count) ticks in the window, \(missing.count) missing, \(doubled.count) doubled")
                #expect(window.count >= 20, "the window spans at least 20 ticks")
                #expect(missing.isEmpty, "missing ticks: \(missing)")
                #expect(doubled.isEmpty, "doubled ticks: \(doubled)")
            }
        } catch {
            await cluster.down()
            throw error
        }
        await cluster.down()
        try? FileManager.default.removeItem(atPath: directory)
    }
}
