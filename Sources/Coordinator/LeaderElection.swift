package import ClusterCore
import Logging
import Synchronization

/// One tenure as leader: valid until its deadline, which each successful renewal pushes out.
///
/// The deadline is set from the instant the renewal was *sent*, shortened by a safety margin,
/// so it always falls before the database's lease expiry: a leader that stops hearing from
/// the store stops acting before any standby can take the lease.
package final class Leadership: Sendable {
    package let token: Int64
    package let fence: LeaseFence
    private let deadline: Mutex<ContinuousClock.Instant>

    init(fence: LeaseFence, deadline: ContinuousClock.Instant) {
        self.token = fence.token
        self.fence = fence
        self.deadline = Mutex(deadline)
    }

    /// `true` while this process may act as leader.
    package var isValid: Bool { ContinuousClock.now < deadline.withLock { $0 } }

    var validUntil: ContinuousClock.Instant { deadline.withLock { $0 } }

    func extend(to instant: ContinuousClock.Instant) {
        deadline.withLock { $0 = max($0, instant) }
    }
}

/// The thing a deposed leader's actions fail with.
struct LeadershipLost: Error, CustomStringConvertible {
    var description: String { "leadership lost" }
}

/// Leader election by a lease in the coordinator store.
///
/// Every coordinator runs one; the timing and states are ``LeaderLease``'s. A leader's duties
/// run in their own task, cancelled as soon as the tenure ends (lost to another holder, or its
/// deadline passed without a successful renewal).
struct LeaderElection: Sendable {
    static let leaseName = "leader"

    let store: any CoordinatorStore
    let holder: String
    let ttl: Duration
    let logger: Logger

    /// Acts as candidate until cancelled; runs `duties` during each tenure.
    func run(duties: @escaping @Sendable (Leadership) async -> Void) async {
        var lease = LeaderLease<ContinuousClock.Instant>(ttl: ttl)
        var current: (leadership: Leadership, task: Task<Void, Never>)?
        while !Task.isCancelled {
            let attempt = ContinuousClock.now
            var action = LeaderLease<ContinuousClock.Instant>.Action.none
            do {
                let store = self.store
                let holder = self.holder
                let length = lease.leaseLength
                let token = try await withDeadline(ttl / 5) {
                    try await store.acquireLease(name: Self.leaseName, holder: holder, ttl: length)
                }
                action = lease.acquired(token, sentAt: attempt)
            } catch {
                if Task.isCancelled { break }  // shutting down, not a failure
                logger.warning("Cannot renew the leader lease", metadata: ["error": "\(error)"])
            }
            if case .none = action { action = lease.check(now: .now) }
            switch action {
            case .none:
                break
            case .extend(let deadline):
                current?.leadership.extend(to: deadline)
            case .startLeading(let token, let deadline), .restartLeading(let token, let deadline):
                if let existing = current { await stop(existing, reason: "the fencing token changed") }
                let leadership = Leadership(fence: LeaseFence(name: Self.leaseName, holder: holder, token: token), deadline: deadline)
                logger.notice("This coordinator leads", metadata: ["coordinator.id": "\(holder)", "coordinator.token": "\(token)"])
                current = (leadership, Task { await duties(leadership) })
            case .stopLeading(let reason):
                if let existing = current { await stop(existing, reason: reason) }
                current = nil
            }
            try? await Task.sleep(for: lease.pause(now: .now))
        }
        if let existing = current {
            await stop(existing, reason: "shutting down")
            // Hand over at once instead of making a standby wait for the TTL.
            try? await store.releaseLease(name: Self.leaseName, holder: holder)
        }
    }

    private func stop(_ tenure: (leadership: Leadership, task: Task<Void, Never>), reason: String) async {
        logger.notice("This coordinator stops leading", metadata: ["coordinator.id": "\(holder)", "reason": "\(reason)"])
        tenure.task.cancel()
        await tenure.task.value
    }
}

/// Runs `body`, throwing `DeadlineExceeded` when it takes longer than `limit` (the body is
/// cancelled).
func withDeadline<T: Sendable>(_ limit: Duration, _ body: @escaping @Sendable () async throws -> T) async throws -> T {
    try await withThrowingTaskGroup(of: T?.self) { group in
        group.addTask { try await body() }
        group.addTask {
            try await Task.sleep(for: limit)
            return nil
        }
        defer { group.cancelAll() }
        guard let first = try await group.next(), let value = first else {
            throw DeadlineExceeded(limit: limit)
        }
        return value
    }
}

struct DeadlineExceeded: Error, CustomStringConvertible {
    var limit: Duration
    var description: String { "no answer within \(limit)" }
}
