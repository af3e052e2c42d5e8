import AutonomousTesting
import ClusterCore
import Foundation
import Synchronization
import Testing

@testable import Ingress

/// The ingress's per-tenant token buckets, on a clock the test moves by hand.
@Suite("Tenant rate limiter")
struct TenantRateLimiterTests {
    @Test("Unlimited tenants always pass; a limited one gets its burst, then waits for the refill")
    func bucket() {
        let clock = ManualClock()
        let limiter = TenantRateLimiter(maxDelay: .zero, clock: { clock.now })
        #expect(limiter.admit("free", records: 1_000_000) == .admit)

        limiter.update("acme", limits: TenantLimits(recordsPerSecond: 100, burst: 200))
        #expect(limiter.admit("acme", records: 150) == .admit)
        #expect(limiter.admit("acme", records: 50) == .admit)
        // Empty: 100 records need one second of refill.
        #expect(limiter.admit("acme", records: 100) == .refuse(retryAfter: .seconds(1)))
        clock.advance(.milliseconds(500))
        #expect(limiter.admit("acme", records: 100) == .refuse(retryAfter: .milliseconds(500)))
        #expect(limiter.admit("acme", records: 50) == .admit)
        // The refill never exceeds the burst.
        clock.advance(.seconds(60))
        #expect(limiter.admit("acme", records: 200) == .admit)
        #expect(limiter.admit("acme", records: 1) == .refuse(retryAfter: .milliseconds(10)))
        #expect(limiter.admit("globex", records: 10_000) == .admit, "one tenant's limit is its own")

        // Removing the limit lets everything through.
        limiter.update("acme", limits: TenantLimits())
        #expect(limiter.admit("acme", records: 10_000) == .admit)
    }

    @Test("Within the longest delay a request is held, its tokens taken at once; beyond it refused")
    func shaping() {
        let clock = ManualClock()
        let limiter = TenantRateLimiter(maxDelay: .seconds(1), clock: { clock.now })
        limiter.update("acme", limits: TenantLimits(recordsPerSecond: 1000))
        #expect(limiter.admit("acme", records: 800) == .admit)
        // 200 records have tokens now; the other 300 wait 300 ms.
        #expect(limiter.admit("acme", records: 500) == .delay(.milliseconds(300), covered: 200))
        #expect(limiter.admit("acme", records: 200) == .delay(.milliseconds(500), covered: 0))
        // The held requests' tokens are gone: the next waits behind them.
        #expect(limiter.admit("acme", records: 500) == .delay(.seconds(1), covered: 0))
        #expect(limiter.admit("acme", records: 500) == .refuse(retryAfter: .milliseconds(500)))
        clock.advance(.milliseconds(1500))
        #expect(limiter.admit("acme", records: 500) == .admit)
        #expect(limiter.admit("acme", records: 500) == .delay(.milliseconds(500), covered: 0))
        // A request refused after admission (in-flight limit, no connection) gets its tokens back.
        limiter.refund("acme", records: 500)
        #expect(limiter.admit("acme", records: 500) == .delay(.milliseconds(500), covered: 0))
    }

    @Test("A request larger than the bucket passes when the bucket is full and leaves it in debt")
    func largeRequest() {
        let clock = ManualClock()
        let limiter = TenantRateLimiter(maxDelay: .zero, clock: { clock.now })
        limiter.update("acme", limits: TenantLimits(recordsPerSecond: 10, burst: 10))
        #expect(limiter.admit("acme", records: 1000) == .admit)
        // 990 records of debt: the next record waits 99.1 s.
        #expect(limiter.admit("acme", records: 1) == .refuse(retryAfter: .milliseconds(99_100)))
        clock.advance(.seconds(100))
        #expect(limiter.admit("acme", records: 5) == .admit)
    }

    @Test("A changed limit keeps the tokens left, capped at the new burst")
    func changedLimit() {
        let clock = ManualClock()
        let limiter = TenantRateLimiter(maxDelay: .zero, clock: { clock.now })
        limiter.update("acme", limits: TenantLimits(recordsPerSecond: 100))
        #expect(limiter.admit("acme", records: 60) == .admit)
        // The same limit again (every key lookup) changes nothing.
        limiter.update("acme", limits: TenantLimits(recordsPerSecond: 100))
        #expect(limiter.admit("acme", records: 41) == .refuse(retryAfter: .milliseconds(10)))
        limiter.update("acme", limits: TenantLimits(recordsPerSecond: 1000, burst: 20))
        #expect(limiter.limit(of: "acme")! == (1000, 20, 1000))
        #expect(limiter.admit("acme", records: 15) == .admit)
        #expect(limiter.admit("acme", records: 10) == .refuse(retryAfter: .milliseconds(5)))
    }

    @Test("A limit is shared among the ingress nodes alive, and regrows when one leaves")
    func share() {
        let clock = ManualClock()
        let limiter = TenantRateLimiter(maxDelay: .zero, clock: { clock.now })
        limiter.setShare(nodes: 4)
        // A tenant first seen with four nodes alive starts with a quarter of the burst.
        limiter.update("acme", limits: TenantLimits(recordsPerSecond: 400, burst: 800))
        #expect(limiter.limit(of: "acme")! == (400, 800, 100))
        #expect(limiter.admit("acme", records: 200) == .admit)
        #expect(limiter.admit("acme", records: 1) == .refuse(retryAfter: .milliseconds(10)))
        // Two nodes: twice the rate and the burst; the tokens left are kept (none here).
        limiter.setShare(nodes: 2)
        #expect(limiter.limit(of: "acme")! == (400, 800, 200))
        #expect(limiter.admit("acme", records: 1) == .refuse(retryAfter: .milliseconds(5)))
        clock.advance(.seconds(2))
        #expect(limiter.admit("acme", records: 400) == .admit)
        #expect(limiter.admit("acme", records: 1) == .refuse(retryAfter: .milliseconds(5)))
        // More nodes: the tokens left are capped at the smaller burst.
        clock.advance(.seconds(2))
        limiter.setShare(nodes: 8)
        #expect(limiter.limit(of: "acme")! == (400, 800, 50))
        #expect(limiter.admit("acme", records: 100) == .admit)
        #expect(limiter.admit("acme", records: 1) == .refuse(retryAfter: .milliseconds(20)))
        // A burst smaller than the nodes still lets one record through on each.
        limiter.update("tiny", limits: TenantLimits(recordsPerSecond: 2, burst: 2))
        #expect(limiter.admit("tiny", records: 1) == .admit)
        // The same limit again (every key lookup) keeps this node's share.
        limiter.update("acme", limits: TenantLimits(recordsPerSecond: 400, burst: 800))
        #expect(limiter.limit(of: "acme")! == (400, 800, 50))
        limiter.setShare(nodes: 0)
        #expect(limiter.limit(of: "acme")! == (400, 800, 400), "at least this node")
    }

    @Test("Limits are checked: rates and bursts in range, a burst only with a rate")
    func validation() {
        #expect(TenantLimits().problem == nil)
        #expect(TenantLimits(recordsPerSecond: 1).problem == nil)
        #expect(TenantLimits(recordsPerSecond: 0).problem?.hasPrefix("recordsPerSecond:") == true)
        #expect(TenantLimits(recordsPerSecond: -5).problem?.hasPrefix("recordsPerSecond:") == true)
        #expect(TenantLimits(recordsPerSecond: 200_000_000).problem?.hasPrefix("recordsPerSecond:") == true)
        #expect(TenantLimits(recordsPerSecond: nil, burst: 10).problem == "burst: needs recordsPerSecond")
        #expect(TenantLimits(recordsPerSecond: 10, burst: 0).problem?.hasPrefix("burst:") == true)
        #expect(TenantLimits(recordsPerSecond: 10).effectiveBurst == 10)
        #expect(TenantLimits(recordsPerSecond: 10, burst: 30).effectiveBurst == 30)
    }
}
