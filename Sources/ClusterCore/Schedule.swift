package import Foundation

/// When a schedule fires: a cron expression or a fixed interval, in a time zone.
///
/// Cron takes 5 fields (`min hour day month weekday`) or 6 (`sec min hour day month weekday`),
/// with `*`, lists, ranges, steps, month and weekday names, and the macros `@yearly`,
/// `@monthly`, `@weekly`, `@daily`, `@hourly`. When both day fields are restricted a day
/// matching either fires (as in Vixie cron). Intervals fire at multiples of the interval since
/// the Unix epoch, so every coordinator computes the same instants.
///
/// Daylight saving time, as cron does it:
/// - a wall-clock time that does not exist (02:30 on a spring-forward day) fires once, at the
///   instant the clocks jump (03:00 local);
/// - a wall-clock time that happens twice (01:30 on a fall-back day) fires once, at its first
///   occurrence, unless the hour field is `*`: then the schedule keeps its rhythm and fires in
///   both occurrences (an hourly job fires every 60 minutes across the change).
public struct Schedule: Sendable, CustomStringConvertible {
    enum Kind: Sendable {
        case cron(CronExpression)
        case every(Duration)
        case invalid(String)
    }

    /// What a coordinator does with ticks that fell into a time when no coordinator led
    /// (downtime, failover).
    public enum CatchUpPolicy: Sendable, Hashable, CustomStringConvertible {
        /// Missed ticks are dropped; the schedule continues with the next one.
        case skip
        /// The most recent missed tick fires once.
        case fireOnce
        /// Every missed tick fires, oldest first, but at most the `limit` most recent ones.
        case fireAll(limit: Int)

        public var description: String {
            switch self {
            case .skip: return "skip"
            case .fireOnce: return "fire-once"
            case .fireAll(let limit): return "fire-all(\(limit))"
            }
        }
    }

    let kind: Kind
    public let timeZoneIdentifier: String
    let source: String
    /// The cron expression a cron schedule (or ``daily(at:timeZone:)``) evaluates.
    package private(set) var cronExpression: String? = nil
    /// Missed ticks after downtime; `.fireOnce` unless set with ``catchUp(_:)``.
    public private(set) var catchUpPolicy: CatchUpPolicy = .fireOnce
    /// Each tick is published up to this much after its fire time (see ``jitter(_:)``).
    public private(set) var maximumJitter: Duration = .zero

    /// A cron expression, evaluated in `timeZone` (an IANA name such as `Europe/Berlin`).
    public static func cron(_ expression: String, timeZone: String = "UTC") -> Schedule {
        do {
            var schedule = Schedule(kind: .cron(try CronExpression(expression)), timeZoneIdentifier: timeZone, source: expression)
            schedule.cronExpression = expression
            return schedule
        } catch {
            return Schedule(
                kind: .invalid("invalid cron expression '\(expression)': \(error.message)"),
                timeZoneIdentifier: timeZone,
                source: expression
            )
        }
    }

    /// Fires every `interval` (at least one second).
    public static func every(_ interval: Duration) -> Schedule {
        guard interval >= .seconds(1) else {
            return Schedule(kind: .invalid("interval must be at least one second"), timeZoneIdentifier: "UTC", source: "every \(interval)")
        }
        return Schedule(kind: .every(interval), timeZoneIdentifier: "UTC", source: "every \(interval.components.seconds)s")
    }

    /// Fires once a day at `time` (`HH:mm`) in `timeZone`.
    public static func daily(at time: String, timeZone: String = "UTC") -> Schedule {
        let parts = time.split(separator: ":")
        guard parts.count == 2, let hour = Int(parts[0]), let minute = Int(parts[1]), (0..<24).contains(hour), (0..<60).contains(minute)
        else {
            return Schedule(kind: .invalid("daily time '\(time)' must be HH:mm"), timeZoneIdentifier: timeZone, source: "daily at \(time)")
        }
        let schedule = cron("\(minute) \(hour) * * *", timeZone: timeZone)
        var daily = Schedule(kind: schedule.kind, timeZoneIdentifier: timeZone, source: "daily at \(time)")
        daily.cronExpression = schedule.cronExpression
        return daily
    }

    /// Fires once an hour at `minute`.
    public static func hourly(atMinute minute: Int = 0) -> Schedule {
        cron("\(minute) * * * *")
    }

    /// The interval of an ``every(_:)`` schedule, in whole seconds.
    package var intervalSeconds: Int64? {
        if case .every(let interval) = kind { return interval.components.seconds }
        return nil
    }

    /// Sets what happens to ticks missed while no coordinator led.
    public func catchUp(_ policy: CatchUpPolicy) -> Schedule {
        var copy = self
        copy.catchUpPolicy = policy
        return copy
    }

    /// Spreads publication: each tick goes out up to `maximum` after its fire time, by an
    /// offset derived from the schedule, tenant and fire time (the same on every coordinator).
    /// The tick's `fireTime` and id stay the nominal instant.
    public func jitter(_ maximum: Duration) -> Schedule {
        var copy = self
        copy.maximumJitter = maximum
        return copy
    }

    public var description: String {
        var text = source
        if timeZoneIdentifier != "UTC" { text += " (\(timeZoneIdentifier))" }
        return text
    }

    /// Why the schedule cannot be used, or `nil`.
    package var problem: String? {
        if case .invalid(let message) = kind { return message }
        if TimeZone(identifier: timeZoneIdentifier) == nil { return "unknown time zone '\(timeZoneIdentifier)'" }
        if maximumJitter < .zero { return "jitter must not be negative" }
        if case .fireAll(let limit) = catchUpPolicy, !(1...100_000).contains(limit) {
            return "catch-up limit must be between 1 and 100000, not \(limit)"
        }
        // Fields that are each valid can still match no date (`0 0 31 2 *`). Every expression
        // that matches a date matches one within five years of 2001 (which holds a leap year).
        if case .cron = kind, nextFire(after: Self.neverFiresProbe) == nil {
            return "cron expression '\(source)' never fires: no date matches its day and month fields"
        }
        return nil
    }

    /// 2001-01-01T00:00:00Z.
    private static let neverFiresProbe = Date(timeIntervalSince1970: 978_307_200)

    /// The first fire time strictly after `date`, or `nil` if there is none within five years.
    package func nextFire(after date: Date) -> Date? {
        switch kind {
        case .invalid: return nil
        case .every(let interval):
            let step = Double(interval.components.seconds) + Double(interval.components.attoseconds) / 1e18
            let n = (date.timeIntervalSince1970 / step).rounded(.down) + 1
            return Date(timeIntervalSince1970: n * step)
        case .cron(let cron):
            guard let zone = TimeZone(identifier: timeZoneIdentifier) else { return nil }
            return cron.next(after: date, in: zone)
        }
    }

    /// The ticks to fire for the time between `last` (the last tick handled, exclusive) and
    /// `now` (inclusive), according to the catch-up policy. `dropped` counts missed ticks the
    /// policy left out (counted up to 1,000,000).
    package func catchUpFires(after last: Date, upTo now: Date) -> (fires: [Date], dropped: Int) {
        var missed: [Date] = []
        var total = 0
        let keep: Int
        switch catchUpPolicy {
        case .skip: keep = 0
        case .fireOnce: keep = 1
        case .fireAll(let limit): keep = limit
        }
        var cursor = last
        while let next = nextFire(after: cursor), next <= now, total < 1_000_000 {
            total += 1
            if keep > 0 {
                missed.append(next)
                if missed.count > keep { missed.removeFirst(missed.count - keep) }
            }
            cursor = next
        }
        return (missed, total - missed.count)
    }

    /// How long after `fireTime` the tick is published (see ``jitter(_:)``).
    package func jitterDelay(for fireTime: Date, key: String) -> Duration {
        let window = maximumJitter.components.seconds * 1000 + maximumJitter.components.attoseconds / 1_000_000_000_000_000
        guard window > 0 else { return .zero }
        // FNV-1a over the key and the fire time: stable across processes and restarts.
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in "\(key)|\(Int64(fireTime.timeIntervalSince1970 * 1000))".utf8 {
            hash ^= UInt64(byte)
            hash &*= 0x100_0000_01b3
        }
        return .milliseconds(Int64(hash % UInt64(window)))
    }
}

struct CronError: Error {
    var message: String
}

struct CronExpression: Sendable {
    var seconds: Set<Int>
    var minutes: Set<Int>
    var hours: Set<Int>
    var days: Set<Int>
    var months: Set<Int>
    var weekdays: Set<Int>  // 0 = Sunday
    var daysRestricted: Bool
    var weekdaysRestricted: Bool

    private static let macros = [
        "@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *",
        "@weekly": "0 0 * * 0", "@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@hourly": "0 * * * *",
    ]
    private static let monthNames = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
    private static let dayNames = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]

    init(_ text: String) throws(CronError) {
        let trimmed = text.trimmingCharacters(in: .whitespaces).lowercased()
        let expanded = Self.macros[trimmed] ?? trimmed
        var fields = expanded.split(whereSeparator: { $0 == " " || $0 == "\t" }).map(String.init)
        guard fields.count == 5 || fields.count == 6 else {
            throw CronError(message: "expected 5 or 6 fields, found \(fields.count)")
        }
        if fields.count == 5 { fields.insert("0", at: 0) }
        seconds = try Self.parse(fields[0], 0...59, "second")
        minutes = try Self.parse(fields[1], 0...59, "minute")
        hours = try Self.parse(fields[2], 0...23, "hour")
        days = try Self.parse(fields[3], 1...31, "day of month")
        months = try Self.parse(fields[4], 1...12, "month", names: Self.monthNames, nameOffset: 1)
        var weekdays = try Self.parse(fields[5], 0...7, "day of week", names: Self.dayNames, nameOffset: 0)
        if weekdays.remove(7) != nil { weekdays.insert(0) }
        self.weekdays = weekdays
        daysRestricted = !(fields[3] == "*" || fields[3] == "?")
        weekdaysRestricted = !(fields[5] == "*" || fields[5] == "?")
    }

    private static func parse(
        _ field: String,
        _ range: ClosedRange<Int>,
        _ what: String,
        names: [String] = [],
        nameOffset: Int = 0
    ) throws(CronError) -> Set<Int> {
        func value(_ text: Substring) throws(CronError) -> Int {
            if let index = names.firstIndex(of: String(text)) { return index + nameOffset }
            guard let v = Int(text), range.contains(v) else {
                throw CronError(message: "\(what) '\(text)' is not in \(range.lowerBound)-\(range.upperBound)")
            }
            return v
        }
        var result = Set<Int>()
        for part in field.split(separator: ",", omittingEmptySubsequences: false) {
            guard !part.isEmpty else { throw CronError(message: "empty \(what) list item") }
            let pieces = part.split(separator: "/", omittingEmptySubsequences: false)
            guard pieces.count <= 2 else { throw CronError(message: "invalid \(what) step '\(part)'") }
            var step = 1
            if pieces.count == 2 {
                guard let s = Int(pieces[1]), s > 0 else { throw CronError(message: "invalid \(what) step '\(pieces[1])'") }
                step = s
            }
            let base = pieces[0]
            var lower: Int
            var upper: Int
            if base == "*" || base == "?" {
                lower = range.lowerBound
                upper = range.upperBound
            } else if let dash = base.firstIndex(of: "-") {
                lower = try value(base[..<dash])
                upper = try value(base[base.index(after: dash)...])
                guard lower <= upper else { throw CronError(message: "\(what) range '\(base)' is reversed") }
            } else {
                lower = try value(base)
                upper = pieces.count == 2 ? range.upperBound : lower
            }
            for v in stride(from: lower, through: upper, by: step) { result.insert(v) }
        }
        return result
    }

    private func dayMatches(day: Int, weekday: Int) -> Bool {
        switch (daysRestricted, weekdaysRestricted) {
        case (true, true): return days.contains(day) || weekdays.contains(weekday)
        case (true, false): return days.contains(day)
        case (false, true): return weekdays.contains(weekday)
        case (false, false): return true
        }
    }

    func next(after date: Date, in zone: TimeZone) -> Date? {
        var calendar = Calendar(identifier: .gregorian)
        calendar.timeZone = zone
        let start = Date(timeIntervalSince1970: (date.timeIntervalSince1970).rounded(.down) + 1)
        // Start a day early, in case `start` falls in a repeated hour that began the day before
        // in wall-clock terms; days ending before `start` are skipped cheaply below.
        guard let earlier = calendar.date(byAdding: .day, value: -1, to: start) else { return nil }
        let startParts = calendar.dateComponents([.year, .month, .day], from: earlier)
        guard var day = calendar.date(from: DateComponents(year: startParts.year, month: startParts.month, day: startParts.day, hour: 12))
        else { return nil }
        let sortedHours = hours.sorted()
        let sortedMinutes = minutes.sorted()
        let sortedSeconds = seconds.sorted()
        let everyHour = hours.count == 24
        for _ in 0..<(366 * 5 + 1) {
            defer { day = calendar.date(byAdding: .day, value: 1, to: day) ?? day }
            let parts = calendar.dateComponents([.year, .month, .day, .weekday], from: day)
            guard let y = parts.year, let m = parts.month, let d = parts.day, let wd = parts.weekday else { return nil }
            guard months.contains(m), dayMatches(day: d, weekday: wd - 1) else { continue }
            // Skip days that end before `start` without building every candidate.
            if let endOfDay = calendar.date(from: DateComponents(year: y, month: m, day: d, hour: 23, minute: 59, second: 59)),
                endOfDay.addingTimeInterval(3 * 3600) < start
            {
                continue
            }
            var best: Date?
            for h in sortedHours {
                // Wall-clock order is instant order except inside one repeated (fall-back)
                // hour, so an hour that ends more than the largest DST shift before `start`
                // cannot hold the answer, and the first hour that holds one holds the earliest.
                if let hourEnd = calendar.date(from: DateComponents(year: y, month: m, day: d, hour: h, minute: 59, second: 59)),
                    hourEnd.addingTimeInterval(2 * 3600) < start
                {
                    continue
                }
                for mi in sortedMinutes {
                    if let minuteEnd = calendar.date(from: DateComponents(year: y, month: m, day: d, hour: h, minute: mi, second: 59)),
                        minuteEnd.addingTimeInterval(2 * 3600) < start
                    {
                        continue
                    }
                    for s in sortedSeconds {
                        guard let wall = calendar.date(from: DateComponents(year: y, month: m, day: d, hour: h, minute: mi, second: s))
                        else { continue }
                        let check = calendar.dateComponents([.day, .hour, .minute, .second], from: wall)
                        var candidates: [Date] = []
                        if check.day == d && check.hour == h && check.minute == mi && check.second == s {
                            candidates.append(wall)
                            // A wall time that happens twice (fall back): the second occurrence
                            // fires only for every-hour schedules.
                            if everyHour, zone.isDaylightSavingTime(for: wall),
                                let transition = zone.nextDaylightSavingTimeTransition(after: wall),
                                transition.timeIntervalSince(wall) < 3 * 3600
                            {
                                let shift = zone.daylightSavingTimeOffset(for: wall) - zone.daylightSavingTimeOffset(for: transition)
                                let repeated = wall.addingTimeInterval(shift)
                                if shift > 0, repeated >= transition { candidates.append(repeated) }
                            }
                        } else if let transition = zone.nextDaylightSavingTimeTransition(after: wall.addingTimeInterval(-3 * 3600)),
                            transition <= wall
                        {
                            // A wall time that does not exist (spring forward) fires when the
                            // clocks jump.
                            candidates.append(transition)
                        }
                        for candidate in candidates where candidate >= start {
                            if best.map({ candidate < $0 }) ?? true { best = candidate }
                        }
                    }
                }
                if let best { return best }
            }
            if let best { return best }
        }
        return nil
    }
}
