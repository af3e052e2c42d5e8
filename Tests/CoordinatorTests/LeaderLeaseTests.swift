import Testing

@testable import Coordinator

/// A point on a time line the test writes down: no clock is ever read.
struct TestInstant: InstantProtocol, Hashable {
    var offset: Duration
    func advanced(by duration: Duration) -> TestInstant { TestInstant(offset: offset + duration) }
    func duration(to other: TestInstant) -> Duration { other.offset - offset }
    static func < (lhs: TestInstant, rhs: TestInstant) -> Bool { lhs.offset < rhs.offset }
}

@Suite("Leader lease timing, without a clock")
struct LeaderLeaseTests {
    typealias Lease = LeaderLease<TestInstant>
    let t0 = TestInstant(offset: .zero)

    @Test("A leader stops before the store lets anyone else in; a standby leads within the TTL of the last renewal")
    func takeoverBound() {
        for ttl: Duration in [.seconds(1), .seconds(10), .seconds(60)] {
            // The store: whoever writes while the lease is free (or its own) holds it for leaseLength.
            var leader = Lease(ttl: ttl)
            var expiry = t0.advanced(by: leader.leaseLength)
            guard case .startLeading(1, let firstDeadline) = leader.acquired(1, sentAt: t0) else {
                Issue.record("the first attempt leads")
                continue
            }
            #expect(firstDeadline < expiry, "the leader's deadline falls before the store's expiry")
            // Two renewals, then the leader dies (or loses the store) right after the last.
            var now = t0
            var lastRenewal = t0
            for _ in 0..<2 {
                now = now.advanced(by: leader.pause(now: now))
                #expect(now < expiry)
                lastRenewal = now
                expiry = now.advanced(by: leader.leaseLength)
                #expect(leader.acquired(1, sentAt: now) == .extend(deadline: now.advanced(by: leader.leaseLength - leader.margin)))
            }
            // A partitioned leader that cannot renew stops at its deadline, before the expiry.
            var partitioned = leader
            let stopsAt = lastRenewal.advanced(by: partitioned.leaseLength - partitioned.margin)
            #expect(partitioned.check(now: stopsAt.advanced(by: .nanoseconds(-1))) == .none)
            #expect(partitioned.check(now: stopsAt) == .stopLeading(reason: "the lease could not be renewed in time"))
            #expect(stopsAt < expiry)
            // A standby trying at its own cadence, from any phase, leads within the TTL.
            for phase in stride(from: 0, to: 10, by: 1) {
                var standby = Lease(ttl: ttl)
                var attempt = lastRenewal.advanced(by: ttl / 10 * phase / 10)
                var taken: TestInstant?
                while taken == nil {
                    let granted: Int64? = attempt >= expiry ? 2 : nil
                    if case .startLeading = standby.acquired(granted, sentAt: attempt) { taken = attempt }
                    attempt = attempt.advanced(by: standby.pause(now: attempt))
                }
                // Offsets on the test's own time line, not a measured duration.
                let takeover = taken!.offset - lastRenewal.offset
                #expect(takeover <= ttl, "ttl \(ttl), phase \(phase): took over \(takeover) after the last renewal")
            }
        }
    }

    @Test("Another holder, a new token, or a missed deadline end the tenure")
    func transitions() {
        var lease = Lease(ttl: .seconds(10))
        #expect(lease.acquired(nil, sentAt: t0) == .none, "a candidate that is refused stays one")
        #expect(lease.pause(now: t0) == .seconds(1))
        #expect(lease.acquired(7, sentAt: t0) == .startLeading(token: 7, deadline: t0.advanced(by: .milliseconds(7500))))
        #expect(lease.pause(now: t0) == .seconds(2), "a leader renews every fifth of the TTL")
        #expect(lease.pause(now: t0.advanced(by: .milliseconds(6500))) == .seconds(1), "and sooner when its deadline comes first")
        // A renewal sent earlier than the last one never shortens the deadline.
        #expect(lease.acquired(7, sentAt: t0.advanced(by: .seconds(-1))) == .extend(deadline: t0.advanced(by: .milliseconds(7500))))
        #expect(
            lease.acquired(8, sentAt: t0.advanced(by: .seconds(2)))
                == .restartLeading(token: 8, deadline: t0.advanced(by: .milliseconds(9500)))
        )
        #expect(lease.acquired(nil, sentAt: t0.advanced(by: .seconds(4))) == .stopLeading(reason: "another coordinator holds the lease"))
        #expect(lease.state == .candidate)
        #expect(lease.check(now: t0.advanced(by: .seconds(100))) == .none, "a candidate has no deadline")
    }
}
