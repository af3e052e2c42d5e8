import CNATS
import Synchronization

/// Collects the PubAcks of one `publish` call and hands them on once all have arrived: to a
/// suspended caller, or to a callback (the ingress's event-loop path).
final class PublishBatch: Sendable {
    typealias Completion = @Sendable (Result<[PublishAck], NATSError>) -> Void

    enum Waiter: Sendable {
        case continuation(CheckedContinuation<[PublishAck], any Error>)
        case callback(Completion)
    }

    private struct State {
        var remaining: Int
        var acks: [PublishAck]
        var error: NATSError?
        var waiter: Waiter?
    }

    private let state: Mutex<State>

    init(count: Int, waiter: Waiter) {
        state = Mutex(
            State(
                remaining: count,
                acks: Array(repeating: PublishAck(sequence: 0, duplicate: false), count: count),
                error: nil,
                waiter: waiter
            )
        )
    }

    func complete(index: Int, result: Result<PublishAck, NATSError>) {
        // Take the waiter out under the lock; resume it after unlocking.
        let finished: (Waiter, Result<[PublishAck], NATSError>)? = state.withLock { state in
            switch result {
            case .success(let ack): state.acks[index] = ack
            case .failure(let error): if state.error == nil { state.error = error }
            }
            state.remaining -= 1
            guard state.remaining == 0, let waiter = state.waiter else { return nil }
            state.waiter = nil
            if let error = state.error { return (waiter, .failure(error)) }
            return (waiter, .success(state.acks))
        }
        guard let (waiter, outcome) = finished else { return }
        switch waiter {
        case .continuation(let continuation): continuation.resume(with: outcome.mapError { $0 as any Error })
        case .callback(let completion): completion(outcome)
        }
    }
}

/// The publishes waiting for their PubAck, by sequence number (the last token of the reply
/// subject each was published with), and their deadlines in publish order.
///
/// Every publish of a connection has the same timeout, so deadlines grow with the sequence
/// and expiring is a walk from the oldest entry.
final class PublishTracker: Sendable {
    private struct Pending {
        var batch: PublishBatch
        var index: Int
    }

    private struct State {
        var pending: [UInt64: Pending] = [:]
        /// (sequence, deadline in uptime nanoseconds), oldest first; completed entries stay
        /// until their deadline passes.
        var deadlines: [(UInt64, UInt64)] = []
        var head = 0
    }

    private let state = Mutex(State())
    private let sequence = Atomic<UInt64>(0)

    func nextSequence() -> UInt64 { sequence.add(1, ordering: .relaxed).newValue }

    func register(_ sequence: UInt64, deadline: UInt64, batch: PublishBatch, index: Int) {
        state.withLock { state in
            state.pending[sequence] = Pending(batch: batch, index: index)
            state.deadlines.append((sequence, deadline))
        }
    }

    /// Completes the entry for `sequence` if it is still waiting (it is not when it timed out
    /// or `failAll` won the race).
    func complete(_ sequence: UInt64, result: Result<PublishAck, NATSError>) {
        guard let entry = state.withLock({ $0.pending.removeValue(forKey: sequence) }) else { return }
        entry.batch.complete(index: entry.index, result: result)
    }

    /// Fails every publish whose deadline is before `now` with `.timeout`.
    func expire(now: UInt64) {
        let expired = state.withLock { state -> [Pending] in
            var expired: [Pending] = []
            while state.head < state.deadlines.count, state.deadlines[state.head].1 <= now {
                if let entry = state.pending.removeValue(forKey: state.deadlines[state.head].0) { expired.append(entry) }
                state.head += 1
            }
            // Compact now and then so the list does not grow without bound.
            if state.head > 4096 && state.head * 2 > state.deadlines.count {
                state.deadlines.removeFirst(state.head)
                state.head = 0
            }
            return expired
        }
        let error = NATSError(code: .timeout, message: "JetStream publish failed: no PubAck in time")
        for entry in expired { entry.batch.complete(index: entry.index, result: .failure(error)) }
    }

    var inFlight: Int { state.withLock { $0.pending.count } }

    /// Fails every waiter (used when the connection closes).
    func failAll(_ error: NATSError) {
        let all = state.withLock { state -> [Pending] in
            let values = Array(state.pending.values)
            state.pending.removeAll()
            state.deadlines.removeAll()
            state.head = 0
            return values
        }
        for entry in all { entry.batch.complete(index: entry.index, result: .failure(error)) }
    }
}

/// Receives PubAcks on the connection's ack inbox (`<inbox>.<sequence>`). Runs on a nats.c
/// delivery thread: parses a few bytes, completes one entry, never blocks.
let onPublishAck: natsMsgHandler = { _, _, msg, closure in
    guard let msg else { return }
    defer { MessageEncoding.release(msg) }
    guard let closure, let subject = natsMsg_GetSubject(msg) else { return }
    let tracker = Unmanaged<PublishTracker>.fromOpaque(closure).takeUnretainedValue()
    guard let sequence = lastTokenNumber(subject) else { return }
    if natsMsg_IsNoResponders(msg) {
        tracker.complete(
            sequence,
            result: .failure(NATSError(code: .publishFailed, message: "JetStream publish failed: no stream stores this subject"))
        )
        return
    }
    let count = Int(natsMsg_GetDataLength(msg))
    guard count > 0, let data = natsMsg_GetData(msg) else {
        tracker.complete(sequence, result: .failure(NATSError(code: .publishFailed, message: "JetStream publish failed: empty answer")))
        return
    }
    let body = UnsafeBufferPointer(start: UnsafeRawPointer(data).assumingMemoryBound(to: UInt8.self), count: count)
    tracker.complete(sequence, result: PubAckBody.parse(body))
}

/// The number after the last `.` of a C string.
func lastTokenNumber(_ text: UnsafePointer<CChar>) -> UInt64? {
    let bytes = UnsafeRawPointer(text).assumingMemoryBound(to: UInt8.self)
    var end = 0
    while bytes[end] != 0 { end += 1 }
    var start = end
    while start > 0 && bytes[start - 1] != UInt8(ascii: ".") { start -= 1 }
    return PubAckBody.number(UnsafeBufferPointer(start: bytes + start, count: end - start))
}

/// JetStream's answer to a publish: `{"stream":"S","seq":12}` (with `"duplicate":true` for a
/// repeated message id) or `{"error":{"code":503,"err_code":10077,"description":"…"}}`.
enum PubAckBody {
    static func parse(_ body: UnsafeBufferPointer<UInt8>) -> Result<PublishAck, NATSError> {
        if let error = range(of: "\"error\"", in: body, from: 0) {
            let code = value(of: "\"err_code\"", in: body, from: error.upperBound).flatMap(number) ?? 0
            let description = string(of: "\"description\"", in: body, from: error.upperBound) ?? "error"
            return .failure(
                NATSError(code: .publishFailed, message: "JetStream publish failed: \(description)", jetStreamErrorCode: Int(code))
            )
        }
        guard let sequence = value(of: "\"seq\"", in: body, from: 0).flatMap(number) else {
            return .failure(NATSError(code: .publishFailed, message: "JetStream publish failed: unreadable PubAck"))
        }
        let duplicate = value(of: "\"duplicate\"", in: body, from: 0).map { $0.starts(with: "true".utf8) } ?? false
        return .success(PublishAck(sequence: sequence, duplicate: duplicate))
    }

    static func number(_ digits: some Collection<UInt8>) -> UInt64? {
        var value: UInt64 = 0
        var any = false
        for byte in digits {
            let digit = byte &- UInt8(ascii: "0")
            guard digit < 10 else { break }
            let (times, overflow) = value.multipliedReportingOverflow(by: 10)
            guard !overflow else { return nil }
            value = times &+ UInt64(digit)
            any = true
        }
        return any ? value : nil
    }

    private static func range(of needle: String, in body: UnsafeBufferPointer<UInt8>, from start: Int) -> Range<Int>? {
        let pattern = Array(needle.utf8)
        guard body.count >= pattern.count, start <= body.count - pattern.count else { return nil }
        var i = start
        while i <= body.count - pattern.count {
            var match = true
            for j in 0..<pattern.count where body[i + j] != pattern[j] {
                match = false
                break
            }
            if match { return i..<(i + pattern.count) }
            i += 1
        }
        return nil
    }

    /// The bytes after `"key":` (and spaces).
    private static func value(of key: String, in body: UnsafeBufferPointer<UInt8>, from start: Int) -> Slice<UnsafeBufferPointer<UInt8>>? {
        guard let found = range(of: key, in: body, from: start) else { return nil }
        var i = found.upperBound
        while i < body.count, body[i] == UInt8(ascii: " ") || body[i] == UInt8(ascii: ":") { i += 1 }
        return body[i...]
    }

    private static func string(of key: String, in body: UnsafeBufferPointer<UInt8>, from start: Int) -> String? {
        guard let rest = value(of: key, in: body, from: start), rest.first == UInt8(ascii: "\"") else { return nil }
        var out: [UInt8] = []
        var i = rest.startIndex + 1
        while i < rest.endIndex, rest[i] != UInt8(ascii: "\"") {
            if rest[i] == UInt8(ascii: "\\"), i + 1 < rest.endIndex { i += 1 }
            out.append(rest[i])
            i += 1
        }
        return String(decoding: out, as: UTF8.self)
    }
}
