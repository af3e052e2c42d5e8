package import Foundation

/// Storage sinks: a kept table's records are written to its storage by a system handler,
/// `store-<table>`, that runs in the workers like any handler (its own durable consumer,
/// retries, dead letters, metrics, scale-out). Writes are idempotent by record id, so a
/// redelivered batch is kept once.
extension HandlerDefinition {
    /// The component kind of storage sinks, as `describe` shows it.
    package static let sinkComponent = "storage-sink"

    /// The name of the sink handler of `table`.
    package static func sinkName(table: String) -> String { "store-" + table }

    /// How a sink consumes: large batches (one COPY or one object each; LoadTests scenario g
    /// drained a stream into PostgreSQL at 0.75 × a raw COPY with batches of 1,000 and at
    /// about 1 × with 4,096, with two batches in flight), a short wait so a trickle is kept
    /// promptly, and 10 attempts for failures that are neither an outage (retried without
    /// counting) nor a record the database refuses (dead-lettered at once).
    package static let sinkOptions = HandlerOptions(
        batchSize: 4_096,
        maxWait: .milliseconds(200),
        concurrency: 2,
        maxAttempts: 10,
        retryBackoff: [.seconds(1), .seconds(5), .seconds(30), .seconds(120)]
    )

    /// The sink that keeps `table` in `storage`. `resolve` returns the opened storage in the
    /// processes that run handlers; the coordinator only provisions the sink's consumer.
    ///
    /// A sink `inOrder` (object stores, whose object names follow the stream's order) reads
    /// the table one batch at a time across the cluster, as an ordered handler with one
    /// partition that covers the whole table; a redelivered batch then starts where it
    /// started before.
    package static func sink(
        table: TableDefinition,
        storage: String,
        inOrder: Bool = false,
        resolve: @escaping @Sendable (String) -> (any TableStorage)?
    ) -> HandlerDefinition {
        var sink = HandlerDefinition(
            name: sinkName(table: table.name),
            source: table.name,
            sourceKind: .table,
            options: inOrder ? sinkOptions.ordered(by: "", partitions: 1) : sinkOptions,
            component: sinkComponent,
            requiredFields: [],
            outputs: [],
            producedFields: [:],
            secrets: [],
            prepare: { _ in
                guard let opened = resolve(storage) else {
                    throw ConfigurationError("storage '\(storage)' of table '\(table.name)' is not open in this process")
                }
                // A storage that cannot be reached throws a transient StorageError (retried
                // without counting attempts); on any other error the records are tried one by
                // one, and the one at fault is dead-lettered (at once when the database refuses
                // it, else after its attempts).
                return { records, ctx in try await opened.write(records, table: table, tenant: ctx.tenant) }
            }
        )
        // No app code runs in a sink, so no record can stop the process: a batch that comes
        // back after a worker died is written as a batch again (idempotent by record id).
        sink.isolatesRedeliveries = false
        sink.consumesWholeTable = inOrder
        return sink
    }

    /// Whether this handler is a storage sink.
    package var isSink: Bool { component == Self.sinkComponent }
}

extension AppGraph {
    /// The graph with every table in `bindings` (table name → storage name) kept: its
    /// definition names the storage, and a sink handler writes its records there (in stream
    /// order for the storages in `inOrder`). A table the app already binds keeps the app's
    /// binding unless `bindings` names another.
    package func keeping(
        _ bindings: [String: String],
        inOrder: Set<String> = [],
        resolve: @escaping @Sendable (String) -> (any TableStorage)?
    ) -> AppGraph {
        var tables = self.tables
        var handlers = self.handlers.filter { !$0.isSink }
        for index in tables.indices where tables[index].kind == .table {
            if let storage = bindings[tables[index].name] { tables[index].storage = storage }
            if let storage = tables[index].storage {
                handlers.append(.sink(table: tables[index], storage: storage, inOrder: inOrder.contains(storage), resolve: resolve))
            }
        }
        return AppGraph(name: name, tables: tables, handlers: handlers, routes: routes, webhooks: webhooks, schedules: schedules)
    }

    /// The graph with `retention` (table name → limits) over the tables' own, and the sinks
    /// of the tables in `backfill` (table name → time) starting at that time when their
    /// consumers are first created.
    package func applying(retention: [String: StreamRetention], backfill: [String: Date]) -> AppGraph {
        var tables = self.tables
        for index in tables.indices {
            if let override = retention[tables[index].name] { tables[index].retention = tables[index].retention.overridden(by: override) }
        }
        var handlers = self.handlers
        for index in handlers.indices where handlers[index].isSink {
            handlers[index].startTime = backfill[handlers[index].source]
        }
        return AppGraph(name: name, tables: tables, handlers: handlers, routes: routes, webhooks: webhooks, schedules: schedules)
    }

    /// The tables kept in a storage, by table name → storage name.
    package var storageBindings: [String: String] {
        var bindings: [String: String] = [:]
        for table in tables where table.kind == .table {
            if let storage = table.storage { bindings[table.name] = storage }
        }
        return bindings
    }
}
