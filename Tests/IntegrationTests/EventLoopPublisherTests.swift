import AutonomousTesting
import Foundation
import NIOCore
import NIOPosix
import Synchronization
import Testing

@testable import NATS

/// The ingress's event-loop publisher: its own NATS protocol client, against a real nats-server.
@Suite("Event-loop publisher against a real nats-server")
struct EventLoopPublisherTests {
    static func withPublisher(_ body: (EventLoopPublisher, NATSConnection) async throws -> Void) async throws {
        try await withTestNATSServer { server in
            try await server.connection.createOrUpdateStream(StreamConfiguration(name: "ELP", subjects: ["elp.>"]))
            let eventLoop = MultiThreadedEventLoopGroup.singleton.next()
            var configuration = EventLoopPublisher.Configuration(servers: [server.url], name: "elp-test")
            configuration.publishTimeout = .seconds(5)
            let publisher = try await EventLoopPublisher.connect(
                configuration: configuration,
                eventLoop: eventLoop,
                logger: TestNATSServer.logger
            )
            #expect(publisher.isConnected)
            do {
                try await body(publisher, server.connection)
            } catch {
                await publisher.close()
                throw error
            }
            await publisher.close()
            #expect(!publisher.isConnected)
        }
    }

    /// Publishes on the publisher's loop and waits for the outcome.
    static func publish(_ publisher: EventLoopPublisher, _ messages: [OutgoingMessage]) async -> Result<[PublishAck], NATSError> {
        let promise = publisher.eventLoop.makePromise(of: Result<[PublishAck], NATSError>.self)
        publisher.eventLoop.execute {
            publisher.publish(messages) { promise.succeed($0) }
        }
        return try! await promise.futureResult.get()
    }

    static func message(_ subject: String, _ body: String, id: String? = nil, headers: [(String, String)] = []) -> OutgoingMessage {
        var all = headers
        if let id { all.insert(("Nats-Msg-Id", id), at: 0) }
        return OutgoingMessage(subject: subject, payload: ByteBuffer(string: body), headers: all)
    }

    @Test("Messages are stored with their headers and bodies, each with its PubAck; a repeated id is a duplicate")
    func publishesAndAcks() async throws {
        try await Self.withPublisher { publisher, connection in
            let big = String(repeating: "x", count: 100_000)
            let acks = try await Self.publish(
                publisher,
                [
                    Self.message("elp.a", #"{"n":1}"#, id: "one", headers: [("Aut-Table", "a"), ("Note", "colon: inside, ünïcode")]),
                    Self.message("elp.b", "", id: "two"),
                    Self.message("elp.c", big),
                ]
            ).get()
            #expect(acks.map(\.sequence) == [1, 2, 3])
            #expect(acks.allSatisfy { !$0.duplicate })
            let first = try #require(try await connection.message(stream: "ELP", sequence: 1))
            #expect(first.subject == "elp.a")
            #expect(String(decoding: first.payload, as: UTF8.self) == #"{"n":1}"#)
            #expect(first.headers["Nats-Msg-Id"] == "one")
            #expect(first.headers["Note"] == "colon: inside, ünïcode")
            let third = try #require(try await connection.message(stream: "ELP", sequence: 3))
            #expect(third.payload.count == 100_000)

            let again = try await Self.publish(publisher, [Self.message("elp.a", #"{"n":1}"#, id: "one")]).get()
            #expect(again.first?.duplicate == true)
            #expect(again.first?.sequence == 1)

            // Many at once, from several turns of the loop.
            let many = (0..<2_000).map { Self.message("elp.many", "{\"i\":\($0)}", id: "m-\($0)") }
            async let left = Self.publish(publisher, Array(many[..<1000]))
            async let right = Self.publish(publisher, Array(many[1000...]))
            let sequences = try await (left.get() + right.get()).map(\.sequence)
            #expect(Set(sequences).count == 2_000)
            #expect(try await connection.streamState("ELP")?.messages == 2_003)
        }
    }

    @Test("A subject no stream stores, a forged header and a bad subject fail their own publish only")
    func failures() async throws {
        try await Self.withPublisher { publisher, _ in
            let unstored = await Self.publish(publisher, [Self.message("nowhere.x", "{}")])
            #expect(throws: NATSError.self) { try unstored.get() }
            if case .failure(let error) = unstored { #expect(error.message.contains("no stream")) }

            let forged = await Self.publish(publisher, [Self.message("elp.x", "{}", headers: [("X", "a\r\nNats-Msg-Id: evil")])])
            if case .failure(let error) = forged { #expect(error.code == .invalidArgument) } else { Issue.record("forged header accepted") }

            let spaced = await Self.publish(publisher, [Self.message("elp.x y", "{}")])
            if case .failure(let error) = spaced { #expect(error.code == .invalidArgument) } else { Issue.record("bad subject accepted") }

            // The connection still works, and the good message of a mixed batch is stored.
            let mixed = await Self.publish(publisher, [Self.message("elp.ok", "{}", id: "ok"), Self.message("elp.bad subject", "{}")])
            #expect(throws: NATSError.self) { try mixed.get() }
            let fine = try await Self.publish(publisher, [Self.message("elp.ok2", "{}")]).get()
            #expect(fine.count == 1)
        }
    }

    @Test("After close, publishing fails at once with connectionClosed")
    func closed() async throws {
        try await Self.withPublisher { publisher, _ in
            await publisher.close()
            let outcome = await Self.publish(publisher, [Self.message("elp.a", "{}")])
            if case .failure(let error) = outcome {
                #expect(error.code == .connectionClosed)
            } else {
                Issue.record("published after close")
            }
        }
    }

    @Test("Server URLs: host and port, credentials, IPv6, tls://; other schemes are refused")
    func endpoints() throws {
        let plain = try ServerEndpoint("nats://127.0.0.1:4333")
        #expect(plain.host == "127.0.0.1" && plain.port == 4333 && plain.user == nil && plain.token == nil)
        let user = try ServerEndpoint("nats://alice:s%40cret@nats.example:4222")
        #expect(user.host == "nats.example" && user.user == "alice" && user.password == "s@cret")
        let token = try ServerEndpoint("nats://t0ken@localhost")
        #expect(token.token == "t0ken" && token.port == 4222)
        let v6 = try ServerEndpoint("nats://[::1]:5000")
        #expect(v6.host == "::1" && v6.port == 5000)
        let tls = try ServerEndpoint("tls://127.0.0.1:4222")
        #expect(tls.host == "127.0.0.1" && tls.port == 4222)
        #expect(throws: NATSError.self) { try ServerEndpoint("ws://127.0.0.1:4222") }
        #expect(throws: NATSError.self) { try ServerEndpoint("nats://host:notaport") }
    }

    @Test("A server that stops answering PINGs is left, its publishes fail, and the publisher reconnects")
    func staleConnection() async throws {
        let server = try await SilentNATSServer.start()
        var configuration = EventLoopPublisher.Configuration(servers: ["nats://127.0.0.1:\(server.port)"], name: "stale")
        configuration.pingInterval = .milliseconds(200)
        configuration.maxPingsOut = 2
        configuration.reconnectWait = .milliseconds(100)
        configuration.publishTimeout = .seconds(30)
        let publisher = try await EventLoopPublisher.connect(
            configuration: configuration,
            eventLoop: MultiThreadedEventLoopGroup.singleton.next(),
            logger: TestNATSServer.logger
        )
        // The first connection never answers again: the publish cannot get its PubAck, and it
        // fails when the publisher gives up on the connection (well before its 30 s deadline).
        // (`.connectionClosed`, not the deadline's `.timeout`.)
        let outcome = await Self.publish(publisher, [Self.message("elp.a", "{}")])
        if case .failure(let error) = outcome {
            #expect(error.code == .connectionClosed, "\(error)")
        } else {
            Issue.record("acknowledged by a silent server")
        }
        // The second connection answers PINGs: the publisher is connected again.
        let deadline = ContinuousClock.now + .seconds(10)
        while !publisher.isConnected || server.connections < 2, ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(50))
        }
        #expect(server.connections >= 2)
        #expect(publisher.isConnected)
        await publisher.close()
        try await server.stop()
    }

    @Test("Connecting to nothing fails with a clear error instead of hanging")
    func nothingThere() async throws {
        var configuration = EventLoopPublisher.Configuration(servers: ["nats://127.0.0.1:1"], name: "nobody")
        configuration.connectTimeout = .seconds(2)
        await #expect(throws: NATSError.self) {
            _ = try await EventLoopPublisher.connect(
                configuration: configuration,
                eventLoop: MultiThreadedEventLoopGroup.singleton.next(),
                logger: TestNATSServer.logger
            )
        }
    }
}

/// A fake NATS server on loopback: completes the handshake of every connection, then the first
/// connection goes silent (reads and ignores everything) while later ones answer PINGs.
final class SilentNATSServer: Sendable {
    private let channel: any Channel
    private let counter: Counter
    var port: Int { channel.localAddress?.port ?? 0 }
    var connections: Int { counter.value.load(ordering: .relaxed) }

    private init(channel: any Channel, counter: Counter) {
        self.channel = channel
        self.counter = counter
    }

    static func start() async throws -> SilentNATSServer {
        let counter = Counter()
        let channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                let number = counter.next()
                return channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(Handler(silentAfterHandshake: number == 1))
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        return SilentNATSServer(channel: channel, counter: counter)
    }

    func stop() async throws { try await channel.close() }

    /// Numbers the accepted connections.
    private final class Counter: Sendable {
        let value = Atomic<Int>(0)
        func next() -> Int { value.add(1, ordering: .relaxed).newValue }
    }

    /// Not `Sendable`: used on its channel's event loop only.
    private final class Handler: ChannelInboundHandler {
        typealias InboundIn = ByteBuffer
        typealias OutboundOut = ByteBuffer
        let silentAfterHandshake: Bool
        var handshakeDone = false

        init(silentAfterHandshake: Bool) { self.silentAfterHandshake = silentAfterHandshake }

        func channelActive(context: ChannelHandlerContext) {
            let info = #"INFO {"server_id":"fake","version":"2.9.10","proto":1,"headers":true,"max_payload":1048576}"# + "\r\n"
            context.writeAndFlush(wrapOutboundOut(ByteBuffer(string: info)), promise: nil)
            context.fireChannelActive()
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            let text = String(buffer: unwrapInboundIn(data))
            guard text.contains("PING") else { return }
            if handshakeDone && silentAfterHandshake { return }
            handshakeDone = true
            context.writeAndFlush(wrapOutboundOut(ByteBuffer(string: "PONG\r\n")), promise: nil)
        }
    }
}
