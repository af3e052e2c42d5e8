/// Validation of every name that can reach a NATS subject, stream, consumer or SQL statement.
///
/// Tenants, tables, handlers and schedules are `[a-z0-9_-]`, start with a letter or digit,
/// and are at most ``maximumLength`` bytes. Nothing else is ever interpolated into a subject.
package enum Names {
    package static let maximumLength = 64

    /// Returns `nil` when `name` is valid, otherwise why it is not.
    package static func problem(with name: String, kind: String) -> String? {
        if name.isEmpty { return "\(kind) name must not be empty" }
        if name.utf8.count > maximumLength {
            return "\(kind) name '\(name.prefix(80))' is longer than \(maximumLength) characters"
        }
        for (i, byte) in name.utf8.enumerated() {
            switch byte {
            case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "0")...UInt8(ascii: "9"): continue
            case UInt8(ascii: "_"), UInt8(ascii: "-"):
                if i == 0 { return "\(kind) name '\(name)' must start with a lowercase letter or digit" }
            default:
                return "\(kind) name '\(name)' may contain only lowercase letters, digits, '_' and '-'"
            }
        }
        return nil
    }

    package static func isValid(_ name: String) -> Bool { problem(with: name, kind: "") == nil }

    /// Record ids and idempotency keys: `[A-Za-z0-9._:-]`, 1–128 bytes.
    package static func isValidRecordID(_ id: String) -> Bool {
        guard !id.isEmpty, id.utf8.count <= 128 else { return false }
        return id.utf8.allSatisfy { byte in
            switch byte {
            case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
                UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "."), UInt8(ascii: "_"),
                UInt8(ascii: ":"), UInt8(ascii: "-"):
                return true
            default: return false
            }
        }
    }
}
