import AutonomousTesting
import Foundation
import NIOCore
import Synchronization
import Testing

@testable import NATS

/// The JetStream protocol Autonomous speaks itself over core NATS: pulls (no
/// `natsSubscription_Fetch`) and publishes with PubAcks on its own inbox (no `js_PublishMsgAsync`).
@Suite("JetStream pulls and publishes against a real nats-server")
struct PullSubscriptionTests {
    static func setUp(_ connection: NATSConnection, ackWait: Duration = .seconds(30)) async throws {
        try await connection.createOrUpdateStream(StreamConfiguration(name: "PULL", subjects: ["pull.>"]))
        var consumer = ConsumerConfiguration(durableName: "c", filterSubject: "pull.>")
        consumer.ackWait = ackWait
        try await connection.createOrUpdateConsumer(stream: "PULL", consumer)
    }

    /// A fresh nats-server with stream PULL (`pull.>`) and durable consumer `c`.
    static func withStream(ackWait: Duration = .seconds(30), _ body: (NATSConnection) async throws -> Void) async throws {
        try await withTestNATSServer { server in
            try await setUp(server.connection, ackWait: ackWait)
            try await body(server.connection)
        }
    }

    static func subscribe(_ connection: NATSConnection, headers: [String] = []) async throws -> PullSubscription {
        try await connection.pullSubscription(stream: "PULL", consumer: "c", filterSubject: "pull.>", headers: headers)
    }

    static func publish(_ connection: NATSConnection, _ count: Int, from first: Int = 0) async throws {
        let messages = (first..<first + count).map { i in
            OutgoingMessage(
                subject: "pull.\(i)",
                payload: ByteBuffer(string: "m\(i)"),
                headers: [("Nats-Msg-Id", "id-\(i)"), ("X-Index", "\(i)")]
            )
        }
        _ = try await connection.publish(messages)
    }

    /// Fetches and acks everything that arrives for `duration`, or until `done(fetched, lastBatchWasEmpty)`.
    static func fetchAndAck(
        _ subscription: PullSubscription,
        for duration: Duration,
        until done: ([JetStreamMessage], Bool) -> Bool = { _, _ in false }
    ) async throws -> [JetStreamMessage] {
        var fetched: [JetStreamMessage] = []
        let clock = ContinuousClock()
        let deadline = clock.now + duration
        while clock.now < deadline {
            let batch = try await subscription.fetch(maxMessages: 10, timeout: .milliseconds(300))
            for i in 0..<batch.count { batch.ack(i) }
            fetched += batch.messages
            if done(fetched, batch.isEmpty) { break }
        }
        return fetched
    }

    @Test("A fetch returns what is there without waiting for the batch to fill, with headers and metadata")
    func fetchReturnsEarly() async throws {
        try await Self.withStream { connection in
            let before = Int64(Date().timeIntervalSince1970 * 1e9)
            try await Self.publish(connection, 3)
            let subscription = try await Self.subscribe(connection, headers: ["X-Index", "Missing"])
            defer { subscription.close() }
            let clock = ContinuousClock()
            let started = clock.now
            var messages: [JetStreamMessage] = []
            while messages.count < 3 && clock.now - started < .seconds(10) {
                let batch = try await subscription.fetch(maxMessages: 100, timeout: .seconds(30))
                messages += batch.messages
                for i in 0..<batch.count { #expect(batch.ack(i)) }
            }
            // The batch asked for 100 and waits up to 30 s; it came back with 3 long before.
            #expect(clock.now - started < .seconds(5), "fetch waited for the batch to fill: \(clock.now - started)")
            #expect(messages.map(\.subject) == ["pull.0", "pull.1", "pull.2"])
            #expect(messages.map { String(decoding: $0.payload, as: UTF8.self) } == ["m0", "m1", "m2"])
            #expect(messages.map(\.headerValues) == [["0", nil], ["1", nil], ["2", nil]])
            #expect(messages.map(\.streamSequence) == [1, 2, 3])
            #expect(messages.allSatisfy { $0.deliveryCount == 1 })
            #expect(messages.allSatisfy { $0.timestamp >= before - 1_000_000_000 && $0.timestamp < before + 60_000_000_000 })
            // Acks are core publishes, flushed by nats.c shortly after.
            let state = try await eventuallyValue {
                try await connection.consumerState(stream: "PULL", consumer: "c").flatMap { $0.numAckPending == 0 ? $0 : nil }
            }
            #expect(state.numPending == 0, "\(state)")
        }
    }

    @Test("Loops sharing a subscription: records go to the free loop, not to one busy with its batch")
    func sharedByLoops() async throws {
        try await Self.withStream { connection in
            let subscription = try await Self.subscribe(connection, headers: ["X-Index"])
            defer { subscription.close() }
            subscription.concurrentFetchers = 2
            let fetched = Collected()
            // Loop A takes the first record, then is busy for 3 s.
            let busy = Task {
                var got: [JetStreamMessage] = []
                while got.isEmpty { got = try await subscription.fetch(maxMessages: 100, timeout: .seconds(5)).messages }
                fetched.add(got.compactMap { $0.headerValues[0] })
                try await Task.sleep(for: .seconds(3))
            }
            try await Self.publish(connection, 1)
            #expect(try await eventually(timeout: .seconds(5)) { fetched.all.count == 1 })
            // Loop B is free; records published now reach it at once, while A still sleeps.
            let clock = ContinuousClock()
            let started = clock.now
            let free = Task {
                var count = 0
                while count < 20 && clock.now - started < .seconds(10) {
                    let batch = try await subscription.fetch(maxMessages: 100, timeout: .seconds(1))
                    for i in 0..<batch.count { batch.ack(i) }
                    count += batch.count
                    fetched.add(batch.messages.compactMap { $0.headerValues[0] })
                }
            }
            try await Self.publish(connection, 20, from: 1)
            try await free.value
            #expect(clock.now - started < .seconds(2), "records waited for the busy loop: \(clock.now - started)")
            try await busy.value
            #expect(fetched.all.sorted() == (0..<21).map(String.init).sorted(), "each record fetched once")
        }
    }

    @Test("Nak redelivers with the delivery count raised, term never redelivers, ack is final once")
    func nakTermAck() async throws {
        try await Self.withStream { connection in
            try await Self.publish(connection, 3)
            let subscription = try await Self.subscribe(connection, headers: ["X-Index"])
            defer { subscription.close() }
            var first: [JetStreamMessage] = []
            while first.count < 3 {
                let batch = try await subscription.fetch(maxMessages: 3, timeout: .seconds(2))
                for (i, message) in batch.messages.enumerated() {
                    switch message.headerValues[0] {
                    case "0":
                        #expect(batch.ack(i))
                        #expect(!batch.ack(i), "a second ack must be refused")
                    case "1": #expect(batch.nak(i, delay: .milliseconds(100)))
                    default:
                        #expect(batch.term(i))
                        #expect(!batch.nak(i, delay: .zero))
                    }
                }
                first += batch.messages
            }
            let again = try await Self.fetchAndAck(subscription, for: .seconds(3))
            #expect(again.map { $0.headerValues[0] } == ["1"])
            #expect(again.map(\.deliveryCount) == [2])
        }
    }

    @Test("Closing hands unfetched messages back at once; a missing consumer is reported")
    func closeAndMissingConsumer() async throws {
        try await Self.withStream(ackWait: .seconds(60)) { connection in
            await #expect(throws: NATSError(code: .notFound, message: "")) {
                _ = try await connection.pullSubscription(stream: "PULL", consumer: "nope", filterSubject: "pull.>", headers: [])
            }
            try await Self.publish(connection, 50)
            let first = try await Self.subscribe(connection)
            // Take 10; the rest arrive in the subscription's buffer and are never fetched.
            var taken = 0
            while taken == 0 {
                let batch = try await first.fetch(maxMessages: 10, timeout: .seconds(2))
                for i in 0..<batch.count { batch.ack(i) }
                taken += batch.count
            }
            try await Task.sleep(for: .milliseconds(200))
            first.close()
            await #expect(throws: NATSError.self) { _ = try await first.fetch(maxMessages: 1, timeout: .seconds(1)) }
            // With a 60 s ack wait, only the nak at close brings the other 40 back now.
            let second = try await Self.subscribe(connection)
            defer { second.close() }
            var rest = Set<UInt64>()
            let clock = ContinuousClock()
            let deadline = clock.now + .seconds(10)
            while rest.count < 50 - taken && clock.now < deadline {
                let batch = try await second.fetch(maxMessages: 100, timeout: .milliseconds(500))
                for i in 0..<batch.count { batch.ack(i) }
                rest.formUnion(batch.messages.map(\.streamSequence))
            }
            #expect(rest.count == 50 - taken)
        }
    }

    @Test("Publishing returns each PubAck: sequence, duplicate, JetStream's error and no stream")
    func publishAcks() async throws {
        try await Self.withStream { connection in
            let first = try await connection.publish(
                (0..<300).map { i in
                    OutgoingMessage(subject: "pull.\(i)", payload: ByteBuffer(string: "m"), headers: [("Nats-Msg-Id", "id-\(i)")])
                }
            )
            #expect(first.map(\.sequence) == Array(1...300))
            #expect(first.allSatisfy { !$0.duplicate })
            let again = try await connection.publish(
                OutgoingMessage(subject: "pull.7", payload: ByteBuffer(string: "m"), headers: [("Nats-Msg-Id", "id-7")])
            )
            #expect(again.duplicate && again.sequence == 8)
            // JetStream refuses: the expected stream does not match (err_code 10060).
            let refused = await #expect(throws: NATSError.self) {
                _ = try await connection.publish(
                    OutgoingMessage(subject: "pull.x", payload: ByteBuffer(string: "m"), headers: [("Nats-Expected-Stream", "OTHER")])
                )
            }
            #expect(refused?.code == .publishFailed && refused?.jetStreamErrorCode == 10060, "\(String(describing: refused))")
            // No stream stores the subject: reported at once, not after the publish timeout.
            let clock = ContinuousClock()
            let started = clock.now
            let unrouted = await #expect(throws: NATSError.self) {
                _ = try await connection.publish(OutgoingMessage(subject: "nowhere.at.all", payload: ByteBuffer(string: "m")))
            }
            #expect(unrouted?.code == .publishFailed, "\(String(describing: unrouted))")
            #expect(clock.now - started < .seconds(2))
            #expect(connection.publishesInFlight == 0)
        }
    }

    @Test("Header blocks written by Autonomous arrive as sent; a header that would break the protocol line is refused")
    func encodedHeaders() async throws {
        // The fast path is the one every other test exercises here.
        #expect(NATSConnection.encodesHeaderBlocks)
        try await Self.withStream { connection in
            let values = ["plain", "with: colon and spaces", "ünïcödé ✓", String(repeating: "x", count: 2_000)]
            let messages = values.enumerated().map { i, value in
                OutgoingMessage(
                    subject: "pull.\(i)",
                    payload: ByteBuffer(string: "{\"i\":\(i)}"),
                    headers: [("Nats-Msg-Id", "h-\(i)"), ("X-Value", value)]
                )
            }
            _ = try await connection.publish(messages)
            // A repeated header: the first value is the one read.
            _ = try await connection.publish(
                OutgoingMessage(
                    subject: "pull.twice",
                    payload: ByteBuffer(string: "t"),
                    headers: [("X-Value", "first"), ("X-Value", "second")]
                )
            )
            // No payload at all, and no headers at all.
            _ = try await connection.publish(
                OutgoingMessage(subject: "pull.empty", payload: ByteBuffer(), headers: [("X-Value", "empty body")])
            )
            _ = try await connection.publish(OutgoingMessage(subject: "pull.bare", payload: ByteBuffer(string: "bare")))
            for (name, value) in [("X-Value", "two\r\nNats-Msg-Id: forged"), ("Bad Name", "v"), ("Bad:Name", "v"), ("", "v")] {
                let refused = await #expect(throws: NATSError.self) {
                    _ = try await connection.publish(
                        OutgoingMessage(subject: "pull.bad", payload: ByteBuffer(string: "m"), headers: [(name, value)])
                    )
                }
                #expect(refused?.code == .invalidArgument, "\(String(describing: refused))")
                #expect(throws: NATSError.self) {
                    try connection.publishCore(CoreMessage(subject: "core.bad", payload: [1], headers: [name: value]))
                }
            }
            #expect(connection.publishesInFlight == 0)
            let subscription = try await Self.subscribe(connection, headers: ["X-Value", "Nats-Msg-Id"])
            defer { subscription.close() }
            var received: [JetStreamMessage] = []
            while received.count < values.count + 3 {
                let batch = try await subscription.fetch(maxMessages: 100, timeout: .seconds(5))
                #expect(!batch.isEmpty)
                if batch.isEmpty { break }
                received += batch.messages
            }
            #expect(received.map(\.subject) == values.indices.map { "pull.\($0)" } + ["pull.twice", "pull.empty", "pull.bare"])
            #expect(received[values.count].headerValues[0] == "first")
            #expect(received.prefix(values.count).map { $0.headerValues[0] } == values)
            #expect(received.prefix(values.count).map { $0.headerValues[1] } == values.indices.map { "h-\($0)" })
            #expect(
                received.prefix(values.count).map { String(decoding: $0.payload, as: UTF8.self) } == values.indices.map { "{\"i\":\($0)}" }
            )
            #expect(
                received.last?.headerValues == [nil, nil] && received.last.map { String(decoding: $0.payload, as: UTF8.self) } == "bare"
            )
            #expect(received.dropLast().last?.headerValues[0] == "empty body" && received.dropLast().last?.payload.isEmpty == true)
        }
    }

    @Test("Messages waiting in the subscription behind a slow batch are kept alive, not redelivered")
    func unfetchedKeptAlive() async throws {
        // An ack wait of 6 s with in-progress acks every 1.5 s: with 2 s and 0.6 s, a run of the
        // whole suite on two busy cores stalled them long enough for a redelivery.
        try await Self.withStream(ackWait: .seconds(6)) { connection in
            try await Self.publish(connection, 5)
            let subscription = try await Self.subscribe(connection)
            defer { subscription.close() }
            // Without the in-progress acks, message 2 came back a second time (delivery count 2)
            // in this test.
            let handled = Mutex<FetchedBatch?>(nil)
            await subscription.keepingUnfetchedAlive(every: .milliseconds(1500)) {
                var first = try? await subscription.fetch(maxMessages: 2, timeout: .seconds(2))
                while first?.isEmpty ?? true { first = try? await subscription.fetch(maxMessages: 2, timeout: .seconds(2)) }
                // The next batch is requested (and arrives) while this one is "handled" for
                // longer than the ack wait, with in-progress acks as the worker sends them.
                for _ in 0..<6 {
                    try? await Task.sleep(for: .milliseconds(1500))
                    for i in 0..<(first?.count ?? 0) { first?.inProgress(i) }
                }
                handled.withLock { $0 = first }
            }
            let first = try #require(handled.withLock { $0 })
            for i in 0..<first.count { first.ack(i) }
            let all =
                try await first.messages
                + Self.fetchAndAck(subscription, for: .seconds(5)) { fetched, idle in
                    idle && first.count + fetched.count >= 5
                }
            #expect(all.map(\.streamSequence).sorted() == [1, 2, 3, 4, 5], "\(all.map(\.streamSequence))")
            #expect(all.allSatisfy { $0.deliveryCount == 1 }, "\(all.map(\.deliveryCount))")
            let state = try await connection.consumerState(stream: "PULL", consumer: "c")
            #expect(state?.numRedelivered == 0)
        }
    }

    @Test("readAll reads a subject through an ephemeral consumer and removes it")
    func readAllEphemeral() async throws {
        try await Self.withStream { connection in
            try await Self.publish(connection, 2500)
            let all = try await connection.readAll(stream: "PULL", subject: "pull.>", headers: ["X-Index"], atLeast: 2500)
            #expect(all.count == 2500)
            #expect(Set(all.compactMap { $0.headerValues[0] }).count == 2500)
        }
    }
}

/// Retries `body` until it returns a value (up to 5 s).
/// Values collected by concurrent tasks.
final class Collected: Sendable {
    private let values = Mutex<[String]>([])
    func add(_ more: [String]) { values.withLock { $0 += more } }
    var all: [String] { values.withLock { $0 } }
}

func eventuallyValue<T>(_ body: () async throws -> T?) async throws -> T {
    let clock = ContinuousClock()
    let deadline = clock.now + .seconds(5)
    while true {
        if let value = try await body() { return value }
        if clock.now > deadline { throw TimeoutError() }
        try await Task.sleep(for: .milliseconds(50))
    }
}

struct TimeoutError: Error, CustomStringConvertible {
    var description: String { "the condition did not hold within 5 s" }
}
