import CNATS
package import Logging
import NIOCore
import NIOPosix
import Synchronization

/// A connection to NATS with a JetStream context, over nats.c.
///
/// Every blocking nats.c call (connect, stream and consumer administration, close) runs on the
/// connection's own `NIOThreadPool`, never on the Swift cooperative pool or an event loop.
/// Publishing is asynchronous: ``publish(_:)`` returns once JetStream has acknowledged every
/// message; the PubAcks arrive on the connection's own inbox, in a nats.c callback that only
/// resumes a continuation. Pull subscriptions wait without holding a thread (see
/// ``PullSubscription``).
///
/// The connection reconnects by itself for as long as it is open. Call ``close()`` when done.
package final class NATSConnection: Sendable {
    /// `inbox` (as `natsInbox_Create` makes it, `_INBOX.<id>`) under `prefix` instead.
    static func withInboxPrefix(_ prefix: String, _ inbox: String) -> String {
        guard prefix != "_INBOX", inbox.hasPrefix("_INBOX.") else { return inbox }
        return prefix + inbox.dropFirst("_INBOX".count)
    }

    /// `url` with any user, password or token replaced by `***`, for logs and errors.
    package static func redacted(_ url: String) -> String {
        let authorityStart: String.Index
        if let colon = url.firstIndex(of: ":"), url[colon...].hasPrefix("://") {
            authorityStart = url.index(colon, offsetBy: 3)
        } else {
            authorityStart = url.startIndex
        }
        let authority = url[authorityStart...].prefix { $0 != "/" }
        guard let at = authority.lastIndex(of: "@") else { return url }
        return String(url[..<authorityStart]) + "***" + String(url[at...])
    }

    package struct Configuration: Sendable {
        /// Server URLs, e.g. `nats://127.0.0.1:4222`. Several URLs form one cluster.
        package var servers: [String]
        /// Connection name shown by the server's monitoring endpoints.
        package var name: String = "autonomous"
        /// How long ``connect(configuration:logger:)`` keeps trying before it gives up.
        package var connectTimeout: Duration = .seconds(10)
        /// Delay between reconnect attempts once connected.
        package var reconnectWait: Duration = .milliseconds(250)
        /// How long a publish waits for its PubAck before failing with `.timeout`.
        package var publishTimeout: Duration = .seconds(5)
        /// Timeout for JetStream API requests (stream/consumer administration).
        package var apiTimeout: Duration = .seconds(5)
        /// Upper bound of publishes waiting for their PubAck; past it `publish` fails at once.
        package var maxPendingPublishes: Int = 262_144
        /// Threads for blocking nats.c calls (connect, stream and consumer administration).
        package var blockingThreads: Int = 16
        /// How often the client pings the server to detect a dead connection.
        package var pingInterval: Duration = .seconds(2)
        /// TLS to the servers, required when set. A `tls://` URL asks for TLS too, verified
        /// against the system's CAs.
        package var tls: TLS?
        /// A NATS credentials file (a user JWT and its NKey seed, as `nsc` writes it) to
        /// authenticate with.
        package var credentialsFile: String?
        /// A user and password to authenticate with (a URL's own `user:password@` works too).
        /// Kept out of every log and error: messages show servers through
        /// ``NATSConnection/redacted(_:)``.
        package var user: String?
        package var password: String?
        /// The first token of reply subjects (PubAcks, request replies). A producer user that
        /// may read only its own inbox (`_INBOX_<tenant>.>`) sets `_INBOX_<tenant>`.
        package var inboxPrefix: String = "_INBOX"

        /// Certificates for a TLS connection, as PEM files.
        package struct TLS: Sendable, Equatable {
            /// The CA(s) the server's certificate must chain to; `nil` trusts the system's.
            package var caFile: String?
            /// The client's certificate (chain), for servers that verify clients
            /// (`verify: true`); needs `keyFile`.
            package var certificateFile: String?
            /// The private key of `certificateFile`.
            package var keyFile: String?

            package init(caFile: String? = nil, certificateFile: String? = nil, keyFile: String? = nil) {
                self.caFile = caFile
                self.certificateFile = certificateFile
                self.keyFile = keyFile
            }
        }

        package init(servers: [String]) {
            self.servers = servers
        }

        package init(url: String) {
            self.servers = url.split(separator: ",").map { String($0).trimmingSpaces() }
        }
    }

    // nats.c connections and JetStream contexts are thread safe (documented in nats.h). The
    // pointers are set once in init and freed only in deinit, when nothing else can use them.
    private nonisolated(unsafe) let connection: OpaquePointer
    private nonisolated(unsafe) let jetStream: OpaquePointer
    private let tracker: PublishTracker
    /// Requests waiting for their reply (see `request(_:timeout:)`).
    let requests = RequestMux()
    var rawConnection: OpaquePointer { connection }
    private let trackerContext: Unmanaged<PublishTracker>
    /// The subscription PubAcks arrive on, and the reply-subject prefix of every publish
    /// (`_INBOX.<id>.`). Destroyed in deinit, before the connection.
    private nonisolated(unsafe) let ackSubscription: OpaquePointer
    private let ackPrefix: [UInt8]
    /// Fails publishes that got no PubAck within `publishTimeout`: a timer on one of NIO's
    /// shared event loops (no task outlives the connection), cancelled by `close`, `drain`
    /// and deinit.
    private let expiry: RepeatedTask
    let threadPool: NIOThreadPool
    private let closed = Atomic<Bool>(false)
    package let configuration: Configuration
    let logger: Logger

    private init(
        handles: Handles,
        tracker: PublishTracker,
        trackerContext: Unmanaged<PublishTracker>,
        threadPool: NIOThreadPool,
        configuration: Configuration,
        logger: Logger
    ) {
        self.connection = handles.connection
        self.jetStream = handles.jetStream
        self.ackSubscription = handles.ackSubscription
        self.ackPrefix = handles.ackPrefix
        self.tracker = tracker
        self.trackerContext = trackerContext
        self.threadPool = threadPool
        self.configuration = configuration
        self.logger = logger
        self.expiry = MultiThreadedEventLoopGroup.singleton.any().scheduleRepeatedTask(
            initialDelay: .milliseconds(100),
            delay: .milliseconds(100)
        ) { [tracker] _ in
            tracker.expire(now: monotonicNanoseconds())
        }
    }

    deinit {
        expiry.cancel(promise: nil)
        natsSubscription_Destroy(ackSubscription)
        jsCtx_Destroy(jetStream)
        natsConnection_Destroy(connection)
        trackerContext.release()
        if !closed.load(ordering: .relaxed) {
            threadPool.shutdownGracefully { _ in }
        }
    }

    /// Connects, retrying until `configuration.connectTimeout` has passed.
    package static func connect(configuration: Configuration, logger: Logger) async throws -> NATSConnection {
        guard !configuration.servers.isEmpty else {
            throw NATSError(code: .invalidArgument, message: "no NATS server URL given")
        }
        let pool = NIOThreadPool(numberOfThreads: max(2, configuration.blockingThreads))
        pool.start()
        let tracker = PublishTracker()
        let context = Unmanaged.passRetained(tracker)
        let clock = ContinuousClock()
        let deadline = clock.now.advanced(by: configuration.connectTimeout)
        var attempt = 0
        while true {
            attempt += 1
            do {
                let handles = try await pool.runIfActive {
                    try Self.openBlocking(configuration: configuration, trackerContext: context)
                }
                logger.debug("Connected to NATS", metadata: ["nats.attempt": "\(attempt)"])
                if !MessageEncoding.preEncodedHeaders && warnedAboutHeaderPath.exchange(true, ordering: .relaxed) == false {
                    logger.warning(
                        "This libnats does not build messages as expected; headers go through its public API (slower)",
                        metadata: ["nats.version": "\(String(cString: nats_GetVersion()))"]
                    )
                }
                return NATSConnection(
                    handles: handles,
                    tracker: tracker,
                    trackerContext: context,
                    threadPool: pool,
                    configuration: configuration,
                    logger: logger
                )
            } catch let error as NATSError where error.code == .connectionFailed && clock.now < deadline {
                logger.debug("NATS not reachable yet, retrying", metadata: ["nats.attempt": "\(attempt)"])
                try await Task.sleep(for: .milliseconds(min(1000, 50 * attempt)))
            } catch {
                context.release()
                try? await pool.shutdownGracefully()
                throw error
            }
        }
    }

    private struct Handles: @unchecked Sendable {
        // Only moved from the opening thread to the owner; never used concurrently before that.
        var connection: OpaquePointer
        var jetStream: OpaquePointer
        var ackSubscription: OpaquePointer
        var ackPrefix: [UInt8]
    }

    private static func openBlocking(
        configuration: Configuration,
        trackerContext: Unmanaged<PublishTracker>
    ) throws -> Handles {
        var options: OpaquePointer?
        try check(natsOptions_Create(&options), "creating NATS options")
        defer { natsOptions_Destroy(options) }
        var cStrings = configuration.servers.map { strdup($0) }
        defer { cStrings.forEach { free($0) } }
        let serverStatus = cStrings.withUnsafeMutableBufferPointer { buffer in
            buffer.baseAddress!.withMemoryRebound(to: UnsafePointer<CChar>?.self, capacity: buffer.count) {
                natsOptions_SetServers(options, $0, Int32(buffer.count))
            }
        }
        try check(serverStatus, "setting NATS servers")
        try check(natsOptions_SetName(options, configuration.name), "setting connection name")
        try check(natsOptions_SetMaxReconnect(options, -1), "setting reconnect")
        try check(natsOptions_SetReconnectWait(options, configuration.reconnectWait.milliseconds), "setting reconnect wait")
        try check(natsOptions_SetTimeout(options, 2000), "setting connect timeout")
        try check(natsOptions_SetPingInterval(options, configuration.pingInterval.milliseconds), "setting ping interval")
        try check(natsOptions_SetMaxPingsOut(options, 3), "setting max pings out")
        try check(natsOptions_SetReconnectBufSize(options, 64 * 1024 * 1024), "setting reconnect buffer")
        try check(natsOptions_SetIOBufSize(options, 256 * 1024), "setting IO buffer")
        try check(natsOptions_SetNoRandomize(options, true), "setting server order")
        if let tls = configuration.tls {
            try check(natsOptions_SetSecure(options, true), "turning on TLS")
            if let file = tls.caFile {
                try checkDetailed(natsOptions_LoadCATrustedCertificates(options, file), "loading the CA certificates in \(file)")
            }
            switch (tls.certificateFile, tls.keyFile) {
            case (let certificate?, let key?):
                try checkDetailed(
                    natsOptions_LoadCertificatesChain(options, certificate, key),
                    "loading the client certificate \(certificate) and key \(key)"
                )
            case (nil, nil):
                break
            default:
                throw NATSError(code: .invalidArgument, message: "a TLS client certificate needs its key and the key its certificate")
            }
        }
        if let file = configuration.credentialsFile {
            try checkDetailed(natsOptions_SetUserCredentialsFromFiles(options, file, nil), "loading the NATS credentials in \(file)")
        }
        if configuration.inboxPrefix != "_INBOX" {
            try check(natsOptions_SetCustomInboxPrefix(options, configuration.inboxPrefix), "setting the inbox prefix")
        }
        if let user = configuration.user {
            try check(natsOptions_SetUserInfo(options, user, configuration.password ?? ""), "setting the NATS user")
        }

        var connection: OpaquePointer?
        let status = natsConnection_Connect(&connection, options)
        guard status == NATS_OK, let connection else {
            throw NATSError.from(
                status: status,
                context: "connecting to \(configuration.servers.map(Self.redacted).joined(separator: ","))",
                detail: lastErrorText()
            )
        }

        var jsOptions = jsOptions()
        jsOptions_Init(&jsOptions)
        jsOptions.Wait = configuration.apiTimeout.milliseconds
        var jetStream: OpaquePointer?
        let jsStatus = natsConnection_JetStream(&jetStream, connection, &jsOptions)
        guard jsStatus == NATS_OK, let jetStream else {
            natsConnection_Destroy(connection)
            throw NATSError.from(status: jsStatus, context: "creating JetStream context")
        }

        // Publishes carry a reply subject `<inbox>.<sequence>`; JetStream answers there.
        var inbox: UnsafeMutablePointer<CChar>?
        var sub: OpaquePointer?
        var subscribeStatus = natsInbox_Create(&inbox)
        let prefix = Self.withInboxPrefix(configuration.inboxPrefix, inbox.map { String(cString: $0) } ?? "")
        natsInbox_Destroy(inbox)
        if subscribeStatus == NATS_OK {
            subscribeStatus = natsConnection_Subscribe(&sub, connection, prefix + ".*", onPublishAck, trackerContext.toOpaque())
        }
        guard subscribeStatus == NATS_OK, let sub else {
            jsCtx_Destroy(jetStream)
            natsConnection_Destroy(connection)
            throw NATSError.from(status: subscribeStatus, context: "subscribing to PubAcks")
        }
        _ = natsSubscription_SetPendingLimits(sub, -1, -1)
        return Handles(connection: connection, jetStream: jetStream, ackSubscription: sub, ackPrefix: Array((prefix + ".").utf8))
    }

    /// `true` while the connection is up (not reconnecting, not closed).
    package var isConnected: Bool {
        natsConnection_Status(connection) == NATS_CONN_STATUS_CONNECTED
    }

    /// The largest message (payload and headers) the server takes, from its INFO; 1 MiB,
    /// nats-server's default, before it has said.
    package var maxPayload: Int {
        let limit = Int(natsConnection_GetMaxPayload(connection))
        return limit > 0 ? limit : 1024 * 1024
    }

    package var isClosed: Bool { closed.load(ordering: .relaxed) }

    /// Publishes in flight inside this connection, waiting for their PubAck.
    package var publishesInFlight: Int { tracker.inFlight }

    /// Drains the connection: subscriptions stop receiving, buffered publishes are flushed,
    /// then the connection closes (waiting at most `timeout`). Publishes still waiting for
    /// a PubAck afterwards fail with `.connectionClosed`.
    package func drain(timeout: Duration = .seconds(10)) async {
        guard !closed.exchange(true, ordering: .relaxed) else { return }
        let handle = UnsafeHandle(connection)
        let clock = ContinuousClock()
        let deadline = clock.now.advanced(by: timeout)
        let started =
            (try? await threadPool.runIfActive {
                natsConnection_DrainTimeout(handle.pointer, timeout.milliseconds) == NATS_OK
            }) ?? false
        if started {
            while natsConnection_Status(connection) != NATS_CONN_STATUS_CLOSED && clock.now < deadline {
                try? await Task.sleep(for: .milliseconds(10))
            }
        }
        _ = try? await threadPool.runIfActive { natsConnection_Close(handle.pointer) }
        expiry.cancel(promise: nil)
        tracker.failAll(NATSError(code: .connectionClosed, message: "connection closed"))
        try? await threadPool.shutdownGracefully()
    }

    /// Flushes buffered messages and closes the connection. Pending publishes fail with `.connectionClosed`.
    package func close() async {
        guard !closed.exchange(true, ordering: .relaxed) else { return }
        let handle = UnsafeHandle(connection)
        _ = try? await threadPool.runIfActive {
            _ = natsConnection_FlushTimeout(handle.pointer, 1000)
            natsConnection_Close(handle.pointer)
        }
        expiry.cancel(promise: nil)
        tracker.failAll(NATSError(code: .connectionClosed, message: "connection closed"))
        try? await threadPool.shutdownGracefully()
    }

    // MARK: Publishing

    /// Whether this process writes header blocks itself (the fast path; see `MessageEncoding`)
    /// rather than through nats.c's header map. `false` only with a libnats that does not
    /// behave as the start-up check expects; publishing works either way.
    package static var encodesHeaderBlocks: Bool { MessageEncoding.preEncodedHeaders }

    /// Publishes one message and returns its PubAck.
    package func publish(_ message: OutgoingMessage) async throws -> PublishAck {
        try await publish([message])[0]
    }

    /// Publishes all messages asynchronously and returns when every PubAck has arrived.
    ///
    /// Throws the first failure if any message was not acknowledged (the others may be stored;
    /// give each message a `Nats-Msg-Id` so that a retry of the whole batch is safe).
    package func publish(_ messages: [OutgoingMessage]) async throws -> [PublishAck] {
        if messages.isEmpty { return [] }
        return try await withCheckedThrowingContinuation { continuation in
            start(messages, waiter: .continuation(continuation))
        }
    }

    /// Publishes all messages asynchronously and calls `completion` once every PubAck has
    /// arrived, or with the first failure (the same outcome as the `async` form).
    ///
    /// `completion` runs exactly once, on a nats.c delivery thread, in the connection's expiry
    /// task (timeouts, `close`), or on the calling thread when the publish cannot start: it
    /// must not block. For callers that must not suspend (an event loop answering a request).
    package func publish(
        _ messages: [OutgoingMessage],
        completion: @escaping @Sendable (Result<[PublishAck], NATSError>) -> Void
    ) {
        if messages.isEmpty { return completion(.success([])) }
        start(messages, waiter: .callback(completion))
    }

    private func start(_ messages: [OutgoingMessage], waiter: PublishBatch.Waiter) {
        let batch = PublishBatch(count: messages.count, waiter: waiter)
        let refusal: NATSError?
        if isClosed {
            refusal = NATSError(code: .connectionClosed, message: "connection closed")
        } else if tracker.inFlight + messages.count > configuration.maxPendingPublishes {
            refusal = NATSError(code: .publishFailed, message: "too many publishes waiting for their PubAck; retry later")
        } else {
            refusal = nil
        }
        if let refusal {
            for index in messages.indices { batch.complete(index: index, result: .failure(refusal)) }
            return
        }
        let deadline = monotonicNanoseconds() + UInt64(max(1, configuration.publishTimeout.nanoseconds))
        withUnsafeTemporaryAllocation(of: CChar.self, capacity: ackPrefix.count + 24) { reply in
            for (i, byte) in ackPrefix.enumerated() { reply[i] = CChar(bitPattern: byte) }
            for index in messages.indices {
                publishOne(messages[index], batch: batch, index: index, deadline: deadline, reply: reply)
            }
        }
    }

    /// Publishes one message with the reply subject `<ack prefix><sequence>` (written into
    /// `reply` after the prefix). The message is freed here: nats.c copied it into its buffer.
    private func publishOne(
        _ message: OutgoingMessage,
        batch: PublishBatch,
        index: Int,
        deadline: UInt64,
        reply: UnsafeMutableBufferPointer<CChar>
    ) {
        let sequence = tracker.nextSequence()
        var position = ackPrefix.count
        withUnsafeTemporaryAllocation(of: CChar.self, capacity: 20) { digits in
            var value = sequence
            var count = 0
            repeat {
                digits[count] = CChar(UInt8(ascii: "0") + UInt8(value % 10))
                value /= 10
                count += 1
            } while value > 0
            for i in stride(from: count - 1, through: 0, by: -1) {
                reply[position] = digits[i]
                position += 1
            }
        }
        reply[position] = 0
        let created: OpaquePointer
        do {
            created = try message.payload.withUnsafeReadableBytes { bytes throws(NATSError) in
                try MessageEncoding.create(
                    subject: message.subject,
                    reply: UnsafeBufferPointer(rebasing: reply[0..<position]),
                    headers: message.headers,
                    payload: bytes
                )
            }
        } catch {
            batch.complete(index: index, result: .failure(error))
            return
        }
        defer { MessageEncoding.release(created) }
        tracker.register(sequence, deadline: deadline, batch: batch, index: index)
        let status = natsConnection_PublishMsg(connection, created)
        if status != NATS_OK {
            tracker.complete(sequence, result: .failure(.from(status: status, context: "publishing")))
        }
    }

    // MARK: Administration

    /// Creates the stream, or updates it when it exists with another configuration.
    package func createOrUpdateStream(_ config: StreamConfiguration) async throws {
        let js = UnsafeHandle(jetStream)
        try await threadPool.runIfActive {
            try Self.withStreamConfig(config) { cfg in
                var info: UnsafeMutablePointer<jsStreamInfo>?
                var errCode = jsErrCode(rawValue: 0)
                var status = js_AddStream(&info, js.pointer, cfg, nil, &errCode)
                if status != NATS_OK && errCode == JSStreamNameExistErr {
                    errCode = jsErrCode(rawValue: 0)
                    status = js_UpdateStream(&info, js.pointer, cfg, nil, &errCode)
                }
                jsStreamInfo_Destroy(info)
                if status != NATS_OK {
                    throw NATSError.from(status: status, jsError: errCode, context: "creating stream \(config.name)")
                }
            }
        }
    }

    private static func withStreamConfig<T>(
        _ config: StreamConfiguration,
        _ body: (UnsafeMutablePointer<jsStreamConfig>) throws -> T
    ) throws -> T {
        var cfg = jsStreamConfig()
        jsStreamConfig_Init(&cfg)
        var subjects = config.subjects.map { UnsafePointer(strdup($0)) }
        let name = strdup(config.name)
        let description = config.description.map { strdup($0) } ?? nil
        defer {
            subjects.forEach { free(UnsafeMutablePointer(mutating: $0)) }
            free(name)
            free(description)
        }
        cfg.Name = UnsafePointer(name)
        cfg.Description = UnsafePointer(description)
        cfg.Storage = config.storage == .memory ? js_MemoryStorage : js_FileStorage
        cfg.Replicas = Int64(config.replicas)
        cfg.Duplicates = config.duplicateWindow.nanoseconds
        cfg.MaxAge = config.maxAge.nanoseconds
        cfg.MaxBytes = config.maxBytes
        cfg.MaxMsgSize = config.maxMessageSize
        return try subjects.withUnsafeMutableBufferPointer { buffer in
            cfg.Subjects = buffer.baseAddress
            cfg.SubjectsLen = Int32(buffer.count)
            return try body(&cfg)
        }
    }

    /// Creates the durable pull consumer on `stream`, or updates it when it exists (unless
    /// `updateExisting` is false: then an existing consumer is left as it is).
    package func createOrUpdateConsumer(stream: String, _ config: ConsumerConfiguration, updateExisting: Bool = true) async throws {
        let js = UnsafeHandle(jetStream)
        try await threadPool.runIfActive {
            var cfg = jsConsumerConfig()
            jsConsumerConfig_Init(&cfg)
            let durable = strdup(config.durableName)
            let filter = config.filterSubject.map { strdup($0) } ?? nil
            let description = config.description.map { strdup($0) } ?? nil
            defer {
                free(durable)
                free(filter)
                free(description)
            }
            cfg.Durable = UnsafePointer(durable)
            cfg.Name = UnsafePointer(durable)
            cfg.FilterSubject = UnsafePointer(filter)
            cfg.Description = UnsafePointer(description)
            cfg.AckPolicy = js_AckExplicit
            if let start = config.startSequence {
                cfg.DeliverPolicy = js_DeliverByStartSequence
                cfg.OptStartSeq = start
            } else {
                cfg.DeliverPolicy = js_DeliverAll
            }
            cfg.AckWait = config.ackWait.nanoseconds
            cfg.MaxDeliver = Int64(config.maxDeliver)
            cfg.MaxAckPending = Int64(config.maxAckPending)
            cfg.MaxWaiting = Int64(config.maxWaiting)
            cfg.Replicas = Int64(config.replicas)
            cfg.MemoryStorage = config.memoryStorage
            var backoff = config.backoff.map { $0.nanoseconds }
            try backoff.withUnsafeMutableBufferPointer { buffer in
                if !buffer.isEmpty {
                    cfg.BackOff = buffer.baseAddress
                    cfg.BackOffLen = Int32(buffer.count)
                }
                var info: UnsafeMutablePointer<jsConsumerInfo>?
                var errCode = jsErrCode(rawValue: 0)
                var status = js_AddConsumer(&info, js.pointer, stream, &cfg, nil, &errCode)
                let exists = errCode == JSConsumerNameExistErr || errCode == JSConsumerExistingActiveErr || errCode.rawValue == 10148
                if status != NATS_OK && exists && !updateExisting {
                    jsConsumerInfo_Destroy(info)
                    return
                }
                if status != NATS_OK && exists {
                    // Where a consumer starts cannot change: an update keeps the existing one's.
                    var existing: UnsafeMutablePointer<jsConsumerInfo>?
                    var infoError = jsErrCode(rawValue: 0)
                    if js_GetConsumerInfo(&existing, js.pointer, stream, config.durableName, nil, &infoError) == NATS_OK,
                        let current = existing?.pointee.Config?.pointee
                    {
                        cfg.DeliverPolicy = current.DeliverPolicy
                        cfg.OptStartSeq = current.OptStartSeq
                        cfg.OptStartTime = current.OptStartTime
                    }
                    jsConsumerInfo_Destroy(existing)
                    jsConsumerInfo_Destroy(info)
                    info = nil
                    errCode = jsErrCode(rawValue: 0)
                    status = js_UpdateConsumer(&info, js.pointer, stream, &cfg, nil, &errCode)
                }
                jsConsumerInfo_Destroy(info)
                if status != NATS_OK {
                    throw NATSError.from(
                        status: status,
                        jsError: errCode,
                        context: "creating consumer \(config.durableName) on \(stream)"
                    )
                }
            }
        }
    }

    /// The stream's message counts, or `nil` when it does not exist.
    package func streamState(_ stream: String) async throws -> StreamState? {
        let js = UnsafeHandle(jetStream)
        return try await threadPool.runIfActive {
            var info: UnsafeMutablePointer<jsStreamInfo>?
            var errCode = jsErrCode(rawValue: 0)
            let status = js_GetStreamInfo(&info, js.pointer, stream, nil, &errCode)
            defer { jsStreamInfo_Destroy(info) }
            if status == NATS_NOT_FOUND || errCode == JSStreamNotFoundErr { return nil }
            guard status == NATS_OK, let info else {
                throw NATSError.from(status: status, jsError: errCode, context: "reading stream \(stream)")
            }
            let s = info.pointee.State
            let config = info.pointee.Config?.pointee
            let replicas = Int(config?.Replicas ?? 1)
            var subjects: [String] = []
            if let config, let list = config.Subjects {
                for i in 0..<Int(config.SubjectsLen) {
                    if let subject = list[i] { subjects.append(String(cString: subject)) }
                }
            }
            return StreamState(
                replicas: replicas,
                subjects: subjects,
                messages: s.Msgs,
                bytes: s.Bytes,
                firstSequence: s.FirstSeq,
                lastSequence: s.LastSeq,
                duplicateWindow: .nanoseconds(config?.Duplicates ?? 0),
                maxAge: .nanoseconds(config?.MaxAge ?? 0),
                maxBytes: config?.MaxBytes ?? -1
            )
        }
    }

    /// The consumer's progress, or `nil` when it does not exist.
    package func consumerState(stream: String, consumer: String) async throws -> ConsumerState? {
        let js = UnsafeHandle(jetStream)
        return try await threadPool.runIfActive {
            var info: UnsafeMutablePointer<jsConsumerInfo>?
            var errCode = jsErrCode(rawValue: 0)
            let status = js_GetConsumerInfo(&info, js.pointer, stream, consumer, nil, &errCode)
            defer { jsConsumerInfo_Destroy(info) }
            if status == NATS_NOT_FOUND || errCode == JSConsumerNotFoundErr || errCode == JSStreamNotFoundErr {
                return nil
            }
            guard status == NATS_OK, let info else {
                throw NATSError.from(status: status, jsError: errCode, context: "reading consumer \(consumer)")
            }
            return ConsumerState(
                numPending: info.pointee.NumPending,
                numAckPending: info.pointee.NumAckPending,
                numRedelivered: info.pointee.NumRedelivered,
                ackFloorStreamSequence: info.pointee.AckFloor.Stream,
                deliveredStreamSequence: info.pointee.Delivered.Stream,
                numWaiting: info.pointee.NumWaiting
            )
        }
    }

    package func deleteConsumer(stream: String, consumer: String) async throws {
        let js = UnsafeHandle(jetStream)
        try await threadPool.runIfActive {
            var errCode = jsErrCode(rawValue: 0)
            let status = js_DeleteConsumer(js.pointer, stream, consumer, nil, &errCode)
            if status != NATS_OK && errCode != JSConsumerNotFoundErr {
                throw NATSError.from(status: status, jsError: errCode, context: "deleting consumer \(consumer)")
            }
        }
    }

    package func deleteStream(_ stream: String) async throws {
        let js = UnsafeHandle(jetStream)
        try await threadPool.runIfActive {
            var errCode = jsErrCode(rawValue: 0)
            let status = js_DeleteStream(js.pointer, stream, nil, &errCode)
            if status != NATS_OK && errCode != JSStreamNotFoundErr {
                throw NATSError.from(status: status, jsError: errCode, context: "deleting stream \(stream)")
            }
        }
    }

    /// Reads the message stored at `sequence`, or `nil` when there is none.
    package func message(stream: String, sequence: UInt64) async throws -> StoredMessage? {
        let js = UnsafeHandle(jetStream)
        return try await threadPool.runIfActive {
            var msg: OpaquePointer?
            var errCode = jsErrCode(rawValue: 0)
            let status = js_GetMsg(&msg, js.pointer, stream, sequence, nil, &errCode)
            defer { natsMsg_Destroy(msg) }
            return try Self.storedMessage(msg, sequence: sequence, status: status, errCode: errCode, context: "reading message \(sequence)")
        }
    }

    /// The sequence of the first message `stream` stored at or after `time` (nanoseconds since
    /// 1970), or `nil` when every message is older (or there is none): a binary search over
    /// the stream's sequences by their stored times, about 2 × log2(messages) reads.
    package func firstSequence(stream: String, atOrAfter time: Int64) async throws -> UInt64? {
        // The first message at or after `sequence` (a deleted one is skipped), up to `last`.
        func existing(from sequence: UInt64, through last: UInt64) async throws -> StoredMessage? {
            var sequence = sequence
            while sequence <= last {
                if let message = try await message(stream: stream, sequence: sequence) { return message }
                sequence += 1
            }
            return nil
        }
        // The newest message (the stream's last, unless it was just removed: then look again).
        var newest: StoredMessage?
        var first: UInt64 = 0
        for _ in 0..<3 where newest == nil {
            guard let state = try await streamState(stream), state.messages > 0 else { return nil }
            newest = try await message(stream: stream, sequence: state.lastSequence)
            first = state.firstSequence
        }
        guard let newest, newest.timestamp >= time else { return nil }
        var low = first
        var high = newest.sequence
        while low < high {
            let middle = low + (high - low) / 2
            if let found = try await existing(from: middle, through: high), found.timestamp < time {
                low = found.sequence + 1
            } else {
                high = middle
            }
        }
        return try await existing(from: low, through: newest.sequence)?.sequence
    }

    /// Reads the last message stored on `subject`, or `nil` when there is none.
    package func lastMessage(stream: String, subject: String) async throws -> StoredMessage? {
        let js = UnsafeHandle(jetStream)
        return try await threadPool.runIfActive {
            var msg: OpaquePointer?
            var errCode = jsErrCode(rawValue: 0)
            let status = js_GetLastMsg(&msg, js.pointer, stream, subject, nil, &errCode)
            defer { natsMsg_Destroy(msg) }
            return try Self.storedMessage(msg, status: status, errCode: errCode, context: "reading the last message on \(subject)")
        }
    }

    /// A message got by `js_GetMsg` or `js_GetLastMsg`: `nil` when there was none.
    private static func storedMessage(
        _ msg: OpaquePointer?,
        sequence: UInt64? = nil,
        status: natsStatus,
        errCode: jsErrCode,
        context: String
    ) throws -> StoredMessage? {
        if status == NATS_NOT_FOUND || errCode.rawValue == 10037 { return nil }
        guard status == NATS_OK, let msg else { throw NATSError.from(status: status, jsError: errCode, context: context) }
        return StoredMessage(
            subject: String(cString: natsMsg_GetSubject(msg)),
            sequence: sequence ?? natsMsg_GetSequence(msg),
            payload: copyPayload(msg),
            headers: allHeaders(msg),
            timestamp: natsMsg_GetTime(msg)
        )
    }

    /// Binds a pull subscription to an existing durable consumer.
    ///
    /// - Parameter headers: names of the headers to copy out of each fetched message.
    package func pullSubscription(
        stream: String,
        consumer: String,
        filterSubject: String,
        headers: [String]
    ) async throws -> PullSubscription {
        try await subscribe(stream: stream, consumer: consumer, filterSubject: filterSubject, headers: headers)
    }

    /// Creates an ephemeral pull consumer on `stream` (one replica, in memory, removed by the
    /// server shortly after the subscription goes away) and binds to it.
    ///
    /// - Parameter start: where it starts; `acknowledged: false` makes a reader that needs no
    ///   acks (messages are delivered once and never redelivered to it).
    package func ephemeralPullSubscription(
        stream: String,
        filterSubject: String,
        headers: [String],
        start: ReadStart = .first,
        acknowledged: Bool = true
    ) async throws -> PullSubscription {
        let name = try await createEphemeralConsumer(stream: stream, filterSubject: filterSubject, start: start, acknowledged: acknowledged)
        return try PullSubscription(connection: self, stream: stream, consumer: name, headerNames: headers, ephemeral: true)
    }

    /// Binds to the existing durable `consumer`.
    private func subscribe(stream: String, consumer: String, filterSubject: String, headers: [String]) async throws -> PullSubscription {
        guard try await consumerState(stream: stream, consumer: consumer) != nil else {
            throw NATSError(code: .notFound, message: "consumer \(consumer) on \(stream) does not exist")
        }
        return try PullSubscription(connection: self, stream: stream, consumer: consumer, headerNames: headers, ephemeral: false)
    }

    /// Creates a consumer without a durable name (one replica, in memory, removed by the server
    /// 30 s after its last pull request) and returns the name the server gave it.
    private func createEphemeralConsumer(stream: String, filterSubject: String, start: ReadStart, acknowledged: Bool) async throws -> String
    {
        let js = UnsafeHandle(jetStream)
        return try await threadPool.runIfActive {
            var cfg = jsConsumerConfig()
            jsConsumerConfig_Init(&cfg)
            cfg.AckPolicy = acknowledged ? js_AckExplicit : js_AckNone
            switch start {
            case .first:
                cfg.DeliverPolicy = js_DeliverAll
            case .sequence(let sequence):
                cfg.DeliverPolicy = js_DeliverByStartSequence
                cfg.OptStartSeq = max(1, sequence)
            }
            cfg.AckWait = Duration.seconds(300).nanoseconds
            cfg.MemoryStorage = true
            cfg.Replicas = 1
            cfg.InactiveThreshold = Duration.seconds(30).nanoseconds
            return try filterSubject.withCString { filter in
                cfg.FilterSubject = filter
                var info: UnsafeMutablePointer<jsConsumerInfo>?
                var errCode = jsErrCode(rawValue: 0)
                let status = js_AddConsumer(&info, js.pointer, stream, &cfg, nil, &errCode)
                defer { jsConsumerInfo_Destroy(info) }
                guard status == NATS_OK, let info, let name = info.pointee.Name else {
                    throw NATSError.from(status: status, jsError: errCode, context: "creating a reader on \(stream)")
                }
                return String(cString: name)
            }
        }
    }
}

/// Nanoseconds of the monotonic clock (for publish deadlines).
func monotonicNanoseconds() -> UInt64 {
    var now = timespec()
    clock_gettime(CLOCK_MONOTONIC, &now)
    return UInt64(now.tv_sec) * 1_000_000_000 + UInt64(now.tv_nsec)
}

/// Set once the fallback to nats.c's header API has been logged (once per process).
private let warnedAboutHeaderPath = Atomic<Bool>(false)

/// Moves a nats.c handle into a `@Sendable` closure.
///
/// Safe because every handle wrapped here is documented thread safe by nats.c (connection,
/// JetStream context, subscription) and outlives the closure it is captured in.
struct UnsafeHandle: @unchecked Sendable {
    let pointer: OpaquePointer
    init(_ pointer: OpaquePointer) { self.pointer = pointer }
}

func copyPayload(_ msg: OpaquePointer) -> [UInt8] {
    let count = Int(natsMsg_GetDataLength(msg))
    guard count > 0, let data = natsMsg_GetData(msg) else { return [] }
    return data.withMemoryRebound(to: UInt8.self, capacity: count) { Array(UnsafeBufferPointer(start: $0, count: count)) }
}

func allHeaders(_ msg: OpaquePointer) -> [String: String] {
    var keys: UnsafeMutablePointer<UnsafePointer<CChar>?>?
    var count: Int32 = 0
    guard natsMsgHeader_Keys(msg, &keys, &count) == NATS_OK, let keys else { return [:] }
    defer { free(keys) }
    var result: [String: String] = [:]
    for i in 0..<Int(count) {
        guard let key = keys[i] else { continue }
        var value: UnsafePointer<CChar>?
        if natsMsgHeader_Get(msg, key, &value) == NATS_OK, let value {
            result[String(cString: key)] = String(cString: value)
        }
    }
    return result
}

extension String {
    func trimmingSpaces() -> String {
        var s = Substring(self)
        while s.first == " " { s.removeFirst() }
        while s.last == " " { s.removeLast() }
        return String(s)
    }
}

extension NATSConnection {
    /// Deletes the message at `sequence` from `stream`.
    package func deleteMessage(stream: String, sequence: UInt64) async throws {
        let js = UnsafeHandle(jetStream)
        try await threadPool.runIfActive {
            var errCode = jsErrCode(rawValue: 0)
            let status = js_DeleteMsg(js.pointer, stream, sequence, nil, &errCode)
            if status != NATS_OK {
                throw NATSError.from(status: status, jsError: errCode, context: "deleting message \(sequence) of \(stream)")
            }
        }
    }

    /// Removes every message on `subject` from `stream`.
    package func purge(stream: String, subject: String) async throws {
        let js = UnsafeHandle(jetStream)
        try await threadPool.runIfActive {
            var options = jsOptions()
            jsOptions_Init(&options)
            var errCode = jsErrCode(rawValue: 0)
            let status = subject.withCString { filter in
                options.Stream.Purge.Subject = filter
                return js_PurgeStream(js.pointer, stream, &options, &errCode)
            }
            if status != NATS_OK {
                throw NATSError.from(status: status, jsError: errCode, context: "purging \(subject) from \(stream)")
            }
        }
    }

    /// Reads every message on `subject` from the start of `stream`, waiting up to `timeout`
    /// for at least `atLeast` of them, then until the subject is drained. Uses an ephemeral
    /// consumer (one replica, in memory, hosted by the stream leader, so it works while a
    /// cluster node is down); the messages stay in the stream.
    package func readAll(
        stream: String,
        subject: String,
        headers: [String],
        atLeast: Int = 0,
        timeout: Duration = .seconds(10)
    ) async throws -> [JetStreamMessage] {
        let clock = ContinuousClock()
        let deadline = clock.now.advanced(by: timeout)
        // Right after a cluster node is lost, JetStream may take seconds to elect new leaders.
        var subscription: PullSubscription?
        while subscription == nil {
            do {
                subscription = try await ephemeralPullSubscription(stream: stream, filterSubject: subject, headers: headers)
            } catch let error as NATSError where clock.now < deadline && error.code != .invalidArgument {
                logger.debug("Reader not ready, retrying", metadata: ["error": "\(error)"])
                try await Task.sleep(for: .milliseconds(500))
            }
        }
        guard let subscription else { return [] }
        do {
            var messages: [JetStreamMessage] = []
            while clock.now < deadline {
                let batch = try await subscription.fetch(maxMessages: 1024, timeout: .milliseconds(200))
                messages += batch.messages
                for i in 0..<batch.count { batch.ack(i) }
                if batch.isEmpty && messages.count >= atLeast { break }
            }
            await subscription.closeAndRemove()
            return messages
        } catch {
            await subscription.closeAndRemove()
            throw error
        }
    }
}
