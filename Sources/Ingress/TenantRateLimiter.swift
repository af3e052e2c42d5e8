import ClusterCore
import Synchronization

/// Each tenant's ingest limit on this ingress node (``TenantLimits``): a token bucket per
/// limited tenant, refilled at `recordsPerSecond` up to `burst` records.
///
/// A request takes one token per record. With too few tokens it is held (shaped) for as long
/// as the bucket needs to refill, when that is at most `maxDelay`, and refused with the time
/// to retry otherwise. A request larger than the bucket passes once the bucket is full and
/// leaves it in debt, so no request size is refused forever. Held requests have their tokens
/// taken at once: what one tenant can hold in memory is bounded by `maxDelay` of its rate.
///
/// The buckets are this node's own: behind N ingress replicas a tenant may reach N times its
/// limit (docs/api.md, "Tenant limits", says how to set it).
final class TenantRateLimiter: Sendable {
    enum Decision: Equatable {
        case admit
        /// Go ahead after this long (the tokens are taken); the first `covered` records had
        /// tokens at once, so a publisher may send them now and spread the rest over the delay.
        case delay(Duration, covered: Int)
        /// Refused; the request would be admitted after this long.
        case refuse(retryAfter: Duration)
    }

    private struct Bucket {
        var rate: Double
        var burst: Double
        var tokens: Double
        var updated: ContinuousClock.Instant
    }

    private let buckets = Mutex<[String: Bucket]>([:])
    /// How many buckets there are, kept with them: while no tenant is limited (the usual case)
    /// `admit` answers without taking the lock every request would otherwise share.
    private let limitedTenants = Atomic<Int>(0)
    private let maxDelay: Duration
    private let clock: @Sendable () -> ContinuousClock.Instant

    init(maxDelay: Duration, clock: @escaping @Sendable () -> ContinuousClock.Instant = { .now }) {
        self.maxDelay = max(.zero, maxDelay)
        self.clock = clock
    }

    /// Applies `limits` to `tenant` (from a key lookup). A new bucket starts full; a changed
    /// limit keeps the tokens left (capped at the new burst).
    func update(_ tenant: String, limits: TenantLimits) {
        guard let rate = limits.recordsPerSecond, let burst = limits.effectiveBurst else {
            buckets.withLock { buckets in
                if buckets.removeValue(forKey: tenant) != nil { limitedTenants.subtract(1, ordering: .relaxed) }
            }
            return
        }
        let now = clock()
        buckets.withLock { buckets in
            if var bucket = buckets[tenant] {
                guard bucket.rate != Double(rate) || bucket.burst != Double(burst) else { return }
                Self.refill(&bucket, at: now)
                bucket.rate = Double(rate)
                bucket.burst = Double(burst)
                bucket.tokens = min(bucket.tokens, bucket.burst)
                buckets[tenant] = bucket
            } else {
                buckets[tenant] = Bucket(rate: Double(rate), burst: Double(burst), tokens: Double(burst), updated: now)
                limitedTenants.add(1, ordering: .relaxed)
            }
        }
    }

    /// The limit `tenant` is held to, if any: (records per second, burst).
    func limit(of tenant: String) -> (rate: Int, burst: Int)? {
        buckets.withLock { $0[tenant].map { (Int($0.rate), Int($0.burst)) } }
    }

    /// Whether `records` more records of `tenant` may go now, later, or not.
    func admit(_ tenant: String, records: Int) -> Decision {
        if limitedTenants.load(ordering: .relaxed) == 0 { return .admit }
        let now = clock()
        return buckets.withLock { buckets -> Decision in
            guard var bucket = buckets[tenant] else { return .admit }
            Self.refill(&bucket, at: now)
            let wanted = Double(records)
            // Enough tokens to start: all the request's, or a full bucket for a larger one.
            let needed = min(wanted, bucket.burst)
            let wait = Duration.nanoseconds(Int64((max(0, needed - bucket.tokens) / bucket.rate * 1e9).rounded()))
            guard wait <= maxDelay else {
                buckets[tenant] = bucket
                return .refuse(retryAfter: wait - maxDelay)
            }
            let covered = min(records, Int(max(0, bucket.tokens)))
            bucket.tokens -= wanted
            buckets[tenant] = bucket
            return wait > .zero ? .delay(wait, covered: covered) : .admit
        }
    }

    /// Gives back the tokens of a request admitted but not published (refused afterwards).
    func refund(_ tenant: String, records: Int) {
        buckets.withLock { buckets in
            guard var bucket = buckets[tenant] else { return }
            bucket.tokens = min(bucket.burst, bucket.tokens + Double(records))
            buckets[tenant] = bucket
        }
    }

    private static func refill(_ bucket: inout Bucket, at now: ContinuousClock.Instant) {
        guard now > bucket.updated else { return }
        let elapsed = (now - bucket.updated) / .seconds(1)
        bucket.tokens = min(bucket.burst, bucket.tokens + elapsed * bucket.rate)
        bucket.updated = now
    }
}
