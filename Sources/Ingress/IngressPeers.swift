import ClusterCore
import Foundation
import Logging
import Metrics
import NATS
import Synchronization

/// Counts the ingress nodes of the cluster that are alive, so that each enforces its share of
/// a tenant's limit (``TenantRateLimiter/setShare(nodes:)``) and a limit holds for the cluster
/// rather than per node.
///
/// Every ingress node publishes `{"node":"<id>"}` on ``subject`` (core NATS, nothing stored)
/// every `interval` and counts the distinct ids it heard within the last three intervals,
/// itself included. A node that shuts down says `{"node":"<id>","leaving":true}`, so the others
/// count it out at once instead of after three intervals; one that dies is counted out then.
/// A node that hears an id it does not know announces itself at once (at most once per 50 ms,
/// or per twentieth of a shorter interval), so a node that has just started counts the others
/// within a round trip instead of enforcing whole limits until their next announcements.
final class IngressPeers: Sendable {
    static let subject = "aut._ingress.alive"
    /// Ids remembered at most (a bound on memory whatever is published on the subject).
    static let maximumTracked = 4096

    /// This node's id, new for each process.
    let node: String
    let interval: Duration
    private let clock: @Sendable () -> ContinuousClock.Instant
    /// When each other node was last heard.
    private let lastHeard = Mutex<[String: ContinuousClock.Instant]>([:])
    private let counted = Atomic<Int>(1)
    /// The least time between two answers out of turn.
    var answerSpacing: Duration { min(interval / 20, .milliseconds(50)) }
    /// When this node last answered a newcomer out of turn.
    private let lastAnswer = Mutex<ContinuousClock.Instant?>(nil)
    private let gauge = Gauge(label: "autonomous_ingress_nodes")
    /// Nodes counted out because they said they were leaving, and because they went quiet.
    private let departures = (
        leaving: Counter(label: "autonomous_ingress_nodes_departed_total", dimensions: [("reason", "leaving")]),
        silent: Counter(label: "autonomous_ingress_nodes_departed_total", dimensions: [("reason", "silent")])
    )
    private let departed = Mutex((leaving: 0, silent: 0))

    /// Nodes counted out so far: those that said they were leaving, and those that went quiet.
    var departedCounts: (leaving: Int, silent: Int) { departed.withLock { $0 } }

    init(
        node: String = UUID().uuidString.lowercased(),
        interval: Duration = .seconds(1),
        clock: @escaping @Sendable () -> ContinuousClock.Instant = { .now }
    ) {
        self.node = node
        self.interval = interval
        self.clock = clock
    }

    /// Ingress nodes alive, this one included.
    var count: Int { counted.load(ordering: .relaxed) }

    /// What this node publishes every interval (`leaving` when it shuts down).
    func announcement(leaving: Bool = false) -> [UInt8] {
        Array((leaving ? #"{"node":"\#(node)","leaving":true}"# : #"{"node":"\#(node)"}"#).utf8)
    }

    /// Takes in one message from ``subject``; returns the new count when it changed. Anything
    /// that is not a well-formed announcement of another node is ignored.
    func heard(_ payload: [UInt8]) -> Int? {
        heard(payload, answer: nil)
    }

    /// ``heard(_:)``, calling `answer` when the announcement came from a node this one did not
    /// know (and it has not answered one within ``answerSpacing``).
    func heard(_ payload: [UInt8], answer: (() -> Void)?) -> Int? {
        guard payload.count <= 256, let value = try? JSONParser.parse(payload), let id = value["node"].stringValue,
            id != node, Self.isValidID(id)
        else { return nil }
        let leaving = value["leaving"].boolValue == true
        let now = clock()
        let newcomer = lastHeard.withLock { heard -> Bool in
            if leaving {
                if heard.removeValue(forKey: id) != nil {
                    departed.withLock { $0.leaving += 1 }
                    departures.leaving.increment()
                }
                return false
            }
            let known = heard[id] != nil
            if known || heard.count < Self.maximumTracked {
                heard[id] = now
            }
            return !known
        }
        if newcomer, let answer {
            let due = lastAnswer.withLock { last -> Bool in
                if let last, now - last < answerSpacing { return false }
                last = now
                return true
            }
            if due { answer() }
        }
        return recount(at: now)
    }

    /// Counts out the nodes not heard for three intervals; returns the new count when it changed.
    func expire() -> Int? {
        let now = clock()
        let horizon = interval * 3
        let quiet = lastHeard.withLock { heard -> Int in
            let before = heard.count
            heard = heard.filter { now - $0.value <= horizon }
            return before - heard.count
        }
        if quiet > 0 {
            departed.withLock { $0.silent += quiet }
            departures.silent.increment(by: quiet)
        }
        return recount(at: now)
    }

    private func recount(at now: ContinuousClock.Instant) -> Int? {
        let horizon = interval * 3
        let alive = 1 + lastHeard.withLock { heard in heard.values.count { now - $0 <= horizon } }
        let before = counted.exchange(alive, ordering: .relaxed)
        guard before != alive else { return nil }
        gauge.record(alive)
        return alive
    }

    /// Node ids: 1–64 of `[a-z0-9-]` (a UUID, lowercased).
    static func isValidID(_ id: String) -> Bool {
        !id.isEmpty && id.utf8.count <= 64
            && id.utf8.allSatisfy { byte in
                (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(byte) || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte)
                    || byte == UInt8(ascii: "-")
            }
    }

    /// Announces this node and listens to the others until cancelled, calling `onChange` with
    /// every new count; says it is leaving on the way out. NATS errors are logged and retried
    /// every interval (a node that cannot hear the others counts itself alone).
    func run(connection: NATSConnection, logger: Logger, onChange: @escaping @Sendable (Int) -> Void) async {
        gauge.record(count)
        var subscription: CoreSubscription?
        var warned = false
        while !Task.isCancelled && subscription == nil {
            do {
                subscription = try connection.subscribeCore(subject: Self.subject)
            } catch {
                if !warned {
                    logger.warning(
                        "Cannot hear the other ingress nodes; enforcing whole tenant limits here",
                        metadata: ["error": "\(error)"]
                    )
                    warned = true
                }
                try? await Task.sleep(for: interval)
            }
        }
        guard let subscription else { return }
        @Sendable func announce() {
            do {
                try connection.publishCore(CoreMessage(subject: Self.subject, payload: self.announcement()))
            } catch {
                logger.debug("Ingress announcement failed", metadata: ["error": "\(error)"])
            }
        }
        await withTaskGroup(of: Void.self) { group in
            group.addTask {
                for await message in subscription {
                    if let count = self.heard(message.payload, answer: announce) { onChange(count) }
                }
            }
            group.addTask {
                while !Task.isCancelled {
                    announce()
                    if let count = self.expire() { onChange(count) }
                    try? await Task.sleep(for: self.interval)
                }
                // Cancelled: the listener stops with the subscription.
                subscription.unsubscribe()
            }
            await group.waitForAll()
        }
        try? connection.publishCore(CoreMessage(subject: Self.subject, payload: announcement(leaving: true)))
    }
}
