import ClusterCore
import Synchronization
import Testing

@Suite("One noted run at a time")
struct SerialGateTests {
    final class Probe: Sendable {
        let inside = Atomic<Int>(0)
        let most = Atomic<Int>(0)
        let order = Mutex<[Int]>([])
    }

    @Test("Tasks pass one at a time, and every one passes")
    func oneAtATime() async {
        let gate = SerialGate()
        let probe = Probe()
        // The first holds the gate while the others queue up behind it.
        await gate.enter()
        await withTaskGroup(of: Void.self) { group in
            for n in 1...8 {
                group.addTask {
                    await gate.enter()
                    let now = probe.inside.add(1, ordering: .sequentiallyConsistent).newValue
                    _ = probe.most.max(now, ordering: .sequentiallyConsistent)
                    probe.order.withLock { $0.append(n) }
                    await Task.yield()
                    probe.inside.subtract(1, ordering: .sequentiallyConsistent)
                    gate.leave()
                }
            }
            // Let every task reach the gate before it opens.
            for _ in 0..<100 { await Task.yield() }
            gate.leave()
        }
        #expect(probe.order.withLock { $0.sorted() } == Array(1...8))
        #expect(probe.most.load(ordering: .sequentiallyConsistent) == 1)
    }
}
