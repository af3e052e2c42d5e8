import CNATS
import Synchronization

/// A message fetched from a durable pull consumer.
public struct JetStreamMessage: Sendable {
    public var subject: String
    public var payload: [UInt8]
    /// Values of the header names the subscription asked for, in the same order.
    public var headerValues: [String?]
    /// 1 on first delivery, 2 on the first redelivery, …
    public var deliveryCount: UInt64
    public var streamSequence: UInt64
    /// When the stream stored the message, in nanoseconds since 1970.
    public var timestamp: Int64
}

/// One durable pull consumer binding. Use one per concurrent fetch loop.
public final class PullSubscription: Sendable {
    // nats.c subscriptions are thread safe; the pointer is freed once, under `closed`, after
    // the owner's loop has stopped using it.
    private nonisolated(unsafe) let subscription: OpaquePointer
    public let headerNames: [String]
    private let connection: NATSConnection
    private let closed = Mutex(false)

    init(subscription: OpaquePointer, headerNames: [String], connection: NATSConnection) {
        self.subscription = subscription
        self.headerNames = headerNames
        self.connection = connection
    }

    deinit {
        let wasClosed = closed.withLock { $0 }
        if !wasClosed { natsSubscription_Destroy(subscription) }
    }

    /// Fetches up to `maxMessages`, waiting at most `timeout` for the first one.
    /// Returns an empty batch when nothing arrived in time.
    public func fetch(maxMessages: Int, timeout: Duration) async throws -> FetchedBatch {
        let sub = UnsafeHandle(subscription)
        let names = headerNames
        let timeoutMs = max(1, timeout.milliseconds)
        return try await connection.threadPool.runIfActive {
            var list = natsMsgList()
            var errCode = jsErrCode(rawValue: 0)
            let status = natsSubscription_Fetch(&list, sub.pointer, Int32(maxMessages), timeoutMs, &errCode)
            defer { natsMsgList_Destroy(&list) }
            if status == NATS_TIMEOUT && list.Count == 0 { return FetchedBatch(messages: [], handles: []) }
            if status != NATS_OK && list.Count == 0 {
                throw NATSError.from(status: status, jsError: errCode, context: "fetching")
            }
            var messages: [JetStreamMessage] = []
            var handles: [OpaquePointer] = []
            messages.reserveCapacity(Int(list.Count))
            handles.reserveCapacity(Int(list.Count))
            for i in 0..<Int(list.Count) {
                guard let msg = list.Msgs[i] else { continue }
                list.Msgs[i] = nil  // take ownership; natsMsgList_Destroy skips it
                var values: [String?] = []
                values.reserveCapacity(names.count)
                for name in names {
                    var value: UnsafePointer<CChar>?
                    if natsMsgHeader_Get(msg, name, &value) == NATS_OK, let value {
                        values.append(String(cString: value))
                    } else {
                        values.append(nil)
                    }
                }
                var meta: UnsafeMutablePointer<jsMsgMetaData>?
                var delivered: UInt64 = 1
                var sequence: UInt64 = 0
                var timestamp: Int64 = 0
                if natsMsg_GetMetaData(&meta, msg) == NATS_OK, let meta {
                    delivered = meta.pointee.NumDelivered
                    sequence = meta.pointee.Sequence.Stream
                    timestamp = meta.pointee.Timestamp
                    jsMsgMetaData_Destroy(meta)
                }
                messages.append(
                    JetStreamMessage(
                        subject: String(cString: natsMsg_GetSubject(msg)),
                        payload: copyPayload(msg),
                        headerValues: values,
                        deliveryCount: delivered,
                        streamSequence: sequence,
                        timestamp: timestamp
                    )
                )
                handles.append(msg)
            }
            return FetchedBatch(messages: messages, handles: handles)
        }
    }

    /// Stops the subscription. The durable consumer stays; unacknowledged messages are redelivered.
    public func close() {
        let shouldDestroy = closed.withLock { closed -> Bool in
            defer { closed = true }
            return !closed
        }
        if shouldDestroy { natsSubscription_Destroy(subscription) }
    }
}

/// A batch of fetched messages and the handles needed to acknowledge them.
///
/// Acknowledge each message once with ``ack(_:)``, ``nak(_:delay:)``, ``term(_:)``;
/// ``inProgress(_:)`` may be sent any number of times before that.
public final class FetchedBatch: Sendable {
    public let messages: [JetStreamMessage]
    /// The natsMsg handles. `@unchecked Sendable` is sound because they are only read or
    /// changed inside `handles.withLock`, and each is destroyed exactly once (then set to nil).
    private struct Handles: @unchecked Sendable {
        var pointers: [OpaquePointer?]
        subscript(index: Int) -> OpaquePointer? {
            get { pointers[index] }
            set { pointers[index] = newValue }
        }
    }

    private let handles: Mutex<Handles>

    init(messages: [JetStreamMessage], handles: [OpaquePointer]) {
        self.messages = messages
        self.handles = Mutex(Handles(pointers: handles.map { Optional($0) }))
    }

    deinit {
        handles.withLock { handles in
            for case let handle? in handles.pointers { natsMsg_Destroy(handle) }
        }
    }

    public var count: Int { messages.count }
    public var isEmpty: Bool { messages.isEmpty }

    private func finish(_ index: Int, _ body: (OpaquePointer) -> natsStatus) -> natsStatus {
        handles.withLock { handles -> natsStatus in
            guard let handle = handles[index] else { return NATS_ILLEGAL_STATE }
            let status = body(handle)
            natsMsg_Destroy(handle)
            handles[index] = nil
            return status
        }
    }

    /// Acknowledges message `index` (it will not be redelivered).
    @discardableResult
    public func ack(_ index: Int) -> Bool { finish(index) { natsMsg_Ack($0, nil) } == NATS_OK }

    /// Asks for redelivery of message `index` after `delay`.
    @discardableResult
    public func nak(_ index: Int, delay: Duration) -> Bool {
        finish(index) { natsMsg_NakWithDelay($0, max(0, delay.milliseconds), nil) } == NATS_OK
    }

    /// Tells the server never to redeliver message `index`.
    @discardableResult
    public func term(_ index: Int) -> Bool { finish(index) { natsMsg_Term($0, nil) } == NATS_OK }

    /// Resets the ack timer of message `index` (a handler is still working on it).
    @discardableResult
    public func inProgress(_ index: Int) -> Bool {
        handles.withLock { handles -> Bool in
            guard let handle = handles[index] else { return false }
            return natsMsg_InProgress(handle, nil) == NATS_OK
        }
    }
}
