import CNATS
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// A message fetched from a durable pull consumer.
package struct JetStreamMessage: Sendable {
    package var subject: String
    package var payload: [UInt8]
    /// Values of the header names the subscription asked for, in the same order.
    package var headerValues: [String?]
    /// 1 on first delivery, 2 on the first redelivery, …
    package var deliveryCount: UInt64
    package var streamSequence: UInt64
    /// When the stream stored the message, in nanoseconds since 1970.
    package var timestamp: Int64
}

/// A pull consumer binding that speaks the JetStream pull protocol over one core NATS
/// subscription (no `natsSubscription_Fetch`).
///
/// The subscription keeps one pull request open on the server while it is in use: as soon
/// as ``fetch(maxMessages:timeout:)`` has taken a batch, the next batch is requested, so it
/// travels while the caller works on the current one, and a request the server has served in
/// full is followed by the next one at once, from the delivery thread, so records arriving
/// while every loop is busy are sent on instead of waiting in the stream for the next fetch.
/// A fetch returns as soon as at least one message is there: what has arrived by the time the
/// caller runs makes the batch, so a batch never waits to fill up (low latency when idle, full
/// batches under load).
///
/// Several loops may fetch from one subscription at once (a handler's `concurrency`): records
/// go to whichever loop asks first, so none waits in the buffer of a loop that is busy with its
/// batch while another loop is idle (with a subscription per loop, JetStream spreads records
/// over the loops' open requests, and a busy loop's share waits for it).
///
/// Messages are copied out of nats.c on its delivery thread and freed there; acks are plain
/// core publishes to the message's reply subject.
package final class PullSubscription: Sendable {
    package let headerNames: [String]
    private let connection: NATSConnection
    private let box: PullBox
    /// `$JS.API.CONSUMER.MSG.NEXT.<stream>.<consumer>`
    private let nextSubject: String
    private let inbox: String
    /// An ephemeral consumer this subscription created and deletes when closed.
    private let ephemeral: (stream: String, consumer: String)?
    /// The name the server gave the ephemeral consumer this subscription created.
    package var ephemeralConsumer: String? { ephemeral?.consumer }
    // nats.c subscriptions are thread safe; the pointer is unsubscribed and destroyed once,
    // under `closed`, and never used after that.
    private nonisolated(unsafe) let subscription: OpaquePointer
    private let closed = Mutex(false)

    init(
        connection: NATSConnection,
        stream: String,
        consumer: String,
        headerNames: [String],
        ephemeral: Bool
    ) throws(NATSError) {
        self.connection = connection
        self.headerNames = headerNames
        self.nextSubject = "$JS.API.CONSUMER.MSG.NEXT.\(stream).\(consumer)"
        self.ephemeral = ephemeral ? (stream, consumer) : nil
        var inboxPointer: UnsafeMutablePointer<CChar>?
        try check(natsInbox_Create(&inboxPointer), "creating an inbox")
        self.inbox = NATSConnection.withInboxPrefix(
            connection.configuration.inboxPrefix,
            inboxPointer.map { String(cString: $0) } ?? "_INBOX.pull"
        )
        natsInbox_Destroy(inboxPointer)
        let box = PullBox(headerNames: headerNames)
        self.box = box
        self.subscription = try connection.subscribe(
            subject: inbox + ".*",
            handler: onPullMessage,
            onComplete: onPullComplete,
            context: box
        )
        box.setRequester { [weak self] request in try? self?.sendPullRequest(request) }
    }

    deinit {
        close()
    }

    /// Returns what has arrived, up to `maxMessages`; when nothing has, waits at most
    /// `timeout` for the first message. Returns an empty batch when nothing arrived in time.
    package func fetch(maxMessages: Int, timeout: Duration) async throws -> FetchedBatch {
        let limit = max(1, maxMessages)
        let timeoutMs = max(1, timeout.milliseconds)
        if closed.withLock({ $0 }) { throw NATSError(code: .connectionClosed, message: "the subscription is closed") }
        let (taken, request) = box.takeOrRequest(limit: limit, timeoutMs: timeoutMs)
        if let taken {
            // Records in hand go to the caller even if asking for the next batch failed (the
            // next fetch asks again).
            if let request { try? sendPullRequest(request) }
            return try batch(taken)
        }
        if let request { try sendPullRequest(request) }

        // Nothing there yet: wait for the first message, the request's end, or the deadline.
        // The server ends an open request with a 408 when it expires, but that status can be
        // lost (a reconnect) or never sent: under load nats-server 2.9 was seen to drop a
        // partly served request silently. Records then wait for the next request, so the
        // deadline is the open request's own expiry plus a short grace, not the fetch's.
        while true {
            let (token, expiry) = box.newWaitToken()
            let ended = await withTaskGroup(of: Void.self) { [box] group in
                group.addTask {
                    if let expiry { try? await Task.sleep(until: expiry, clock: .continuous) }
                    if !Task.isCancelled { box.expire(token) }
                }
                let ended = await withCheckedContinuation { (continuation: CheckedContinuation<Bool, Never>) in
                    box.wait(token, continuation)
                }
                group.cancelAll()
                return ended
            }
            let (after, next) = box.takeOrRequest(limit: limit, timeoutMs: timeoutMs, requestIfEmpty: false)
            if let next { try? sendPullRequest(next) }
            // Another loop took what woke this one while the request is still open: wait on.
            let taken = after ?? []
            if !taken.isEmpty || ended { return try batch(taken) }
        }
    }

    private func batch(_ taken: [DeliveredMessage]) throws -> FetchedBatch {
        if taken.isEmpty, let error = box.takeError() { throw error }
        return FetchedBatch(deliveries: taken, connection: connection)
    }

    private func sendPullRequest(_ request: PullRequest) throws {
        if closed.withLock({ $0 }) { return }
        // `expires` in nanoseconds; the server ends the request then with a 408.
        let body = "{\"batch\":\(request.batch),\"expires\":\(request.timeoutMs * 1_000_000)}"
        let status = natsConnection_PublishRequestString(connection.rawConnection, nextSubject, "\(inbox).\(request.id)", body)
        if status != NATS_OK {
            box.requestFailed(request.id)
            throw NATSError.from(status: status, context: "requesting messages from \(nextSubject)")
        }
    }

    /// How many loops fetch from this subscription (1 unless told): a pull request asks for
    /// that many batches, so each loop finds records waiting when it comes back.
    package var concurrentFetchers: Int {
        get { box.fetchers.load(ordering: .relaxed) }
        set { box.fetchers.store(max(1, newValue), ordering: .relaxed) }
    }

    /// How many pull requests this subscription gave up on because the server neither sent
    /// records nor ended them by the request's expiry (plus a grace); a new request replaced
    /// each. A few under heavy load are harmless; a steady rise means the server is starved.
    package var presumedLostRequests: Int { box.lostRequests }

    /// Runs `body` while, in a child task, an in-progress ack (`+WPI`) goes every `interval` to
    /// each message received but not fetched yet, so records waiting behind a slow batch are
    /// not redelivered. Use a third of the consumer's ack wait. The acks stop when `body`
    /// returns.
    package func keepingUnfetchedAlive(
        every interval: Duration,
        isolation: isolated (any Actor)? = #isolation,
        _ body: () async -> Void
    ) async {
        await withTaskGroup(of: Void.self) { group in
            group.addTask { [weak self] in
                while !Task.isCancelled {
                    try? await Task.sleep(for: interval)
                    guard let self, !Task.isCancelled, !self.closed.withLock({ $0 }) else { return }
                    for reply in self.box.unfetchedReplies() {
                        _ = natsConnection_PublishString(self.connection.rawConnection, reply, "+WPI")
                    }
                }
            }
            await body()
            group.cancelAll()
        }
    }

    /// Stops the subscription. Messages received but not fetched are handed back to the
    /// server at once (nak); unacknowledged fetched ones are redelivered after the ack wait.
    /// An ephemeral consumer is left to the server, which removes it 30 s after its last pull
    /// request; ``closeAndRemove()`` removes it at once.
    package func close() {
        let first = closed.withLock { closed -> Bool in
            defer { closed = true }
            return !closed
        }
        guard first else { return }
        _ = natsSubscription_Unsubscribe(subscription)
        natsSubscription_Destroy(subscription)
        let unfetched = box.close()
        for message in unfetched {
            _ = natsConnection_PublishString(connection.rawConnection, message.reply, "-NAK")
        }
    }

    /// ``close()``, then deletes the consumer if this subscription created it (ephemeral).
    package func closeAndRemove() async {
        close()
        if let ephemeral {
            try? await connection.deleteConsumer(stream: ephemeral.stream, consumer: ephemeral.consumer)
        }
    }
}

/// One message as copied out of nats.c, with the subject its ack goes to.
struct DeliveredMessage: Sendable {
    var message: JetStreamMessage
    var reply: String
}

struct PullRequest: Sendable {
    var id: UInt64
    var batch: Int
    var timeoutMs: Int64
}

/// The state shared by a subscription's C callback (nats.c delivery thread) and its fetch
/// loop, under one lock.
final class PullBox: Sendable {
    let headerNames: [String]

    /// A fetch waiting for records; resumed with `true` when the request it waited on ended
    /// (or the subscription closed), `false` when records arrived.
    private struct Waiter {
        var token: UInt64
        var continuation: CheckedContinuation<Bool, Never>
    }

    private struct Outstanding {
        var id: UInt64
        var remaining: Int
        /// When the request is presumed lost if it has not ended: its expiry plus a grace.
        var deadline: ContinuousClock.Instant
    }

    private struct State {
        var buffer: [DeliveredMessage] = []
        var outstanding: Outstanding?
        /// Fetches waiting, first come first served.
        var waiters: [Waiter] = []
        var nextID: UInt64 = 0
        var nextToken: UInt64 = 0
        var error: NATSError?
        var closed = false
        var lostRequests = 0
        /// The batch size and timeout of the last fetch, for requests sent between fetches.
        var limit = 0
        var timeoutMs: Int64 = 0
    }

    private let state = Mutex(State())
    /// Loops fetching from the subscription (``PullSubscription/concurrentFetchers``).
    let fetchers = Atomic<Int>(1)
    /// Sends a pull request; set when the subscription is made, before its first fetch (a
    /// request goes out from ``deliver(_:)`` only once a fetch has sent one).
    private let requester = Mutex<(@Sendable (PullRequest) -> Void)?>(nil)

    func setRequester(_ send: @escaping @Sendable (PullRequest) -> Void) {
        requester.withLock { $0 = send }
    }

    /// Reads the time for requests' deadlines (a manual clock in tests).
    private let clock: @Sendable () -> ContinuousClock.Instant

    init(headerNames: [String], clock: @escaping @Sendable () -> ContinuousClock.Instant = { .now }) {
        self.headerNames = headerNames
        self.clock = clock
    }

    /// Takes up to `limit` buffered messages (nil when there are none) and says which pull
    /// request to send: the next batch while the caller works on this one, or — with an
    /// empty buffer and `requestIfEmpty` — the one to wait on.
    func takeOrRequest(limit: Int, timeoutMs: Int64, requestIfEmpty: Bool = true) -> ([DeliveredMessage]?, PullRequest?) {
        state.withLock { state in
            if state.closed { return ([], nil) }
            var taken: [DeliveredMessage]?
            if !state.buffer.isEmpty {
                if state.buffer.count <= limit {
                    taken = state.buffer
                    state.buffer.removeAll(keepingCapacity: true)
                } else {
                    taken = Array(state.buffer.prefix(limit))
                    state.buffer.removeFirst(limit)
                }
            } else if !requestIfEmpty {
                taken = []
            }
            state.limit = limit
            state.timeoutMs = timeoutMs
            guard state.outstanding == nil, taken != nil || requestIfEmpty else { return (taken, nil) }
            return (taken, nextRequest(&state))
        }
    }

    /// Opens the next request (batches for every loop, less what is buffered), if any is wanted.
    private func nextRequest(_ state: inout State) -> PullRequest? {
        let wanted = state.limit * fetchers.load(ordering: .relaxed) - state.buffer.count
        guard wanted > 0 else { return nil }
        state.nextID &+= 1
        let expires = Duration.milliseconds(state.timeoutMs)
        let grace = min(.seconds(1), max(.milliseconds(50), expires / 10))
        state.outstanding = Outstanding(id: state.nextID, remaining: wanted, deadline: clock() + expires + grace)
        return PullRequest(id: state.nextID, batch: wanted, timeoutMs: state.timeoutMs)
    }

    /// Fetches parked waiting for records.
    var waitingFetches: Int { state.withLock { $0.waiters.count } }

    /// Requests given up because neither their records nor their end came in time.
    var lostRequests: Int { state.withLock { $0.lostRequests } }

    /// A token for the next wait, and when the open request (if any) is presumed lost.
    func newWaitToken() -> (UInt64, ContinuousClock.Instant?) {
        state.withLock { state in
            state.nextToken &+= 1
            return (state.nextToken, state.outstanding?.deadline)
        }
    }

    /// Parks the fetch until a message arrives or the open request ends.
    func wait(_ token: UInt64, _ continuation: CheckedContinuation<Bool, Never>) {
        let now = clock()
        let resume = state.withLock { state -> Bool? in
            if state.closed || state.outstanding == nil { return true }
            if !state.buffer.isEmpty { return false }
            if let outstanding = state.outstanding, outstanding.deadline <= now {
                // Presumed lost before the deadline task could say so.
                state.outstanding = nil
                state.lostRequests += 1
                return true
            }
            state.waiters.append(Waiter(token: token, continuation: continuation))
            return nil
        }
        if let resume { continuation.resume(returning: resume) }
    }

    /// A fetch's deadline passed: the request is presumed lost, and every fetch waiting on it
    /// goes on (to ask again).
    func expire(_ token: UInt64) {
        let waiters = state.withLock { state -> [Waiter] in
            guard state.waiters.contains(where: { $0.token == token }) else { return [] }
            if state.outstanding != nil { state.lostRequests += 1 }
            state.outstanding = nil
            defer { state.waiters = [] }
            return state.waiters
        }
        for waiter in waiters { waiter.continuation.resume(returning: true) }
    }

    func requestFailed(_ id: UInt64) {
        state.withLock { state in
            if state.outstanding?.id == id { state.outstanding = nil }
        }
    }

    func takeError() -> NATSError? {
        state.withLock { state in
            defer { state.error = nil }
            return state.error
        }
    }

    /// Called on the delivery thread with each message; wakes the fetch that waited longest.
    /// When the message was the last the open request asked for, the next one goes out now.
    func deliver(_ message: DeliveredMessage) {
        let (waiter, request) = state.withLock { state -> (Waiter?, PullRequest?) in
            if state.closed { return (nil, nil) }
            state.buffer.append(message)
            var request: PullRequest?
            if var outstanding = state.outstanding {
                outstanding.remaining -= 1
                if outstanding.remaining > 0 {
                    state.outstanding = outstanding
                } else {
                    state.outstanding = nil
                    request = nextRequest(&state)
                }
            }
            return (state.waiters.isEmpty ? nil : state.waiters.removeFirst(), request)
        }
        if let request, let send = requester.withLock({ $0 }) { send(request) }
        waiter?.continuation.resume(returning: false)
    }

    /// Called on the delivery thread with a status message answering request `id`.
    func ended(requestID id: UInt64, status: Int, description: String) {
        let waiters = state.withLock { state -> [Waiter] in
            guard state.outstanding?.id == id else { return [] }
            state.outstanding = nil
            // 404 no messages and 408 request expired end a request normally; anything else
            // (409: consumer deleted, too many waiting requests, leadership change) is reported.
            if status != 404 && status != 408 {
                state.error = NATSError(
                    code: status == 409 && description.lowercased().contains("deleted") ? .notFound : .jetStream,
                    message: "pull request ended with \(status) \(description)",
                    jetStreamErrorCode: status
                )
            }
            defer { state.waiters = [] }
            return state.waiters
        }
        for waiter in waiters { waiter.continuation.resume(returning: true) }
    }

    /// Reply subjects of the messages received and not fetched yet.
    func unfetchedReplies() -> [String] {
        state.withLock { state in state.buffer.map(\.reply) }
    }

    /// Stops delivery; returns what was received and never fetched.
    func close() -> [DeliveredMessage] {
        let (waiters, unfetched) = state.withLock { state -> ([Waiter], [DeliveredMessage]) in
            state.closed = true
            defer {
                state.waiters = []
                state.buffer = []
            }
            return (state.waiters, state.buffer)
        }
        for waiter in waiters { waiter.continuation.resume(returning: true) }
        return unfetched
    }
}

private let onPullMessage: natsMsgHandler = { _, _, msg, closure in
    guard let msg else { return }
    defer { MessageEncoding.release(msg) }
    guard let closure else { return }
    let box = Unmanaged<PullBox>.fromOpaque(closure).takeUnretainedValue()
    if let reply = natsMsg_GetReply(msg), let metadata = AckSubject(reply) {
        let values = MessageEncoding.headerValues(msg, names: box.headerNames)
        box.deliver(
            DeliveredMessage(
                message: JetStreamMessage(
                    subject: String(cString: natsMsg_GetSubject(msg)),
                    payload: copyPayload(msg),
                    headerValues: values,
                    deliveryCount: metadata.delivered,
                    streamSequence: metadata.streamSequence,
                    timestamp: metadata.timestamp
                ),
                reply: String(cString: reply)
            )
        )
        return
    }
    // A status message (no reply subject) on `<inbox>.<request id>`.
    let subject = String(cString: natsMsg_GetSubject(msg))
    guard let dot = subject.utf8.lastIndex(of: UInt8(ascii: ".")),
        let id = UInt64(subject[subject.utf8.index(after: dot)...])
    else { return }
    var statusText: UnsafePointer<CChar>?
    guard natsMsgHeader_Get(msg, "Status", &statusText) == NATS_OK, let statusText, let status = Int(String(cString: statusText)) else {
        return
    }
    // 100: an idle heartbeat or flow control; not the end of anything.
    if status == 100 { return }
    var descriptionText: UnsafePointer<CChar>?
    let description =
        natsMsgHeader_Get(msg, "Description", &descriptionText) == NATS_OK ? descriptionText.map { String(cString: $0) } ?? "" : ""
    box.ended(requestID: id, status: status, description: description)
}

private let onPullComplete: natsOnCompleteCB = { closure in
    guard let closure else { return }
    Unmanaged<PullBox>.fromOpaque(closure).release()
}

/// The numbers JetStream encodes in a message's reply subject:
/// `$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<time>.<pending>`,
/// or with `<domain>.<account hash>` after `$JS.ACK.` and a random token at the end.
struct AckSubject {
    var delivered: UInt64
    var streamSequence: UInt64
    var timestamp: Int64

    init?(_ reply: UnsafePointer<CChar>) {
        let length = strlen(reply)
        let bytes = UnsafeRawPointer(reply).assumingMemoryBound(to: UInt8.self)
        let prefix: [UInt8] = Array("$JS.ACK.".utf8)
        guard length > prefix.count else { return nil }
        for i in 0..<prefix.count where bytes[i] != prefix[i] { return nil }
        // Token boundaries after the prefix.
        var tokens: [(start: Int, end: Int)] = []
        tokens.reserveCapacity(12)
        var start = prefix.count
        for i in prefix.count...length {
            if i == length || bytes[i] == UInt8(ascii: ".") {
                tokens.append((start, i))
                start = i + 1
            }
        }
        // 7 tokens: stream, consumer, delivered, sseq, cseq, time, pending.
        // 9 or more: domain and account hash first (and maybe a token at the end).
        let base: Int
        switch tokens.count {
        case 7: base = 2
        case 9...: base = 4
        default: return nil
        }
        func number(_ token: (start: Int, end: Int)) -> UInt64? {
            guard token.end > token.start else { return nil }
            var value: UInt64 = 0
            for i in token.start..<token.end {
                let digit = bytes[i] &- UInt8(ascii: "0")
                guard digit < 10 else { return nil }
                let (times, overflow) = value.multipliedReportingOverflow(by: 10)
                guard !overflow else { return nil }
                value = times &+ UInt64(digit)
            }
            return value
        }
        guard let delivered = number(tokens[base]), let sequence = number(tokens[base + 1]), let time = number(tokens[base + 3]) else {
            return nil
        }
        self.delivered = delivered
        self.streamSequence = sequence
        self.timestamp = Int64(clamping: time)
    }
}

/// A batch of fetched messages and what is needed to acknowledge them.
///
/// Acknowledge each message once with ``ack(_:)``, ``nak(_:delay:)``, ``term(_:)``;
/// ``inProgress(_:)`` may be sent any number of times before that.
package final class FetchedBatch: Sendable {
    package let messages: [JetStreamMessage]
    private let replies: [String]
    private let connection: NATSConnection?
    /// Which messages were acknowledged (ack, nak or term) already.
    private let finished: Mutex<[Bool]>

    init(deliveries: [DeliveredMessage], connection: NATSConnection?) {
        self.messages = deliveries.map(\.message)
        self.replies = deliveries.map(\.reply)
        self.connection = connection
        self.finished = Mutex(Array(repeating: false, count: deliveries.count))
    }

    package var count: Int { messages.count }
    package var isEmpty: Bool { messages.isEmpty }

    private func send(_ index: Int, _ body: String, final: Bool) -> Bool {
        guard let connection, replies.indices.contains(index) else { return false }
        let allowed = finished.withLock { finished -> Bool in
            if finished[index] { return false }
            if final { finished[index] = true }
            return true
        }
        guard allowed else { return false }
        return natsConnection_PublishString(connection.rawConnection, replies[index], body) == NATS_OK
    }

    /// Acknowledges message `index` (it will not be redelivered).
    @discardableResult
    package func ack(_ index: Int) -> Bool { send(index, "+ACK", final: true) }

    /// Asks for redelivery of message `index` after `delay`.
    @discardableResult
    package func nak(_ index: Int, delay: Duration) -> Bool {
        let nanoseconds = max(0, delay.nanoseconds)
        return send(index, nanoseconds > 0 ? "-NAK {\"delay\":\(nanoseconds)}" : "-NAK", final: true)
    }

    /// Tells the server never to redeliver message `index`.
    @discardableResult
    package func term(_ index: Int) -> Bool { send(index, "+TERM", final: true) }

    /// Resets the ack timer of message `index` (a handler is still working on it).
    @discardableResult
    package func inProgress(_ index: Int) -> Bool { send(index, "+WPI", final: false) }
}
