/// The leader lease's timing and states, without IO: what ``LeaderElection`` does after each
/// attempt to take or renew the lease, and how long it waits before the next.
///
/// The lease is written for 85 % of `ttl` and standbys try every 10 %, so a standby leads at
/// most `ttl` after the leader's last successful renewal. The leader's own deadline is its
/// renewal's send time plus the lease length less a margin, so it always falls before the
/// store's expiry: a leader that stops hearing from the store stops acting before any
/// standby can take over. The leader renews every 20 % of `ttl`.
struct LeaderLease<Instant: InstantProtocol<Duration>>: Sendable {
    let ttl: Duration

    enum State: Sendable, Equatable {
        case candidate
        case leading(token: Int64, deadline: Instant)
    }

    enum Action: Sendable, Equatable {
        /// Nothing changes.
        case none
        /// This process now leads with `token`: start the duties, valid until `deadline`.
        case startLeading(token: Int64, deadline: Instant)
        /// Still leading: the duties may go on until `deadline`.
        case extend(deadline: Instant)
        /// Stop the duties (the lease went to another, or could not be renewed in time).
        case stopLeading(reason: String)
        /// The fencing token changed under a leader: stop the old tenure, start a new one.
        case restartLeading(token: Int64, deadline: Instant)
    }

    private(set) var state: State = .candidate

    init(ttl: Duration) { self.ttl = ttl }

    /// How long the store keeps a lease written now.
    var leaseLength: Duration { ttl / 20 * 17 }
    /// How much sooner than the store's expiry a leader stops.
    var margin: Duration { max(ttl / 10, .milliseconds(100)) }

    /// An attempt sent at `sent` came back: the lease is ours with `token`, or (`nil`) another's.
    mutating func acquired(_ token: Int64?, sentAt sent: Instant) -> Action {
        let deadline = sent.advanced(by: leaseLength - margin)
        switch (state, token) {
        case (.candidate, let token?):
            state = .leading(token: token, deadline: deadline)
            return .startLeading(token: token, deadline: deadline)
        case (.leading(let held, let current), let token?) where held == token:
            let later = max(current, deadline)
            state = .leading(token: token, deadline: later)
            return .extend(deadline: later)
        case (.leading, let token?):
            state = .leading(token: token, deadline: deadline)
            return .restartLeading(token: token, deadline: deadline)
        case (.leading, nil):
            state = .candidate
            return .stopLeading(reason: "another coordinator holds the lease")
        case (.candidate, nil):
            return .none
        }
    }

    /// The time is `now` (after an attempt, whether or not it succeeded): a leader whose
    /// deadline passed stops.
    mutating func check(now: Instant) -> Action {
        guard case .leading(_, let deadline) = state, now >= deadline else { return .none }
        state = .candidate
        return .stopLeading(reason: "the lease could not be renewed in time")
    }

    /// How long to wait before the next attempt: a candidate tries every tenth of `ttl`, a
    /// leader renews every fifth, and sooner when its deadline comes first.
    func pause(now: Instant) -> Duration {
        switch state {
        case .candidate:
            return ttl / 10
        case .leading(_, let deadline):
            return min(ttl / 5, max(.zero, now.duration(to: deadline)))
        }
    }
}
