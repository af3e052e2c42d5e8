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

    /// The schedule in effect: the app's, or an operator's override.
    static func effective(_ base: Schedule, control: ScheduleControl) -> Schedule {
        guard let expression = control.expression else { return base }
        let overridden = Schedule.cron(expression, timeZone: control.timeZone ?? base.timeZoneIdentifier)
        guard overridden.problem == nil else { return base }
        return overridden.catchUp(base.catchUpPolicy).jitter(base.maximumJitter)
    }

    func run(leadership: Leadership) async throws {
        var control = try await store.scheduleControl(tenant: tenant, schedule: definition.name)
        var schedule = Self.effective(definition.schedule, control: control)
        let now = Date()
        var cursor = now
        if let last = try await store.lastFire(tenant: tenant, schedule: definition.name) {
            let (fires, dropped) = schedule.catchUpFires(after: last, upTo: now)
            if !fires.isEmpty || dropped > 0 {
                logger.info(
                    "Catching up missed ticks",
                    metadata: [
                        "coordinator.policy": "\(schedule.catchUpPolicy)", "coordinator.firing": "\(fires.count)",
                        "coordinator.dropped": "\(dropped)",
                    ]
                )
            }
            for fire in fires {
                try await handle(fire, paused: control.paused, leadership: leadership)
            }
            cursor = max(last, now)
        }
        var lastControlRead = ContinuousClock.now
        while !Task.isCancelled && !stopped.load(ordering: .relaxed) {
            guard let next = schedule.nextFire(after: cursor) else {
                // No fire time within five years: look again later (an override may change it).
                try await Task.sleep(for: Self.controlRefresh)
                control = try await store.scheduleControl(tenant: tenant, schedule: definition.name)
                schedule = Self.effective(definition.schedule, control: control)
                continue
            }
            let due = next.addingTimeInterval(schedule.jitterDelay(for: next, key: "\(tenant)/\(definition.name)").inSeconds)
            let wait = due.timeIntervalSinceNow
            if wait > 0 {
                try await Task.sleep(for: min(.milliseconds(Int64(wait * 1000) + 1), Self.controlRefresh))
                if ContinuousClock.now - lastControlRead >= Self.controlRefresh {
                    control = try await store.scheduleControl(tenant: tenant, schedule: definition.name)
                    schedule = Self.effective(definition.schedule, control: control)
                    lastControlRead = ContinuousClock.now
                }
                continue
            }
            control = try await store.scheduleControl(tenant: tenant, schedule: definition.name)
            lastControlRead = ContinuousClock.now
            let current = Self.effective(definition.schedule, control: control)
            if current.description != schedule.description {
                // The timing changed while waiting: do not fire at the old time.
                schedule = current
                continue
            }
            try await handle(next, paused: control.paused, leadership: leadership)
            cursor = next
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
