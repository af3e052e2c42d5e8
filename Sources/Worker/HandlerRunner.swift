package import ClusterCore
import Foundation
import Logging
import Metrics
import NATS
import ServiceLifecycle
import Synchronization

/// Owns one handler's durable pull consumer for one tenant and runs its batches.
///
/// `options.concurrency` loops share one subscription to the consumer (a record goes to the
/// first loop that is free) and each repeat: fetch a batch → decode → run the handler →
/// publish its outputs → wait for their PubAcks → ack the inputs. Every replica binds the
/// same consumer, so JetStream spreads the records over all of them. A failing batch is
/// retried record by record; a record that keeps failing is naked with backoff and, after
/// `maxAttempts`, moved to the dead-letter subject.
package actor HandlerRunner {
    package nonisolated let handler: HandlerDefinition
    package nonisolated let tenant: String
    private nonisolated let connection: NATSConnection
    private nonisolated let logger: Logger
    private nonisolated let ackWait: Duration
    private nonisolated let stream: String
    private nonisolated let filterSubject: String
    private nonisolated let counters: Counters
    private nonisolated let execution: HandlerExecution

    package struct Statistics: Sendable, Equatable {
        package var batches = 0
        package var processed = 0
        package var retried = 0
        package var deadLettered = 0
    }

    private var statistics = Statistics()
    /// When this worker first saw each failing record fail (bounded; a record that failed
    /// on other workers first shows its first failure here).
    private nonisolated let firstFailures = Mutex<[String: Date]>([:])
    private static let firstFailureLimit = 65_536

    struct Counters: Sendable {
        let processed: Counter
        let retried: Counter
        let deadLettered: Counter
        let batchDuration: Metrics.Timer
    }

    init(
        handler: HandlerDefinition,
        invoker: @escaping HandlerInvoker,
        tenant: String,
        tables: [String: TableDefinition],
        ackWait: Duration,
        connection: NATSConnection,
        logger: Logger,
        tableReader: TableReader? = nil
    ) {
        self.handler = handler
        self.tenant = tenant
        self.ackWait = ackWait
        self.connection = connection
        let execution = HandlerExecution(
            handler: handler,
            invoker: invoker,
            tenant: tenant,
            tables: tables,
            connection: connection,
            logger: logger,
            tableReader: tableReader
        )
        self.execution = execution
        self.logger = execution.logger
        self.stream = HandlerExecution.streamName(of: handler, tenant: tenant)
        self.filterSubject = HandlerExecution.filterSubject(of: handler, tenant: tenant, tables: tables)
        let dimensions = [("handler", handler.name)]
        self.counters = Counters(
            processed: Counter(label: "autonomous_worker_records_processed_total", dimensions: dimensions),
            retried: Counter(label: "autonomous_worker_records_retried_total", dimensions: dimensions),
            deadLettered: Counter(label: "autonomous_worker_records_dead_lettered_total", dimensions: dimensions),
            batchDuration: Metrics.Timer(label: "autonomous_worker_batch_duration_seconds", dimensions: dimensions)
        )
    }

    package var currentStatistics: Statistics { statistics }

    private nonisolated let stopped = Atomic<Bool>(false)
    private nonisolated var isStopped: Bool { stopped.load(ordering: .relaxed) }

    /// Stops fetching (for a tenant that was disabled); batches in flight finish first.
    package nonisolated func stop() {
        stopped.store(true, ordering: .relaxed)
    }

    private func record(_ update: (inout Statistics) -> Void) { update(&statistics) }

    package func run() async throws {
        guard let subscription = try await bind() else { return }
        defer { subscription.close() }
        // The loops share the subscription: a record goes to whichever loop is free, instead
        // of waiting in the buffer of a loop busy with its batch.
        subscription.concurrentFetchers = handler.options.concurrency
        logger.info("Handler started", metadata: ["worker.concurrency": "\(handler.options.concurrency)"])
        // Records that arrived while a batch runs wait in the subscription; keep them.
        await subscription.keepingUnfetchedAlive(every: ackWait / 3) {
            await withDiscardingTaskGroup { group in
                for lane in 0..<handler.options.concurrency {
                    group.addTask { await self.loop(subscription, reportsLostRequests: lane == 0) }
                }
            }
        }
        logger.info("Handler stopped")
    }

    /// Binds to the consumer, waiting for the coordinator to create it. `nil` on shutdown.
    private nonisolated func bind() async throws -> PullSubscription? {
        var warned = false
        while !Task.isShuttingDownGracefully && !Task.isCancelled && !isStopped {
            do {
                let subscription = try await connection.pullSubscription(
                    stream: stream,
                    consumer: handler.consumerName,
                    filterSubject: filterSubject,
                    headers: Wire.consumedHeaders
                )
                return subscription
            } catch let error as NATSError {
                if !warned {
                    logger.info("Waiting for consumer", metadata: ["worker.consumer": "\(handler.consumerName)", "error": "\(error)"])
                    warned = true
                }
                try? await Task.sleep(for: .milliseconds(250))
            }
        }
        return nil
    }

    /// One fetch loop; `reportsLostRequests` for one loop per subscription (the count is the
    /// subscription's).
    private nonisolated func loop(_ subscription: PullSubscription, reportsLostRequests: Bool) async {
        var failures = 0
        var lost = LostPullRequests(handler: handler.name)
        while !Task.isShuttingDownGracefully && !Task.isCancelled && !isStopped {
            do {
                let batch = try await subscription.fetch(maxMessages: handler.options.batchSize, timeout: handler.options.maxWait)
                failures = 0
                if reportsLostRequests { lost.update(from: subscription, logger: logger) }
                if batch.isEmpty { continue }
                await process(batch)
            } catch {
                failures += 1
                if failures == 1 || failures % 50 == 0 {
                    logger.warning("Fetch failed", metadata: ["error": "\(error)"])
                }
                try? await Task.sleep(for: .milliseconds(min(2000, 100 * failures)))
            }
        }
    }

    /// Handles one fetched batch (internal for tests).
    nonisolated func process(_ batch: FetchedBatch) async {
        let start = ContinuousClock.now
        // A replayed dead letter is for one handler only; the others have processed the original.
        var indices: [Int] = []
        indices.reserveCapacity(batch.count)
        // A message redelivered while its first delivery still waited unfetched can arrive twice
        // in one batch; handled twice in one context its outputs would get two ids (index 0 and
        // 1 of the same source). Only its latest delivery is handled, and acked after its
        // outputs: the server tracks the message, not the delivery, so one ack settles both.
        // Batches in stream order (nearly all) cannot hold a message twice: no lookup needed.
        var ascending = true
        for i in batch.messages.indices.dropFirst() where batch.messages[i].streamSequence <= batch.messages[i - 1].streamSequence {
            ascending = false
            break
        }
        var positions: [UInt64: Int] = [:]
        for (i, message) in batch.messages.enumerated() {
            if let target = message.headerValues[4], target != handler.name {
                batch.ack(i)
            } else if !ascending, let earlier = positions[message.streamSequence] {
                if message.deliveryCount > batch.messages[earlier].deliveryCount {
                    indices[indices.firstIndex(of: earlier)!] = i
                    positions[message.streamSequence] = i
                }
            } else {
                if !ascending { positions[message.streamSequence] = i }
                indices.append(i)
            }
        }
        guard !indices.isEmpty else { return }
        await process(batch, indices: indices, start: start)
    }

    private nonisolated func process(_ batch: FetchedBatch, indices: [Int], start: ContinuousClock.Instant) async {
        // A record delivered before may be what stopped the process last time: it runs alone,
        // so it takes no other record down with it, and its run notes count the runs that
        // never ended (docs/wire.md, "Poison records").
        var fresh: [Int] = []
        var again: [Int] = []
        for index in indices {
            if batch.messages[index].deliveryCount > 1 && handler.isolatesRedeliveries { again.append(index) } else { fresh.append(index) }
        }
        for index in again {
            let record = execution.incoming(batch.messages[index])
            let sequence = batch.messages[index].streamSequence
            let stops: Int
            do {
                stops = try await execution.noteRunStarts(sequence: sequence)
            } catch {
                await fail(batch, index: index, record: record, error: error)
                continue
            }
            if execution.stoppedTooOften(stops) {
                await fail(batch, index: index, record: record, error: ProcessStoppedError(stops: stops + 1))
            } else {
                await runAlone(batch, index: index, record: record)
            }
            await execution.noteRunEnded(sequence: sequence)
        }
        if !fresh.isEmpty { await process(batch, fresh: fresh) }
        await record { $0.batches += 1 }
        let elapsed = (ContinuousClock.now - start).components
        counters.batchDuration.recordNanoseconds(elapsed.seconds * 1_000_000_000 + elapsed.attoseconds / 1_000_000_000)
    }

    /// Runs first deliveries together; when that fails, record by record to find the one(s)
    /// at fault.
    private nonisolated func process(_ batch: FetchedBatch, fresh indices: [Int]) async {
        let records = indices.map { execution.incoming(batch.messages[$0]) }
        switch await attempt(records, of: batch) {
        case nil:
            for i in indices { batch.ack(i) }
            counters.processed.increment(by: records.count)
            await record { $0.processed += records.count }
        case .some(let error) where records.count > 1 && !Self.isTransient(error):
            for (i, index) in indices.enumerated() { await runAlone(batch, index: index, record: records[i]) }
        case let error?:
            for (i, index) in indices.enumerated() { await fail(batch, index: index, record: records[i], error: error) }
        }
    }

    private nonisolated func runAlone(_ batch: FetchedBatch, index: Int, record: IncomingRecord) async {
        if let error = await attempt([record], of: batch) {
            await fail(batch, index: index, record: record, error: error)
        } else {
            batch.ack(index)
            forgetFailures([record])
            counters.processed.increment()
            await self.record { $0.processed += 1 }
        }
    }

    private nonisolated func forgetFailures(_ records: [IncomingRecord]) {
        guard records.contains(where: { $0.metadata.deliveryCount > 1 }) else { return }
        firstFailures.withLock { failures in
            for record in records { failures.removeValue(forKey: record.metadata.id) }
        }
    }

    /// Runs the handler and publishes its outputs (with a heartbeat and the handler's
    /// timeout); returns the error, if any.
    private nonisolated func attempt(_ records: [IncomingRecord], of batch: FetchedBatch) async -> (any Error)? {
        if case .failure(let error) = await execution.runGuarded(records, of: batch, ackWait: ackWait) { return error }
        return nil
    }

    static func isTransient(_ error: any Error) -> Bool {
        if let error = error as? NATSError { return error.isTransient }
        if let error = error as? StorageError { return error.isTransient }
        return false
    }

    private nonisolated func fail(_ batch: FetchedBatch, index: Int, record: IncomingRecord, error: any Error) async {
        let attempt = record.metadata.deliveryCount
        let now = Date()
        let firstFailure = firstFailures.withLock { failures -> Date in
            if let first = failures[record.metadata.id] { return first }
            if failures.count >= Self.firstFailureLimit, let any = failures.keys.first { failures.removeValue(forKey: any) }
            failures[record.metadata.id] = now
            return now
        }
        let permanent = error is UndecodableRecordError || error is ProcessStoppedError || (error as? StorageError)?.isRefusal == true
        if Self.isTransient(error) || (!permanent && attempt < handler.options.maxAttempts) {
            let delay = handler.options.backoff(afterAttempt: attempt)
            logger.info(
                "Handler failed, will retry",
                metadata: ["worker.record.id": "\(record.metadata.id)", "worker.attempt": "\(attempt)", "error": "\(error)"]
            )
            batch.nak(index, delay: delay)
            counters.retried.increment()
            await self.record { $0.retried += 1 }
            return
        }
        do {
            try await execution.deadLetter(record, error: error, attempts: attempt, firstFailure: firstFailure)
            firstFailures.withLock { _ = $0.removeValue(forKey: record.metadata.id) }
            batch.term(index)
            counters.deadLettered.increment()
            await self.record { $0.deadLettered += 1 }
            logger.warning(
                "Record moved to dead-letter subject",
                metadata: ["worker.record.id": "\(record.metadata.id)", "worker.attempt": "\(attempt)", "error": "\(error)"]
            )
        } catch {
            logger.warning("Dead-letter publish failed, will retry", metadata: ["error": "\(error)"])
            batch.nak(index, delay: handler.options.backoff(afterAttempt: attempt))
        }
    }
}

/// Turns a subscription's running count of pull requests given up (the server neither sent
/// records nor ended them in time; see `PullSubscription.presumedLostRequests`) into the
/// `autonomous_worker_pull_requests_lost_total` counter.
struct LostPullRequests {
    private let counter: Counter
    private var seen = 0

    init(handler: String) {
        counter = Counter(label: "autonomous_worker_pull_requests_lost_total", dimensions: [("handler", handler)])
    }

    mutating func update(from subscription: PullSubscription, logger: Logger) {
        let now = subscription.presumedLostRequests
        guard now > seen else { return }
        counter.increment(by: now - seen)
        logger.debug("Pull request got no answer by its expiry; asked again", metadata: ["worker.lost_requests": "\(now)"])
        seen = now
    }
}
