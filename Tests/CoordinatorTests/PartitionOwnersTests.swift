import Testing

@testable import Coordinator

@Suite("Partition owners by rendezvous hashing")
struct PartitionOwnersTests {
    @Test("Partitions are spread fairly over the live workers and move little when one leaves")
    func partitionOwners() {
        let workers = ["w-a", "w-b", "w-c"]
        let owners = StoreBackend.owners(partitions: 8, among: workers)
        #expect(owners.count == 8)
        let loads = Dictionary(grouping: owners.values, by: { $0 }).mapValues(\.count)
        #expect(loads.count == 3 && loads.values.allSatisfy { $0 <= 3 }, "\(loads)")
        #expect(StoreBackend.owners(partitions: 8, among: workers.reversed()) == owners, "the same on every coordinator")
        let after = StoreBackend.owners(partitions: 8, among: ["w-a", "w-b"])
        let moved = (0..<8).filter { owners[$0] != "w-c" && owners[$0] != after[$0] }
        #expect(moved.count <= 2, "partitions of the remaining workers mostly stay: moved \(moved)")
        #expect(StoreBackend.owners(partitions: 8, among: []).isEmpty)
    }
}
