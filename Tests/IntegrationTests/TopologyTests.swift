import Autonomous
import AutonomousTesting
import Coordinator
import Foundation
import NATS
import NIOCore
import Testing

@Suite("Stream topology against a real nats-server")
struct TopologyTests {
    static func graph() throws -> AppGraph {
        var app = AppBuilder(name: "Topology")
        let orders = app.table("orders")
        let enriched = app.table("enriched")
        orders.onNewRecords("enrich") { records, ctx in
            try await enriched.append(records.map { $0 }, ctx)
        }
        app.schedule("nightly", .daily(at: "03:00")) { _, _ in }
        return try app.build()
    }

    @Test("Each table gets its own stream; the tenant stream keeps schedules and dead letters")
    func streamPerTable() async throws {
        try await withTestNATSServer { server in
            let connection = server.connection
            try await Topology.provision(graph: Self.graph(), tenants: ["acme"], configuration: .init(), connection: connection)
            #expect(try await connection.streamState("AUT_ACME_tbl_orders")?.subjects == ["aut.acme.tbl.orders", "aut.acme.tbl.orders.>"])
            #expect(try await connection.streamState("AUT_ACME_tbl_enriched") != nil)
            #expect(try await connection.streamState("AUT_ACME")?.subjects == ["aut.acme.sched.>", "aut.acme.dlq.>", "aut.acme.run.>"])
            #expect(try await connection.consumerState(stream: "AUT_ACME_tbl_orders", consumer: "h_enrich") != nil)
            // A record lands in its table's stream only.
            _ = try await connection.publish(
                OutgoingMessage(subject: "aut.acme.tbl.orders", payload: ByteBuffer(string: #"{"n":1}"#), headers: [("Nats-Msg-Id", "o-1")])
            )
            #expect(try await connection.streamState("AUT_ACME_tbl_orders")?.messages == 1)
            #expect(try await connection.streamState("AUT_ACME")?.messages == 0)
            // Provisioning again (every coordinator start) changes nothing.
            try await Topology.provision(graph: Self.graph(), tenants: ["acme"], configuration: .init(), connection: connection)
            #expect(try await connection.streamState("AUT_ACME_tbl_orders")?.messages == 1)
        }
    }

    @Test("A one-stream tenant stream is refused while a handler has records to process there, then narrowed keeping its records")
    func legacyStream() async throws {
        try await withTestNATSServer { server in
            let connection = server.connection
            try await connection.createOrUpdateStream(StreamConfiguration(name: "AUT_ACME", subjects: ["aut.acme.>"]))
            try await connection.createOrUpdateConsumer(
                stream: "AUT_ACME",
                ConsumerConfiguration(durableName: "h_enrich", filterSubject: "aut.acme.tbl.orders")
            )
            _ = try await connection.publish(
                OutgoingMessage(subject: "aut.acme.tbl.orders", payload: ByteBuffer(string: #"{"n":1}"#), headers: [("Nats-Msg-Id", "o-1")])
            )
            _ = try await connection.publish(
                OutgoingMessage(
                    subject: "aut.acme.dlq.enrich",
                    payload: ByteBuffer(string: #"{"n":0}"#),
                    headers: [("Nats-Msg-Id", "dlq-1")]
                )
            )
            let error = await #expect(throws: ConfigurationError.self) {
                try await Topology.provision(graph: Self.graph(), tenants: ["acme"], configuration: .init(), connection: connection)
            }
            #expect(error?.description.contains("AUT_ACME") == true)
            #expect(error?.description.contains("h_enrich (1 pending, 0 unacknowledged)") == true, "\(error?.description ?? "")")
            #expect(try await connection.streamState("AUT_ACME")?.messages == 2, "nothing was touched")
            #expect(try await connection.streamState("AUT_ACME_tbl_orders") == nil)

            // The earlier version's worker processes the record: the stream may move on.
            let subscription = try await connection.pullSubscription(
                stream: "AUT_ACME",
                consumer: "h_enrich",
                filterSubject: "aut.acme.tbl.orders",
                headers: []
            )
            let batch = try await subscription.fetch(maxMessages: 10, timeout: .seconds(5))
            #expect(batch.count == 1)
            batch.ack(0)
            subscription.close()
            #expect(
                try await eventually(timeout: .seconds(5)) {
                    try await connection.consumerState(stream: "AUT_ACME", consumer: "h_enrich")?.numAckPending == 0
                }
            )
            try await Topology.provision(graph: Self.graph(), tenants: ["acme"], configuration: .init(), connection: connection)
            #expect(try await connection.streamState("AUT_ACME")?.subjects == ["aut.acme.sched.>", "aut.acme.dlq.>", "aut.acme.run.>"])
            #expect(try await connection.streamState("AUT_ACME")?.messages == 2, "the dead letter and the processed record stay")
            #expect(try await connection.streamState("AUT_ACME_tbl_orders") != nil)
            #expect(try await connection.consumerState(stream: "AUT_ACME", consumer: "h_enrich") == nil, "the old consumer is gone")
            #expect(try await connection.consumerState(stream: "AUT_ACME_tbl_orders", consumer: "h_enrich") != nil)
            let deadLetters = try await connection.readAll(
                stream: "AUT_ACME",
                subject: "aut.acme.dlq.>",
                headers: [],
                atLeast: 1,
                timeout: .seconds(5)
            )
            #expect(deadLetters.count == 1, "dead letters are still read from the tenant stream")
        }
    }
}
