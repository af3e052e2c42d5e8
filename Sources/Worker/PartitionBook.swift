import ClusterCore

/// Which partitions of one ordered handler this worker holds, kept from the coordinator's
/// answers: the bookkeeping of the ordered runner's lease loop, with no IO and the time of
/// each request passed in. The runner sends ``request(tenant:handler:worker:)``, applies the
/// ``Change``s that ``answered(_:sentAt:)`` returns to its partition tasks, and reports each
/// task that ends with ``partitionFinished(_:)``.
struct PartitionBook<Instant: InstantProtocol>: Sendable where Instant.Duration == Duration {
    enum Change: Equatable {
        /// A partition newly held (or held under a new token): run it until `deadline`.
        case start(partition: Int, token: Int64, deadline: Instant)
        /// Still held under the same token: its lease now runs until `deadline`.
        case extend(partition: Int, deadline: Instant)
        /// No longer held (expired and taken by another worker): stop at once, release nothing.
        case lose(partition: Int)
        /// Another worker should take it: finish the batch in hand, then release it.
        case drain(partition: Int)
    }

    let partitions: Int
    /// Partition → fencing token of the partitions held.
    private(set) var held: [Int: Int64] = [:]
    /// Partitions whose task ended since the last answered request.
    private(set) var released: [Int] = []
    /// The lease length the coordinator last gave.
    private(set) var ttl: Duration = .seconds(6)

    init(partitions: Int) {
        self.partitions = partitions
    }

    /// The next request: the partitions still worked on, and those let go since the last answer.
    func request(tenant: String, handler: String, worker: String) -> PartitionRequest {
        PartitionRequest(tenant: tenant, handler: handler, worker: worker, held: held.keys.sorted(), released: released)
    }

    /// The coordinator answered the request sent at `sentAt`. Leases end a tenth of their
    /// length (at least 100 ms) before the coordinator's view, counted from when the request
    /// was sent, so a partition is never worked on after another worker may have taken it.
    mutating func answered(_ assignment: PartitionAssignment, sentAt: Instant) -> [Change] {
        released = []
        ttl = .milliseconds(max(300, assignment.ttlMilliseconds))
        let deadline = sentAt.advanced(by: ttl - max(ttl / 10, .milliseconds(100)))
        var changes: [Change] = []
        for (partition, token) in assignment.granted.sorted(by: { $0.key < $1.key }) where (0..<partitions).contains(partition) {
            switch held[partition] {
            case token:
                changes.append(.extend(partition: partition, deadline: deadline))
            case .some:
                changes.append(.lose(partition: partition))
                fallthrough
            case .none:
                held[partition] = token
                changes.append(.start(partition: partition, token: token, deadline: deadline))
            }
        }
        for partition in held.keys.sorted() where assignment.granted[partition] == nil {
            held[partition] = nil
            changes.append(.lose(partition: partition))
        }
        for partition in Set(assignment.revoke).sorted() where held[partition] != nil {
            changes.append(.drain(partition: partition))
        }
        return changes
    }

    /// The task of `partition` ended (drained, lost, or stopped): released in the next request.
    mutating func partitionFinished(_ partition: Int) {
        if held.removeValue(forKey: partition) != nil { released.append(partition) }
    }

    /// How long to wait between requests: a third of the lease (at least 100 ms).
    var pause: Duration { max(ttl / 3, .milliseconds(100)) }

    /// At shutdown, once every task has ended: every partition to hand back at once.
    var handBack: [Int] { (Array(held.keys) + released).sorted() }
}
