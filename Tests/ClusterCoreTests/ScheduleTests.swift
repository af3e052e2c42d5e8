import ClusterCore
import Foundation
import Testing

@Suite("Schedules")
struct ScheduleTests {
    func date(_ text: String) -> Date { ISO8601.parse(text)! }

    @Test("Cron fires at the next matching instant", arguments: [
        ("*/15 * * * *", "2026-11-26T10:07:30.000Z", "2026-11-26T10:15:00.000Z"),
        ("0 3 * * *", "2026-11-26T03:00:00.000Z", "2026-11-27T03:00:00.000Z"),
        ("30 2 1 * *", "2026-11-26T10:00:00.000Z", "2026-12-01T02:30:00.000Z"),
        ("0 9 * * mon-fri", "2026-11-27T10:00:00.000Z", "2026-11-30T09:00:00.000Z"),
        ("*/10 * * * * *", "2026-11-26T10:00:01.000Z", "2026-11-26T10:00:10.000Z"),
        ("@hourly", "2026-11-26T10:59:59.500Z", "2026-11-26T11:00:00.000Z"),
        ("0 0 29 feb *", "2026-03-01T00:00:00.000Z", "2028-02-29T00:00:00.000Z"),
        ("0 12 1 jan,jul sun", "2026-11-26T00:00:00.000Z", "2027-01-01T12:00:00.000Z"),
        ("0 12 1 jan,jul sun", "2027-01-01T13:00:00.000Z", "2027-01-03T12:00:00.000Z"),
    ])
    func cron(expression: String, after: String, expected: String) {
        let schedule = Schedule.cron(expression)
        #expect(schedule.problem == nil)
        #expect(schedule.nextFire(after: date(after)) == date(expected))
    }

    @Test("Daily times are wall-clock times in the schedule's time zone")
    func dailyInTimeZone() {
        let schedule = Schedule.daily(at: "03:00", timeZone: "Europe/Berlin")
        #expect(schedule.problem == nil)
        // Winter: CET = UTC+1.
        #expect(schedule.nextFire(after: date("2026-11-26T12:00:00.000Z")) == date("2026-11-27T02:00:00.000Z"))
        // Summer: CEST = UTC+2.
        #expect(schedule.nextFire(after: date("2026-07-01T12:00:00.000Z")) == date("2026-07-02T01:00:00.000Z"))
    }

    @Test("Intervals fire at multiples of the interval since the epoch")
    func every() {
        let schedule = Schedule.every(.seconds(30))
        #expect(schedule.nextFire(after: date("2026-11-26T10:00:10.000Z")) == date("2026-11-26T10:00:30.000Z"))
        #expect(schedule.nextFire(after: date("2026-11-26T10:00:30.000Z")) == date("2026-11-26T10:01:00.000Z"))
    }

    @Test("Bad schedules explain themselves", arguments: [
        (Schedule.cron("61 * * * *"), "minute '61'"),
        (Schedule.cron("* * *"), "expected 5 or 6 fields"),
        (Schedule.cron("*/0 * * * *"), "step"),
        (Schedule.cron("0 0 * * *", timeZone: "Mars/Olympus"), "unknown time zone 'Mars/Olympus'"),
        (Schedule.daily(at: "25:00"), "HH:mm"),
        (Schedule.every(.milliseconds(10)), "at least one second"),
    ])
    func problems(schedule: Schedule, fragment: String) {
        #expect(schedule.problem?.contains(fragment) == true, "\(schedule.problem ?? "nil")")
    }
}
