import ClusterCore
import Foundation
import Logging
import NATS
import Synchronization

/// Fires one schedule for one tenant while this coordinator leads.
///
/// Each tick's record id is `tick-<schedule>-<fire time in ms>`, so a tick published twice
/// (by a leader that died between publishing and bookkeeping, then by its successor) is
/// stored once by JetStream. The last handled tick is written to the store under the leader
/// lease's fencing token: a deposed leader cannot move it.
final class Scheduler: Sendable {
    let definition: ScheduleDefinition
    let tenant: String
    let table: TableDefinition
    let connection: NATSConnection
    let store: any CoordinatorStore
    let logger: Logger
    /// Set when the tenant is disabled or removed; the loop ends at its next wake-up.
    let stopped = Atomic<Bool>(false)

    /// How often a waiting scheduler looks again at pause state and timing overrides.
    static let controlRefresh: Duration = .seconds(2)

    init(
        definition: ScheduleDefinition,
        tenant: String,
        table: TableDefinition,
        connection: NATSConnection,
        store: any CoordinatorStore,
        logger: Logger
    ) {
        self.definition = definition
        self.tenant = tenant
        self.table = table
        self.connection = connection
        self.store = store
        var logger = logger
        logger[metadataKey: "coordinator.schedule"] = "\(definition.name)"
        logger[metadataKey: "coordinator.tenant"] = "\(tenant)"
        self.logger = logger
    }

    /// Runs the schedule's ``ScheduleTimeline`` against the wall clock and the store while
    /// `leadership` holds.
    func run(leadership: Leadership) async throws {
        var timeline = ScheduleTimeline(
            base: definition.schedule,
            jitterKey: "\(tenant)/\(definition.name)",
            controls: try await store.scheduleControl(tenant: tenant, schedule: definition.name),
            lastFire: try await store.lastFire(tenant: tenant, schedule: definition.name),
            now: Date(),
            controlRefresh: Self.controlRefresh
        )
        if !timeline.catchUp.isEmpty || timeline.dropped > 0 {
            logger.info(
                "Catching up missed ticks",
                metadata: [
                    "coordinator.policy": "\(timeline.schedule.catchUpPolicy)", "coordinator.firing": "\(timeline.catchUp.count)",
                    "coordinator.dropped": "\(timeline.dropped)",
                ]
            )
        }
        for fire in timeline.catchUp {
            try await handle(fire, paused: timeline.controls.paused, leadership: leadership)
        }
        while !Task.isCancelled && !stopped.load(ordering: .relaxed) {
            switch timeline.next(now: Date()) {
            case .sleep(let duration):
                try await Task.sleep(for: duration)
            case .readControls:
                let controls = try await store.scheduleControl(tenant: tenant, schedule: definition.name)
                timeline.controlsRead(controls, now: Date())
            case .fire(let fireTime, let paused):
                try await handle(fireTime, paused: paused, leadership: leadership)
                timeline.fired(fireTime)
            }
        }
    }

    /// Publishes the tick (unless paused) and records it as handled, as leader.
    private func handle(_ fireTime: Date, paused: Bool, leadership: Leadership) async throws {
        if !paused {
            var attempt = 0
            while true {
                guard leadership.isValid else { throw LeadershipLost() }
                do {
                    let ack = try await publishTick(at: fireTime, manual: false)
                    logger.debug(
                        "Tick fired",
                        metadata: ["coordinator.fire_time": "\(ISO8601.format(fireTime))", "nats.duplicate": "\(ack.duplicate)"]
                    )
                    break
                } catch let error as NATSError where error.isTransient {
                    attempt += 1
                    logger.warning("Tick publish failed, retrying", metadata: ["error": "\(error)"])
                    try await Task.sleep(for: .milliseconds(min(2000, 200 * attempt)))
                }
            }
        } else {
            logger.debug("Tick skipped (paused)", metadata: ["coordinator.fire_time": "\(ISO8601.format(fireTime))"])
        }
        guard leadership.isValid else { throw LeadershipLost() }
        do {
            try await store.recordFire(tenant: tenant, schedule: definition.name, at: fireTime, published: !paused, fence: leadership.fence)
        } catch let error as StoreError where error.kind == .fenced {
            throw LeadershipLost()
        }
    }

    /// Publishes the tick for `fireTime`. Manual ticks get their own id, so they never
    /// collide with the scheduled tick of the same instant.
    func publishTick(at fireTime: Date, manual: Bool) async throws -> PublishAck {
        let tick = Tick(schedule: definition.name, fireTime: fireTime, manual: manual ? true : nil)
        let payload = Array(try JSONEncoder().encode(tick))
        let milliseconds = Int64((fireTime.timeIntervalSince1970 * 1000).rounded())
        let id = manual ? "tick-\(definition.name)-manual-\(milliseconds)" : "tick-\(definition.name)-\(milliseconds)"
        return try await connection.publish(Wire.message(payload: payload, id: id, table: table, tenant: tenant, cause: nil))
    }
}
