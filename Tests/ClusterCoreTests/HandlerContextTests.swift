import ClusterCore
import Logging
import NATS
import Synchronization
import Testing

/// Records what a handler context publishes.
final class RecordingPublisher: MessagePublisher {
    let published = Mutex<[OutgoingMessage]>([])

    func publish(_ messages: [OutgoingMessage]) async throws -> [PublishAck] {
        published.withLock { $0 += messages }
        return messages.indices.map { PublishAck(sequence: UInt64($0 + 1), duplicate: false) }
    }

    func header(_ name: String, of index: Int) -> String? {
        published.withLock { $0[index].headers.first { $0.0 == name }?.1 }
    }
}

@Suite("Handler context")
struct HandlerContextTests {
    static let table = try! {
        var app = AppBuilder(name: "Context")
        _ = app.table("out")
        return try app.build().table("out")!
    }()

    func context(_ ids: [String], publisher: RecordingPublisher) -> HandlerContext {
        HandlerContext(
            handler: "h",
            tenant: "t",
            inputs: ids.map { RecordMetadata(id: $0, table: "in", tenant: "t") },
            publisher: publisher,
            logger: Logger(label: "test")
        )
    }

    @Test("An output's own cause wins; an append with no cause outside a loop over the batch fails")
    func ownCause() async throws {
        let publisher = RecordingPublisher()
        let ctx = context(["only"], publisher: publisher)
        let other = RecordMetadata(id: "other", table: "in", tenant: "t")
        try await ctx.append([PendingRecord(payload: Array("{}".utf8), cause: other)], to: Self.table)
        await #expect(throws: LineageError.self) {
            try await ctx.append([PendingRecord(payload: Array("{}".utf8), cause: nil)], to: Self.table)
        }
        try await ctx.flush()
        #expect(publisher.header("Aut-Caused-By", of: 0) == "other")
        #expect(ctx.publishedCount == 1)
    }

    @Test("A handler that declares writes: fails on an append to another table; the graph knows which tables are outputs")
    func declaredWrites() async throws {
        var app = AppBuilder(name: "Writes")
        let input = app.table("in")
        let out = app.table("out")
        let other = app.table("other")
        let open = app.table("open_out", recordAPI: .open)
        let closed = app.table("closed_in", recordAPI: .closed)
        input.onNewRecords("copy", writes: [out, open]) { _, _ in }
        app.schedule("tick", .every(.seconds(60)), writes: [other]) { _, _ in }
        _ = closed
        let graph = try app.build()
        let access = Dictionary(
            uniqueKeysWithValues: graph.tables.filter { $0.kind == .table }.map { ($0.name, graph.acceptsRecordAPI($0)) }
        )
        #expect(access == ["in": true, "out": false, "other": false, "open_out": true, "closed_in": false])
        #expect(graph.writers(of: "out") == ["copy"] && graph.writers(of: "other") == ["schedule-tick"])

        let publisher = RecordingPublisher()
        let ctx = HandlerContext(
            handler: "copy",
            tenant: "t",
            inputs: [RecordMetadata(id: "a", table: "in", tenant: "t")],
            publisher: publisher,
            logger: Logger(label: "test"),
            declaredOutputs: ["out", "open_out"]
        )
        let source = RecordMetadata(id: "a", table: "in", tenant: "t")
        try await out.append(["n": 1], causedBy: source, ctx)
        let error = await #expect(throws: UndeclaredWriteError.self) { try await other.append(["n": 1], causedBy: source, ctx) }
        #expect(error?.description.contains("'other'") == true)
    }
}
