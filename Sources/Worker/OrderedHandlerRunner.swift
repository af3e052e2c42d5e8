package import ClusterCore
import Foundation
import Logging
import Metrics
import NATS
import ServiceLifecycle
import Synchronization

/// Runs an ordered handler (`.ordered(by:)`) for one tenant: records with the same key are
/// handled one at a time, in the order the stream stored them.
///
/// Keys are hashed into partitions, each with its own durable consumer that lets at most one
/// batch be unacknowledged. The coordinators lease each partition to one worker at a time;
/// this runner renews its leases every third of the lease TTL and works only on partitions
/// whose lease is valid by its own clock (the deadline is counted from when the renewal was
/// sent, so it ends before the coordinator could hand the partition to another worker).
/// A failing record is retried in place, so later records of its partition wait for it; after
/// `maxAttempts` it goes to the dead-letter subject and the partition moves on.
///
/// When a worker takes a partition whose previous holder died with a batch unacknowledged,
/// it re-creates the partition's consumer at its ack floor, so the batch is delivered again
/// in order at once (instead of after the ack wait). Handling it again republishes the same
/// output ids, which JetStream drops as duplicates.
package final class OrderedHandlerRunner: Sendable {
    package let handler: HandlerDefinition
    package let tenant: String
    let ordering: HandlerOrdering
    let source: TableDefinition
    let execution: HandlerExecution
    let workerID: String
    let ackWait: Duration
    let connection: NATSConnection
    let logger: Logger
    let stream: String
    let assign: @Sendable (PartitionRequest) async throws -> PartitionAssignment
    private let stopped = Atomic<Bool>(false)
    private let processed: Counter
    private let deadLettered: Counter

    init(
        handler: HandlerDefinition,
        ordering: HandlerOrdering,
        source: TableDefinition,
        invoker: @escaping HandlerInvoker,
        tenant: String,
        tables: [String: TableDefinition],
        workerID: String,
        ackWait: Duration,
        connection: NATSConnection,
        logger: Logger,
        tableReader: TableReader? = nil,
        assign: @escaping @Sendable (PartitionRequest) async throws -> PartitionAssignment
    ) {
        self.handler = handler
        self.ordering = ordering
        self.source = source
        self.tenant = tenant
        self.workerID = workerID
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
        self.assign = assign
        let dimensions = [("handler", handler.name)]
        self.processed = Counter(label: "autonomous_worker_records_processed_total", dimensions: dimensions)
        self.deadLettered = Counter(label: "autonomous_worker_records_dead_lettered_total", dimensions: dimensions)
    }

    /// Stops (for a tenant that was disabled): partitions finish their batch and are released.
    package func stop() {
        stopped.store(true, ordering: .relaxed)
    }

    private var shouldRun: Bool { !Task.isShuttingDownGracefully && !Task.isCancelled && !stopped.load(ordering: .relaxed) }

    package func run() async {
        logger.info("Ordered handler started", metadata: ["worker.partitions": "\(ordering.partitions)", "worker.id": "\(workerID)"])
        var book = PartitionBook<ContinuousClock.Instant>(partitions: ordering.partitions)
        /// The task of each partition held, by partition.
        var leases: [Int: PartitionLease] = [:]
        await withDiscardingTaskGroup { group in
            var notice = CoordinatorNotice(startedAt: .now)
            while shouldRun {
                for (partition, lease) in leases where lease.isFinished {
                    leases[partition] = nil
                    book.partitionFinished(partition)
                }
                let sent = ContinuousClock.now
                do {
                    let assignment = try await assign(book.request(tenant: tenant, handler: handler.name, worker: workerID))
                    notice.succeeded()
                    for change in book.answered(assignment, sentAt: sent) {
                        switch change {
                        case .start(let partition, let token, let deadline):
                            let lease = PartitionLease(partition: partition, token: token, deadline: deadline)
                            leases[partition] = lease
                            group.addTask { await self.runPartition(lease) }
                        case .extend(let partition, let deadline):
                            leases[partition]?.extend(to: deadline)
                        case .lose(let partition):
                            leases[partition]?.lose()
                            leases[partition] = nil
                        case .drain(let partition):
                            leases[partition]?.drain()
                        }
                    }
                } catch {
                    if notice.failed(at: .now) {
                        logger.warning("Cannot renew partition leases; working on until they expire", metadata: ["error": "\(error)"])
                    } else {
                        logger.debug("Cannot renew partition leases yet", metadata: ["error": "\(error)"])
                    }
                }
                let pause = book.pause
                try? await cancelWhenGracefulShutdown { try await Task.sleep(for: pause) }
            }
            for lease in leases.values { lease.drain() }
        }
        // Every partition task has finished its batch: hand the partitions back at once.
        let all = book.handBack
        if !all.isEmpty {
            _ = try? await assign(PartitionRequest(tenant: tenant, handler: handler.name, worker: workerID, held: [], released: all))
        }
        logger.info("Ordered handler stopped")
    }

    // MARK: One partition

    private func runPartition(_ lease: PartitionLease) async {
        defer { lease.finish() }
        let partition = lease.partition
        var logger = self.logger
        logger[metadataKey: "worker.partition"] = "\(partition)"
        let consumer = HandlerOrdering.consumerName(handler: handler.name, partition: partition)
        var subscription: PullSubscription?
        while subscription == nil && lease.mayWork && shouldRun {
            do {
                try await resumeAtAckFloor(consumer: consumer, partition: partition, logger: logger)
                subscription = try await connection.pullSubscription(
                    stream: stream,
                    consumer: consumer,
                    filterSubject: handler.partitionFilter(source: source, tenant: tenant, partition: partition),
                    headers: Wire.consumedHeaders
                )
            } catch {
                logger.info("Waiting for the partition's consumer", metadata: ["error": "\(error)"])
                try? await Task.sleep(for: .milliseconds(250))
            }
        }
        guard let subscription else { return }
        defer { subscription.close() }
        logger.debug("Partition taken", metadata: ["worker.lease_token": "\(lease.token)"])
        await subscription.keepingUnfetchedAlive(every: ackWait / 3) {
            var failures = 0
            var lost = LostPullRequests(handler: handler.name)
            while lease.mayWork && shouldRun {
                do {
                    let wait = min(handler.options.maxWait, max(.milliseconds(50), lease.remaining))
                    let batch = try await subscription.fetch(maxMessages: handler.options.batchSize, timeout: wait)
                    failures = 0
                    lost.update(from: subscription, logger: logger)
                    if batch.isEmpty { continue }
                    // A batch fetched as the lease ran out stays unacknowledged: the next holder
                    // starts from the ack floor.
                    guard lease.isValid else { break }
                    await process(batch, lease: lease, logger: logger)
                } catch {
                    failures += 1
                    if failures == 1 || failures % 50 == 0 { logger.warning("Fetch failed", metadata: ["error": "\(error)"]) }
                    try? await Task.sleep(for: .milliseconds(min(2000, 100 * failures)))
                }
            }
        }
    }

    /// Re-creates the consumer at its ack floor when a previous holder left a batch
    /// unacknowledged, so it is redelivered now and in order.
    private func resumeAtAckFloor(consumer: String, partition: Int, logger: Logger) async throws {
        guard let state = try await connection.consumerState(stream: stream, consumer: consumer), state.numAckPending > 0 else { return }
        logger.notice(
            "Partition taken over with unacknowledged records; resuming at the ack floor",
            metadata: ["worker.ack_floor": "\(state.ackFloorStreamSequence)", "worker.unacked": "\(state.numAckPending)"]
        )
        try await connection.deleteConsumer(stream: stream, consumer: consumer)
        let configuration = handler.partitionConsumer(
            source: source,
            tenant: tenant,
            partition: partition,
            ackWait: ackWait,
            startSequence: state.ackFloorStreamSequence + 1
        )
        try await connection.createOrUpdateConsumer(stream: stream, configuration)
    }

    /// Handles a batch in stream order: the whole batch at once, else record by record with
    /// each failing record retried in place (internal for tests).
    func process(_ batch: FetchedBatch, lease: PartitionLease, logger: Logger) async {
        let order = batch.messages.indices.sorted { batch.messages[$0].streamSequence < batch.messages[$1].streamSequence }
        var indices: [Int] = []
        for i in order {
            // A replayed dead letter addressed to another handler of this table.
            if let target = batch.messages[i].headerValues[4], target != handler.name {
                batch.ack(i)
            } else if let last = indices.last, batch.messages[last].streamSequence == batch.messages[i].streamSequence {
                // The same message delivered twice (see `HandlerRunner.process`): handle its
                // latest delivery only.
                if batch.messages[i].deliveryCount > batch.messages[last].deliveryCount { indices[indices.count - 1] = i }
            } else {
                indices.append(i)
            }
        }
        guard !indices.isEmpty else { return }
        let execution = self.execution
        let records = indices.map { execution.incoming(batch.messages[$0]) }
        // A batch delivered before may hold the record that stopped the process last time:
        // it goes record by record, so that record is found and the ones before it are acked.
        if !handler.isolatesRedeliveries || !records.contains(where: { $0.metadata.deliveryCount > 1 }) {
            if case .success = await execution.runGuarded(records, of: batch, ackWait: ackWait) {
                for i in indices { batch.ack(i) }
                processed.increment(by: records.count)
                return
            }
        }
        for (position, index) in indices.enumerated() {
            // A redelivered record may be what stopped the process: its run notes count the
            // runs that never ended, and one that used up its attempts is not run again.
            var stopped: ProcessStoppedError?
            let sequence = batch.messages[index].streamSequence
            let noted = records[position].metadata.deliveryCount > 1 && handler.isolatesRedeliveries
            if noted {
                guard let stops = try? await execution.noteRunStarts(sequence: sequence) else {
                    // NATS is not answering: the batch comes back after the ack wait.
                    return
                }
                if execution.stoppedTooOften(stops) { stopped = ProcessStoppedError(stops: stops + 1) }
            }
            let settled = await settle(records[position], index: index, of: batch, lease: lease, stopped: stopped, logger: logger)
            if noted { await execution.noteRunEnded(sequence: sequence) }
            guard settled else { return }
        }
    }

    /// Runs one record until it is acked or dead-lettered, retrying in place; `false` when the
    /// lease ran out or the task was cancelled first.
    private func settle(
        _ record: IncomingRecord,
        index: Int,
        of batch: FetchedBatch,
        lease: PartitionLease,
        stopped: ProcessStoppedError?,
        logger: Logger
    ) async -> Bool {
        let execution = self.execution
        var record = record
        var attempt = record.metadata.deliveryCount
        var stopped = stopped
        let firstFailure = Date()
        while true {
            guard lease.isValid, !Task.isCancelled else { return false }
            // Retries in place count as deliveries, as redeliveries would.
            record.metadata.deliveryCount = attempt
            let attemptRecord = record
            let result: Result<Int, any Error>
            if let error = stopped {
                result = .failure(error)
                stopped = nil
            } else {
                result = await execution.runGuarded([attemptRecord], of: batch, ackWait: ackWait)
            }
            guard case .failure(let error) = result else {
                batch.ack(index)
                processed.increment()
                return true
            }
            if HandlerRunner.isTransient(error) {
                try? await Task.sleep(for: .milliseconds(500))
                continue
            }
            let refused = (error as? StorageError)?.isRefusal == true
            if error is UndecodableRecordError || error is ProcessStoppedError || refused || attempt >= handler.options.maxAttempts {
                do {
                    try await execution.deadLetter(record, error: error, attempts: attempt, firstFailure: firstFailure)
                } catch {
                    logger.warning("Dead-letter publish failed, will retry", metadata: ["error": "\(error)"])
                    try? await Task.sleep(for: .milliseconds(500))
                    continue
                }
                batch.term(index)
                deadLettered.increment()
                logger.warning(
                    "Record moved to dead-letter subject; its partition moves on",
                    metadata: ["worker.record.id": "\(record.metadata.id)", "worker.attempt": "\(attempt)", "error": "\(error)"]
                )
                return true
            }
            logger.info(
                "Ordered handler failed; retrying the record before any later one",
                metadata: ["worker.record.id": "\(record.metadata.id)", "worker.attempt": "\(attempt)", "error": "\(error)"]
            )
            let delay = min(handler.options.backoff(afterAttempt: attempt), max(.zero, lease.remaining))
            await HandlerExecution.withProgressHeartbeat(batch, ackWait: ackWait) { try? await Task.sleep(for: delay) }
            attempt += 1
        }
    }
}

/// One partition lease as this worker sees it.
final class PartitionLease: Sendable {
    let partition: Int
    let token: Int64
    private struct State {
        var deadline: ContinuousClock.Instant
        var draining = false
        var finished = false
    }

    private let state: Mutex<State>

    init(partition: Int, token: Int64, deadline: ContinuousClock.Instant) {
        self.partition = partition
        self.token = token
        self.state = Mutex(State(deadline: deadline))
    }

    /// The lease is still ours by this process's clock.
    var isValid: Bool { ContinuousClock.now < state.withLock { $0.deadline } }
    /// Valid and not asked to hand the partition over.
    var mayWork: Bool { state.withLock { !$0.draining && ContinuousClock.now < $0.deadline } }
    var remaining: Duration { state.withLock { $0.deadline } - ContinuousClock.now }
    var isFinished: Bool { state.withLock { $0.finished } }

    func extend(to deadline: ContinuousClock.Instant) { state.withLock { $0.deadline = max($0.deadline, deadline) } }
    /// Finish the batch in hand, then stop.
    func drain() { state.withLock { $0.draining = true } }
    /// Stop at once: the lease is gone.
    func lose() { state.withLock { $0.deadline = .now } }
    func finish() { state.withLock { $0.finished = true } }
}
