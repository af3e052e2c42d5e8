import Crypto
import Foundation
package import NIOCore
import Synchronization

/// The wire contract (docs/wire.md): subjects, stream and consumer names, headers, record ids.
package enum Wire {
    package enum Header {
        package static let messageID = "Nats-Msg-Id"
        package static let table = "Aut-Table"
        package static let tenant = "Aut-Tenant"
        package static let type = "Aut-Type"
        package static let causedBy = "Aut-Caused-By"
        package static let traceparent = "traceparent"
        package static let error = "Aut-Error"
        package static let attempts = "Aut-Attempts"
        package static let handler = "Aut-Handler"
        package static let firstFailure = "Aut-First-Failure"
        package static let lastFailure = "Aut-Last-Failure"
        package static let sourceSubject = "Aut-Source-Subject"
        package static let recordID = "Aut-Record-Id"
        /// On a replayed dead letter: the only handler that processes it.
        package static let replayFor = "Aut-Replay-For"
    }

    /// Headers a worker reads from every fetched record, in this order.
    package static let consumedHeaders = [Header.messageID, Header.causedBy, Header.type, Header.traceparent, Header.replayFor]

    /// `aut.<tenant>.tbl.<table>`
    package static func tableSubject(tenant: String, table: String) -> String { "aut.\(tenant).tbl.\(table)" }
    /// `aut.<tenant>.sched.<schedule>`
    package static func scheduleSubject(tenant: String, schedule: String) -> String { "aut.\(tenant).sched.\(schedule)" }
    /// `aut.<tenant>.dlq.<handler>`
    package static func deadLetterSubject(tenant: String, handler: String) -> String { "aut.\(tenant).dlq.\(handler)" }
    /// `AUT_<TENANT>` (the tenant name upper-cased): the tenant's schedule ticks and dead letters.
    package static func streamName(tenant: String) -> String { "AUT_" + tenant.uppercased() }
    /// `aut.<tenant>.sched.>`, `aut.<tenant>.dlq.>` and `aut.<tenant>.run.>`
    package static func streamSubjects(tenant: String) -> [String] {
        ["aut.\(tenant).sched.>", "aut.\(tenant).dlq.>", "aut.\(tenant).run.>"]
    }
    /// `aut.<tenant>.run.<handler>.<sequence>`: a worker's note that it started handling the
    /// record at `sequence` of the handler's source stream alone, removed when the run ends. A
    /// note still there on the next delivery means the process stopped during the run.
    package static func runSubject(tenant: String, handler: String, sequence: UInt64) -> String {
        "aut.\(tenant).run.\(handler).\(sequence)"
    }
    /// What the tenant stream held in the one-stream layout (every table in it), which
    /// provisioning recognises: `aut.<tenant>.>`
    package static func legacyStreamSubject(tenant: String) -> String { "aut.\(tenant).>" }
    /// `AUT_<TENANT>_tbl_<table>`: one table's records (every partition).
    ///
    /// Each table has a stream of its own, so JetStream stores a table's records and a
    /// handler's outputs in parallel and a handler's consumer reads only its table. Unambiguous:
    /// the upper-cased tenant holds no lowercase letter, so the first one starts `tbl_`.
    package static func tableStreamName(tenant: String, table: String) -> String { "AUT_" + tenant.uppercased() + "_tbl_" + table }
    /// The stream holding the records of a handler's source: the table's own, or the tenant
    /// stream for a schedule's ticks.
    package static func streamName(tenant: String, source: String, isTable: Bool) -> String {
        isTable ? tableStreamName(tenant: tenant, table: source) : streamName(tenant: tenant)
    }
    /// `aut.<tenant>.tbl.<table>` and its partitions, `aut.<tenant>.tbl.<table>.>`
    package static func tableStreamSubjects(tenant: String, table: String) -> [String] {
        let subject = tableSubject(tenant: tenant, table: table)
        return [subject, subject + ".>"]
    }
    /// `h_<handler>`
    package static func consumerName(handler: String) -> String { "h_" + handler }

    /// The bytes of a record's ordering key: a string field's UTF-8, any other value's JSON
    /// text, nothing when the field is missing or null (all such records share a partition).
    package static func partitionKey(_ payload: ByteBuffer, field: String) -> [UInt8] {
        guard let record = try? JSONParser.parse(Array(payload.readableBytesView)) else { return [] }
        switch record[field] {
        case .null: return []
        case .string(let text): return Array(text.utf8)
        case let value: return JSONWriter.encode(value)
        }
    }

    /// The partition of a key: 32-bit FNV-1a of its bytes, modulo `partitions`.
    package static func partition(_ key: [UInt8], of partitions: Int) -> Int {
        var hash: UInt32 = 0x811c_9dc5
        for byte in key {
            hash ^= UInt32(byte)
            hash &*= 0x0100_0193
        }
        return Int(hash % UInt32(max(1, partitions)))
    }

    /// The id of output number `index` that `handler` derived from the record `sourceID`.
    ///
    /// Deterministic, so a redelivered source produces the same ids and JetStream drops the
    /// repeats inside the stream's duplicate window.
    package static func outputID(source sourceID: String, handler: String, index: Int) -> String {
        var hasher = SHA256()
        var source = sourceID
        source.withUTF8 { hasher.update(bufferPointer: UnsafeRawBufferPointer($0)) }
        var name = handler
        withUnsafeBytes(of: UInt8(0)) { hasher.update(bufferPointer: $0) }
        name.withUTF8 { hasher.update(bufferPointer: UnsafeRawBufferPointer($0)) }
        withUnsafeBytes(of: UInt8(0)) { hasher.update(bufferPointer: $0) }
        var decimal: [UInt8] = []
        decimal.reserveCapacity(20)
        JSONWriter.writeInteger(Int64(index), into: &decimal)
        decimal.withUnsafeBytes { hasher.update(bufferPointer: $0) }
        let digest = hasher.finalize()
        return digest.withUnsafeBytes { bytes in
            String(unsafeUninitializedCapacity: 31) { out in
                out[0] = UInt8(ascii: "o")
                for i in 0..<15 {
                    out[1 + 2 * i] = hexDigits[Int(bytes[i] >> 4)]
                    out[2 + 2 * i] = hexDigits[Int(bytes[i] & 0x0F)]
                }
                return 31
            }
        }
    }

    private static let hexDigits: [UInt8] = Array("0123456789abcdef".utf8)

    static func hex(_ bytes: some Sequence<UInt8>) -> String {
        var out: [UInt8] = []
        for byte in bytes {
            out.append(hexDigits[Int(byte >> 4)])
            out.append(hexDigits[Int(byte & 0x0F)])
        }
        return String(decoding: out, as: UTF8.self)
    }
}

/// Makes the ids of records the server names (requests without an `Idempotency-Key`):
/// `s` and 24 base-32 characters of SHA-256 over a secret random per-process key and a
/// counter.
///
/// Unguessable, so no client can claim an id the server is about to give another client's
/// record (which JetStream would then drop as a duplicate). Client keys become ids of their own
/// form (``scopedKey(_:tenant:caller:path:)``, starting with `k`), so the two never meet.
package final class RecordIDGenerator: Sendable {
    private let key: [UInt8]
    private let counter = Atomic<UInt64>(0)

    package init() {
        var generator = SystemRandomNumberGenerator()
        var key: [UInt8] = []
        for _ in 0..<4 { withUnsafeBytes(of: generator.next() as UInt64) { key.append(contentsOf: $0) } }
        self.key = key
    }

    package func next() -> String {
        let n = counter.add(1, ordering: .relaxed).newValue
        var hasher = SHA256()
        hasher.update(data: key)
        withUnsafeBytes(of: n.littleEndian) { hasher.update(bufferPointer: $0) }
        return "s" + Wire.base32(hasher.finalize().prefix(15))
    }

    /// The record id for a client's `Idempotency-Key`, scoped to the tenant, the caller (its
    /// API key's id, empty without one) and the path (a route's or webhook's; empty for the
    /// record API): another caller sending the same key gets other ids, so it cannot make
    /// this caller's records count as duplicates. `k` and 24 base-32 characters.
    package static func scopedKey(_ key: String, tenant: String, caller: String, path: String) -> String {
        var hasher = SHA256()
        for part in [tenant, caller, path, key] {
            hasher.update(data: Array(part.utf8))
            hasher.update(data: [0])
        }
        return "k" + Wire.base32(hasher.finalize().prefix(15))
    }
}

extension Wire {
    private static let base32Digits = Array("abcdefghijklmnopqrstuvwxyz234567".utf8)

    /// Lower-case base 32 (RFC 4648 alphabet) without padding; 5 bytes make 8 characters.
    package static func base32(_ bytes: some Sequence<UInt8>) -> String {
        var out: [UInt8] = []
        var buffer: UInt32 = 0
        var bits = 0
        for byte in bytes {
            buffer = (buffer << 8) | UInt32(byte)
            bits += 8
            while bits >= 5 {
                bits -= 5
                out.append(base32Digits[Int((buffer >> UInt32(bits)) & 31)])
            }
        }
        if bits > 0 { out.append(base32Digits[Int((buffer << UInt32(5 - bits)) & 31)]) }
        return String(decoding: out, as: UTF8.self)
    }
}
