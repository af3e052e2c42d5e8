import CNATS
import Synchronization

/// Collects the PubAcks of one `publish` call and resumes its caller once all have arrived.
final class PublishBatch: Sendable {
    private struct State {
        var remaining: Int
        var acks: [PublishAck]
        var error: NATSError?
        var continuation: CheckedContinuation<[PublishAck], any Error>?
    }

    private let state: Mutex<State>

    init(count: Int, continuation: CheckedContinuation<[PublishAck], any Error>) {
        state = Mutex(
            State(
                remaining: count,
                acks: Array(repeating: PublishAck(sequence: 0, duplicate: false), count: count),
                error: nil,
                continuation: continuation
            )
        )
    }

    func complete(index: Int, result: Result<PublishAck, NATSError>) {
        // Take the continuation out under the lock; resume it after unlocking.
        let finished: (CheckedContinuation<[PublishAck], any Error>, Result<[PublishAck], NATSError>)? = state.withLock {
            state in
            switch result {
            case .success(let ack): state.acks[index] = ack
            case .failure(let error): if state.error == nil { state.error = error }
            }
            state.remaining -= 1
            guard state.remaining == 0, let continuation = state.continuation else { return nil }
            state.continuation = nil
            if let error = state.error { return (continuation, .failure(error)) }
            return (continuation, .success(state.acks))
        }
        if let (continuation, outcome) = finished {
            continuation.resume(with: outcome.mapError { $0 as any Error })
        }
    }
}

/// Maps in-flight `natsMsg` pointers to the batch waiting for their PubAck.
///
/// nats.c hands the original message pointer back to the ack handler and the message stays
/// alive until that handler destroys it, so the address is a unique key for the whole flight.
final class PublishTracker: Sendable {
    private struct Pending {
        var batch: PublishBatch
        var index: Int
    }

    private let pending = Mutex<[UInt: Pending]>([:])

    func register(_ key: UInt, batch: PublishBatch, index: Int) {
        pending.withLock { $0[key] = Pending(batch: batch, index: index) }
    }

    /// Completes the entry for `key` if it is still registered (it is not when `failAll` won the race).
    func complete(_ key: UInt, result: Result<PublishAck, NATSError>) {
        guard let entry = pending.withLock({ $0.removeValue(forKey: key) }) else { return }
        entry.batch.complete(index: entry.index, result: result)
    }

    var inFlight: Int { pending.withLock { $0.count } }

    /// Fails every waiter (used when the connection closes: nats.c may never call back).
    func failAll(_ error: NATSError) {
        let all = pending.withLock { pending -> [Pending] in
            let values = Array(pending.values)
            pending.removeAll()
            return values
        }
        for entry in all { entry.batch.complete(index: entry.index, result: .failure(error)) }
    }
}

/// The JetStream async-publish ack callback. It runs on a nats.c delivery thread, does a
/// dictionary lookup and a continuation resume, and never blocks.
let publishAckHandler: jsPubAckHandler = { _, msg, pubAck, pubAckError, closure in
    defer { natsMsg_Destroy(msg) }
    guard let closure, let msg else { return }
    let tracker = Unmanaged<PublishTracker>.fromOpaque(closure).takeUnretainedValue()
    let key = UInt(bitPattern: msg)
    if let pubAck {
        tracker.complete(key, result: .success(PublishAck(sequence: pubAck.pointee.Sequence, duplicate: pubAck.pointee.Duplicate)))
    } else if let pubAckError {
        let status = pubAckError.pointee.Err
        let text = pubAckError.pointee.ErrText.map { String(cString: $0) } ?? String(cString: natsStatus_GetText(status))
        let code: NATSError.Code = status == NATS_TIMEOUT ? .timeout : .publishFailed
        tracker.complete(
            key,
            result: .failure(
                NATSError(
                    code: code,
                    message: "JetStream publish failed: \(text)",
                    status: Int32(status.rawValue),
                    jetStreamErrorCode: Int(pubAckError.pointee.ErrCode.rawValue)
                )
            )
        )
    } else {
        tracker.complete(key, result: .failure(NATSError(code: .publishFailed, message: "JetStream publish failed")))
    }
}
