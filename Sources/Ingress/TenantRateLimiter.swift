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
/// A limit is the cluster's: each node enforces its share, the limit divided by the ingress
/// nodes alive (``IngressPeers``; ``setShare(nodes:)``), so behind a load balancer that
/// spreads a tenant's requests evenly the cluster admits about the limit.
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
        /// The tenant's limit as set (cluster-wide).
        var limit: (rate: Int, burst: Int)
        /// This node's share of it.
        var rate: Double
        var burst: Double
        var tokens: Double
        var updated: ContinuousClock.Instant

        /// Sets the share for `nodes` ingress nodes; the tokens left are kept, up to the burst.
        mutating func share(among nodes: Int) {
            rate = Double(limit.rate) / Double(nodes)
            burst = max(1, Double(limit.burst) / Double(nodes))
            tokens = min(tokens, burst)
        }
    }

    private struct State {
        var buckets: [String: Bucket] = [:]
        /// Ingress nodes sharing each limit (this one included).
        var nodes = 1
    }

    private let state = Mutex(State())
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
            state.withLock { state in
                if state.buckets.removeValue(forKey: tenant) != nil { limitedTenants.subtract(1, ordering: .relaxed) }
            }
            return
        }
        let now = clock()
        state.withLock { state in
            if var bucket = state.buckets[tenant] {
                guard bucket.limit != (rate, burst) else { return }
                Self.refill(&bucket, at: now)
                bucket.limit = (rate, burst)
                bucket.share(among: state.nodes)
                state.buckets[tenant] = bucket
            } else {
                var bucket = Bucket(limit: (rate, burst), rate: 0, burst: 0, tokens: .infinity, updated: now)
                bucket.share(among: state.nodes)
                state.buckets[tenant] = bucket
                limitedTenants.add(1, ordering: .relaxed)
            }
        }
    }

    /// Shares every limit among `nodes` ingress nodes (this one included; at least 1).
    func setShare(nodes: Int) {
        let nodes = max(1, nodes)
        let now = clock()
        state.withLock { state in
            guard state.nodes != nodes else { return }
            state.nodes = nodes
            for tenant in Array(state.buckets.keys) {
                guard var bucket = state.buckets[tenant] else { continue }
                Self.refill(&bucket, at: now)
                bucket.share(among: nodes)
                state.buckets[tenant] = bucket
            }
        }
    }

    /// The limit `tenant` is held to, if any (records per second, burst), and this node's
    /// share of it.
    func limit(of tenant: String) -> (rate: Int, burst: Int, share: Double)? {
        state.withLock { $0.buckets[tenant].map { ($0.limit.rate, $0.limit.burst, $0.rate) } }
    }

    /// Whether `records` more records of `tenant` may go now, later, or not.
    func admit(_ tenant: String, records: Int) -> Decision {
        if limitedTenants.load(ordering: .relaxed) == 0 { return .admit }
        let now = clock()
        return state.withLock { state -> Decision in
            guard var bucket = state.buckets[tenant] else { return .admit }
            Self.refill(&bucket, at: now)
            let wanted = Double(records)
            // Enough tokens to start: all the request's, or a full bucket for a larger one.
            let needed = min(wanted, bucket.burst)
            let wait = Duration.nanoseconds(Int64((max(0, needed - bucket.tokens) / bucket.rate * 1e9).rounded()))
            guard wait <= maxDelay else {
                state.buckets[tenant] = bucket
                return .refuse(retryAfter: wait - maxDelay)
            }
            let covered = min(records, Int(max(0, bucket.tokens)))
            bucket.tokens -= wanted
            state.buckets[tenant] = bucket
            return wait > .zero ? .delay(wait, covered: covered) : .admit
        }
    }

    /// Gives back the tokens of a request admitted but not published (refused afterwards).
    func refund(_ tenant: String, records: Int) {
        state.withLock { state in
            guard var bucket = state.buckets[tenant] else { return }
            bucket.tokens = min(bucket.burst, bucket.tokens + Double(records))
            state.buckets[tenant] = bucket
        }
    }

    private static func refill(_ bucket: inout Bucket, at now: ContinuousClock.Instant) {
        guard now > bucket.updated else { return }
        let elapsed = (now - bucket.updated) / .seconds(1)
        bucket.tokens = min(bucket.burst, bucket.tokens + elapsed * bucket.rate)
        bucket.updated = now
    }
}
