/// Why a JSON text was rejected, and where (a byte offset into the text).
public struct JSONParseError: Error, Sendable, Hashable, CustomStringConvertible {
    public var offset: Int
    public var reason: String
    /// Set when the text is valid JSON but an object names this key twice (which readers take
    /// differently: some the first value, some the last), so validation refuses it.
    package var duplicateKey: String?

    public var description: String {
        duplicateKey != nil ? "\(reason) (at byte \(offset))" : "invalid JSON at byte \(offset): \(reason)"
    }
}

/// A strict RFC 8259 parser over UTF-8 bytes.
///
/// It either builds a ``JSONValue`` or only validates (no allocation), which is what the
/// ingress does before publishing the caller's bytes unchanged. Nesting is bounded so that
/// no input can exhaust the stack.
package struct JSONParser: ~Copyable {
    package static let maximumDepth = 256

    private let bytes: UnsafeBufferPointer<UInt8>
    private var index: Int
    private var depth = 0
    /// Validation: the byte ranges (inside the quotes) of the keys of the objects being
    /// scanned, innermost object last, to refuse a key named twice in one object.
    private var keys: [Range<Int>] = []
    /// Validation: for objects with many keys (by the index of their first key in `keys`),
    /// their keys by hash, so a huge object is checked in linear time.
    private var keyIndexes: [Int: [Int: [Range<Int>]]] = [:]
    private static let linearKeyLimit = 32

    private init(_ bytes: UnsafeBufferPointer<UInt8>, start: Int = 0) {
        self.bytes = bytes
        self.index = start
    }

    /// Parses a whole JSON text into a value.
    package static func parse(_ bytes: [UInt8]) throws(JSONParseError) -> JSONValue {
        try bytes.withUnsafeBufferPointer { (buffer) throws(JSONParseError) -> JSONValue in
            var parser = JSONParser(buffer)
            parser.skipWhitespace()
            let value = try parser.parseValue()
            parser.skipWhitespace()
            if parser.index != buffer.count { throw parser.error("unexpected data after the JSON value") }
            return value
        }
    }

    /// What a top-level JSON text is.
    package enum Shape: Sendable, Equatable {
        /// One object spanning the given byte range.
        case object(Range<Int>)
        /// An array; each element's byte range and whether the element is an object.
        case array([(range: Range<Int>, isObject: Bool)])
        /// Any other value (string, number, …).
        case scalar

        package static func == (lhs: Shape, rhs: Shape) -> Bool {
            switch (lhs, rhs) {
            case (.object(let a), .object(let b)): return a == b
            case (.scalar, .scalar): return true
            case (.array(let a), .array(let b)):
                return a.count == b.count && zip(a, b).allSatisfy { $0.range == $1.range && $0.isObject == $1.isObject }
            default: return false
            }
        }
    }

    /// Validates a whole JSON text without building values and reports its shape.
    package static func validate(_ bytes: UnsafeBufferPointer<UInt8>) throws(JSONParseError) -> Shape {
        var parser = JSONParser(bytes)
        parser.skipWhitespace()
        guard parser.index < bytes.count else { throw parser.error("empty body") }
        let shape: Shape
        switch bytes[parser.index] {
        case UInt8(ascii: "{"):
            let start = parser.index
            try parser.skipValue()
            shape = .object(start..<parser.index)
        case UInt8(ascii: "["):
            parser.index += 1
            parser.depth = 1
            var elements: [(range: Range<Int>, isObject: Bool)] = []
            parser.skipWhitespace()
            if parser.peek() == UInt8(ascii: "]") {
                parser.index += 1
            } else {
                while true {
                    parser.skipWhitespace()
                    let start = parser.index
                    let isObject = parser.peek() == UInt8(ascii: "{")
                    try parser.skipValue()
                    elements.append((start..<parser.index, isObject))
                    parser.skipWhitespace()
                    guard let c = parser.peek() else { throw parser.error("unterminated array") }
                    parser.index += 1
                    if c == UInt8(ascii: "]") { break }
                    if c != UInt8(ascii: ",") { throw parser.error("expected ',' or ']' in array", at: parser.index - 1) }
                }
            }
            shape = .array(elements)
        default:
            try parser.skipValue()
            shape = .scalar
        }
        parser.skipWhitespace()
        if parser.index != bytes.count { throw parser.error("unexpected data after the JSON value") }
        return shape
    }

    // MARK: - Scanning

    private func error(_ reason: String, at offset: Int? = nil) -> JSONParseError {
        JSONParseError(offset: offset ?? index, reason: reason)
    }

    private func peek() -> UInt8? { index < bytes.count ? bytes[index] : nil }

    private mutating func skipWhitespace() {
        while index < bytes.count {
            switch bytes[index] {
            case 0x20, 0x0A, 0x0D, 0x09: index += 1
            default: return
            }
        }
    }

    private mutating func expectLiteral(_ literal: StaticString) throws(JSONParseError) {
        let count = literal.utf8CodeUnitCount
        guard index + count <= bytes.count else { throw error("invalid literal") }
        let ok = literal.withUTF8Buffer { lit in
            for i in 0..<count where bytes[index + i] != lit[i] { return false }
            return true
        }
        guard ok else { throw error("invalid literal") }
        index += count
    }

    private mutating func enter() throws(JSONParseError) {
        depth += 1
        if depth > Self.maximumDepth { throw error("nesting deeper than \(Self.maximumDepth) levels") }
    }

    // MARK: - Validation only

    private mutating func skipValue() throws(JSONParseError) {
        guard let c = peek() else { throw error("unexpected end of input") }
        switch c {
        case UInt8(ascii: "{"):
            try enter()
            index += 1
            skipWhitespace()
            let base = keys.count
            if peek() == UInt8(ascii: "}") {
                index += 1
            } else {
                while true {
                    skipWhitespace()
                    guard peek() == UInt8(ascii: "\"") else { throw error("expected a string key in object") }
                    let keyStart = index
                    try scanString(into: nil)
                    try note(key: keyStart + 1..<index - 1, base: base)
                    skipWhitespace()
                    guard peek() == UInt8(ascii: ":") else { throw error("expected ':' after object key") }
                    index += 1
                    skipWhitespace()
                    try skipValue()
                    skipWhitespace()
                    guard let next = peek() else { throw error("unterminated object") }
                    index += 1
                    if next == UInt8(ascii: "}") { break }
                    if next != UInt8(ascii: ",") { throw error("expected ',' or '}' in object", at: index - 1) }
                }
            }
            keys.removeSubrange(base...)
            keyIndexes.removeValue(forKey: base)
            depth -= 1
        case UInt8(ascii: "["):
            try enter()
            index += 1
            skipWhitespace()
            if peek() == UInt8(ascii: "]") {
                index += 1
            } else {
                while true {
                    skipWhitespace()
                    try skipValue()
                    skipWhitespace()
                    guard let next = peek() else { throw error("unterminated array") }
                    index += 1
                    if next == UInt8(ascii: "]") { break }
                    if next != UInt8(ascii: ",") { throw error("expected ',' or ']' in array", at: index - 1) }
                }
            }
            depth -= 1
        case UInt8(ascii: "\""): try scanString(into: nil)
        case UInt8(ascii: "t"): try expectLiteral("true")
        case UInt8(ascii: "f"): try expectLiteral("false")
        case UInt8(ascii: "n"): try expectLiteral("null")
        default: _ = try scanNumber()
        }
    }

    /// Adds `key` (a range inside quotes) to the keys of the object whose first key is at
    /// `base` in `keys`, refusing one it already has.
    private mutating func note(key: Range<Int>, base: Int) throws(JSONParseError) {
        let count = keys.count - base
        if count < Self.linearKeyLimit {
            for earlier in keys[base...] where sameKey(earlier, key) { throw duplicate(key) }
        } else {
            if keyIndexes[base] == nil {
                var byHash: [Int: [Range<Int>]] = [:]
                for earlier in keys[base...] { byHash[keyHash(earlier), default: []].append(earlier) }
                keyIndexes[base] = byHash
            }
            let hash = keyHash(key)
            for earlier in keyIndexes[base]![hash] ?? [] where sameKey(earlier, key) { throw duplicate(key) }
            keyIndexes[base]![hash, default: []].append(key)
        }
        if keys.isEmpty { keys.reserveCapacity(16) }
        keys.append(key)
    }

    private func duplicate(_ key: Range<Int>) -> JSONParseError {
        let name = String(decoding: decodedKey(key), as: UTF8.self)
        var error = error("key '\(name.prefix(64))' appears twice in one object", at: key.lowerBound - 1)
        error.duplicateKey = name
        return error
    }

    /// Two keys are the same when their decoded characters are: `"a"` and `"\u0061"` are.
    private func sameKey(_ a: Range<Int>, _ b: Range<Int>) -> Bool {
        let escaped = hasEscape(a) || hasEscape(b)
        if !escaped {
            return a.count == b.count && bytes[a].elementsEqual(bytes[b])
        }
        return decodedKey(a) == decodedKey(b)
    }

    private func keyHash(_ key: Range<Int>) -> Int {
        var hasher = Hasher()
        if hasEscape(key) {
            for byte in decodedKey(key) { hasher.combine(byte) }
        } else {
            for byte in bytes[key] { hasher.combine(byte) }
        }
        return hasher.finalize()
    }

    private func hasEscape(_ key: Range<Int>) -> Bool { bytes[key].contains(UInt8(ascii: "\\")) }

    /// The key's characters as UTF-8, escapes decoded (the key was validated already).
    private func decodedKey(_ key: Range<Int>) -> [UInt8] {
        guard hasEscape(key) else { return Array(bytes[key]) }
        var parser = JSONParser(bytes, start: key.lowerBound - 1)
        var text: [UInt8] = []
        do { try parser.scanString(into: &text) } catch { return Array(bytes[key]) }
        return text
    }

    // MARK: - Building values

    /// Where `key` already is among `members`, if it is. Scans up to 16 members; from then on
    /// keeps the keys in `seen` so that a large object is parsed in linear time.
    private static func index(of key: String, in members: [JSONObject.Element], seen: inout Set<String>?) -> Int? {
        if seen == nil {
            if let index = members.firstIndex(where: { $0.key == key }) { return index }
            if members.count >= 16 { seen = Set(members.map(\.key)) }
            return nil
        }
        guard seen!.contains(key) else { return nil }
        return members.firstIndex { $0.key == key }
    }

    private mutating func parseValue() throws(JSONParseError) -> JSONValue {
        guard let c = peek() else { throw error("unexpected end of input") }
        switch c {
        case UInt8(ascii: "{"):
            try enter()
            index += 1
            var members: [JSONObject.Element] = []
            // Past a few members, repeated keys are found through a set rather than a scan.
            var seen: Set<String>? = nil
            skipWhitespace()
            if peek() == UInt8(ascii: "}") {
                index += 1
            } else {
                members.reserveCapacity(8)
                while true {
                    skipWhitespace()
                    guard peek() == UInt8(ascii: "\"") else { throw error("expected a string key in object") }
                    let key = try parseString()
                    skipWhitespace()
                    guard peek() == UInt8(ascii: ":") else { throw error("expected ':' after object key") }
                    index += 1
                    skipWhitespace()
                    let value = try parseValue()
                    if let existing = Self.index(of: key, in: members, seen: &seen) {
                        members[existing].value = value  // a repeated key: the last value wins
                    } else {
                        members.append((key: key, value: value))
                        seen?.insert(key)
                    }
                    skipWhitespace()
                    guard let next = peek() else { throw error("unterminated object") }
                    index += 1
                    if next == UInt8(ascii: "}") { break }
                    if next != UInt8(ascii: ",") { throw error("expected ',' or '}' in object", at: index - 1) }
                }
            }
            depth -= 1
            return .object(JSONObject(uniqueMembers: members))
        case UInt8(ascii: "["):
            try enter()
            index += 1
            var array: [JSONValue] = []
            skipWhitespace()
            if peek() == UInt8(ascii: "]") {
                index += 1
            } else {
                while true {
                    skipWhitespace()
                    array.append(try parseValue())
                    skipWhitespace()
                    guard let next = peek() else { throw error("unterminated array") }
                    index += 1
                    if next == UInt8(ascii: "]") { break }
                    if next != UInt8(ascii: ",") { throw error("expected ',' or ']' in array", at: index - 1) }
                }
            }
            depth -= 1
            return .array(array)
        case UInt8(ascii: "\""):
            return .string(try parseString())
        case UInt8(ascii: "t"):
            try expectLiteral("true")
            return .bool(true)
        case UInt8(ascii: "f"):
            try expectLiteral("false")
            return .bool(false)
        case UInt8(ascii: "n"):
            try expectLiteral("null")
            return .null
        default:
            let start = index
            let isInteger = try scanNumber()
            let text = String(decoding: UnsafeBufferPointer(rebasing: bytes[start..<index]), as: UTF8.self)
            if isInteger, let int = Int64(text) { return .int(int) }
            guard let double = Double(text) else { throw error("number out of range", at: start) }
            return .double(double)
        }
    }

    /// Scans a number; returns whether it has neither a fraction nor an exponent.
    private mutating func scanNumber() throws(JSONParseError) -> Bool {
        let start = index
        var isInteger = true
        if peek() == UInt8(ascii: "-") { index += 1 }
        guard let first = peek(), first >= 0x30, first <= 0x39 else {
            throw error(start == index ? "unexpected character" : "invalid number", at: start)
        }
        index += 1
        if first != 0x30 {
            while let d = peek(), d >= 0x30, d <= 0x39 { index += 1 }
        }
        if peek() == UInt8(ascii: ".") {
            isInteger = false
            index += 1
            guard let d = peek(), d >= 0x30, d <= 0x39 else { throw error("invalid number fraction") }
            while let d = peek(), d >= 0x30, d <= 0x39 { index += 1 }
        }
        if let e = peek(), e == UInt8(ascii: "e") || e == UInt8(ascii: "E") {
            isInteger = false
            index += 1
            if let sign = peek(), sign == UInt8(ascii: "+") || sign == UInt8(ascii: "-") { index += 1 }
            guard let d = peek(), d >= 0x30, d <= 0x39 else { throw error("invalid number exponent") }
            while let d = peek(), d >= 0x30, d <= 0x39 { index += 1 }
        }
        return isInteger
    }

    /// Scans a string starting at its opening quote, validating escapes and UTF-8.
    /// Appends the decoded bytes to `output` when one is given.
    /// A string at `index`: plain ASCII without escapes straight from the input, anything
    /// else through ``scanString(into:)``.
    private mutating func parseString() throws(JSONParseError) -> String {
        let start = index + 1
        var i = start
        while i < bytes.count {
            let c = bytes[i]
            if c == UInt8(ascii: "\"") {
                index = i + 1
                return String(decoding: UnsafeBufferPointer(rebasing: bytes[start..<i]), as: UTF8.self)
            }
            if c == UInt8(ascii: "\\") || c < 0x20 || c >= 0x80 { break }
            i += 1
        }
        var text: [UInt8] = []
        try scanString(into: &text)
        return String(decoding: text, as: UTF8.self)
    }

    private mutating func scanString(into output: UnsafeMutablePointer<[UInt8]>?) throws(JSONParseError) {
        index += 1  // opening quote
        while true {
            guard index < bytes.count else { throw error("unterminated string") }
            let c = bytes[index]
            switch c {
            case UInt8(ascii: "\""):
                index += 1
                return
            case UInt8(ascii: "\\"):
                index += 1
                guard let e = peek() else { throw error("unterminated string") }
                index += 1
                let decoded: UInt8
                switch e {
                case UInt8(ascii: "\""): decoded = 0x22
                case UInt8(ascii: "\\"): decoded = 0x5C
                case UInt8(ascii: "/"): decoded = 0x2F
                case UInt8(ascii: "b"): decoded = 0x08
                case UInt8(ascii: "f"): decoded = 0x0C
                case UInt8(ascii: "n"): decoded = 0x0A
                case UInt8(ascii: "r"): decoded = 0x0D
                case UInt8(ascii: "t"): decoded = 0x09
                case UInt8(ascii: "u"):
                    var scalar = try hex4()
                    if scalar >= 0xD800 && scalar <= 0xDBFF {
                        guard index + 1 < bytes.count, bytes[index] == UInt8(ascii: "\\"), bytes[index + 1] == UInt8(ascii: "u")
                        else { throw error("unpaired surrogate in \\u escape") }
                        index += 2
                        let low = try hex4()
                        guard low >= 0xDC00 && low <= 0xDFFF else { throw error("invalid low surrogate in \\u escape") }
                        scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00)
                    } else if scalar >= 0xDC00 && scalar <= 0xDFFF {
                        throw error("unpaired surrogate in \\u escape")
                    }
                    if let output, let unicode = Unicode.Scalar(scalar) {
                        output.pointee.append(contentsOf: Array(String(Character(unicode)).utf8))
                    }
                    continue
                default: throw error("invalid escape sequence", at: index - 1)
                }
                output?.pointee.append(decoded)
            case 0..<0x20:
                throw error("control character in string")
            case 0..<0x80:
                output?.pointee.append(c)
                index += 1
            default:
                let length = try utf8SequenceLength()
                if let output {
                    output.pointee.append(contentsOf: UnsafeBufferPointer(rebasing: bytes[index..<index + length]))
                }
                index += length
            }
        }
    }

    private mutating func hex4() throws(JSONParseError) -> UInt32 {
        guard index + 4 <= bytes.count else { throw error("truncated \\u escape") }
        var value: UInt32 = 0
        for _ in 0..<4 {
            let c = bytes[index]
            let digit: UInt32
            switch c {
            case 0x30...0x39: digit = UInt32(c - 0x30)
            case 0x41...0x46: digit = UInt32(c - 0x41 + 10)
            case 0x61...0x66: digit = UInt32(c - 0x61 + 10)
            default: throw error("invalid hex digit in \\u escape")
            }
            value = value << 4 | digit
            index += 1
        }
        return value
    }

    /// Validates one multi-byte UTF-8 sequence at `index` and returns its length.
    private func utf8SequenceLength() throws(JSONParseError) -> Int {
        let lead = bytes[index]
        let length: Int
        var minimum: UInt32
        var scalar: UInt32
        switch lead {
        case 0xC2...0xDF:
            length = 2
            minimum = 0x80
            scalar = UInt32(lead & 0x1F)
        case 0xE0...0xEF:
            length = 3
            minimum = 0x800
            scalar = UInt32(lead & 0x0F)
        case 0xF0...0xF4:
            length = 4
            minimum = 0x10000
            scalar = UInt32(lead & 0x07)
        default: throw error("invalid UTF-8")
        }
        guard index + length <= bytes.count else { throw error("truncated UTF-8 sequence") }
        for i in 1..<length {
            let b = bytes[index + i]
            guard b & 0xC0 == 0x80 else { throw error("invalid UTF-8") }
            scalar = scalar << 6 | UInt32(b & 0x3F)
        }
        guard scalar >= minimum, scalar <= 0x10FFFF, !(0xD800...0xDFFF).contains(scalar) else {
            throw error("invalid UTF-8")
        }
        return length
    }
}

/// Serialises ``JSONValue``s to compact JSON text.
package enum JSONWriter {
    package static func encode(_ value: JSONValue) -> [UInt8] {
        var out: [UInt8] = []
        // Most records fit: one allocation instead of growing 128 → 256 → 512.
        out.reserveCapacity(512)
        write(value, into: &out)
        return out
    }

    package static func write(_ value: JSONValue, into out: inout [UInt8]) {
        switch value {
        case .null: out.append(contentsOf: "null".utf8)
        case .bool(let b): out.append(contentsOf: (b ? "true" : "false").utf8)
        case .int(let i): writeInteger(i, into: &out)
        case .double(let d):
            if d.isFinite {
                if d == d.rounded(), abs(d) < 1e15 {
                    writeInteger(Int64(d), into: &out)
                    out.append(contentsOf: ".0".utf8)
                } else {
                    out.append(contentsOf: "\(d)".utf8)
                }
            } else {
                out.append(contentsOf: "null".utf8)
            }
        case .string(let s): writeString(s, into: &out)
        case .array(let array):
            out.append(UInt8(ascii: "["))
            for (i, element) in array.enumerated() {
                if i > 0 { out.append(UInt8(ascii: ",")) }
                write(element, into: &out)
            }
            out.append(UInt8(ascii: "]"))
        case .object(let object):
            // Members in their order (see JSONObject).
            out.append(UInt8(ascii: "{"))
            var first = true
            for (key, element) in object {
                if !first { out.append(UInt8(ascii: ",")) }
                first = false
                writeString(key, into: &out)
                out.append(UInt8(ascii: ":"))
                write(element, into: &out)
            }
            out.append(UInt8(ascii: "}"))
        }
    }

    /// Decimal digits without an intermediate `String`.
    static func writeInteger(_ value: Int64, into out: inout [UInt8]) {
        if value == 0 {
            out.append(UInt8(ascii: "0"))
            return
        }
        if value < 0 { out.append(UInt8(ascii: "-")) }
        var magnitude = value.magnitude
        // Digits from the right end of a 20-byte scratch (UInt64's most), appended in one go.
        withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 20) { digits in
            var start = 20
            while magnitude > 0 {
                start -= 1
                digits[start] = UInt8(ascii: "0") + UInt8(magnitude % 10)
                magnitude /= 10
            }
            out.append(contentsOf: UnsafeBufferPointer(rebasing: digits[start...]))
        }
    }

    private static let hexDigits: [UInt8] = Array("0123456789abcdef".utf8)

    static func writeString(_ s: String, into out: inout [UInt8]) {
        out.append(UInt8(ascii: "\""))
        // Most strings need no escaping: copy their bytes in one go.
        var string = s
        let plain = string.withUTF8 { bytes -> Bool in
            for byte in bytes where byte < 0x20 || byte == UInt8(ascii: "\"") || byte == UInt8(ascii: "\\") { return false }
            out.append(contentsOf: bytes)
            return true
        }
        if plain {
            out.append(UInt8(ascii: "\""))
            return
        }
        for byte in s.utf8 {
            switch byte {
            case UInt8(ascii: "\""):
                out.append(0x5C)
                out.append(0x22)
            case UInt8(ascii: "\\"):
                out.append(0x5C)
                out.append(0x5C)
            case 0x0A:
                out.append(0x5C)
                out.append(UInt8(ascii: "n"))
            case 0x0D:
                out.append(0x5C)
                out.append(UInt8(ascii: "r"))
            case 0x09:
                out.append(0x5C)
                out.append(UInt8(ascii: "t"))
            case 0..<0x20:
                out.append(contentsOf: [0x5C, UInt8(ascii: "u"), 0x30, 0x30, hexDigits[Int(byte >> 4)], hexDigits[Int(byte & 0xF)]])
            default: out.append(byte)
            }
        }
        out.append(UInt8(ascii: "\""))
    }
}
