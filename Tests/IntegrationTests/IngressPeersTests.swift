import AutonomousTesting
import Foundation
@testable import Ingress
import NATS
import Synchronization
import Testing

/// How ingress nodes count each other for shared tenant limits.
@Suite("Ingress peers")
struct IngressPeersTests {
    /// The count each of three nodes last reported (a node alone counts 1; `run` reports changes).
    final class Counts: Sendable {
        let values = Mutex<[Int]>([1, 1, 1])

        /// Runs node `i` on `connection`, announcing every `interval`, until the task is cancelled.
        func startNode(_ i: Int, interval: Duration, connection: NATSConnection) -> (Task<Void, Never>, IngressPeers) {
            let peers = IngressPeers(interval: interval)
            return (Task { await peers.run(connection: connection, logger: TestNATSServer.logger) { n in self.values.withLock { $0[i] = n } } }, peers)
        }
    }

    @Test("Other nodes count until they leave or go quiet for three intervals; anything else is ignored")
    func counting() {
        let clock = ManualClock()
        let peers = IngressPeers(node: "self", interval: .seconds(1), clock: { clock.now })
        #expect(peers.count == 1)
        #expect(peers.heard(peers.announcement()) == nil, "its own announcement")
        #expect(peers.heard(Array(#"{"node":"a"}"#.utf8)) == 2)
        #expect(peers.heard(Array(#"{"node":"a"}"#.utf8)) == nil, "the same node again")
        #expect(peers.heard(Array(#"{"node":"b"}"#.utf8)) == 3)
        for bad in [#"{"node":"B!"}"#, #"{"node":""}"#, #"{"node":5}"#, "[]", "garbage", #"{"node":"\#(String(repeating: "x", count: 65))"}"#] {
            #expect(peers.heard(Array(bad.utf8)) == nil, "\(bad)")
        }
        #expect(peers.count == 3)
        // b leaves; a goes quiet and is counted out after three intervals.
        #expect(peers.heard(Array(#"{"node":"b","leaving":true}"#.utf8)) == 2)
        clock.advance(.seconds(3))
        #expect(peers.expire() == nil)
        clock.advance(.milliseconds(1))
        #expect(peers.expire() == 1)
        #expect(peers.departedCounts == (leaving: 1, silent: 1))
        // At most maximumTracked others are remembered.
        for i in 0..<(IngressPeers.maximumTracked + 10) { _ = peers.heard(Array(#"{"node":"n\#(i)"}"#.utf8)) }
        #expect(peers.count == IngressPeers.maximumTracked + 1)
    }

    @Test("A node it does not know yet gets an announcement at once, at most one per 50 ms")
    func answersNewcomers() {
        let clock = ManualClock()
        let peers = IngressPeers(node: "self", interval: .seconds(1), clock: { clock.now })
        let answers = Mutex(0)
        func hear(_ text: String) { _ = peers.heard(Array(text.utf8)) { answers.withLock { $0 += 1 } } }
        hear(#"{"node":"a"}"#)
        #expect(answers.withLock { $0 } == 1)
        hear(#"{"node":"a"}"#)
        hear(#"{"node":"a","leaving":true}"#)
        hear(#"{"node":"x!"}"#)
        #expect(answers.withLock { $0 } == 1, "not for a node it knows, one leaving, or junk")
        hear(#"{"node":"b"}"#)
        #expect(answers.withLock { $0 } == 1, "b came within 50 ms of a")
        clock.advance(.milliseconds(50))
        hear(#"{"node":"c"}"#)
        #expect(answers.withLock { $0 } == 2)
        #expect(peers.count == 3)
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
                #expect(try await eventually(timeout: .seconds(15)) { counts.values.withLock { $0[i] } == i + 1 }, "node \(i) counted the \(i) before it")
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
