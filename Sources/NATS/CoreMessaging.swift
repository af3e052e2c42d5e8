import CNATS
import Synchronization

/// A core NATS message (not stored by JetStream): requests, replies, notifications.
package struct CoreMessage: Sendable {
    package var subject: String
    /// Where an answer goes, for requests.
    package var reply: String?
    package var payload: [UInt8]
    package var headers: [String: String]
    /// Set on the status message the server sends to a request nobody serves.
    var isNoResponders = false

    package init(subject: String, reply: String? = nil, payload: [UInt8], headers: [String: String] = [:]) {
        self.subject = subject
        self.reply = reply
        self.payload = payload
        self.headers = headers
    }
}

/// A core NATS subscription whose messages arrive as an `AsyncSequence`.
///
/// The sequence ends after ``unsubscribe()`` or when the connection closes. Messages are
/// buffered without bound between nats.c's delivery thread and the consumer, so serve them
/// promptly (nats.c itself drops messages for a slow consumer past its pending limits).
package final class CoreSubscription: AsyncSequence, Sendable {
    package typealias Element = CoreMessage
    private let handle: SubscriptionHandle
    private let stream: AsyncStream<CoreMessage>

    fileprivate init(handle: SubscriptionHandle, stream: AsyncStream<CoreMessage>) {
        self.handle = handle
        self.stream = stream
    }

    package func makeAsyncIterator() -> AsyncStream<CoreMessage>.AsyncIterator { stream.makeAsyncIterator() }

    /// Stops delivery; the sequence finishes once nats.c has delivered what it holds.
    package func unsubscribe() {
        handle.unsubscribe()
    }
}

// nats.c subscriptions are thread safe; the pointer is set once and destroyed in deinit, after
// which no method can be called.
private final class SubscriptionHandle: @unchecked Sendable {
    nonisolated(unsafe) var pointer: OpaquePointer?

    func unsubscribe() {
        if let pointer { _ = natsSubscription_Unsubscribe(pointer) }
    }

    deinit {
        if let pointer {
            _ = natsSubscription_Unsubscribe(pointer)
            natsSubscription_Destroy(pointer)
        }
    }
}

/// What a subscription's C callbacks reach through their `closure` pointer.
/// `deliver` runs on nats.c's delivery thread for each message, `finish` once after the last.
private final class DeliveryBox: Sendable {
    let deliver: @Sendable (CoreMessage) -> Void
    let finish: @Sendable () -> Void

    init(deliver: @escaping @Sendable (CoreMessage) -> Void, finish: @escaping @Sendable () -> Void) {
        self.deliver = deliver
        self.finish = finish
    }
}

private let onCoreMessage: natsMsgHandler = { _, _, msg, closure in
    guard let msg, let closure else { return }
    let box = Unmanaged<DeliveryBox>.fromOpaque(closure).takeUnretainedValue()
    box.deliver(CoreMessage(msg))
    MessageEncoding.release(msg)
}

private let onSubscriptionComplete: natsOnCompleteCB = { closure in
    guard let closure else { return }
    let box = Unmanaged<DeliveryBox>.fromOpaque(closure).takeRetainedValue()
    box.finish()
}

extension CoreMessage {
    init(_ msg: OpaquePointer) {
        let reply = natsMsg_GetReply(msg).map { String(cString: $0) }
        self.init(
            subject: String(cString: natsMsg_GetSubject(msg)),
            reply: reply?.isEmpty == false ? reply : nil,
            payload: copyPayload(msg),
            headers: allHeaders(msg)
        )
        isNoResponders = natsMsg_IsNoResponders(msg)
    }
}

extension NATSConnection {
    /// Subscribes `handler` to `subject` (in `queue`'s group, if given) with `context` as its
    /// closure. The context is retained here; nats.c calls `onComplete` with it once no
    /// callback can run any more, and `onComplete` must release it.
    func subscribe(
        subject: String,
        queue: String? = nil,
        handler: natsMsgHandler,
        onComplete: natsOnCompleteCB,
        context: AnyObject
    ) throws(NATSError) -> OpaquePointer {
        let retained = Unmanaged.passRetained(context)
        var sub: OpaquePointer?
        let status: natsStatus
        if let queue {
            status = natsConnection_QueueSubscribe(&sub, rawConnection, subject, queue, handler, retained.toOpaque())
        } else {
            status = natsConnection_Subscribe(&sub, rawConnection, subject, handler, retained.toOpaque())
        }
        guard status == NATS_OK, let sub else {
            retained.release()
            throw NATSError.from(status: status, context: "subscribing to \(subject)")
        }
        _ = natsSubscription_SetPendingLimits(sub, -1, -1)
        let completeStatus = natsSubscription_SetOnCompleteCB(sub, onComplete, retained.toOpaque())
        if completeStatus != NATS_OK {
            // Without the completion callback nothing says when callbacks have stopped: the
            // context stays retained rather than risk a callback using a freed one.
            _ = natsSubscription_Unsubscribe(sub)
            natsSubscription_Destroy(sub)
            throw NATSError.from(status: completeStatus, context: "subscribing to \(subject)")
        }
        return sub
    }

    /// Publishes a core NATS message (no PubAck; buffered and flushed by nats.c).
    package func publishCore(_ message: CoreMessage) throws {
        let headers = message.headers.map { ($0.key, $0.value) }
        let msg = try message.payload.withUnsafeBytes { bytes in
            guard let reply = message.reply else {
                return try MessageEncoding.create(subject: message.subject, reply: nil, headers: headers, payload: bytes)
            }
            return try reply.withCString { chars in
                try MessageEncoding.create(
                    subject: message.subject,
                    reply: UnsafeBufferPointer(start: chars, count: reply.utf8.count),
                    headers: headers,
                    payload: bytes
                )
            }
        }
        defer { MessageEncoding.release(msg) }
        try check(natsConnection_PublishMsg(rawConnection, msg), "publishing to \(message.subject)")
    }

    /// Subscribes to `subject` (wildcards allowed). With a `queue`, each message goes to one
    /// member of the queue group.
    package func subscribeCore(subject: String, queue: String? = nil) throws -> CoreSubscription {
        let (stream, continuation) = AsyncStream<CoreMessage>.makeStream()
        let sub: OpaquePointer
        do {
            sub = try subscribe(
                subject: subject,
                queue: queue,
                handler: onCoreMessage,
                onComplete: onSubscriptionComplete,
                context: DeliveryBox(deliver: { continuation.yield($0) }, finish: { continuation.finish() })
            )
        } catch {
            continuation.finish()
            throw error
        }
        let handle = SubscriptionHandle()
        handle.pointer = sub
        return CoreSubscription(handle: handle, stream: stream)
    }

    /// Subscribes `deliver` to `subject`, called on nats.c's delivery thread for each message
    /// (keep it short and non-blocking); `finish` runs once when no message can come any more
    /// (unsubscribed, or the connection closed). For readers that only hand each message on,
    /// without a task of their own. Delivery lasts as long as the returned handle.
    fileprivate func subscribeCore(
        subject: String,
        deliver: @escaping @Sendable (CoreMessage) -> Void,
        finish: @escaping @Sendable () -> Void
    ) throws -> SubscriptionHandle {
        let handle = SubscriptionHandle()
        handle.pointer = try subscribe(
            subject: subject,
            handler: onCoreMessage,
            onComplete: onSubscriptionComplete,
            context: DeliveryBox(deliver: deliver, finish: finish)
        )
        return handle
    }

    /// Sends a request and waits for the first reply.
    ///
    /// Throws `.noResponders` at once when nobody subscribes to `subject`, and `.timeout` when
    /// no reply came within `timeout`. Replies come through one shared inbox subscription.
    package func request(_ message: CoreMessage, timeout: Duration) async throws -> CoreMessage {
        if isClosed { throw NATSError(code: .connectionClosed, message: "connection closed") }
        let inbox = try requestInbox()
        let token = requests.nextToken()
        let outgoing = CoreMessage(
            subject: message.subject,
            reply: inbox.prefix + token,
            payload: message.payload,
            headers: message.headers
        )
        return try await withThrowingTaskGroup(of: CoreMessage?.self) { group in
            group.addTask {
                try await withTaskCancellationHandler {
                    try await withCheckedThrowingContinuation { continuation in
                        self.requests.register(token, continuation)
                        // A cancellation that ran before the registration found nothing to fail.
                        if Task.isCancelled { self.requests.fail(token, CancellationError()) }
                        do {
                            try self.publishCore(outgoing)
                        } catch {
                            self.requests.fail(token, error)
                        }
                    }
                } onCancel: {
                    self.requests.fail(token, CancellationError())
                }
            }
            group.addTask {
                try? await Task.sleep(for: timeout)
                return nil
            }
            let first = try await group.next()!
            group.cancelAll()
            guard let reply = first else {
                throw NATSError(code: .timeout, message: "no reply on \(message.subject) within \(timeout)")
            }
            if reply.isNoResponders {
                throw NATSError(code: .noResponders, message: "nobody serves \(message.subject)")
            }
            return reply
        }
    }

    private func requestInbox() throws -> RequestMux.Inbox {
        try requests.inbox {
            let prefix = "\(self.configuration.inboxPrefix).\(RequestMux.randomToken())."
            let mux = self.requests
            // Replies are matched to their requests on nats.c's delivery thread (a dictionary
            // lookup under a lock), so no task of its own outlives the caller.
            let subscription = try self.subscribeCore(
                subject: prefix + "*",
                deliver: { reply in mux.complete(String(reply.subject.dropFirst(prefix.count)), with: reply) },
                finish: { mux.failAll(NATSError(code: .connectionClosed, message: "connection closed")) }
            )
            return RequestMux.Inbox(prefix: prefix, subscription: subscription)
        }
    }
}

/// Pending requests of one connection, matched to replies by the last inbox token.
final class RequestMux: Sendable {
    struct Inbox: Sendable {
        let prefix: String
        fileprivate let subscription: SubscriptionHandle
    }

    private struct State {
        var inbox: Inbox?
        var counter: UInt64 = 0
        var pending: [String: CheckedContinuation<CoreMessage?, any Error>] = [:]
    }

    private let state = Mutex(State())

    static func randomToken() -> String {
        var generator = SystemRandomNumberGenerator()
        let alphabet = Array("abcdefghijklmnopqrstuvwxyz0123456789".utf8)
        return String(decoding: (0..<22).map { _ in alphabet[Int(generator.next(upperBound: UInt(alphabet.count)))] }, as: UTF8.self)
    }

    func inbox(create: () throws -> Inbox) throws -> Inbox {
        try state.withLock { state in
            if let inbox = state.inbox { return inbox }
            let inbox = try create()
            state.inbox = inbox
            return inbox
        }
    }

    func nextToken() -> String {
        state.withLock { state in
            state.counter += 1
            return String(state.counter)
        }
    }

    func register(_ token: String, _ continuation: CheckedContinuation<CoreMessage?, any Error>) {
        state.withLock { $0.pending[token] = continuation }
    }

    func complete(_ token: String, with message: CoreMessage) {
        state.withLock { $0.pending.removeValue(forKey: token) }?.resume(returning: message)
    }

    func fail(_ token: String, _ error: any Error) {
        state.withLock { $0.pending.removeValue(forKey: token) }?.resume(throwing: error)
    }

    func failAll(_ error: any Error) {
        let all = state.withLock { state in
            defer { state.pending = [:] }
            return state.pending.values
        }
        for continuation in all { continuation.resume(throwing: error) }
    }
}
