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
/// run in a child task for as long as the tenure lasts, cancelled and awaited as soon as it
/// ends (lost to another holder, or its deadline passed without a successful renewal), while a
/// sibling task keeps renewing the lease.
struct LeaderElection: Sendable {
    static let leaseName = "leader"
    typealias Lease = LeaderLease<ContinuousClock.Instant>

    let store: any CoordinatorStore
    let holder: String
    let ttl: Duration
    let logger: Logger

    /// How a tenure ended.
    private enum TenureEnd: Sendable {
        /// Lost or expired; campaign again.
        case stopped(reason: String)
        /// The fencing token changed under this holder: lead again at once with the new one.
        case restart(token: Int64, deadline: ContinuousClock.Instant)
        /// This coordinator is shutting down.
        case shutdown
    }

    /// What a tenure's child tasks report.
    private enum TenureEvent: Sendable {
        case dutiesReturned
        case ended(Lease, TenureEnd)
    }

    /// Acts as candidate until cancelled; runs `duties` during each tenure.
    func run(duties: @escaping @Sendable (Leadership) async -> Void) async {
        var lease = Lease(ttl: ttl)
        var next: (token: Int64, deadline: ContinuousClock.Instant)?
        while !Task.isCancelled {
            guard let start = next else {
                switch await attempt(&lease) {
                case .startLeading(let token, let deadline), .restartLeading(let token, let deadline):
                    next = (token, deadline)
                case .none, .extend, .stopLeading:
                    try? await Task.sleep(for: lease.pause(now: .now))
                }
                continue
            }
            next = nil
            let (after, end) = await lead(token: start.token, deadline: start.deadline, lease: lease, duties: duties)
            lease = after
            switch end {
            case .restart(let token, let deadline):
                next = (token, deadline)
            case .stopped:
                try? await Task.sleep(for: lease.pause(now: .now))
            case .shutdown:
                // Hand over at once instead of making a standby wait for the TTL.
                try? await store.releaseLease(name: Self.leaseName, holder: holder)
                return
            }
        }
        // Cancelled right after winning the lease: hand it back rather than hold it unused.
        if next != nil { try? await store.releaseLease(name: Self.leaseName, holder: holder) }
    }

    /// One tenure: `duties` in one child task, the lease's renewals in another. Returns when
    /// the renewals end the tenure (or on cancellation), after the duties have stopped.
    private func lead(
        token: Int64,
        deadline: ContinuousClock.Instant,
        lease: Lease,
        duties: @escaping @Sendable (Leadership) async -> Void
    ) async -> (Lease, TenureEnd) {
        let leadership = Leadership(fence: LeaseFence(name: Self.leaseName, holder: holder, token: token), deadline: deadline)
        logger.notice("This coordinator leads", metadata: ["coordinator.id": "\(holder)", "coordinator.token": "\(token)"])
        return await withTaskGroup(of: TenureEvent.self) { group in
            group.addTask {
                await duties(leadership)
                return .dutiesReturned
            }
            group.addTask {
                var lease = lease
                let end = await self.hold(leadership, lease: &lease)
                return .ended(lease, end)
            }
            var outcome = (lease, TenureEnd.shutdown)
            // The duties may return early; the tenure (and the lease) lasts until the renewals
            // end it.
            while let event = await group.next() {
                guard case .ended(let after, let end) = event else { continue }
                let reason: String
                switch end {
                case .stopped(let why): reason = why
                case .restart: reason = "the fencing token changed"
                case .shutdown: reason = "shutting down"
                }
                logger.notice("This coordinator stops leading", metadata: ["coordinator.id": "\(holder)", "reason": "\(reason)"])
                outcome = (after, end)
                group.cancelAll()
            }
            return outcome
        }
    }

    /// Renews the lease during a tenure, extending `leadership`, until the tenure ends.
    private func hold(_ leadership: Leadership, lease: inout Lease) async -> TenureEnd {
        while true {
            try? await Task.sleep(for: lease.pause(now: .now))
            if Task.isCancelled { return .shutdown }
            switch await attempt(&lease) {
            case .none:
                if Task.isCancelled { return .shutdown }
            case .extend(let deadline):
                leadership.extend(to: deadline)
            case .startLeading(let token, let deadline), .restartLeading(let token, let deadline):
                return .restart(token: token, deadline: deadline)
            case .stopLeading(let reason):
                return .stopped(reason: reason)
            }
        }
    }

    /// One attempt to acquire or renew the lease (bounded by a fifth of the TTL), and what the
    /// lease says to do about it.
    private func attempt(_ lease: inout Lease) async -> Lease.Action {
        let sent = ContinuousClock.now
        var action = Lease.Action.none
        do {
            let store = self.store
            let holder = self.holder
            let length = lease.leaseLength
            let token = try await withDeadline(ttl / 5) {
                try await store.acquireLease(name: Self.leaseName, holder: holder, ttl: length)
            }
            action = lease.acquired(token, sentAt: sent)
        } catch {
            // Shutting down is not a failure.
            if !Task.isCancelled { logger.warning("Cannot renew the leader lease", metadata: ["error": "\(error)"]) }
        }
        if case .none = action { action = lease.check(now: .now) }
        return action
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
