import ClusterCore
import Testing

@testable import Worker

@Suite("Partition bookkeeping of ordered handlers")
struct PartitionBookTests {
    typealias Book = PartitionBook<ContinuousClock.Instant>
    /// One fixed instant; every other time is an offset from it (nothing waits on the clock).
    static let t0 = ContinuousClock.now

    static func answer(_ granted: [Int: Int64], revoke: [Int] = [], ttl: Int = 6000) -> PartitionAssignment {
        PartitionAssignment(granted: granted, revoke: revoke, ttlMilliseconds: ttl)
    }

    @Test("Grants start partitions; the same token extends; the lease ends a tenth early, counted from the request")
    func grantsAndRenewals() {
        var book = Book(partitions: 4)
        #expect(
            book.request(tenant: "acme", handler: "h", worker: "w1")
                == PartitionRequest(tenant: "acme", handler: "h", worker: "w1", held: [], released: [])
        )
        let first = book.answered(Self.answer([2: 7, 0: 5]), sentAt: Self.t0)
        let deadline = Self.t0 + .milliseconds(5400)
        #expect(first == [.start(partition: 0, token: 5, deadline: deadline), .start(partition: 2, token: 7, deadline: deadline)])
        #expect(book.request(tenant: "acme", handler: "h", worker: "w1").held == [0, 2])
        #expect(book.pause == .seconds(2))
        let second = book.answered(Self.answer([0: 5, 2: 7]), sentAt: Self.t0 + .seconds(2))
        #expect(
            second == [.extend(partition: 0, deadline: deadline + .seconds(2)), .extend(partition: 2, deadline: deadline + .seconds(2))]
        )
    }

    @Test("A new token restarts the partition; a partition no longer granted is lost at once and not released")
    func lostPartitions() {
        var book = Book(partitions: 4)
        _ = book.answered(Self.answer([0: 5, 1: 6]), sentAt: Self.t0)
        let changes = book.answered(Self.answer([0: 9]), sentAt: Self.t0 + .seconds(2))
        let deadline = Self.t0 + .seconds(2) + .milliseconds(5400)
        #expect(changes == [.lose(partition: 0), .start(partition: 0, token: 9, deadline: deadline), .lose(partition: 1)])
        #expect(book.held == [0: 9])
        book.partitionFinished(1)  // its task ends after the loss: nothing to hand back
        #expect(book.request(tenant: "t", handler: "h", worker: "w").released == [])
    }

    @Test("A revoked partition drains, is released in the next request, and forgotten once that is answered")
    func revokeAndRelease() {
        var book = Book(partitions: 4)
        _ = book.answered(Self.answer([0: 1, 3: 2]), sentAt: Self.t0)
        let changes = book.answered(Self.answer([0: 1, 3: 2], revoke: [3, 3]), sentAt: Self.t0 + .seconds(2))
        #expect(changes.last == .drain(partition: 3) && changes.filter { $0 == .drain(partition: 3) }.count == 1)
        book.partitionFinished(3)
        let request = book.request(tenant: "t", handler: "h", worker: "w")
        #expect(request.held == [0] && request.released == [3])
        // A request that got no answer is sent again with the same releases.
        #expect(book.request(tenant: "t", handler: "h", worker: "w").released == [3])
        _ = book.answered(Self.answer([0: 1]), sentAt: Self.t0 + .seconds(4))
        #expect(book.request(tenant: "t", handler: "h", worker: "w").released == [])
    }

    @Test("Partitions outside the handler's range are ignored; the lease length has a floor; shutdown hands back all")
    func edges() {
        var book = Book(partitions: 2)
        let changes = book.answered(Self.answer([1: 4, 2: 5, -1: 6], ttl: 10), sentAt: Self.t0)
        #expect(changes == [.start(partition: 1, token: 4, deadline: Self.t0 + .milliseconds(200))], "300 ms floor, less 100 ms")
        #expect(book.ttl == .milliseconds(300) && book.pause == .milliseconds(100))
        _ = book.answered(Self.answer([0: 1, 1: 4], revoke: [0]), sentAt: Self.t0 + .milliseconds(100))
        book.partitionFinished(0)
        #expect(book.handBack == [0, 1], "held and released, at once")
    }
}
