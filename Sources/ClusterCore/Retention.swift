public import Foundation

/// How long a table's stream keeps its records, per tenant: the older records are dropped
/// once either limit is reached. A `nil` limit takes the cluster's default (which keeps
/// records forever unless the deployment sets one).
///
/// ```swift
/// let clicks = app.table("clicks", retention: StreamRetention(maxAge: .seconds(3 * 86_400), maxBytes: 10 << 30))
/// ```
///
/// A handler that falls further behind than the retention loses the records dropped; a
/// table kept in a storage keeps them there once its sink has written them.
public struct StreamRetention: Sendable, Hashable {
    /// The oldest record kept; older ones are dropped.
    public var maxAge: Duration?
    /// The most bytes the stream holds; the oldest records are dropped beyond it.
    public var maxBytes: Int64?

    public init(maxAge: Duration? = nil, maxBytes: Int64? = nil) {
        precondition(maxAge.map { $0 > .zero } ?? true, "maxAge must be positive")
        precondition(maxBytes.map { $0 > 0 } ?? true, "maxBytes must be positive")
        self.maxAge = maxAge
        self.maxBytes = maxBytes
    }

    /// `other`'s limits where it sets them, else these.
    package func overridden(by other: StreamRetention) -> StreamRetention {
        StreamRetention(maxAge: other.maxAge ?? maxAge, maxBytes: other.maxBytes ?? maxBytes)
    }

    /// Parses `90s`, `15m`, `12h`, `30d` or `2w` (a whole number and a unit).
    package static func duration(_ text: String) -> Duration? {
        guard let unit = text.last, let value = Int64(text.dropLast()), value > 0, value < 1_000_000 else { return nil }
        switch unit {
        case "s": return .seconds(value)
        case "m": return .seconds(value * 60)
        case "h": return .seconds(value * 3_600)
        case "d": return .seconds(value * 86_400)
        case "w": return .seconds(value * 7 * 86_400)
        default: return nil
        }
    }
}
