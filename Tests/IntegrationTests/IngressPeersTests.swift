import AutonomousTesting
import Foundation
import NATS
import Synchronization
import Testing

@testable import Ingress

/// How ingress nodes count each other for shared tenant limits.
@Suite("Ingress peers")
struct IngressPeersTests {
    /// The count each of three nodes last reported (a node alone counts 1; `run` reports changes).
    final class Counts: Sendable {
        let values = Mutex<[Int]>([1, 1, 1])

        /// Runs node `i` on `connection`, announcing every `interval`, until the task is cancelled.
        func startNode(_ i: Int, interval: Duration, connection: NATSConnection) -> (Task<Void, Never>, IngressPeers) {
            let peers = IngressPeers(interval: interval)
            return (
                Task { await peers.run(connection: connection, logger: TestNATSServer.logger) { n in self.values.withLock { $0[i] = n } } },
                peers
            )
        }
    }

    @Test("A node that starts counts the others within a round trip, not at their next announcement")
    func newcomerCountsAtOnce() async throws {
        try await withTestNATSServer { server async throws -> Void in
            let counts = Counts()
            var tasks: [Task<Void, Never>] = []
            // Announcing every 20 s: without an answer out of turn, a node that starts later would
            // count itself alone for up to 20 s.
            for i in 0..<3 {
                tasks.append(counts.startNode(i, interval: .seconds(20), connection: server.connection).0)
                // Well before the others' next announcement.
                #expect(
                    try await eventually(timeout: .seconds(15)) { counts.values.withLock { $0[i] } == i + 1 },
                    "node \(i) counted the \(i) before it"
                )
                // Past the others' spacing between two answers out of turn.
                try await Task.sleep(for: .milliseconds(100))
            }
            #expect(counts.values.withLock { $0 } == [3, 3, 3])
            for task in tasks { task.cancel() }
            for task in tasks { await task.value }
        }
    }

    @Test("Nodes on one NATS server find each other, and a node that stops is counted out at once")
    func overNATS() async throws {
        try await withTestNATSServer { server async throws -> Void in
            let counts = Counts()
            // Announcing every 20 s: a node is counted out for silence only after a minute.
            let nodes = (0..<3).map { counts.startNode($0, interval: .seconds(20), connection: server.connection) }
            let tasks = nodes.map(\.0)
            #expect(try await eventually(timeout: .seconds(15)) { counts.values.withLock { $0 } == [3, 3, 3] })
            // A graceful stop says so: the others count two at once.
            tasks[2].cancel()
            await tasks[2].value
            #expect(try await eventually(timeout: .seconds(15)) { counts.values.withLock { $0[0] == 2 && $0[1] == 2 } })
            #expect(nodes[0].1.departedCounts == (leaving: 1, silent: 0), "counted out by its leaving message")
            for task in tasks { task.cancel() }
            for task in tasks { await task.value }
        }
    }
}
