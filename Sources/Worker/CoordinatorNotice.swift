/// Decides when a failed call to the coordinator is worth a warning: once per outage, and not
/// while the process is starting, when a coordinator started beside it (`dev`, `all`) may not
/// answer yet. IO-free; the caller passes the time.
struct CoordinatorNotice: Sendable {
    /// How long after startup failures are expected.
    static let startupGrace: Duration = .seconds(10)

    let startedAt: ContinuousClock.Instant
    private var warned = false

    init(startedAt: ContinuousClock.Instant) { self.startedAt = startedAt }

    /// A call failed at `now`: whether to log a warning (else at most a debug line).
    mutating func failed(at now: ContinuousClock.Instant) -> Bool {
        guard !warned, now - startedAt >= Self.startupGrace else { return false }
        warned = true
        return true
    }

    /// A call succeeded: the next outage is warned about again.
    mutating func succeeded() { warned = false }
}
