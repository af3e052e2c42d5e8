import Foundation

/// The coordinator's durable state. Postgres in production and SQLite in embedded mode
/// implement it; workers and ingress never use it directly.
public protocol CoordinatorStore: Sendable {
    /// Creates or upgrades the schema (idempotent).
    func migrate() async throws
    /// The fire time of the last tick published for `schedule`, if any.
    func lastFire(tenant: String, schedule: String) async throws -> Date?
    /// Records that the tick at `fireTime` was published.
    func recordFire(tenant: String, schedule: String, at fireTime: Date) async throws
    /// A description for startup output, without credentials.
    var displayName: String { get }
    func close() async throws
}
