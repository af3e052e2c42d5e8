import ClusterCore
import Foundation
import Testing

@Suite("Schedules")
struct ScheduleTests {
    func date(_ text: String) -> Date { ISO8601.parse(text)! }

    @Test(
        "Cron fires at the next matching instant",
        arguments: [
            ("*/15 * * * *", "2026-11-26T10:07:30.000Z", "2026-11-26T10:15:00.000Z"),
            ("0 3 * * *", "2026-11-26T03:00:00.000Z", "2026-11-27T03:00:00.000Z"),
            ("30 2 1 * *", "2026-11-26T10:00:00.000Z", "2026-12-01T02:30:00.000Z"),
            ("0 9 * * mon-fri", "2026-11-27T10:00:00.000Z", "2026-11-30T09:00:00.000Z"),
            ("*/10 * * * * *", "2026-11-26T10:00:01.000Z", "2026-11-26T10:00:10.000Z"),
            ("@hourly", "2026-11-26T10:59:59.500Z", "2026-11-26T11:00:00.000Z"),
            ("0 0 29 feb *", "2026-03-01T00:00:00.000Z", "2028-02-29T00:00:00.000Z"),
            ("0 12 1 jan,jul sun", "2026-11-26T00:00:00.000Z", "2027-01-01T12:00:00.000Z"),
            ("0 12 1 jan,jul sun", "2027-01-01T13:00:00.000Z", "2027-01-03T12:00:00.000Z"),
        ]
    )
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

    @Test(
        "Bad schedules explain themselves",
        arguments: [
            (Schedule.cron("61 * * * *"), "minute '61'"),
            (Schedule.cron("* * *"), "expected 5 or 6 fields"),
            (Schedule.cron("*/0 * * * *"), "step"),
            (Schedule.cron("0 0 * * *", timeZone: "Mars/Olympus"), "unknown time zone 'Mars/Olympus'"),
            (Schedule.daily(at: "25:00"), "HH:mm"),
            (Schedule.every(.milliseconds(10)), "at least one second"),
            // Valid fields, but no day ever matches: refused rather than silently never firing.
            (Schedule.cron("0 0 31 2 *"), "never fires"),
            (Schedule.cron("0 0 30 2 *", timeZone: "Europe/Berlin"), "never fires"),
        ]
    )
    func problems(schedule: Schedule, fragment: String) {
        #expect(schedule.problem?.contains(fragment) == true, "\(schedule.problem ?? "nil")")
    }

    @Test("Rare but real days are not refused: February 29th, and the 31st of the months that have one")
    func rareDays() {
        #expect(Schedule.cron("0 0 29 2 *").problem == nil)
        #expect(Schedule.cron("30 12 31 * *").problem == nil)
        #expect(Schedule.cron("0 0 13 * 5").problem == nil, "Friday the 13th")
    }

    func fires(_ schedule: Schedule, after start: String, count: Int) -> [String] {
        var result: [String] = []
        var cursor = date(start)
        for _ in 0..<count {
            guard let next = schedule.nextFire(after: cursor) else { break }
            result.append(ISO8601.format(next))
            cursor = next
        }
        return result
    }

    @Test("A 02:30 job on a spring-forward day fires once, when the clocks jump to 03:00")
    func springForward() {
        // New York, 2026-03-08: 02:00 EST jumps to 03:00 EDT (07:00Z).
        let schedule = Schedule.cron("30 2 * * *", timeZone: "America/New_York")
        #expect(
            fires(schedule, after: "2026-03-06T12:00:00.000Z", count: 4) == [
                "2026-03-07T07:30:00.000Z",  // 02:30 EST
                "2026-03-08T07:00:00.000Z",  // 02:30 does not exist: 03:00 EDT
                "2026-03-09T06:30:00.000Z",  // 02:30 EDT
                "2026-03-10T06:30:00.000Z",
            ]
        )
        // Several gap times of one day collapse into one fire at the jump.
        let quarterly = Schedule.cron("*/15 2 * * *", timeZone: "America/New_York")
        #expect(
            fires(quarterly, after: "2026-03-08T06:00:00.000Z", count: 2) == [
                "2026-03-08T07:00:00.000Z", "2026-03-09T06:00:00.000Z",
            ]
        )
    }

    @Test("An hourly job keeps firing every 60 minutes across fall-back; a fixed-hour job fires once")
    func fallBack() {
        // New York, 2026-11-01: 02:00 EDT falls back to 01:00 EST (06:00Z).
        let hourly = Schedule.cron("0 * * * *", timeZone: "America/New_York")
        #expect(
            fires(hourly, after: "2026-11-01T03:30:00.000Z", count: 5) == [
                "2026-11-01T04:00:00.000Z",  // 00:00 EDT
                "2026-11-01T05:00:00.000Z",  // 01:00 EDT
                "2026-11-01T06:00:00.000Z",  // 01:00 EST (the repeated hour)
                "2026-11-01T07:00:00.000Z",  // 02:00 EST
                "2026-11-01T08:00:00.000Z",
            ]
        )
        let halfHourly = Schedule.cron("*/30 * * * *", timeZone: "America/New_York")
        #expect(
            fires(halfHourly, after: "2026-11-01T05:10:00.000Z", count: 4) == [
                "2026-11-01T05:30:00.000Z", "2026-11-01T06:00:00.000Z", "2026-11-01T06:30:00.000Z", "2026-11-01T07:00:00.000Z",
            ]
        )
        let fixed = Schedule.cron("30 1 * * *", timeZone: "America/New_York")
        #expect(
            fires(fixed, after: "2026-10-31T12:00:00.000Z", count: 3) == [
                "2026-11-01T05:30:00.000Z",  // first 01:30 (EDT) only
                "2026-11-02T06:30:00.000Z",
                "2026-11-03T06:30:00.000Z",
            ]
        )
        // Berlin's change (2026-10-25, 03:00 CEST -> 02:00 CET at 01:00Z) behaves the same.
        let berlin = Schedule.cron("0 * * * *", timeZone: "Europe/Berlin")
        #expect(
            fires(berlin, after: "2026-10-24T23:30:00.000Z", count: 3) == [
                "2026-10-25T00:00:00.000Z", "2026-10-25T01:00:00.000Z", "2026-10-25T02:00:00.000Z",
            ]
        )
    }

    @Test("Every-second cron stays cheap to evaluate")
    func everySecondCron() {
        let schedule = Schedule.cron("* * * * * *")
        #expect(
            fires(schedule, after: "2026-11-26T23:59:58.000Z", count: 3) == [
                "2026-11-26T23:59:59.000Z", "2026-11-27T00:00:00.000Z", "2026-11-27T00:00:01.000Z",
            ]
        )
    }

    @Test(
        "Catch-up policies after downtime",
        arguments: [
            (Schedule.CatchUpPolicy.skip, [String](), 10),
            (.fireOnce, ["2026-11-26T10:10:00.000Z"], 9),
            (.fireAll(limit: 100), (1...10).map { String(format: "2026-11-26T10:%02d:00.000Z", $0) }, 0),
            (.fireAll(limit: 3), ["2026-11-26T10:08:00.000Z", "2026-11-26T10:09:00.000Z", "2026-11-26T10:10:00.000Z"], 7),
        ]
    )
    func catchUp(policy: Schedule.CatchUpPolicy, expected: [String], dropped: Int) {
        let schedule = Schedule.every(.seconds(60)).catchUp(policy)
        let result = schedule.catchUpFires(after: date("2026-11-26T10:00:00.000Z"), upTo: date("2026-11-26T10:10:30.000Z"))
        #expect(result.fires.map(ISO8601.format) == expected)
        #expect(result.dropped == dropped)
    }

    @Test("Jitter is stable per tick and stays inside its window")
    func jitter() {
        let schedule = Schedule.every(.seconds(60)).jitter(.seconds(10))
        let fire = date("2026-11-26T10:00:00.000Z")
        let delay = schedule.jitterDelay(for: fire, key: "default/report")
        #expect(delay == schedule.jitterDelay(for: fire, key: "default/report"))
        #expect(delay >= .zero && delay < .seconds(10))
        let delays = Set((0..<50).map { schedule.jitterDelay(for: fire.addingTimeInterval(Double($0) * 60), key: "default/report") })
        #expect(delays.count > 10)
        #expect(Schedule.every(.seconds(60)).jitterDelay(for: fire, key: "x") == .zero)
        #expect(Schedule.every(.seconds(60)).catchUp(.fireAll(limit: 0)).problem?.contains("catch-up limit") == true)
    }
}
