/// A W3C trace context (https://www.w3.org/TR/trace-context/): the trace a span belongs to, the
/// span's id, and whether the trace is sampled. It travels as the `traceparent` header:
/// `00-<32 hex trace id>-<16 hex span id>-<2 hex flags>`.
package struct TraceContext: Sendable, Hashable {
    /// The trace id's 16 bytes as two big-endian halves; never both zero.
    package var traceHigh: UInt64
    package var traceLow: UInt64
    /// Never zero.
    package var spanID: UInt64
    /// The `sampled` flag: the caller records this trace.
    package var sampled: Bool

    package init(traceHigh: UInt64, traceLow: UInt64, spanID: UInt64, sampled: Bool) {
        self.traceHigh = traceHigh
        self.traceLow = traceLow
        self.spanID = spanID
        self.sampled = sampled
    }

    /// Parses a `traceparent` of version `00`; `nil` for anything else (wrong length, upper-case
    /// or non-hex digits, an all-zero trace or span id), as the specification asks.
    package init?(traceparent: String) {
        let bytes = Array(traceparent.utf8)
        guard bytes.count == 55, bytes[0] == UInt8(ascii: "0"), bytes[1] == UInt8(ascii: "0"), bytes[2] == UInt8(ascii: "-"),
            bytes[35] == UInt8(ascii: "-"), bytes[52] == UInt8(ascii: "-"),
            let high = Self.hex(bytes[3..<19]), let low = Self.hex(bytes[19..<35]), let span = Self.hex(bytes[36..<52]),
            let flags = Self.hex(bytes[53..<55]), high != 0 || low != 0, span != 0
        else { return nil }
        self.init(traceHigh: high, traceLow: low, spanID: span, sampled: flags & 1 == 1)
    }

    /// The `traceparent` header's value.
    package var traceparent: String {
        "00-" + traceIDHex + "-" + spanIDHex + (sampled ? "-01" : "-00")
    }

    /// 32 lower-case hex digits, as OTLP's JSON encoding writes trace ids.
    package var traceIDHex: String { Self.hex(traceHigh) + Self.hex(traceLow) }
    /// 16 lower-case hex digits.
    package var spanIDHex: String { Self.hex(spanID) }

    /// A new random trace id (never zero) and span id.
    package static func random(sampled: Bool) -> TraceContext {
        var generator = SystemRandomNumberGenerator()
        var high: UInt64 = 0
        var low: UInt64 = 0
        while high == 0 && low == 0 {
            high = generator.next()
            low = generator.next()
        }
        return TraceContext(traceHigh: high, traceLow: low, spanID: randomSpanID(), sampled: sampled)
    }

    /// A new random span id (never zero).
    package static func randomSpanID() -> UInt64 {
        var generator = SystemRandomNumberGenerator()
        var id: UInt64 = 0
        while id == 0 { id = generator.next() }
        return id
    }

    static func hex(_ value: UInt64) -> String {
        let digits = Array("0123456789abcdef".utf8)
        var bytes = [UInt8](repeating: 0, count: 16)
        var rest = value
        for i in stride(from: 15, through: 0, by: -1) {
            bytes[i] = digits[Int(rest & 0xf)]
            rest >>= 4
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// Lower-case hex digits only (W3C forbids upper case), at most 16 of them.
    static func hex(_ digits: ArraySlice<UInt8>) -> UInt64? {
        var value: UInt64 = 0
        for byte in digits {
            let digit: UInt8
            switch byte {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): digit = byte - UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): digit = byte - UInt8(ascii: "a") + 10
            default: return nil
            }
            value = value << 4 | UInt64(digit)
        }
        return value
    }
}
