import ClusterCore
import Foundation

/// When one schedule of one tenant fires, as a state machine: no IO, no clock. The
/// scheduler's loop feeds it the time and the operator's controls it reads, and does what it
/// answers: sleep, read the controls again, or fire a tick.
///
/// The controls (pause, a timing override) are read at least every `controlRefresh`, and
/// always once more when a tick is due, so a tick is never fired at a time an operator has
/// just changed.
struct ScheduleTimeline {
    enum Action: Equatable {
        /// Wait this long, then ask again.
        case sleep(Duration)
        /// Read the schedule's controls and pass them to ``controlsRead(_:now:)``.
        case readControls
        /// Publish the tick for this fire time (unless `paused`) and record it as handled,
        /// then call ``fired(_:)``.
        case fire(Date, paused: Bool)
    }

    /// The app's timing.
    let base: Schedule
    /// What the jitter is derived from (`<tenant>/<schedule>`), so every coordinator agrees.
    let jitterKey: String
    let controlRefresh: Duration
    private(set) var controls: ScheduleControl
    /// The timing in effect: the app's, or the operator's override.
    private(set) var schedule: Schedule
    /// The last fire time handled (or the start); the next tick is the first after it.
    private(set) var cursor: Date
    private var controlsReadAt: Date

    /// Starts at `now` with the controls just read. `lastFire` is the last tick handled by any
    /// leader; the ticks missed since are in ``catchUp``, by the schedule's catch-up policy.
    init(base: Schedule, jitterKey: String, controls: ScheduleControl, lastFire: Date?, now: Date, controlRefresh: Duration = .seconds(2)) {
        self.base = base
        self.jitterKey = jitterKey
        self.controlRefresh = controlRefresh
        self.controls = controls
        self.schedule = Self.effective(base, controls: controls)
        self.controlsReadAt = now
        if let lastFire {
            (catchUp, dropped) = schedule.catchUpFires(after: lastFire, upTo: now)
            cursor = max(lastFire, now)
        } else {
            (catchUp, dropped) = ([], 0)
            cursor = now
        }
    }

    /// Missed ticks to fire at once (paused as the controls say), oldest first.
    let catchUp: [Date]
    /// Missed ticks the catch-up policy leaves out.
    let dropped: Int

    /// The timing in effect under `controls`: the app's, or a valid override keeping the app's
    /// catch-up policy and jitter.
    static func effective(_ base: Schedule, controls: ScheduleControl) -> Schedule {
        guard let expression = controls.expression else { return base }
        let overridden = Schedule.cron(expression, timeZone: controls.timeZone ?? base.timeZoneIdentifier)
        guard overridden.problem == nil else { return base }
        return overridden.catchUp(base.catchUpPolicy).jitter(base.maximumJitter)
    }

    /// What to do at `now`.
    func next(now: Date) -> Action {
        let sinceRead = Duration.seconds(now.timeIntervalSince(controlsReadAt))
        let untilRefresh = controlRefresh - sinceRead
        guard let fire = schedule.nextFire(after: cursor) else {
            // Nothing within five years: look at the controls again later (an override may
            // bring a fire time).
            return untilRefresh > .zero ? .sleep(untilRefresh) : .readControls
        }
        let due = fire.addingTimeInterval(schedule.jitterDelay(for: fire, key: jitterKey).inSeconds)
        if due > now {
            guard untilRefresh > .zero else { return .readControls }
            // A millisecond past the due time, so the next call finds it due.
            return .sleep(min(.seconds(due.timeIntervalSince(now)) + .milliseconds(1), untilRefresh))
        }
        // Due: fire only on controls read at or after the due time.
        guard controlsReadAt >= due else { return .readControls }
        return .fire(fire, paused: controls.paused)
    }

    /// The controls as just read at `now`. A changed timing applies from the next call of
    /// ``next(now:)``: a tick due under the old timing is not fired.
    mutating func controlsRead(_ controls: ScheduleControl, now: Date) {
        self.controls = controls
        self.schedule = Self.effective(base, controls: controls)
        controlsReadAt = now
    }

    /// The tick for `fireTime` was handled.
    mutating func fired(_ fireTime: Date) {
        cursor = fireTime
    }
}
