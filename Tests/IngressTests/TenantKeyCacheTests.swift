import AutonomousTesting
import ClusterCore
import Foundation
import Synchronization
import Testing

@testable import Ingress

@Suite("API key cache")
struct TenantKeyCacheTests {
    /// A resolver that knows one key and counts the coordinator calls per key hash.
    final class Resolver: Sendable {
        let valid: String
        let calls = Mutex<[String: Int]>([:])
        init(valid: String) { self.valid = valid }
        func resolve(_ hash: String) async throws -> TenantAccess? {
            calls.withLock { $0[hash, default: 0] += 1 }
            return hash == APIKeys.hash(valid) ? TenantAccess(tenant: "acme") : nil
        }
        func callsFor(_ key: String) -> Int { calls.withLock { $0[APIKeys.hash(key)] ?? 0 } }
    }

    static func key(_ n: Int) -> String { "aut_\(String(format: "%012d", n))_" + String(repeating: "x", count: 32) }

    /// A cache over a resolver that knows one valid key (of tenant `acme`), on a hand-moved clock.
    static func cache(lookupsPerSecond: Int) -> (valid: String, resolver: Resolver, clock: ManualClock, cache: TenantKeyCache) {
        let valid = APIKeys.generate().key
        let resolver = Resolver(valid: valid)
        let clock = ManualClock()
        let cache = TenantKeyCache(
            resolve: { try await resolver.resolve($0) },
            ttl: .seconds(60),
            lookupsPerSecond: lookupsPerSecond,
            clock: { clock.now }
        )
        return (valid, resolver, clock, cache)
    }

    @Test("A flood of unknown keys does not evict the known ones")
    func floodKeepsKnownKeys() async throws {
        let (valid, resolver, _, cache) = Self.cache(lookupsPerSecond: 1_000_000)
        #expect(try await cache.tenant(forKey: valid) == "acme")
        for n in 0..<25_000 {
            #expect(try await cache.tenant(forKey: Self.key(n)) == nil)
        }
        #expect(try await cache.tenant(forKey: valid) == "acme")
        #expect(resolver.callsFor(valid) == 1, "the valid key stayed cached through the flood")
    }

    @Test("Lookups of keys not cached are throttled; cached keys never are")
    func throttle() async throws {
        let (valid, resolver, clock, cache) = Self.cache(lookupsPerSecond: 10)
        #expect(try await cache.tenant(forKey: valid) == "acme")
        for n in 0..<9 { _ = try await cache.tenant(forKey: Self.key(n)) }
        await #expect(throws: TenantKeyCache.Throttled.self) { _ = try await cache.tenant(forKey: Self.key(100)) }
        #expect(resolver.callsFor(Self.key(100)) == 0, "a throttled lookup does not reach the coordinators")
        #expect(try await cache.tenant(forKey: valid) == "acme", "a cached key is answered while lookups are throttled")
        #expect(try await cache.tenant(forKey: Self.key(3)) == nil, "so is a cached unknown key")
        clock.advance(.milliseconds(100))
        #expect(try await cache.tenant(forKey: Self.key(100)) == nil, "one lookup a tenth of a second")
    }
}
