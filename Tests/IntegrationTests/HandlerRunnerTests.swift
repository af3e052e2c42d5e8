import Autonomous
import AutonomousTesting
import ClusterCore
import Coordinator
import Foundation
import NIOCore
import Testing

@testable import NATS
@testable import Worker

@Suite("Handler runner against a real nats-server")
struct HandlerRunnerTests {
    /// `in → copy → out`; the handler notes each record it sees as `id@deliveryCount`.
    /// `batches` gets each run's ids joined with `+`.
    static func copyApp(options: HandlerOptions, seen: Collected, batches: Collected? = nil) throws -> AppGraph {
        var app = AppBuilder(name: "Duplicates")
        let input = app.table("in")
        let output = app.table("out")
        input.onNewRecords("copy", options: options) { records, ctx in
            seen.add(records.entries.map { "\($0.id)@\($0.metadata.deliveryCount)" })
            batches?.add([records.entries.map(\.id).joined(separator: "+")])
            try await output.append(records.map { $0 }, ctx)
        }
        return try app.build()
    }

    static func runner(_ graph: AppGraph, _ server: TestNATSServer) throws -> HandlerRunner {
        let handler = try #require(graph.handlers.first)
        return HandlerRunner(
            handler: handler,
            invoker: try handler.prepare(ComponentEnvironment(environment: [:], logger: TestNATSServer.logger)),
            tenant: "default",
            tables: Dictionary(uniqueKeysWithValues: graph.tables.map { ($0.name, $0) }),
            ackWait: .seconds(30),
            connection: server.connection,
            logger: TestNATSServer.logger
        )
    }

    /// The ordered runner of the graph's only handler, reading table `in`.
    static func orderedRunner(_ graph: AppGraph, _ server: TestNATSServer) throws -> OrderedHandlerRunner {
        let handler = try #require(graph.handlers.first)
        let tables = Dictionary(uniqueKeysWithValues: graph.tables.map { ($0.name, $0) })
        return OrderedHandlerRunner(
            handler: handler,
            ordering: try #require(handler.options.ordering),
            source: try #require(tables["in"]),
            invoker: try handler.prepare(ComponentEnvironment(environment: [:], logger: TestNATSServer.logger)),
            tenant: "default",
            tables: tables,
            workerID: "test-worker",
            ackWait: .seconds(30),
            connection: server.connection,
            logger: TestNATSServer.logger,
            assign: { _ in PartitionAssignment(granted: [:], revoke: [], ttlMilliseconds: 1000) }
        )
    }

    /// The dead letters of handler `copy`: record id → the error they carry.
    static func deadLetters(_ server: TestNATSServer, atLeast: Int) async throws -> [String: String] {
        let letters = try await server.connection.readAll(
            stream: "AUT_DEFAULT",
            subject: Wire.deadLetterSubject(tenant: "default", handler: "copy"),
            headers: [Wire.Header.recordID, Wire.Header.error],
            atLeast: atLeast,
            timeout: .seconds(5)
        )
        return Dictionary(letters.map { ($0.headerValues[0] ?? "?", $0.headerValues[1] ?? "") }, uniquingKeysWith: { a, _ in a })
    }

    /// Leaves `count` run notes of `handler`'s record at `sequence`, as runs the process never
    /// finished would.
    static func noteStops(_ server: TestNATSServer, handler: String = "copy", sequence: UInt64, count: Int) async throws {
        _ = try await server.connection.publish(
            OutgoingMessage(
                subject: Wire.runSubject(tenant: "default", handler: handler, sequence: sequence),
                payload: ByteBuffer(string: String(count))
            )
        )
    }

    /// A record that crashes the process comes back after the ack wait, again and again. Before
    /// the fix it ran in a batch with the others every time (taking them down too) and was
    /// never dead-lettered: attempts were counted only when the handler threw.
    @Test("A record whose runs stopped the process maxAttempts times is dead-lettered without running; redelivered records run alone")
    func poisonRecord() async throws {
        try await withTestNATSServer { server in
            let seen = Collected()
            let batches = Collected()
            let graph = try Self.copyApp(options: HandlerOptions(maxAttempts: 3), seen: seen, batches: batches)
            try await Topology.provision(graph: graph, tenants: ["default"], configuration: .init(), connection: server.connection)
            let runner = try Self.runner(graph, server)
            func delivery(_ id: String, sequence: UInt64, count: UInt64) -> DeliveredMessage {
                Self.delivery(id, sequence: sequence, count: count, subject: "aut.default.tbl.in", payload: #"{"n":1}"#)
            }
            // "poison" stopped the process in its batch and twice alone (two notes left). "waited"
            // was delivered as often but only waited in a buffer while others crashed: no notes.
            try await Self.noteStops(server, sequence: 2, count: 2)
            let batch = FetchedBatch(
                deliveries: [
                    delivery("x", sequence: 1, count: 1), delivery("poison", sequence: 2, count: 4),
                    delivery("back", sequence: 3, count: 2),
                    delivery("y", sequence: 4, count: 1), delivery("waited", sequence: 5, count: 4),
                ],
                connection: nil
            )
            await runner.process(batch)
            #expect(!seen.all.contains { $0.hasPrefix("poison@") }, "the poison record does not run again")
            #expect(batches.all == ["back", "waited", "x+y"], "redelivered records run alone, first deliveries together")
            let letters = try await Self.deadLetters(server, atLeast: 1)
            #expect(letters.keys.sorted() == ["poison"])
            #expect(letters["poison"]?.contains("the process stopped while handling this record 3 times") == true, "\(letters)")
            #expect(try await server.connection.streamState("AUT_DEFAULT_tbl_out")?.messages == 4)
            #expect(await runner.currentStatistics.deadLettered == 1)
            for sequence: UInt64 in [2, 3, 5] {
                let note = try await server.connection.lastMessage(
                    stream: "AUT_DEFAULT",
                    subject: Wire.runSubject(tenant: "default", handler: "copy", sequence: sequence)
                )
                #expect(note == nil, "the run note of \(sequence) is removed when its run ends")
            }
        }
    }

    @Test("The ordered runner dead-letters a record whose runs stopped the process maxAttempts times and moves on in order")
    func orderedPoisonRecord() async throws {
        try await withTestNATSServer { server in
            let seen = Collected()
            let graph = try Self.copyApp(options: HandlerOptions(maxAttempts: 3).ordered(by: "key", partitions: 2), seen: seen)
            try await Topology.provision(graph: graph, tenants: ["default"], configuration: .init(), connection: server.connection)
            let runner = try Self.orderedRunner(graph, server)
            func delivery(_ id: String, sequence: UInt64, count: UInt64) -> DeliveredMessage {
                Self.delivery(id, sequence: sequence, count: count, subject: "aut.default.tbl.in.p0", payload: #"{"key":"k"}"#)
            }
            try await Self.noteStops(server, sequence: 7, count: 2)
            let batch = FetchedBatch(
                deliveries: [
                    delivery("a", sequence: 7, count: 4), delivery("b", sequence: 8, count: 4), delivery("c", sequence: 9, count: 1),
                ],
                connection: nil
            )
            let lease = PartitionLease(partition: 0, token: 1, deadline: .now + .seconds(30))
            await runner.process(batch, lease: lease, logger: TestNATSServer.logger)
            #expect(seen.all == ["b@4", "c@1"], "the record that stopped the process does not run; the ones after it do, in order")
            let letters = try await Self.deadLetters(server, atLeast: 1)
            #expect(letters.keys.sorted() == ["a"])
            #expect(letters["a"]?.contains("the process stopped while handling this record 3 times") == true, "\(letters)")
        }
    }

    /// Before the fix a handler could run forever: the heartbeat kept its records in progress.
    @Test("A run longer than the handler's timeout is cancelled, even when the handler ignores cancellation, and counts as an attempt")
    func handlerTimeout() async throws {
        try await withTestNATSServer { server in
            let release = Gate()
            var app = AppBuilder(name: "Timeouts")
            let input = app.table("in")
            let output = app.table("out")
            input.onNewRecords("copy", options: HandlerOptions(maxAttempts: 1, timeout: .milliseconds(200))) { records, ctx in
                if records.entries.contains(where: { $0.id == "stuck" }) {
                    // Ignores cancellation: waits until the test lets it go.
                    await release.wait()
                }
                try await output.append(records.map { $0 }, ctx)
            }
            let graph = try app.build()
            try await Topology.provision(graph: graph, tenants: ["default"], configuration: .init(), connection: server.connection)
            let runner = try Self.runner(graph, server)
            let batch = FetchedBatch(
                deliveries: [Self.delivery("stuck", sequence: 1, count: 1, subject: "aut.default.tbl.in", payload: #"{"n":1}"#)],
                connection: nil
            )
            await runner.process(batch)
            let letters = try await Self.deadLetters(server, atLeast: 1)
            #expect(letters["stuck"]?.contains("did not finish within") == true, "\(letters)")
            await release.open()
        }
    }

    /// A fetched message as the subscription hands it over (its ack goes nowhere).
    static func delivery(_ id: String, sequence: UInt64, count: UInt64, subject: String, payload: String) -> DeliveredMessage {
        DeliveredMessage(
            message: JetStreamMessage(
                subject: subject,
                payload: Array(payload.utf8),
                headerValues: [id, nil, nil, nil, nil],
                deliveryCount: count,
                streamSequence: sequence,
                timestamp: 0
            ),
            reply: "unused"
        )
    }

    /// A message redelivered while its first delivery still waited unfetched can come twice in
    /// one batch (seen under kill -9 with a short ack wait). Handled twice in one context, its
    /// outputs would get indices 0 and 1, two ids JetStream's de-duplication cannot match.
    @Test("A message delivered twice in one batch is handled once, as its latest delivery")
    func duplicateInBatch() async throws {
        try await withTestNATSServer { server in
            let seen = Collected()
            let graph = try Self.copyApp(options: HandlerOptions(), seen: seen)
            try await Topology.provision(graph: graph, tenants: ["default"], configuration: .init(), connection: server.connection)
            let runner = try Self.runner(graph, server)
            func delivery(_ id: String, sequence: UInt64, count: UInt64) -> DeliveredMessage {
                Self.delivery(id, sequence: sequence, count: count, subject: "aut.default.tbl.in", payload: #"{"n":1}"#)
            }
            // Not connected to a subscription: its acks go nowhere.
            let batch = FetchedBatch(
                deliveries: [
                    delivery("a", sequence: 7, count: 1), delivery("b", sequence: 8, count: 1), delivery("a", sequence: 7, count: 2),
                ],
                connection: nil
            )
            await runner.process(batch)
            #expect(seen.all == ["a@2", "b@1"])
            let outputs = try await server.connection.readAll(
                stream: "AUT_DEFAULT_tbl_out",
                subject: "aut.default.tbl.out",
                headers: [],
                atLeast: 2
            )
            #expect(outputs.count == 2)
            #expect(try await server.connection.streamState("AUT_DEFAULT_tbl_out")?.messages == 2)
        }
    }

    @Test("The ordered runner handles a message delivered twice in one batch once, in stream order")
    func orderedDuplicateInBatch() async throws {
        try await withTestNATSServer { server in
            let seen = Collected()
            let graph = try Self.copyApp(options: HandlerOptions().ordered(by: "key", partitions: 2), seen: seen)
            try await Topology.provision(graph: graph, tenants: ["default"], configuration: .init(), connection: server.connection)
            let runner = try Self.orderedRunner(graph, server)
            func delivery(_ id: String, sequence: UInt64, count: UInt64) -> DeliveredMessage {
                Self.delivery(id, sequence: sequence, count: count, subject: "aut.default.tbl.in.p0", payload: #"{"key":"k"}"#)
            }
            // Out of order, and "a" (sequence 7) twice: handled once, as its latest delivery,
            // before "b" (sequence 8).
            let batch = FetchedBatch(
                deliveries: [
                    delivery("b", sequence: 8, count: 1), delivery("a", sequence: 7, count: 1), delivery("a", sequence: 7, count: 2),
                ],
                connection: nil
            )
            let lease = PartitionLease(partition: 0, token: 1, deadline: .now + .seconds(30))
            await runner.process(batch, lease: lease, logger: TestNATSServer.logger)
            #expect(seen.all == ["a@2", "b@1"])
            let outputs = try await server.connection.readAll(
                stream: "AUT_DEFAULT_tbl_out",
                subject: "aut.default.tbl.out",
                headers: [],
                atLeast: 2
            )
            #expect(outputs.count == 2)
            #expect(try await server.connection.streamState("AUT_DEFAULT_tbl_out")?.messages == 2)
        }
    }
}

/// Holds callers until ``open()``, ignoring cancellation.
actor Gate {
    private var isOpen = false
    private var waiters: [CheckedContinuation<Void, Never>] = []

    func wait() async {
        if isOpen { return }
        await withCheckedContinuation { waiters.append($0) }
    }

    func open() {
        isOpen = true
        for waiter in waiters { waiter.resume() }
        waiters = []
    }
}
