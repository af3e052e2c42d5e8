import ClusterCore
import Foundation
import Logging
import NATS
import NIOCore

/// Running one handler on records, the part shared by the unordered ``HandlerRunner`` and the
/// ``OrderedHandlerRunner``: decoding fetched messages, invoking the handler and publishing
/// its outputs, and writing dead letters.
struct HandlerExecution: Sendable {
    let handler: HandlerDefinition
    let invoker: HandlerInvoker
    let tenant: String
    let tables: [String: TableDefinition]
    let connection: NATSConnection
    let logger: Logger

    /// `logger` gets the handler's and tenant's names as metadata.
    init(
        handler: HandlerDefinition,
        invoker: @escaping HandlerInvoker,
        tenant: String,
        tables: [String: TableDefinition],
        connection: NATSConnection,
        logger: Logger
    ) {
        self.handler = handler
        self.invoker = invoker
        self.tenant = tenant
        self.tables = tables
        self.connection = connection
        var logger = logger
        logger[metadataKey: "worker.handler"] = "\(handler.name)"
        logger[metadataKey: "worker.tenant"] = "\(tenant)"
        self.logger = logger
    }

    /// What the handler's consumer filters on (every partition of a partitioned table).
    static func filterSubject(of handler: HandlerDefinition, tenant: String, tables: [String: TableDefinition]) -> String {
        handler.sourceKind == .table
            ? (tables[handler.source]?.filterSubject(tenant: tenant) ?? Wire.tableSubject(tenant: tenant, table: handler.source))
            : Wire.scheduleSubject(tenant: tenant, schedule: handler.source)
    }

    /// The stream holding the handler's source: the table's own, the tenant's for a schedule.
    static func streamName(of handler: HandlerDefinition, tenant: String) -> String {
        Wire.streamName(tenant: tenant, source: handler.source, isTable: handler.sourceKind == .table)
    }

    func incoming(_ message: JetStreamMessage) -> IncomingRecord {
        let values = message.headerValues
        return IncomingRecord(
            metadata: RecordMetadata(
                id: values[0] ?? "seq-\(message.streamSequence)",
                table: handler.source,
                tenant: tenant,
                ingestTime: Date(timeIntervalSince1970: Double(message.timestamp) / 1e9),
                causedBy: values[1],
                traceparent: values[3],
                semanticType: values[2],
                deliveryCount: Int(message.deliveryCount)
            ),
            payload: message.payload,
            subject: message.subject
        )
    }

    /// Runs the handler and publishes its outputs; returns how many outputs it published.
    func run(_ records: [IncomingRecord]) async -> Result<Int, any Error> {
        let ctx = HandlerContext(
            handler: handler.name,
            tenant: tenant,
            inputs: records.map(\.metadata),
            publisher: connection,
            logger: logger,
            tables: tables
        )
        do {
            try await invoker(records, ctx)
            try await ctx.flush()
            logger.debug("Batch handled", metadata: ["worker.records": "\(records.count)", "worker.outputs": "\(ctx.publishedCount)"])
            return .success(ctx.publishedCount)
        } catch {
            return .failure(error)
        }
    }

    /// Publishes `record` to the handler's dead-letter subject with the error and attempts.
    func deadLetter(_ record: IncomingRecord, error: any Error, attempts: Int, firstFailure: Date) async throws {
        var text = String(describing: error).map { $0.isNewline ? " " : $0 }.reduce(into: "") { $0.append($1) }
        if text.utf8.count > 1024 { text = String(text.prefix(1000)) + "…" }
        let now = ISO8601.format(Date())
        var headers: [(String, String)] = [
            (Wire.Header.messageID, "dlq-\(handler.name)-\(record.metadata.id)"),
            (Wire.Header.recordID, record.metadata.id),
            (Wire.Header.table, record.metadata.table),
            (Wire.Header.tenant, tenant),
            (Wire.Header.handler, handler.name),
            (Wire.Header.error, text),
            (Wire.Header.attempts, String(attempts)),
            (Wire.Header.firstFailure, ISO8601.format(firstFailure)),
            (Wire.Header.lastFailure, now),
            (
                Wire.Header.sourceSubject,
                record.subject.isEmpty ? Self.filterSubject(of: handler, tenant: tenant, tables: tables) : record.subject
            ),
        ]
        if let type = record.metadata.semanticType { headers.append((Wire.Header.type, type)) }
        if let cause = record.metadata.causedBy { headers.append((Wire.Header.causedBy, cause)) }
        _ = try await connection.publish(
            OutgoingMessage(
                subject: Wire.deadLetterSubject(tenant: tenant, handler: handler.name),
                payload: .init(bytes: record.payload),
                headers: headers
            )
        )
    }

    /// Tells JetStream the batch is still being worked on while `body` runs longer than a
    /// third of the ack wait, so slow handlers (LLM calls) are not redelivered meanwhile.
    static func withProgressHeartbeat<T: Sendable>(
        _ batch: FetchedBatch,
        ackWait: Duration,
        _ body: @escaping @Sendable () async -> T
    ) async -> T {
        let interval = ackWait / 3
        return await withTaskGroup(of: T?.self) { group in
            group.addTask { await body() }
            group.addTask {
                while !Task.isCancelled {
                    try? await Task.sleep(for: interval)
                    if Task.isCancelled { break }
                    for i in 0..<batch.count { batch.inProgress(i) }
                }
                return nil
            }
            var result: T?
            while let next = await group.next() {
                if let value = next {
                    result = value
                    group.cancelAll()
                }
            }
            return result!
        }
    }
}
