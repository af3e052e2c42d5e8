import ClusterCore
import Synchronization

/// Remembers which tenant an API key belongs to for a short time, so a busy client costs one
/// coordinator call per key per `ttl`, and a revoked key stops working within `ttl`. Every
/// lookup hands the tenant's limits to `onAccess` (the rate limiter), so a changed limit also
/// applies within `ttl`.
///
/// Keys are kept only as their SHA-256 (the same hash the store keeps). Known keys and unknown
/// ones are kept apart, each bounded: a flood of made-up keys churns only the unknown ones and
/// never evicts a client's valid key. Lookups of keys not cached are throttled
/// (`lookupsPerSecond`, a burst of one second's worth), so such a flood cannot turn into as
/// many calls to the coordinators; past that, ``Throttled`` (the ingress answers 429).
final class TenantKeyCache: Sendable {
    enum Unsupported: Error { case noResolver }
    /// Too many lookups of keys not cached, just now.
    struct Throttled: Error {}

    private struct Entry {
        var tenant: String?
        var expires: ContinuousClock.Instant
    }

    private struct State {
        var known: [String: Entry] = [:]
        var unknown: [String: Entry] = [:]
        var tokens: Double
        var refilled: ContinuousClock.Instant
    }

    private let resolve: (@Sendable (String) async throws -> TenantAccess?)?
    private let onAccess: @Sendable (TenantAccess) -> Void
    private let ttl: Duration
    private let capacity: Int
    private let lookupsPerSecond: Double
    private let clock: @Sendable () -> ContinuousClock.Instant
    private let state: Mutex<State>

    init(
        resolve: (@Sendable (String) async throws -> TenantAccess?)?,
        ttl: Duration,
        capacity: Int = 10_000,
        lookupsPerSecond: Int = 500,
        clock: @escaping @Sendable () -> ContinuousClock.Instant = { ContinuousClock.now },
        onAccess: @escaping @Sendable (TenantAccess) -> Void = { _ in }
    ) {
        self.resolve = resolve
        self.onAccess = onAccess
        self.ttl = ttl
        self.capacity = capacity
        self.lookupsPerSecond = Double(max(1, lookupsPerSecond))
        self.clock = clock
        self.state = Mutex(State(tokens: Double(max(1, lookupsPerSecond)), refilled: clock()))
    }

    private func cached(_ hash: String, now: ContinuousClock.Instant) -> Entry? {
        state.withLock { state in
            if let entry = state.known[hash], entry.expires > now { return entry }
            if let entry = state.unknown[hash], entry.expires > now { return entry }
            return nil
        }
    }

    /// The key's tenant if it is remembered and fresh (the inner `nil`: known to be invalid);
    /// `nil` when only `tenant(forKey:)` can tell.
    func cachedTenant(forKey key: String) -> String?? {
        guard resolve != nil else { return nil }
        guard let entry = cached(APIKeys.hash(key), now: clock()) else { return nil }
        return .some(entry.tenant)
    }

    func tenant(forKey key: String) async throws -> String? {
        guard let resolve else { throw Unsupported.noResolver }
        let hash = APIKeys.hash(key)
        let now = clock()
        if let entry = cached(hash, now: now) { return entry.tenant }
        let allowed = state.withLock { state -> Bool in
            let elapsed = Double((now - state.refilled).components.attoseconds) / 1e18 + Double((now - state.refilled).components.seconds)
            state.tokens = min(lookupsPerSecond, state.tokens + max(0, elapsed) * lookupsPerSecond)
            state.refilled = now
            guard state.tokens >= 1 else { return false }
            state.tokens -= 1
            return true
        }
        guard allowed else { throw Throttled() }
        let access = try await resolve(hash)
        if let access { onAccess(access) }
        let entry = Entry(tenant: access?.tenant, expires: clock() + ttl)
        state.withLock { state in
            if access != nil {
                if state.known.count >= capacity { state.known.removeAll(keepingCapacity: true) }
                state.known[hash] = entry
                state.unknown[hash] = nil
            } else {
                if state.unknown.count >= capacity { state.unknown.removeAll(keepingCapacity: true) }
                state.unknown[hash] = entry
                state.known[hash] = nil
            }
        }
        return access?.tenant
    }
}
