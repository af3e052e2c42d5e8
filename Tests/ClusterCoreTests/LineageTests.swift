import ClusterCore
import Logging
import NATS
import NIOCore
import Synchronization
import Testing

/// Output ids must not depend on how records are batched: a record redelivered after a crash,
/// in another batch or alone, must produce the same ids whatever shape the handler has.
@Suite("Lineage of appends in every handler shape")
struct LineageTests {
    struct Item: Record {
        static let semanticType: SemanticType = "test.item@1"
        var n: Int
    }

    struct Out: Record {
        static let semanticType: SemanticType = "test.out@1"
        var n: Int
        var tag: String
    }

    /// Builds an app with one handler written as `body`, and runs it on `batch`.
    static func run(
        _ batches: [[Int]],
        _ body: @escaping @Sendable (Records<Item>, HandlerContext, Table<Out>, Table<Out>) async throws -> Void
    ) async throws -> [[String: String]] {
        var app = AppBuilder(name: "Lineage")
        let items = app.table("items", of: Item.self)
        let first = app.table("first", of: Out.self)
        let second = app.table("second", of: Out.self)
        items.onNewRecords("shape") { records, ctx in try await body(records, ctx, first, second) }
        let graph = try app.build()
        let handler = try #require(graph.handlers.first { $0.name == "shape" })
        let invoke = try handler.prepare(ComponentEnvironment(environment: [:], logger: Logger(label: "test")))
        var results: [[String: String]] = []
        for batch in batches {
            let publisher = RecordingPublisher()
            let raw = batch.map { n in
                IncomingRecord(metadata: RecordMetadata(id: "r\(n)", table: "items", tenant: "t"), payload: Array(#"{"n":\#(n)}"#.utf8))
            }
            let ctx = HandlerContext(
                handler: "shape",
                tenant: "t",
                inputs: raw.map(\.metadata),
                publisher: publisher,
                logger: Logger(label: "test")
            )
            try await invoke(raw, ctx)
            try await ctx.flush()
            // Output id → the table, the record that caused it, and the body.
            var outputs: [String: String] = [:]
            for message in publisher.published.withLock({ $0 }) {
                let header = { (name: String) in message.headers.first { $0.0 == name }?.1 ?? "-" }
                outputs[header("Nats-Msg-Id")] = header("Aut-Table") + " " + header("Aut-Caused-By") + " " + String(buffer: message.payload)
            }
            results.append(outputs)
        }
        return results
    }

    /// The ids of `shape` run on records 1…6 as one batch equal those of other batchings.
    static func expectStable(
        _ body: @escaping @Sendable (Records<Item>, HandlerContext, Table<Out>, Table<Out>) async throws -> Void,
        outputsPerRecord: Int,
        sourceLocation: SourceLocation = #_sourceLocation
    ) async throws {
        let whole = try await run([[1, 2, 3, 4, 5, 6]], body)[0]
        #expect(whole.count == 6 * outputsPerRecord, sourceLocation: sourceLocation)
        for batching in [[[6, 5, 4], [3, 2, 1]], [[1], [2], [3], [4], [5], [6]], [[2, 4, 6, 1], [3, 5]]] {
            var merged: [String: String] = [:]
            for outputs in try await run(batching, body) { merged.merge(outputs) { a, _ in a } }
            #expect(merged == whole, "batched as \(batching)", sourceLocation: sourceLocation)
        }
        for (id, output) in whole {
            let parts = output.split(separator: " ", maxSplits: 2)
            let source = parts[1]
            #expect(
                parts[2].contains(#""n":\#(source.dropFirst())"#),
                "output \(id) names its own record as its cause",
                sourceLocation: sourceLocation
            )
        }
    }

    @Test("for … in, with an await in the body and two tables per record")
    func forIn() async throws {
        try await Self.expectStable(
            { records, ctx, first, second in
                for item in records {
                    try await first.append(Out(n: item.n, tag: "a"), ctx)
                    await Task.yield()
                    try await second.append(Out(n: item.n, tag: "b"), ctx)
                    try await first.append(Out(n: item.n, tag: "c"), ctx)
                }
            },
            outputsPerRecord: 3
        )
    }

    @Test("forEach with await (and a synchronous forEach still needs none)")
    func forEach() async throws {
        try await Self.expectStable(
            { records, ctx, first, _ in
                var seen = 0
                records.forEach { _ in seen += 1 }
                try await records.forEach { item in try await first.append(Out(n: item.n, tag: "e\(seen > 0)"), ctx) }
            },
            outputsPerRecord: 1
        )
    }

    @Test("An index loop, enumerated(), and a loop over filter or sorted")
    func indexLoops() async throws {
        try await Self.expectStable(
            { records, ctx, first, _ in
                for i in records.indices { try await first.append(Out(n: records[i].n, tag: "i"), ctx) }
            },
            outputsPerRecord: 1
        )
        try await Self.expectStable(
            { records, ctx, first, _ in
                for (i, item) in records.enumerated() { try await first.append(Out(n: item.n, tag: "\(i >= 0)"), ctx) }
            },
            outputsPerRecord: 1
        )
        try await Self.expectStable(
            { records, ctx, first, second in
                for item in records.filter({ $0.n % 2 == 0 }) { try await first.append(Out(n: item.n, tag: "even"), ctx) }
                for item in records.sorted(by: { $0.n > $1.n }) where item.n % 2 == 1 {
                    try await second.append(Out(n: item.n, tag: "odd"), ctx)
                }
            },
            outputsPerRecord: 1
        )
    }

    @Test("map, then a loop over the derived values; a nested loop hands the outer record back")
    func derivedAndNested() async throws {
        try await Self.expectStable(
            { records, ctx, first, _ in
                let doubled = records.map { $0.n * 2 }
                for value in doubled { try await first.append(Out(n: value / 2, tag: "d"), ctx) }
            },
            outputsPerRecord: 1
        )
        try await Self.expectStable(
            { records, ctx, first, _ in
                for item in records {
                    var total = 0
                    for other in records { total += other.n }
                    try await first.append(Out(n: item.n, tag: "seen \(total > 0)"), ctx)
                }
            },
            outputsPerRecord: 1
        )
    }

    @Test("An append after the loop, or from a child task, fails and names the fix")
    func ambiguous() async throws {
        let error = await #expect(throws: LineageError.self) {
            _ = try await Self.run([[1, 2]]) { records, ctx, first, _ in
                var total = 0
                for item in records { total += item.n }
                try await first.append(Out(n: total, tag: "sum"), ctx)
            }
        }
        #expect(error?.description.contains("summarizing: records") == true)
        #expect(error?.description.contains("'shape'") == true)
        await #expect(throws: LineageError.self) {
            _ = try await Self.run([[1, 2]]) { records, ctx, first, _ in
                try await withThrowingTaskGroup(of: Void.self) { group in
                    for item in records {
                        group.addTask { try await first.append(Out(n: item.n, tag: "child"), ctx) }
                    }
                    try await group.waitForAll()
                }
            }
        }
        // Concurrent work that names its sources is fine.
        let named = try await Self.run([[1, 2]]) { records, ctx, first, _ in
            try await withThrowingTaskGroup(of: Void.self) { group in
                for entry in records.entries {
                    group.addTask { try await first.append(Out(n: entry.value.n, tag: "named"), causedBy: entry, ctx) }
                }
                try await group.waitForAll()
            }
        }
        #expect(named[0].count == 2)
    }

    @Test("A summary of the batch has one id for the same set of records, whatever their order")
    func summary() async throws {
        let body: @Sendable (Records<Item>, HandlerContext, Table<Out>, Table<Out>) async throws -> Void = { records, ctx, first, _ in
            try await first.append(Out(n: records.reduce(0) { $0 + $1.n }, tag: "sum"), summarizing: records, ctx)
        }
        let runs = try await Self.run([[1, 2, 3], [3, 1, 2], [1, 2]], body)
        #expect(runs[0].keys.sorted() == runs[1].keys.sorted())
        #expect(runs[0].keys.sorted() != runs[2].keys.sorted())
        #expect(runs[0].values.first?.contains("batch-") == true)
    }

    @Test("A schedule's appends are caused by their tick and counted as the batch's outputs")
    func scheduleTicks() async throws {
        var app = AppBuilder(name: "Ticks")
        let notes = app.table("notes")
        app.schedule("beat", .every(.seconds(60))) { tick, ctx in
            try await notes.append(["at": .string(tick.fireTime)], ctx)
            try await notes.append(["again": true], ctx)
        }
        let graph = try app.build()
        let handler = try #require(graph.handlers.first { $0.name == "schedule-beat" })
        let invoke = try handler.prepare(ComponentEnvironment(environment: [:], logger: Logger(label: "test")))
        let raw = ["t1", "t2"].map { id in
            IncomingRecord(
                metadata: RecordMetadata(id: id, table: "beat", tenant: "t"),
                payload: Array(#"{"schedule":"beat","fire_time":"2026-12-07T00:00:00Z"}"#.utf8)
            )
        }
        let publisher = RecordingPublisher()
        let ctx = HandlerContext(
            handler: handler.name,
            tenant: "t",
            inputs: raw.map(\.metadata),
            publisher: publisher,
            logger: Logger(label: "test")
        )
        try await invoke(raw, ctx)
        try await ctx.flush()
        #expect(ctx.publishedCount == 4, "the worker's log line counts what the schedule appended")
        #expect((0..<4).map { publisher.header("Aut-Caused-By", of: $0) } == ["t1", "t1", "t2", "t2"])
    }

    @Test("A table handle appends with the built graph's definition: an ordered reader's partitions")
    func boundToGraph() throws {
        var app = AppBuilder(name: "Bound")
        let events = app.table("events")
        events.onNewRecords("ordered", options: HandlerOptions().ordered(by: "key", partitions: 4)) { _, _ in }
        #expect(events.definition.partitioning == nil)
        _ = try app.build()
        #expect(events.definition.partitioning == HandlerOrdering(field: "key", partitions: 4))
        let subject = events.definition.subject(tenant: "t", payload: .init(string: #"{"key":"k"}"#))
        #expect(subject.hasPrefix("aut.t.tbl.events."))
    }
}
