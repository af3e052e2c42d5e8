import Autonomous
import AutonomousTesting
import Coordinator
import Foundation
import Testing

@testable import NATS
@testable import Worker

@Suite("Handler runner against a real nats-server")
struct HandlerRunnerTests {
    /// `in → copy → out`; the handler notes each record it sees as `id@deliveryCount`.
    static func copyApp(options: HandlerOptions, seen: Collected) throws -> AppGraph {
        var app = AppBuilder(name: "Duplicates")
        let input = app.table("in")
        let output = app.table("out")
        input.onNewRecords("copy", options: options) { records, ctx in
            seen.add(records.entries.map { "\($0.id)@\($0.metadata.deliveryCount)" })
            try await output.append(records.map { $0 }, ctx)
        }
        return try app.build()
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
            let handler = try #require(graph.handlers.first)
            let runner = HandlerRunner(
                handler: handler,
                invoker: try handler.prepare(ComponentEnvironment(environment: [:], logger: TestNATSServer.logger)),
                tenant: "default",
                tables: Dictionary(uniqueKeysWithValues: graph.tables.map { ($0.name, $0) }),
                ackWait: .seconds(30),
                connection: server.connection,
                logger: TestNATSServer.logger
            )
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
            let handler = try #require(graph.handlers.first)
            let tables = Dictionary(uniqueKeysWithValues: graph.tables.map { ($0.name, $0) })
            let runner = OrderedHandlerRunner(
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
