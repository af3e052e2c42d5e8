import ClusterCore
import Hummingbird
import NIOCore
import Synchronization

/// Per client address, a token bucket for requests that carry no valid credentials: refused
/// API keys (401) and calls of routes and webhooks declared `.unauthenticated`. It refills at
/// `rate` a second and holds `2 × rate`; an address with an empty bucket gets 429 before its
/// request is looked at. Tenant limits cover authenticated traffic; this keeps one address
/// from guessing keys or flooding open paths.
///
/// The map holds at most `capacity` addresses; when full, the ones idle longest go first.
final class AddressLimiter: Sendable {
    private struct Bucket {
        var tokens: Double
        var updated: ContinuousClock.Instant
    }

    let rate: Double
    let burst: Double
    private let capacity: Int
    private let clock: @Sendable () -> ContinuousClock.Instant
    // Guarded by the mutex: each address's bucket.
    private let buckets = Mutex<[String: Bucket]>([:])
    /// How many addresses have a bucket: while none has, the check costs one atomic load.
    private let tracked = Atomic<Int>(0)

    init(rate: Int, capacity: Int = 100_000, clock: @escaping @Sendable () -> ContinuousClock.Instant = { .now }) {
        self.rate = Double(max(1, rate))
        self.burst = 2 * Double(max(1, rate))
        self.capacity = capacity
        self.clock = clock
    }

    /// Whether the peer at `address` has no token left (its requests get 429 until the bucket
    /// refills).
    func isExhausted(_ address: SocketAddress?) -> Bool {
        guard tracked.load(ordering: .relaxed) > 0 else { return false }
        return isExhausted(Self.key(address))
    }

    /// Takes a token for the peer at `address`; false when it has none.
    @discardableResult
    func charge(_ address: SocketAddress?) -> Bool { charge(Self.key(address)) }

    func isExhausted(_ address: String) -> Bool {
        let now = clock()
        return buckets.withLock { buckets in
            guard let bucket = buckets[address] else { return false }
            return refilled(bucket, now).tokens < 1
        }
    }

    /// Takes a token for `address`; false when it has none.
    @discardableResult
    func charge(_ address: String) -> Bool {
        let now = clock()
        return buckets.withLock { buckets in
            var bucket = buckets[address].map { refilled($0, now) } ?? Bucket(tokens: burst, updated: now)
            let granted = bucket.tokens >= 1
            if granted { bucket.tokens -= 1 }
            if buckets[address] == nil, buckets.count >= capacity { evict(&buckets, now) }
            buckets[address] = bucket
            tracked.store(buckets.count, ordering: .relaxed)
            return granted
        }
    }

    private func refilled(_ bucket: Bucket, _ now: ContinuousClock.Instant) -> Bucket {
        let elapsed = max(0, (now - bucket.updated) / .seconds(1))
        return Bucket(tokens: min(burst, bucket.tokens + elapsed * rate), updated: now)
    }

    /// Drops full buckets (they limit nothing), else the oldest tenth.
    private func evict(_ buckets: inout [String: Bucket], _ now: ContinuousClock.Instant) {
        let full = buckets.filter { refilled($0.value, now).tokens >= burst }.map(\.key)
        if !full.isEmpty {
            for key in full { buckets.removeValue(forKey: key) }
            return
        }
        for (key, _) in buckets.sorted(by: { $0.value.updated < $1.value.updated }).prefix(max(1, capacity / 10)) {
            buckets.removeValue(forKey: key)
        }
    }

    /// The refusal of an address that used up its bucket (429).
    var refusal: RouteError {
        var error = RouteError(
            status: 429,
            code: "too_many_requests",
            message: "too many requests without valid credentials from this address; retry later"
        )
        error.retryAfterSeconds = max(1, Int((1 / rate).rounded(.up)))
        return error
    }

    /// The address part of a peer (no port), or "" when unknown.
    static func key(_ address: SocketAddress?) -> String { address?.ipAddress ?? "" }
}

/// Hummingbird's request context plus the client's address (for ``AddressLimiter``).
struct IngressRequestContext: RequestContext {
    var coreContext: CoreRequestContextStorage
    let remoteAddress: SocketAddress?

    init(source: ApplicationRequestContextSource) {
        self.coreContext = .init(source: source)
        self.remoteAddress = source.channel.remoteAddress
    }
}
