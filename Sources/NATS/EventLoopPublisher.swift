import Foundation
package import Logging
package import NIOCore
import NIOPosix
import NIOSSL
import Synchronization

/// Publishes JetStream messages from a SwiftNIO event loop, over a NATS connection of its own
/// that lives on that loop, and completes each publish on the loop when its PubAck arrives.
///
/// Why it exists: through nats.c, a publish made on an event loop is sent by nats.c's flusher
/// thread up to a millisecond later (its batching), and its PubAck crosses nats.c's reader and
/// delivery threads before a task brings it back to the loop. For the ingress answering
/// single-record requests on its event loops that was most of the request's latency and a
/// third of its CPU. Here everything the loop publishes during one turn is written to the
/// socket together at the end of that turn, and PubAcks are read and handled on the same loop:
/// no other thread is involved.
///
/// It speaks the subset of the NATS client protocol a publisher needs (INFO, CONNECT, PING and
/// PONG, HPUB/PUB, SUB on its reply inbox, MSG/HMSG, +OK/-ERR), with a URL's user and password
/// or token, and over TLS when `tls` is set or the URL is `tls://` (the server's certificate
/// checked against the CA, not its name, as nats.c does). It has no credentials files (JWT and
/// NKey): ``connect(configuration:eventLoop:logger:)`` throws `.connectionFailed` for a server
/// that requires TLS it was not given, and callers then publish through ``NATSConnection``.
/// When the connection drops, every publish waiting for its PubAck fails with
/// `.connectionClosed` (the message may be stored; give each a `Nats-Msg-Id` so a retry is
/// safe), ``isConnected`` turns `false`, and it reconnects every `reconnectWait`, trying the
/// servers in order.
///
/// `@unchecked Sendable`: every stored `var` below is read and written only on `eventLoop`
/// (each entry point hops there or requires being called there, checked with
/// `preconditionInEventLoop`); the only state read from other threads is `connectedFlag`, an
/// atomic.
package final class EventLoopPublisher: @unchecked Sendable {
    package struct Configuration: Sendable {
        package var servers: [String]
        /// Connection name shown by the server's monitoring endpoints.
        package var name: String
        package var reconnectWait: Duration = .milliseconds(250)
        /// How long a publish waits for its PubAck before failing with `.timeout`.
        package var publishTimeout: Duration = .seconds(5)
        /// How long connecting (TCP and the protocol handshake) may take per server.
        package var connectTimeout: Duration = .seconds(5)
        /// Upper bound of publishes waiting for their PubAck; past it `publish` fails at once.
        package var maxPendingPublishes: Int = 262_144
        /// How often the publisher pings the server; after `maxPingsOut` PINGs without a PONG
        /// the connection counts as dead and is replaced.
        package var pingInterval: Duration = .seconds(2)
        package var maxPingsOut = 3
        /// TLS to the servers, as ``NATSConnection/Configuration/tls``.
        package var tls: NATSConnection.Configuration.TLS?
        /// A user and password, as ``NATSConnection/Configuration/user``; they win over a URL's.
        package var user: String?
        package var password: String?

        package init(servers: [String], name: String) {
            self.servers = servers
            self.name = name
        }
    }

    package typealias Completion = (Result<[PublishAck], NATSError>) -> Void

    package let eventLoop: any EventLoop
    let configuration: Configuration
    fileprivate let logger: Logger
    /// Reply subjects are `<inbox>.<sequence>`.
    private let inbox: [UInt8]
    private let connectedFlag = Atomic<Bool>(false)
    /// Set when the connection uses TLS (made once from the configuration's files).
    fileprivate let sslContext: NIOSSLContext?

    // Event-loop state.
    private var channel: (any Channel)?
    private var pending: [UInt64: (batch: LoopBatch, index: Int)] = [:]
    private var deadlines: [(sequence: UInt64, deadline: NIODeadline)] = []
    private var deadlineHead = 0
    private var sequence: UInt64 = 0
    private var outbound: ByteBuffer
    private var flushScheduled = false
    private var closed = false
    private var serverIndex = 0
    private var maxPayload = 1024 * 1024
    private var expiry: RepeatedTask?
    private var pingsOut = 0
    private var lastPing = NIODeadline.now()

    private init(configuration: Configuration, sslContext: NIOSSLContext?, eventLoop: any EventLoop, logger: Logger) {
        self.configuration = configuration
        self.sslContext = sslContext
        self.eventLoop = eventLoop
        self.logger = logger
        var random = SystemRandomNumberGenerator()
        let token = (0..<22).map { _ in "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789".randomElement(using: &random)! }
        self.inbox = Array("_INBOX.\(String(token))".utf8)
        self.outbound = ByteBuffer()
    }

    /// Connects to the first server that answers; throws `.connectionFailed` naming the reason
    /// (TLS required, refused, no answer) of the last server tried.
    package static func connect(configuration: Configuration, eventLoop: any EventLoop, logger: Logger) async throws -> EventLoopPublisher {
        guard !configuration.servers.isEmpty else {
            throw NATSError(code: .invalidArgument, message: "no NATS server to publish to")
        }
        let wantsTLS = configuration.tls != nil || configuration.servers.contains { $0.lowercased().hasPrefix("tls://") }
        let sslContext = wantsTLS ? try Self.makeSSLContext(configuration.tls ?? .init()) : nil
        let publisher = EventLoopPublisher(configuration: configuration, sslContext: sslContext, eventLoop: eventLoop, logger: logger)
        try await eventLoop.flatSubmit { publisher.open(attempts: configuration.servers.count) }.get()
        eventLoop.execute {
            guard !publisher.closed else { return }  // closed before this ran
            publisher.expiry = eventLoop.scheduleRepeatedTask(initialDelay: .milliseconds(100), delay: .milliseconds(100)) { _ in
                let now = NIODeadline.now()
                publisher.expire(now: now)
                publisher.keepAlive(now: now)
            }
        }
        return publisher
    }

    /// A client TLS context from PEM files: the CA (or the system's), and the client's
    /// certificate and key when given.
    static func makeSSLContext(_ tls: NATSConnection.Configuration.TLS) throws(NATSError) -> NIOSSLContext {
        var settings = TLSConfiguration.makeClientConfiguration()
        // The certificate must name the server: its DNS name (checked against the URL's host,
        // also sent as SNI) or, for a URL with an IP address, that address.
        settings.certificateVerification = .fullVerification
        do {
            if let file = tls.caFile { settings.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(file)) }
            switch (tls.certificateFile, tls.keyFile) {
            case (let certificate?, let key?):
                settings.certificateChain = try NIOSSLCertificate.fromPEMFile(certificate).map { .certificate($0) }
                settings.privateKey = .privateKey(try NIOSSLPrivateKey(file: key, format: .pem))
            case (nil, nil):
                break
            default:
                throw NATSError(code: .invalidArgument, message: "a TLS client certificate needs its key and the key its certificate")
            }
            return try NIOSSLContext(configuration: settings)
        } catch let error as NATSError {
            throw error
        } catch {
            throw NATSError(
                code: .invalidArgument,
                message:
                    "cannot load the TLS files (\(tls.caFile ?? "system CAs"), \(tls.certificateFile ?? "no client certificate")): \(error)"
            )
        }
    }

    /// `true` while connected (not reconnecting, not closed). Safe from any thread.
    package var isConnected: Bool { connectedFlag.load(ordering: .relaxed) }

    /// Publishes every message and calls `completion` on this publisher's event loop once every
    /// PubAck arrived, or with the first failure. Call it on `eventLoop`. `completion` may run
    /// before this returns (a publish that cannot start).
    package func publish(_ messages: [OutgoingMessage], completion: @escaping Completion) {
        eventLoop.preconditionInEventLoop()
        if messages.isEmpty { return completion(.success([])) }
        guard !closed, let channel, isConnected else {
            return completion(.failure(NATSError(code: .connectionClosed, message: "not connected to NATS")))
        }
        guard pending.count + messages.count <= configuration.maxPendingPublishes else {
            return completion(
                .failure(NATSError(code: .publishFailed, message: "too many publishes waiting for their PubAck; retry later"))
            )
        }
        let batch = LoopBatch(count: messages.count, completion: completion)
        let deadline = NIODeadline.now() + .nanoseconds(configuration.publishTimeout.nanoseconds)
        for (index, message) in messages.enumerated() {
            do throws(NATSError) {
                try append(message)
            } catch {
                batch.complete(index: index, result: .failure(error))
                continue
            }
            pending[sequence] = (batch, index)
            deadlines.append((sequence, deadline))
        }
        scheduleFlush(channel)
    }

    /// Stops reconnecting and closes the connection; publishes still waiting fail with
    /// `.connectionClosed`.
    package func close() async {
        let closing: EventLoopFuture<Void> = eventLoop.flatSubmit {
            self.closed = true
            self.connectedFlag.store(false, ordering: .relaxed)
            self.expiry?.cancel()
            self.expiry = nil
            self.failAll(NATSError(code: .connectionClosed, message: "connection closed"))
            guard let channel = self.channel else { return self.eventLoop.makeSucceededVoidFuture() }
            self.channel = nil
            return channel.close().recover { _ in }
        }
        try? await closing.get()
    }

    // MARK: Writing

    /// Writes `HPUB <subject> <inbox>.<sequence> <header bytes> <total bytes>` (or `PUB` without
    /// headers), the header block, the payload, into the outbound buffer.
    private func append(_ message: OutgoingMessage) throws(NATSError) {
        var headerLength = 0
        for (name, value) in message.headers {
            try MessageEncoding.validate(name: name, value: value)
            headerLength += name.utf8.count + 2 + value.utf8.count + 2
        }
        if !message.headers.isEmpty { headerLength += MessageEncoding.preamble.count + 2 }
        let total = headerLength + message.payload.readableBytes
        guard total <= maxPayload else {
            throw NATSError(
                code: .invalidArgument,
                message: "message of \(total) bytes is larger than the server's maximum payload (\(maxPayload) bytes)"
            )
        }
        guard Self.isValidSubject(message.subject) else {
            throw NATSError(
                code: .invalidArgument,
                message: "subject '\(message.subject.prefix(200))' is empty or holds a space or line break"
            )
        }
        sequence += 1
        outbound.reserveCapacity(minimumWritableBytes: message.subject.utf8.count + inbox.count + 64 + total)
        outbound.writeStaticString(message.headers.isEmpty ? "PUB " : "HPUB ")
        outbound.writeString(message.subject)
        outbound.writeInteger(UInt8(ascii: " "))
        outbound.writeBytes(inbox)
        outbound.writeInteger(UInt8(ascii: "."))
        Self.writeDecimal(sequence, into: &outbound)
        outbound.writeInteger(UInt8(ascii: " "))
        if !message.headers.isEmpty {
            Self.writeDecimal(UInt64(headerLength), into: &outbound)
            outbound.writeInteger(UInt8(ascii: " "))
        }
        Self.writeDecimal(UInt64(total), into: &outbound)
        outbound.writeStaticString("\r\n")
        if !message.headers.isEmpty {
            outbound.writeBytes(MessageEncoding.preamble)
            for (name, value) in message.headers {
                outbound.writeString(name)
                outbound.writeStaticString(": ")
                outbound.writeString(value)
                outbound.writeStaticString("\r\n")
            }
            outbound.writeStaticString("\r\n")
        }
        outbound.writeImmutableBuffer(message.payload)
        outbound.writeStaticString("\r\n")
    }

    /// Everything published during this turn of the loop goes out in one write after it.
    private func scheduleFlush(_ channel: any Channel) {
        guard !flushScheduled else { return }
        flushScheduled = true
        eventLoop.execute {
            self.flushScheduled = false
            guard self.outbound.readableBytes > 0, self.channel === channel else { return }
            let bytes = self.outbound
            self.outbound = channel.allocator.buffer(capacity: max(4096, bytes.readableBytes))
            channel.writeAndFlush(bytes, promise: nil)
        }
    }

    static func isValidSubject(_ subject: String) -> Bool {
        !subject.isEmpty && !subject.utf8.contains { $0 <= 0x20 || $0 == 0x7F }
    }

    static func writeDecimal(_ value: UInt64, into buffer: inout ByteBuffer) {
        if value < 10 {
            buffer.writeInteger(UInt8(ascii: "0") + UInt8(value))
            return
        }
        var digits: (UInt64, Int) = (value, 0)
        var reversed: UInt64 = 0
        while digits.0 > 0 {
            reversed = reversed * 10 + digits.0 % 10
            digits.0 /= 10
            digits.1 += 1
        }
        for _ in 0..<digits.1 {
            buffer.writeInteger(UInt8(ascii: "0") + UInt8(reversed % 10))
            reversed /= 10
        }
    }

    // MARK: PubAcks

    /// A message on `<inbox>.<sequence>`: the PubAck (or error) of that publish.
    func received(subject: ByteBufferView, status: Int?, payload: ByteBuffer) {
        guard subject.count > inbox.count + 1, subject.starts(with: inbox),
            let sequence = PubAckBody.number(subject.dropFirst(inbox.count + 1)),
            let entry = pending.removeValue(forKey: sequence)
        else { return }
        let result: Result<PublishAck, NATSError>
        if status == 503 {
            result = .failure(NATSError(code: .publishFailed, message: "JetStream publish failed: no stream stores this subject"))
        } else if payload.readableBytes == 0 {
            result = .failure(NATSError(code: .publishFailed, message: "JetStream publish failed: empty answer"))
        } else {
            result = payload.withUnsafeReadableBytes { PubAckBody.parse($0.bindMemory(to: UInt8.self)) }
        }
        entry.batch.complete(index: entry.index, result: result)
    }

    private func expire(now: NIODeadline) {
        let error = NATSError(code: .timeout, message: "JetStream publish failed: no PubAck in time")
        while deadlineHead < deadlines.count, deadlines[deadlineHead].deadline <= now {
            if let entry = pending.removeValue(forKey: deadlines[deadlineHead].sequence) {
                entry.batch.complete(index: entry.index, result: .failure(error))
            }
            deadlineHead += 1
        }
        if deadlineHead > 4096 && deadlineHead * 2 > deadlines.count {
            deadlines.removeFirst(deadlineHead)
            deadlineHead = 0
        }
        if pending.isEmpty {
            deadlines.removeAll(keepingCapacity: true)
            deadlineHead = 0
        }
    }

    /// Pings the server every `pingInterval`; a connection that let `maxPingsOut` PINGs go
    /// unanswered is closed (and then replaced), as nats.c does: TCP alone may take hours to
    /// notice a server that vanished.
    private func keepAlive(now: NIODeadline) {
        guard let channel, isConnected, now - lastPing >= .nanoseconds(configuration.pingInterval.nanoseconds) else { return }
        lastPing = now
        if pingsOut >= configuration.maxPingsOut {
            logger.warning("NATS publish connection is stale; replacing it", metadata: ["nats.connection": "\(configuration.name)"])
            channel.close(promise: nil)
            return
        }
        pingsOut += 1
        channel.writeAndFlush(ByteBuffer(staticString: "PING\r\n"), promise: nil)
    }

    /// The server answered a PING.
    func pong() { pingsOut = 0 }

    private func failAll(_ error: NATSError) {
        let entries = pending.values
        pending.removeAll()
        deadlines.removeAll()
        deadlineHead = 0
        for entry in entries { entry.batch.complete(index: entry.index, result: .failure(error)) }
    }

    // MARK: Connection

    /// Tries up to `attempts` servers, starting with the current one.
    private func open(attempts: Int) -> EventLoopFuture<Void> {
        let server = configuration.servers[serverIndex % configuration.servers.count]
        return connect(to: server).flatMapError { error in
            self.serverIndex += 1
            if attempts > 1, !self.closed {
                return self.open(attempts: attempts - 1)
            }
            return self.eventLoop.makeFailedFuture(error)
        }
    }

    private func connect(to server: String) -> EventLoopFuture<Void> {
        let endpoint: ServerEndpoint
        do {
            var parsed = try ServerEndpoint(server)
            if let user = configuration.user {
                parsed.user = user
                parsed.password = configuration.password
                parsed.token = nil
            }
            endpoint = parsed
        } catch {
            return eventLoop.makeFailedFuture(error)
        }
        let handshake = eventLoop.makePromise(of: Void.self)
        let name = configuration.name
        let timeout = eventLoop.scheduleTask(in: .nanoseconds(configuration.connectTimeout.nanoseconds)) {
            handshake.fail(NATSError(code: .timeout, message: "no answer from NATS at \(endpoint.host):\(endpoint.port)"))
        }
        let connecting = ClientBootstrap(group: eventLoop)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .connectTimeout(.nanoseconds(configuration.connectTimeout.nanoseconds))
            .channelInitializer { [self] channel in
                channel.eventLoop.makeCompletedFuture {
                    let handler = PublisherProtocolHandler(publisher: self, endpoint: endpoint, name: name, handshake: handshake)
                    try channel.pipeline.syncOperations.addHandler(handler)
                }
            }
            .connect(host: endpoint.host, port: endpoint.port)
        connecting.whenFailure { error in
            handshake.fail(
                NATSError(code: .connectionClosed, message: "cannot connect to NATS at \(endpoint.host):\(endpoint.port): \(error)")
            )
        }
        return handshake.futureResult.always { _ in timeout.cancel() }.flatMap {
            connecting.map { channel in
                if self.closed {
                    channel.close(promise: nil)
                    return
                }
                self.channel = channel
                self.pingsOut = 0
                self.lastPing = .now()
                self.outbound = channel.allocator.buffer(capacity: 64 * 1024)
                self.connectedFlag.store(true, ordering: .relaxed)
            }
        }.flatMapErrorThrowing { error in
            connecting.whenSuccess { $0.close(promise: nil) }
            throw error
        }
    }

    /// The connection closed: fail what waits, reconnect unless closing.
    func connectionLost(_ channel: any Channel) {
        guard self.channel === channel else { return }
        self.channel = nil
        connectedFlag.store(false, ordering: .relaxed)
        outbound.clear()
        failAll(NATSError(code: .connectionClosed, message: "the NATS connection closed before the PubAck"))
        guard !closed else { return }
        logger.warning("NATS publish connection lost; reconnecting", metadata: ["nats.connection": "\(configuration.name)"])
        scheduleReconnect()
    }

    private func scheduleReconnect() {
        eventLoop.scheduleTask(in: .nanoseconds(configuration.reconnectWait.nanoseconds)) {
            guard !self.closed, self.channel == nil else { return }
            self.open(attempts: 1).whenComplete { result in
                switch result {
                case .success:
                    self.logger.info("NATS publish connection restored", metadata: ["nats.connection": "\(self.configuration.name)"])
                case .failure:
                    self.scheduleReconnect()  // `open` moved on to the next server
                }
            }
        }
    }

    /// The server's limit, from its INFO.
    func serverLimits(maxPayload: Int?) {
        if let maxPayload, maxPayload > 0 { self.maxPayload = maxPayload }
    }

    var replySubscription: [UInt8] { Array("SUB ".utf8) + inbox + Array(".* 1\r\n".utf8) }
}

/// The PubAcks of one `publish` call; lives on the publisher's event loop.
private final class LoopBatch {
    private var remaining: Int
    private var acks: [PublishAck]
    private var error: NATSError?
    private var completion: EventLoopPublisher.Completion?

    init(count: Int, completion: @escaping EventLoopPublisher.Completion) {
        remaining = count
        acks = Array(repeating: PublishAck(sequence: 0, duplicate: false), count: count)
        self.completion = completion
    }

    func complete(index: Int, result: Result<PublishAck, NATSError>) {
        switch result {
        case .success(let ack): acks[index] = ack
        case .failure(let failure): if error == nil { error = failure }
        }
        remaining -= 1
        guard remaining == 0, let completion else { return }
        self.completion = nil
        completion(error.map { .failure($0) } ?? .success(acks))
    }
}

/// Host, port and credentials of a `nats://` (or `tls://`) URL.
struct ServerEndpoint: Sendable {
    var host: String
    var port: Int
    var user: String?
    var password: String?
    var token: String?

    init(_ url: String) throws(NATSError) {
        var rest = Substring(url.trimmingCharacters(in: .whitespaces))
        if let scheme = rest.range(of: "://") {
            let name = rest[..<scheme.lowerBound].lowercased()
            guard name == "nats" || name == "tls" else {
                throw NATSError(code: .connectionFailed, message: "\(name):// is not supported by the event-loop publisher")
            }
            rest = rest[scheme.upperBound...]
        }
        if let slash = rest.firstIndex(of: "/") { rest = rest[..<slash] }
        if let at = rest.lastIndex(of: "@") {
            let credentials = rest[..<at]
            rest = rest[rest.index(after: at)...]
            if let colon = credentials.firstIndex(of: ":") {
                user = String(credentials[..<colon]).removingPercentEncoding
                password = String(credentials[credentials.index(after: colon)...]).removingPercentEncoding
            } else {
                token = String(credentials).removingPercentEncoding
            }
        }
        if rest.hasPrefix("["), let close = rest.firstIndex(of: "]") {
            host = String(rest[rest.index(after: rest.startIndex)..<close])
            rest = rest[rest.index(after: close)...]
            port = rest.hasPrefix(":") ? Int(rest.dropFirst()) ?? -1 : 4222
        } else if let colon = rest.lastIndex(of: ":") {
            host = String(rest[..<colon])
            port = Int(rest[rest.index(after: colon)...]) ?? -1
        } else {
            host = String(rest)
            port = 4222
        }
        guard !host.isEmpty, (1...65535).contains(port) else {
            throw NATSError(code: .invalidArgument, message: "cannot read a host and port from NATS URL '\(NATSConnection.redacted(url))'")
        }
    }
}

/// Reads the server's protocol messages, answers PINGs, and runs the handshake.
///
/// Not `Sendable`: used only on its channel's event loop, which is the publisher's.
private final class PublisherProtocolHandler: ChannelInboundHandler {
    /// An IPv4 or IPv6 literal (checked against the certificate's IP addresses, not sent as SNI).
    static func isIPAddress(_ host: String) -> Bool {
        (try? SocketAddress(ipAddress: host.trimmingCharacters(in: CharacterSet(charactersIn: "[]")), port: 0)) != nil
    }

    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let publisher: EventLoopPublisher
    private let endpoint: ServerEndpoint
    private var handshake: EventLoopPromise<Void>?
    private var parser = NATSServerMessageParser()
    private var connection: PublisherHandshake

    init(publisher: EventLoopPublisher, endpoint: ServerEndpoint, name: String, handshake: EventLoopPromise<Void>) {
        self.publisher = publisher
        self.endpoint = endpoint
        self.handshake = handshake
        self.connection = PublisherHandshake(
            settings: .init(
                name: name,
                user: endpoint.user,
                password: endpoint.password,
                token: endpoint.token,
                wantsTLS: publisher.sslContext != nil,
                server: "\(endpoint.host):\(endpoint.port)"
            )
        )
    }

    func channelInactive(context: ChannelHandlerContext) {
        fail(NATSError(code: .connectionClosed, message: "NATS at \(endpoint.host):\(endpoint.port) closed the connection"))
        publisher.connectionLost(context.channel)
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // During the handshake this is mostly TLS refusing the other side's certificate: say so.
        fail(NATSError(code: .connectionFailed, message: "NATS at \(endpoint.host):\(endpoint.port): \(error)"))
        context.close(promise: nil)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var incoming = unwrapInboundIn(data)
        parser.append(&incoming)
        do {
            while let message = try parser.next() {
                if case .msg(let subject, let status, let payload) = message {
                    publisher.received(subject: subject, status: status, payload: payload)
                } else {
                    try act(on: connection.received(message), context: context)
                }
            }
        } catch {
            publisher.logConnectionFailure(error)
            fail(error)
            context.close(promise: nil)
        }
    }

    private func act(on action: PublisherHandshake.Action, context: ChannelHandlerContext) throws(NATSError) {
        switch action {
        case .none:
            return
        case .send(let text):
            if let limit = connection.maxPayload { publisher.serverLimits(maxPayload: limit) }
            context.writeAndFlush(wrapOutboundOut(ByteBuffer(string: text)), promise: nil)
        case .upgradeAndSend(let text):
            if let limit = connection.maxPayload { publisher.serverLimits(maxPayload: limit) }
            // Upgrade now: the server waits for the TLS handshake after its INFO. What is written
            // from here (CONNECT, PING) waits in the TLS handler until the handshake is done.
            do {
                try context.pipeline.syncOperations.addHandler(
                    try NIOSSLClientHandler(
                        context: publisher.sslContext!,
                        serverHostname: Self.isIPAddress(endpoint.host) ? nil : endpoint.host
                    ),
                    position: .first
                )
            } catch {
                throw NATSError(
                    code: .connectionFailed,
                    message: "cannot start TLS with NATS at \(endpoint.host):\(endpoint.port): \(error)"
                )
            }
            context.writeAndFlush(wrapOutboundOut(ByteBuffer(string: text)), promise: nil)
        case .connected:
            publisher.pong()
            // Connected: subscribe to the reply inbox before anything is published.
            context.writeAndFlush(wrapOutboundOut(ByteBuffer(bytes: publisher.replySubscription)), promise: nil)
            let promise = handshake
            handshake = nil
            promise?.succeed()
        case .alive:
            publisher.pong()
        case .fail(let error):
            throw error
        case .log(let error):
            publisher.logConnectionFailure(error)
        }
    }

    private func fail(_ error: NATSError) {
        handshake?.fail(error)
        handshake = nil
    }
}

extension EventLoopPublisher {
    fileprivate func logConnectionFailure(_ error: NATSError) {
        logger.warning("NATS publish connection failed", metadata: ["error": "\(error)", "nats.connection": "\(configuration.name)"])
    }
}
