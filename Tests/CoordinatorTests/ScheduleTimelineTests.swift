import ClusterCore
import Foundation
import Testing

@testable import Coordinator

/// The scheduler's timing on a virtual clock: every test runs hours of schedule in
/// milliseconds, and nothing reads the machine's clock.
@Suite("Schedule timeline")
struct ScheduleTimelineTests {
    /// 2026-01-01T00:00:00Z.
    static let midnight = Date(timeIntervalSince1970: 1_767_225_600)

    static func at(_ hours: Int, _ minutes: Int, _ seconds: Double = 0) -> Date {
        midnight.addingTimeInterval(Double(hours * 3600 + minutes * 60) + seconds)
    }

    struct Run {
        /// Fire time, whether paused, and when (virtual) the loop fired it.
        var fires: [(time: Date, paused: Bool, firedAt: Date)] = []
        var controlReads: [Date] = []
    }

    /// Does what the scheduler's loop does, with `controls(now)` standing in for the store.
    static func simulate(
        _ timeline: inout ScheduleTimeline,
        from start: Date,
        until end: Date,
        controls: (Date) -> ScheduleControl = { _ in ScheduleControl() }
    ) -> Run {
        var run = Run()
        var now = start
        var steps = 0
        while now < end {
            steps += 1
            if steps > 1_000_000 {
                Issue.record("the timeline does not move forward at \(now)")
                break
            }
            switch timeline.next(now: now) {
            case .sleep(let duration):
                if duration <= .zero {
                    Issue.record("asked to sleep \(duration) at \(now)")
                    return run
                }
                now = now.addingTimeInterval(duration.inSeconds)
            case .readControls:
                run.controlReads.append(now)
                timeline.controlsRead(controls(now), now: now)
            case .fire(let time, let paused):
                run.fires.append((time, paused, now))
                timeline.fired(time)
            }
        }
        return run
    }

    @Test("Every minute for an hour: 60 ticks, none early, each within the control refresh of its time")
    func everyMinute() {
        let start = Self.at(0, 0, 30)
        var timeline = ScheduleTimeline(
            base: .every(.seconds(60)),
            jitterKey: "t/s",
            controls: ScheduleControl(),
            lastFire: nil,
            now: start
        )
        let run = Self.simulate(&timeline, from: start, until: Self.at(1, 0, 30))
        #expect(run.fires.map(\.time) == (1...60).map { Self.at(0, $0) })
        #expect(run.fires.allSatisfy { $0.firedAt >= $0.time && $0.firedAt.timeIntervalSince($0.time) < 2.01 && !$0.paused })
        // The controls are read at least every refresh, and once more at each tick.
        let gaps = zip(run.controlReads, run.controlReads.dropFirst()).map { $1.timeIntervalSince($0) }
        #expect(gaps.allSatisfy { $0 <= 2.001 }, "longest gap \(gaps.max() ?? 0) s")
        #expect(
            run.fires.allSatisfy { fire in run.controlReads.contains { $0 >= fire.time && $0 <= fire.firedAt } },
            "each tick fires on controls read once it was due"
        )
    }

    @Test("Ticks due while paused are handled as paused; the others are published")
    func paused() {
        let start = Self.at(0, 0, 30)
        var timeline = ScheduleTimeline(
            base: .every(.seconds(60)),
            jitterKey: "t/s",
            controls: ScheduleControl(),
            lastFire: nil,
            now: start
        )
        let run = Self.simulate(&timeline, from: start, until: Self.at(0, 30, 30)) { now in
            ScheduleControl(paused: now >= Self.at(0, 9, 30) && now < Self.at(0, 19, 30))
        }
        #expect(run.fires.count == 30)
        #expect(run.fires.filter(\.paused).map(\.time) == (10...19).map { Self.at(0, $0) })
    }

    @Test("A timing changed while waiting, or at the very time a tick is due, is never fired at the old time")
    func overrides() {
        let override = ScheduleControl(expression: "45 * * * *")
        // Changed at 00:30, half-way to the hourly tick at 01:00.
        var early = ScheduleTimeline(
            base: .every(.seconds(3600)),
            jitterKey: "t/s",
            controls: ScheduleControl(),
            lastFire: nil,
            now: Self.at(0, 0, 30)
        )
        let first = Self.simulate(&early, from: Self.at(0, 0, 30), until: Self.at(2, 0)) { now in
            now >= Self.at(0, 30) ? override : ScheduleControl()
        }
        #expect(first.fires.map(\.time) == [Self.at(0, 45), Self.at(1, 45)])
        // Changed at 01:00:00 exactly: the read at the due time sees it.
        var late = ScheduleTimeline(
            base: .every(.seconds(3600)),
            jitterKey: "t/s",
            controls: ScheduleControl(),
            lastFire: nil,
            now: Self.at(0, 0, 30)
        )
        let second = Self.simulate(&late, from: Self.at(0, 0, 30), until: Self.at(2, 0)) { now in
            now >= Self.at(1, 0) ? override : ScheduleControl()
        }
        // 00:45 of the new timing had passed since the last tick: it is caught up at 01:00.
        #expect(second.fires.map(\.time) == [Self.at(0, 45), Self.at(1, 45)], "no tick at 01:00")
        // An invalid override leaves the app's timing in effect.
        let base = Schedule.every(.seconds(60))
        #expect(ScheduleTimeline.effective(base, controls: ScheduleControl(expression: "not cron")).description == base.description)
    }

    @Test("Missed ticks follow the catch-up policy; the loop then carries on from now")
    func catchUp() {
        let now = Self.at(0, 5, 30)
        func timeline(_ policy: Schedule.CatchUpPolicy) -> ScheduleTimeline {
            ScheduleTimeline(
                base: Schedule.every(.seconds(60)).catchUp(policy),
                jitterKey: "t/s",
                controls: ScheduleControl(),
                lastFire: Self.at(0, 0),
                now: now
            )
        }
        let all = timeline(.fireAll(limit: 100))
        #expect(all.catchUp == (1...5).map { Self.at(0, $0) } && all.dropped == 0)
        let once = timeline(.fireOnce)
        #expect(once.catchUp == [Self.at(0, 5)] && once.dropped == 4)
        var skip = timeline(.skip)
        #expect(skip.catchUp.isEmpty && skip.dropped == 5)
        let run = Self.simulate(&skip, from: now, until: Self.at(0, 8, 30))
        #expect(run.fires.map(\.time) == [Self.at(0, 6), Self.at(0, 7), Self.at(0, 8)])
        // A last fire in the future (a clock that went back) is not fired again.
        let ahead = ScheduleTimeline(
            base: .every(.seconds(60)),
            jitterKey: "t/s",
            controls: ScheduleControl(),
            lastFire: Self.at(0, 10),
            now: now
        )
        #expect(ahead.catchUp.isEmpty && ahead.cursor == Self.at(0, 10))
    }

    @Test("With no fire time ahead the controls are still read every refresh, and an override brings ticks")
    func noFireTime() {
        let never = Schedule.cron("0 0 30 2 *")
        #expect(never.nextFire(after: Self.midnight) == nil, "February 30th never comes")
        let start = Self.at(0, 0, 30)
        var timeline = ScheduleTimeline(base: never, jitterKey: "t/s", controls: ScheduleControl(), lastFire: nil, now: start)
        let run = Self.simulate(&timeline, from: start, until: Self.at(0, 40)) { now in
            now >= Self.at(0, 10) ? ScheduleControl(expression: "*/15 * * * *") : ScheduleControl()
        }
        #expect(run.fires.map(\.time) == [Self.at(0, 15), Self.at(0, 30)])
        // 9 min 30 s of waiting, read every 2 s.
        #expect(run.controlReads.filter { $0 < Self.at(0, 10) }.count >= 570 / 2 - 1, "read every 2 s while waiting")
    }

    @Test("Jitter delays each tick by its own fixed amount within the maximum")
    func jitter() {
        let schedule = Schedule.every(.seconds(60)).jitter(.seconds(10))
        let start = Self.at(0, 0, 30)
        var timeline = ScheduleTimeline(base: schedule, jitterKey: "acme/report", controls: ScheduleControl(), lastFire: nil, now: start)
        let run = Self.simulate(&timeline, from: start, until: Self.at(0, 30, 30))
        #expect(run.fires.count == 30)
        for fire in run.fires {
            let delay = schedule.jitterDelay(for: fire.time, key: "acme/report").inSeconds
            #expect(delay >= 0 && delay <= 10)
            #expect(fire.firedAt.timeIntervalSince(fire.time) >= delay)
            #expect(fire.firedAt.timeIntervalSince(fire.time) < delay + 2.01)
        }
        #expect(Set(run.fires.map { schedule.jitterDelay(for: $0.time, key: "acme/report") }).count > 1, "not one delay for all")
    }
}
