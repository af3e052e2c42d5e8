import Foundation
public import Logging
package import NATS
package import NIOCore
import Synchronization

/// Publishes messages to JetStream and returns when all have their PubAck.
/// `NATSConnection` is the production implementation.
package protocol MessagePublisher: Sendable {
    func publish(_ messages: [OutgoingMessage]) async throws -> [PublishAck]
}

extension NATSConnection: MessagePublisher {}

/// A record body waiting to be appended, with the record it was derived from.
///
/// Only the runtime makes these (in ``Table``'s `append` methods); the type is
/// public because ``AppendContext`` names it.
public struct PendingRecord: Sendable {
    package var payload: [UInt8]
    package var cause: RecordMetadata?

    package init(payload: [UInt8], cause: RecordMetadata?) {
        self.payload = payload
        self.cause = cause
    }
}

/// Where appends go: a handler's context (outputs published after the handler returns) or a
/// route's context (published at once; `append` returns after the PubAck). The runtime's
/// contexts are the implementations; an app passes the one it was given.
public protocol AppendContext: Sendable {
    var tenant: String { get }
    func append(_ records: [PendingRecord], to table: TableDefinition) async throws
}

extension Wire {
    /// Builds the message for one record with every header of the wire contract.
    package static func message(
        payload: [UInt8],
        id: String,
        table: TableDefinition,
        tenant: String,
        cause: RecordMetadata?,
        traceparent: String? = nil
    ) -> OutgoingMessage {
        message(payload: ByteBuffer(bytes: payload), id: id, table: table, tenant: tenant, cause: cause, traceparent: traceparent)
    }

    /// Builds the message for one record with every header of the wire contract.
    package static func message(
        payload: ByteBuffer,
        id: String,
        table: TableDefinition,
        tenant: String,
        cause: RecordMetadata?,
        traceparent: String? = nil
    ) -> OutgoingMessage {
        message(
            payload: payload,
            id: id,
            table: table,
            tenant: tenant,
            cause: cause,
            subject: table.subject(tenant: tenant, payload: payload),
            type: table.semanticType.description,
            traceparent: traceparent
        )
    }

    /// The same, with the subject and type computed once for many records of one table.
    static func message(
        payload: ByteBuffer,
        id: String,
        table: TableDefinition,
        tenant: String,
        cause: RecordMetadata?,
        subject: String,
        type: String,
        traceparent: String? = nil
    ) -> OutgoingMessage {
        var headers: [(String, String)] = []
        headers.reserveCapacity(6)
        headers.append((Header.messageID, id))
        headers.append((Header.table, table.name))
        headers.append((Header.tenant, tenant))
        headers.append((Header.type, type))
        if let cause { headers.append((Header.causedBy, cause.id)) }
        if let trace = traceparent ?? cause?.traceparent { headers.append((Header.traceparent, trace)) }
        return OutgoingMessage(subject: subject, payload: payload, headers: headers)
    }
}

/// The context a handler receives with each batch.
///
/// Appends are buffered and published when the handler returns (or in chunks while it runs);
/// the worker acknowledges the batch only after every output has its PubAck. Output ids are
/// derived from the source record, the handler name and the output's position among that
/// record's outputs, so a record that is redelivered — in the same batch, another batch, or
/// alone — produces the same ids and JetStream drops the repeats.
///
/// The source of an append is, in order: the one it names (`records.map { … }`,
/// `causedBy:`), else the record the current task's loop over the batch is on (see
/// ``Records``). An append with neither fails with a ``LineageError`` rather than getting an
/// id that another delivery would not reproduce.
public final class HandlerContext: AppendContext, TableReading {
    public let handler: String
    public let tenant: String
    /// Log through this, not `print`: its lines carry the handler's and tenant's names, and
    /// standard output is block-buffered when it is not a terminal.
    public let logger: Logger
    /// The records of the batch being handled.
    public let inputs: [RecordMetadata]
    let publisher: any MessagePublisher
    private let flushThreshold: Int
    /// Which record of the batch each task is working on.
    package let lineage = LineageCursor()
    /// The trace context outputs carry instead of their source's: the handler run's span,
    /// when spans are recorded.
    private let outputTraceparent: String?

    private struct State {
        var outputs: [OutgoingMessage] = []
        var counters: [String: Int] = [:]
        var published = 0
    }

    private let state = Mutex(State())

    package init(
        handler: String,
        tenant: String,
        inputs: [RecordMetadata],
        publisher: any MessagePublisher,
        logger: Logger,
        tables: [String: TableDefinition] = [:],
        declaredOutputs: [String] = [],
        flushThreshold: Int = 4096,
        outputTraceparent: String? = nil,
        tableReader: TableReader? = nil
    ) {
        self.tableReader = tableReader
        self.outputTraceparent = outputTraceparent
        self.tables = tables
        self.declaredOutputs = Set(declaredOutputs)
        self.handler = handler
        self.tenant = tenant
        self.inputs = inputs
        self.publisher = publisher
        self.logger = logger
        self.flushThreshold = flushThreshold
    }

    /// Runs `body` with `record` as the source of appends that name none (a schedule's tick).
    package func handling<T>(_ record: RecordMetadata, _ body: () async throws -> T) async rethrows -> T {
        var walk = LineageWalk(cursor: lineage)
        walk.visit(record)
        defer { walk.visit(nil) }
        return try await body()
    }

    /// The source of appends that name none, as the current task sees it.
    private func implicitCause(table: String) throws(LineageError) -> RecordMetadata {
        switch lineage.current() {
        case .record(let record):
            return record
        case .otherTask:
            throw LineageError(handler: handler, table: table, reason: "from a task other than the one looping over its records")
        case .none:
            throw LineageError(handler: handler, table: table, reason: "outside any loop over its records, naming no source record")
        }
    }

    public func append(_ records: [PendingRecord], to table: TableDefinition) async throws {
        if declaredOutputs.isEmpty {
            UndeclaredWrites.note(handler: handler, table: table.name, logger: logger)
        } else if !declaredOutputs.contains(table.name) {
            throw UndeclaredWriteError(handler: handler, table: table.name, declared: declaredOutputs.sorted())
        }
        // One subject for every record of an unpartitioned table.
        let fixedSubject = table.partitioning == nil ? table.subject(tenant: tenant) : nil
        let type = table.semanticType.description
        var implicit: RecordMetadata?
        if records.contains(where: { $0.cause == nil }) { implicit = try implicitCause(table: table.name) }
        let shouldFlush = state.withLock { state -> Bool in
            state.outputs.reserveCapacity(state.outputs.count + records.count)
            for record in records {
                let cause = record.cause ?? implicit!
                let index = state.counters[cause.id, default: 0]
                state.counters[cause.id] = index + 1
                let id = Wire.outputID(source: cause.id, handler: handler, index: index)
                let payload = ByteBuffer(bytes: record.payload)
                let subject = fixedSubject ?? table.subject(tenant: tenant, payload: payload)
                state.outputs.append(
                    Wire.message(
                        payload: payload,
                        id: id,
                        table: table,
                        tenant: tenant,
                        cause: cause,
                        subject: subject,
                        type: type,
                        traceparent: outputTraceparent
                    )
                )
            }
            return state.outputs.count >= flushThreshold
        }
        if shouldFlush { try await flush() }
    }

    /// Reads kept tables (``Table/records(since:until:sinceSequence:where:order:limit:cursor:_:)``).
    package let tableReader: TableReader?
    /// Tables this context may append to by name (components address outputs by name).
    let tables: [String: TableDefinition]
    /// The tables the handler declared it writes (`writes:`); empty when it declared none.
    let declaredOutputs: Set<String>

    /// Appends to the table named `name`.
    package func append(name: String, _ records: [PendingRecord]) async throws {
        guard let table = tables[name] else { throw ConfigurationError("table '\(name)' is not declared") }
        try await append(records, to: table)
    }

    /// Publishes buffered outputs and waits for their PubAcks.
    package func flush() async throws {
        let pending = state.withLock { state -> [OutgoingMessage] in
            defer { state.outputs.removeAll(keepingCapacity: true) }
            return state.outputs
        }
        guard !pending.isEmpty else { return }
        _ = try await publisher.publish(pending)
        state.withLock { $0.published += pending.count }
    }

    /// How many outputs this context has published so far.
    package var publishedCount: Int { state.withLock { $0.published } }
}

/// The context of an HTTP route: appends are published at once and `append` returns after
/// the PubAck, so a route that answers 2xx after appending has made its records durable.
public final class RouteContext: AppendContext, TableReading {
    public let tenant: String
    public let logger: Logger
    /// Reads kept tables (``Table/records(since:until:sinceSequence:where:order:limit:cursor:_:)``).
    package let tableReader: TableReader?
    private let publisher: any MessagePublisher
    private let ids: RecordIDGenerator
    private let idempotencyKey: String?
    /// The request's W3C trace context, carried by the records the route appends.
    private let traceparent: String?
    private let counter = Mutex(0)

    package init(
        tenant: String,
        publisher: any MessagePublisher,
        ids: RecordIDGenerator,
        idempotencyKey: String?,
        traceparent: String? = nil,
        logger: Logger,
        tableReader: TableReader? = nil
    ) {
        self.tableReader = tableReader
        self.traceparent = traceparent
        self.tenant = tenant
        self.publisher = publisher
        self.ids = ids
        self.idempotencyKey = idempotencyKey
        self.logger = logger
    }

    public func append(_ records: [PendingRecord], to table: TableDefinition) async throws {
        let messages = records.map { record -> OutgoingMessage in
            let id: String
            if let key = idempotencyKey {
                let n = counter.withLock { n -> Int in
                    defer { n += 1 }
                    return n
                }
                id = n == 0 ? key : "\(key)-\(n)"
            } else {
                id = ids.next()
            }
            return Wire.message(
                payload: record.payload,
                id: id,
                table: table,
                tenant: tenant,
                cause: record.cause,
                traceparent: record.cause == nil ? traceparent : nil
            )
        }
        _ = try await publisher.publish(messages)
    }
}

/// A handler that declared the tables it writes (`writes:`) appended to another one.
public struct UndeclaredWriteError: Error, Sendable, CustomStringConvertible {
    public var handler: String
    public var table: String
    public var declared: [String]

    public var description: String {
        "handler '\(handler)' appends to table '\(table)', which its writes: list (\(declared.joined(separator: ", "))) does not name"
    }
}

/// Appends by handlers that declared no `writes:`: logged once per handler and table, since
/// such a table stays open to the record API (see ``RecordAPIAccess``).
enum UndeclaredWrites {
    // Guarded by the mutex: handler and table names, joined by a NUL, already warned about.
    private static let seen = Mutex<Set<String>>([])

    static func note(handler: String, table: String, logger: Logger) {
        let first = seen.withLock { $0.count < 10_000 && $0.insert(handler + "\u{0}" + table).inserted }
        guard first else { return }
        logger.warning(
            "Handler appends to a table it does not declare; list it in writes: so that clients cannot append to it through the record API",
            metadata: ["worker.handler": "\(handler)", "worker.table": "\(table)"]
        )
    }
}
