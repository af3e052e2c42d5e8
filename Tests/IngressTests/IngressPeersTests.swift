import AutonomousTesting
import Synchronization
import Testing

@testable import Ingress

/// How ingress nodes count each other, on a clock the test moves by hand.
@Suite("Ingress peers, counting")
struct IngressPeersCountingTests {
    @Test("Other nodes count until they leave or go quiet for three intervals; anything else is ignored")
    func counting() {
        let clock = ManualClock()
        let peers = IngressPeers(node: "self", interval: .seconds(1), clock: { clock.now })
        #expect(peers.count == 1)
        #expect(peers.heard(peers.announcement()) == nil, "its own announcement")
        #expect(peers.heard(Array(#"{"node":"a"}"#.utf8)) == 2)
        #expect(peers.heard(Array(#"{"node":"a"}"#.utf8)) == nil, "the same node again")
        #expect(peers.heard(Array(#"{"node":"b"}"#.utf8)) == 3)
        for bad in [
            #"{"node":"B!"}"#, #"{"node":""}"#, #"{"node":5}"#, "[]", "garbage", #"{"node":"\#(String(repeating: "x", count: 65))"}"#,
        ] {
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
}
