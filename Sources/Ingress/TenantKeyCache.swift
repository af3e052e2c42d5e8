import ClusterCore
import Synchronization

/// Remembers which tenant an API key belongs to for a short time, so a busy client costs one
/// coordinator call per key per `ttl`, and a revoked key stops working within `ttl`. Every
/// lookup hands the tenant's limits to `onAccess` (the rate limiter), so a changed limit also
/// applies within `ttl`.
///
/// Keys are kept only as their SHA-256 (the same hash the store keeps). Bounded: past
/// `capacity` entries the cache starts over.
final class TenantKeyCache: Sendable {
    enum Unsupported: Error { case noResolver }

    private struct Entry {
        var tenant: String?
        var expires: ContinuousClock.Instant
    }

    private let resolve: (@Sendable (String) async throws -> TenantAccess?)?
    private let onAccess: @Sendable (TenantAccess) -> Void
    private let ttl: Duration
    private let capacity: Int
    private let entries = Mutex<[String: Entry]>([:])

    init(
        resolve: (@Sendable (String) async throws -> TenantAccess?)?,
        ttl: Duration,
        capacity: Int = 10_000,
        onAccess: @escaping @Sendable (TenantAccess) -> Void = { _ in }
    ) {
        self.resolve = resolve
        self.onAccess = onAccess
        self.ttl = ttl
        self.capacity = capacity
    }

    /// The key's tenant if it is remembered and fresh (the inner `nil`: known to be invalid);
    /// `nil` when only `tenant(forKey:)` can tell.
    func cachedTenant(forKey key: String) -> String?? {
        guard resolve != nil else { return nil }
        let hash = APIKeys.hash(key)
        guard let entry = entries.withLock({ $0[hash] }), entry.expires > ContinuousClock.now else { return nil }
        return .some(entry.tenant)
    }

    func tenant(forKey key: String) async throws -> String? {
        guard let resolve else { throw Unsupported.noResolver }
        let hash = APIKeys.hash(key)
        let now = ContinuousClock.now
        if let entry = entries.withLock({ $0[hash] }), entry.expires > now {
            return entry.tenant
        }
        let access = try await resolve(hash)
        if let access { onAccess(access) }
        let expires = ContinuousClock.now + ttl
        entries.withLock { entries in
            if entries.count >= capacity { entries.removeAll(keepingCapacity: true) }
            entries[hash] = Entry(tenant: access?.tenant, expires: expires)
        }
        return access?.tenant
    }
}
