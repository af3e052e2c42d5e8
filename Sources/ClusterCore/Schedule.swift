import Foundation

/// When a schedule fires: a cron expression or a fixed interval, in a time zone.
///
/// Cron takes 5 fields (`min hour day month weekday`) or 6 (`sec min hour day month weekday`),
/// with `*`, lists, ranges, steps, month and weekday names, and the macros `@yearly`,
/// `@monthly`, `@weekly`, `@daily`, `@hourly`. When both day fields are restricted a day
/// matching either fires (as in Vixie cron). Intervals fire at multiples of the interval since
/// the Unix epoch, so every coordinator computes the same instants.
public struct Schedule: Sendable, CustomStringConvertible {
    enum Kind: Sendable {
        case cron(CronExpression)
        case every(Duration)
        case invalid(String)
    }

    let kind: Kind
    public let timeZoneIdentifier: String
    let source: String

    /// A cron expression, evaluated in `timeZone` (an IANA name such as `Europe/Berlin`).
    public static func cron(_ expression: String, timeZone: String = "UTC") -> Schedule {
        do {
            return Schedule(kind: .cron(try CronExpression(expression)), timeZoneIdentifier: timeZone, source: expression)
        } catch {
            return Schedule(kind: .invalid("invalid cron expression '\(expression)': \(error.message)"), timeZoneIdentifier: timeZone, source: expression)
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
        var schedule = cron("\(minute) \(hour) * * *", timeZone: timeZone)
        schedule = Schedule(kind: schedule.kind, timeZoneIdentifier: timeZone, source: "daily at \(time)")
        return schedule
    }

    /// Fires once an hour at `minute`.
    public static func hourly(atMinute minute: Int = 0) -> Schedule {
        cron("\(minute) * * * *")
    }

    public var description: String { source }

    /// Why the schedule cannot be used, or `nil`.
    public var problem: String? {
        if case .invalid(let message) = kind { return message }
        if TimeZone(identifier: timeZoneIdentifier) == nil { return "unknown time zone '\(timeZoneIdentifier)'" }
        return nil
    }

    /// The first fire time strictly after `date`, or `nil` if there is none within five years.
    public func nextFire(after date: Date) -> Date? {
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
        let startParts = calendar.dateComponents([.year, .month, .day, .hour, .minute, .second], from: start)
        guard var day = calendar.date(from: DateComponents(year: startParts.year, month: startParts.month, day: startParts.day, hour: 12))
        else { return nil }
        let sortedHours = hours.sorted()
        let sortedMinutes = minutes.sorted()
        let sortedSeconds = seconds.sorted()
        for dayOffset in 0..<(366 * 5) {
            defer { day = calendar.date(byAdding: .day, value: 1, to: day) ?? day }
            let parts = calendar.dateComponents([.year, .month, .day, .weekday], from: day)
            guard let y = parts.year, let m = parts.month, let d = parts.day, let wd = parts.weekday else { return nil }
            guard months.contains(m), dayMatches(day: d, weekday: wd - 1) else { continue }
            let firstDay = dayOffset == 0
            for h in sortedHours {
                if firstDay, h < startParts.hour! { continue }
                for mi in sortedMinutes {
                    if firstDay, h == startParts.hour!, mi < startParts.minute! { continue }
                    for s in sortedSeconds {
                        guard let candidate = calendar.date(from: DateComponents(year: y, month: m, day: d, hour: h, minute: mi, second: s)),
                            candidate >= start
                        else { continue }
                        // Skip wall-clock times that do not exist on this day (DST gaps).
                        let check = calendar.dateComponents([.hour, .minute], from: candidate)
                        if check.hour == h && check.minute == mi { return candidate }
                    }
                }
            }
        }
        return nil
    }
}
