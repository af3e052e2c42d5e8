import ClusterCore
import Foundation
import Logging
import NATS
import NIOCore
import Synchronization

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
    let tableReader: TableReader?
    let tracing = HandlerTracing()
    /// One noted run at a time: a run note blames its record for a process that stops during
    /// the run, so a record run alone in another fetch loop at that moment would be blamed too
    /// (and dead-lettered, innocent, after its attempts). Noted runs are redeliveries only.
    let notedRuns = SerialGate()

    /// `logger` gets the handler's and tenant's names as metadata.
    init(
        handler: HandlerDefinition,
        invoker: @escaping HandlerInvoker,
        tenant: String,
        tables: [String: TableDefinition],
        connection: NATSConnection,
        logger: Logger,
        tableReader: TableReader?
    ) {
        self.tableReader = tableReader
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
        IncomingRecord(message, table: handler.source, tenant: tenant)
    }

    /// Runs the handler and publishes its outputs; returns how many outputs it published.
    /// With a tracer bootstrapped, the run is a span (``HandlerTracing``) and its outputs
    /// carry the span's trace context.
    func run(_ records: [IncomingRecord]) async -> Result<Int, any Error> {
        // Storage sinks record no spans: every table is kept in dev, and a span per sink batch
        // would double what is exported without saying anything about the app's own logic
        // (their metrics show their work).
        guard tracing.isEnabled, !handler.isSink else { return await run(records, outputTraceparent: nil) }
        return await tracing.run(handler: handler, tenant: tenant, records: records) { outputTraceparent in
            await run(records, outputTraceparent: outputTraceparent)
        }
    }

    private func run(_ records: [IncomingRecord], outputTraceparent: String?) async -> Result<Int, any Error> {
        let ctx = HandlerContext(
            handler: handler.name,
            tenant: tenant,
            inputs: records.map(\.metadata),
            publisher: connection,
            logger: logger,
            tables: tables,
            declaredOutputs: handler.outputs,
            outputTraceparent: outputTraceparent,
            tableReader: tableReader
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

    // MARK: - Run notes (docs/wire.md, "Poison records")

    /// Notes that a run of the redelivered record at `sequence` starts; returns how many runs
    /// of it started before and never ended (the process stopped during them).
    ///
    /// Waits until no other noted run of this handler and tenant is under way in the process;
    /// every call that returns must be followed by ``noteRunEnded(sequence:)``, which lets the
    /// next one start.
    func noteRunStarts(sequence: UInt64) async throws -> Int {
        await notedRuns.enter()
        do {
            let subject = Wire.runSubject(tenant: tenant, handler: handler.name, sequence: sequence)
            let stream = Wire.streamName(tenant: tenant)
            let previous = try await connection.lastMessage(stream: stream, subject: subject)
            let stops = previous.flatMap { Int(String(decoding: $0.payload, as: UTF8.self)) } ?? 0
            _ = try await connection.publish(OutgoingMessage(subject: subject, payload: ByteBuffer(string: String(stops + 1))))
            return stops
        } catch {
            notedRuns.leave()
            throw error
        }
    }

    /// Removes the note of a run that ended (in any way). Best effort: a note left behind by a
    /// NATS failure here counts as one stop on the record's next delivery.
    func noteRunEnded(sequence: UInt64) async {
        let subject = Wire.runSubject(tenant: tenant, handler: handler.name, sequence: sequence)
        do {
            try await connection.purge(stream: Wire.streamName(tenant: tenant), subject: subject)
        } catch {
            logger.warning("Could not remove a run note", metadata: ["worker.run_note": "\(subject)", "error": "\(error)"])
        }
        notedRuns.leave()
    }

    /// Whether a redelivered record whose runs stopped the process `stops` times (besides the
    /// batch it first came in) has used up its attempts. At least one stop must have been
    /// alone, so that only the record at fault is dead-lettered.
    func stoppedTooOften(_ stops: Int) -> Bool {
        stops >= 1 && stops + 1 >= handler.options.maxAttempts
    }

    /// Runs the handler on `records` of `batch` (see ``run(_:)``) with a heartbeat to JetStream
    /// and the handler's timeout: a run longer than `handler.options.timeout` is cancelled and
    /// fails with ``HandlerTimeoutError``.
    func runGuarded(_ records: [IncomingRecord], of batch: FetchedBatch, ackWait: Duration) async -> Result<Int, any Error> {
        await Self.withProgressHeartbeat(
            batch,
            ackWait: ackWait,
            timeout: handler.options.timeout,
            onTimeout: .failure(HandlerTimeoutError(timeout: handler.options.timeout))
        ) { await run(records) }
    }

    /// Tells JetStream the batch is still being worked on while `body` runs longer than a
    /// third of the ack wait, so slow handlers (LLM calls) are not redelivered meanwhile.
    ///
    /// With a `timeout`, `body` is cancelled when it runs longer and `onTimeout` is returned at
    /// once. `body` runs as a task of its own so that a body that ignores cancellation does not
    /// hold up its caller: it is left to finish in the background (its heartbeat stops, so
    /// JetStream redelivers the batch after the ack wait if nobody settles it).
    static func withProgressHeartbeat<T: Sendable>(
        _ batch: FetchedBatch,
        ackWait: Duration,
        timeout: Duration? = nil,
        onTimeout: T? = nil,
        _ body: @escaping @Sendable () async -> T
    ) async -> T {
        let interval = ackWait / 3
        let outcome = FirstOutcome<T>()
        // Deliberately not a child task: a body that ignores cancellation must not hold up
        // the caller past its timeout, and a task group would wait for it.
        let work = Task { outcome.finish(await body()) }
        return await withTaskGroup(of: Void.self) { group in
            // The heartbeat and the timeout.
            group.addTask {
                let start = ContinuousClock.now
                let deadline = timeout.map { start + $0 }
                var beat = start + interval
                while true {
                    do {
                        try await Task.sleep(until: deadline.map { min($0, beat) } ?? beat, clock: .continuous)
                    } catch {
                        return
                    }
                    if let deadline, let onTimeout, ContinuousClock.now >= deadline {
                        work.cancel()
                        outcome.finish(onTimeout)
                        return
                    }
                    if ContinuousClock.now >= beat {
                        for i in 0..<batch.count { batch.inProgress(i) }
                        beat += interval
                    }
                }
            }
            let value = await withTaskCancellationHandler {
                await outcome.value()
            } onCancel: {
                work.cancel()
            }
            group.cancelAll()
            return value
        }
    }
}

/// A handler run that took longer than its handler's ``HandlerOptions/timeout``.
package struct HandlerTimeoutError: Error, Sendable, CustomStringConvertible {
    package var timeout: Duration
    package var description: String { "the handler did not finish within \(timeout) (its timeout); it was cancelled" }
}

/// A record whose runs stopped the process `maxAttempts` times (its run notes say so): the
/// worker dead-letters it before running it again.
package struct ProcessStoppedError: Error, Sendable, CustomStringConvertible {
    /// Runs that never ended: the batch run it first came in, and each run alone since.
    package var stops: Int
    package var description: String {
        "the process stopped while handling this record \(stops) times (crashed or was killed before the run ended)"
    }
}

/// The first of several racing results (a body and its timeout); later ones are dropped.
private final class FirstOutcome<T: Sendable>: Sendable {
    private enum State {
        case pending(CheckedContinuation<T, Never>?)
        case done(T)
    }

    // Guarded by the mutex; the continuation is resumed exactly once, outside the lock.
    private let state = Mutex<State>(.pending(nil))

    func finish(_ value: T) {
        let waiter = state.withLock { state -> CheckedContinuation<T, Never>? in
            guard case .pending(let waiter) = state else { return nil }
            state = .done(value)
            return waiter
        }
        waiter?.resume(returning: value)
    }

    func value() async -> T {
        await withCheckedContinuation { continuation in
            let ready = state.withLock { state -> T? in
                switch state {
                case .done(let value): return value
                case .pending:
                    state = .pending(continuation)
                    return nil
                }
            }
            if let ready { continuation.resume(returning: ready) }
        }
    }
}
