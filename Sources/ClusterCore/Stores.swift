import Crypto
package import Foundation

/// The coordinator's durable state. Postgres in production and SQLite in embedded mode
/// implement it; workers and ingress never use it directly (they ask a coordinator over NATS).
///
/// Every name reaches SQL as a bound parameter. Lease times come from the database's clock
/// (Postgres `now()`), so coordinators on different machines agree on expiry.
package protocol CoordinatorStore: Sendable {
    /// Creates or upgrades the schema (idempotent, versioned).
    func migrate() async throws
    /// A description for startup output, without credentials.
    var displayName: String { get }
    func close() async throws

    // MARK: Schedules

    /// The fire time of the last tick handled (published, or skipped while paused), if any.
    func lastFire(tenant: String, schedule: String) async throws -> Date?
    /// The fire time of the last tick published (not skipped while paused), if any.
    func lastPublishedFire(tenant: String, schedule: String) async throws -> Date?
    /// Records that the tick at `fireTime` was handled: `published`, or skipped while paused.
    /// Neither time moves backwards. With a `fence`, the write happens only while that lease
    /// is still held with that token, and throws ``StoreError/fenced`` otherwise.
    func recordFire(tenant: String, schedule: String, at fireTime: Date, published: Bool, fence: LeaseFence?) async throws
    /// Pause flag and timing override of a schedule for one tenant.
    func scheduleControl(tenant: String, schedule: String) async throws -> ScheduleControl
    func setPaused(tenant: String, schedule: String, paused: Bool) async throws
    /// Replaces the schedule's timing for one tenant (`nil` restores the app's own). The
    /// caller validates the expression and the time zone.
    func setScheduleOverride(tenant: String, schedule: String, expression: String?, timeZone: String?) async throws

    // MARK: Leases

    /// Takes or renews the lease `name` for `holder` until `ttl` from now (database time).
    /// Returns the fencing token when `holder` holds the lease after the call, `nil` when
    /// another holder's lease is still valid. The token grows whenever the holder changes.
    func acquireLease(name: String, holder: String, ttl: Duration) async throws -> Int64?
    /// Gives the lease up at once (only if `holder` holds it).
    func releaseLease(name: String, holder: String) async throws
    /// The unexpired leases whose names start with `prefix`.
    func liveLeases(prefix: String) async throws -> [Lease]

    // MARK: Tenants and API keys

    /// Throws ``StoreError/duplicate`` when the tenant exists.
    func createTenant(_ name: String) async throws
    func tenants() async throws -> [TenantRecord]
    /// Throws ``StoreError/notFound`` for an unknown tenant.
    func setTenantDisabled(_ name: String, disabled: Bool) async throws
    /// Replaces the tenant's ingest limits. Throws ``StoreError/notFound`` for an unknown tenant.
    func setTenantLimits(_ name: String, limits: TenantLimits) async throws
    /// Stores a key's hash. Throws ``StoreError/notFound`` for an unknown tenant.
    func insertAPIKey(id: String, tenant: String, hash: String) async throws
    /// The tenant (and its limits) of the active key with this hash, if the key exists, is not
    /// revoked and its tenant is enabled.
    func accessForAPIKey(hash: String) async throws -> TenantAccess?
    /// Revokes a key (idempotent). Throws ``StoreError/notFound`` when `id` is not a key of `tenant`.
    func revokeAPIKey(id: String, tenant: String) async throws
    func apiKeys(tenant: String) async throws -> [APIKeyRecord]
}

/// What an operator changed about a schedule for one tenant.
package struct ScheduleControl: Sendable, Hashable, Codable {
    package var paused: Bool
    /// A cron expression replacing the app's timing, if set.
    package var expression: String?
    package var timeZone: String?

    package init(paused: Bool = false, expression: String? = nil, timeZone: String? = nil) {
        self.paused = paused
        self.expression = expression
        self.timeZone = timeZone
    }
}

extension CoordinatorStore {
    package func isPaused(tenant: String, schedule: String) async throws -> Bool {
        try await scheduleControl(tenant: tenant, schedule: schedule).paused
    }

    /// Records that the tick at `fireTime` was published.
    package func recordFire(tenant: String, schedule: String, at fireTime: Date, fence: LeaseFence? = nil) async throws {
        try await recordFire(tenant: tenant, schedule: schedule, at: fireTime, published: true, fence: fence)
    }
}

/// A lease a write must still hold to take effect (its name, holder and fencing token).
package typealias LeaseFence = Lease

/// A lease: who holds `name`, under which fencing token.
package struct Lease: Sendable, Hashable, Codable {
    package var name: String
    package var holder: String
    package var token: Int64

    package init(name: String, holder: String, token: Int64) {
        self.name = name
        self.holder = holder
        self.token = token
    }
}

package struct TenantRecord: Sendable, Hashable, Codable {
    package var name: String
    package var disabled: Bool
    package var createdAt: Date
    package var limits: TenantLimits

    package init(name: String, disabled: Bool, createdAt: Date, limits: TenantLimits = TenantLimits()) {
        self.name = name
        self.disabled = disabled
        self.createdAt = createdAt
        self.limits = limits
    }
}

/// How fast one tenant may ingest records through the cluster's ingress nodes: a token bucket
/// that refills at `recordsPerSecond` and holds up to `burst` records, shared evenly among the
/// ingress nodes alive (each enforces its share). No `recordsPerSecond`: no limit.
package struct TenantLimits: Sendable, Hashable, Codable {
    package var recordsPerSecond: Int?
    /// Records a tenant may send at once after a quiet time; `nil`: one second's worth.
    package var burst: Int?

    package static let maximumRate = 100_000_000

    package init(recordsPerSecond: Int? = nil, burst: Int? = nil) {
        self.recordsPerSecond = recordsPerSecond
        self.burst = burst
    }

    package var isUnlimited: Bool { recordsPerSecond == nil }

    /// The bucket's size: `burst`, else one second's worth.
    package var effectiveBurst: Int? { recordsPerSecond.map { burst ?? $0 } }

    /// What is wrong with these limits, as "field: problem", or `nil`.
    package var problem: String? {
        if let rate = recordsPerSecond, !(1...Self.maximumRate).contains(rate) {
            return "recordsPerSecond: must be between 1 and \(Self.maximumRate), or null for no limit"
        }
        if let burst {
            if recordsPerSecond == nil { return "burst: needs recordsPerSecond" }
            if !(1...Self.maximumRate).contains(burst) { return "burst: must be between 1 and \(Self.maximumRate)" }
        }
        return nil
    }
}

/// What an API key grants: the tenant it acts for and that tenant's limits.
package struct TenantAccess: Sendable, Hashable, Codable {
    package var tenant: String
    package var limits: TenantLimits

    package init(tenant: String, limits: TenantLimits = TenantLimits()) {
        self.tenant = tenant
        self.limits = limits
    }
}

package struct APIKeyRecord: Sendable, Hashable, Codable {
    package var id: String
    package var tenant: String
    package var createdAt: Date
    package var revokedAt: Date?

    package init(id: String, tenant: String, createdAt: Date, revokedAt: Date?) {
        self.id = id
        self.tenant = tenant
        self.createdAt = createdAt
        self.revokedAt = revokedAt
    }
}

/// A store refused an operation for a reason the caller can act on.
package struct StoreError: Error, Sendable, Hashable, CustomStringConvertible {
    package enum Kind: String, Sendable, Hashable {
        case duplicate, notFound, fenced
    }

    package var kind: Kind
    package var message: String

    package static func duplicate(_ message: String) -> StoreError { StoreError(kind: .duplicate, message: message) }
    package static func notFound(_ message: String) -> StoreError { StoreError(kind: .notFound, message: message) }
    package static func fenced(_ message: String) -> StoreError { StoreError(kind: .fenced, message: message) }

    package var description: String { message }

    /// Compares only the ``kind``.
    package static func == (lhs: StoreError, rhs: StoreError) -> Bool { lhs.kind == rhs.kind }
    package func hash(into hasher: inout Hasher) { hasher.combine(kind) }
}

/// API keys: `aut_<id>_<secret>`. The id is public (listed, used to revoke); the whole key is
/// shown once at creation and only its SHA-256 is stored.
package enum APIKeys {
    static let alphabet = Array("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789".utf8)

    static func random(_ count: Int) -> String {
        var generator = SystemRandomNumberGenerator()
        return String(decoding: (0..<count).map { _ in alphabet[Int(generator.next(upperBound: UInt(alphabet.count)))] }, as: UTF8.self)
    }

    /// A new key and its id.
    package static func generate() -> (id: String, key: String) {
        let id = random(12)
        return (id, "aut_\(id)_\(random(40))")
    }

    /// The stored form of a key.
    package static func hash(_ key: String) -> String {
        SHA256.hash(data: Array(key.utf8)).map { byte in
            let hex = Array("0123456789abcdef".utf8)
            return String(decoding: [hex[Int(byte >> 4)], hex[Int(byte & 0xf)]], as: UTF8.self)
        }.joined()
    }

    /// `true` when `key` has the shape of a key (checked before any lookup).
    package static func isWellFormed(_ key: String) -> Bool {
        let parts = key.split(separator: "_", omittingEmptySubsequences: false)
        return parts.count == 3 && parts[0] == "aut" && parts[1].utf8.count == 12 && parts[2].utf8.count == 40
            && parts[1].utf8.allSatisfy(alphabet.contains) && parts[2].utf8.allSatisfy(alphabet.contains)
    }

    /// `true` when `id` has the shape of a key id.
    package static func isWellFormedID(_ id: String) -> Bool {
        id.utf8.count == 12 && id.utf8.allSatisfy(alphabet.contains)
    }
}

extension Duration {
    /// The duration in (fractional) seconds.
    package var inSeconds: Double {
        Double(components.seconds) + Double(components.attoseconds) / 1e18
    }
}
