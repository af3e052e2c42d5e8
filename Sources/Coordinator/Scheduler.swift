import ClusterCore
import Foundation
import Logging
import NATS

/// Fires one schedule for one tenant.
///
/// Each tick's record id is `tick-<schedule>-<fire time>`, so a tick published twice (two
/// coordinators, a restart between publish and bookkeeping) is stored once by JetStream.
/// After downtime the most recent missed tick fires once, then the schedule continues.
struct Scheduler: Sendable {
    let definition: ScheduleDefinition
    let tenant: String
    let table: TableDefinition
    let connection: NATSConnection
    let store: any CoordinatorStore
    let logger: Logger

    func run() async throws {
        let schedule = definition.schedule
        let now = Date()
        if let last = try await store.lastFire(tenant: tenant, schedule: definition.name),
            var missed = schedule.nextFire(after: last), missed <= now
        {
            var iterations = 0
            while let following = schedule.nextFire(after: missed), following <= now, iterations < 100_000 {
                missed = following
                iterations += 1
            }
            try await fire(at: missed)
        }
        guard var next = schedule.nextFire(after: now) else { return }
        while !Task.isCancelled {
            let delay = next.timeIntervalSinceNow
            if delay > 0 {
                try await Task.sleep(for: .milliseconds(Int64(delay * 1000) + 1))
                continue
            }
            try await fireWithRetry(at: next)
            guard let following = schedule.nextFire(after: next) else { return }
            next = following
        }
    }

    private func fireWithRetry(at fireTime: Date) async throws {
        var attempt = 0
        while true {
            do {
                try await fire(at: fireTime)
                return
            } catch let error as NATSError where error.isTransient {
                attempt += 1
                logger.warning("Tick publish failed, retrying", metadata: ["coordinator.schedule": "\(definition.name)", "error": "\(error)"])
                try await Task.sleep(for: .milliseconds(min(2000, 200 * attempt)))
            }
        }
    }

    func fire(at fireTime: Date) async throws {
        let tick = Tick(schedule: definition.name, fireTime: fireTime)
        let payload = Array(try JSONEncoder().encode(tick))
        let id = "tick-\(definition.name)-\(Int64(fireTime.timeIntervalSince1970 * 1000))"
        let ack = try await connection.publish(Wire.message(payload: payload, id: id, table: table, tenant: tenant, cause: nil))
        try await store.recordFire(tenant: tenant, schedule: definition.name, at: fireTime)
        logger.debug(
            "Tick fired",
            metadata: ["coordinator.schedule": "\(definition.name)", "coordinator.fire_time": "\(tick.fireTime)", "nats.duplicate": "\(ack.duplicate)"]
        )
    }
}
