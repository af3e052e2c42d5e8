import Autonomous
import AutonomousTesting
import Foundation
import NATS
import NIOPosix
import Testing

@testable import Ingress

@Suite("Ingress publish lanes")
struct IngressLaneTests {
    @Test("Each new tenant gets the lane with the fewest tenants and keeps it")
    func assignment() async throws {
        try await withTestNATSServer { server in
            var lanes: [NATSConnection] = [server.connection]
            for _ in 1..<3 {
                lanes.append(try await NATSConnection.connect(configuration: .init(url: server.url), logger: TestNATSServer.logger))
            }
            let graph = try AppBuilder(name: "Lanes").build()
            let state = IngressState(
                graph: graph,
                configuration: Ingress.Configuration(tenant: "default", environment: [:]),
                connection: server.connection,
                lanes: lanes,
                logger: TestNATSServer.logger
            )
            func index(_ tenant: String) -> Int? { lanes.firstIndex { $0 === state.lane(for: tenant) } }
            // Three tenants spread over the three lanes, in order of arrival.
            #expect(["a", "b", "c"].map(index) == [0, 1, 2])
            // A fourth shares the first of the least loaded lanes; everyone keeps theirs.
            #expect(index("d") == 0)
            #expect(index("e") == 1)
            #expect(["c", "b", "a", "e", "d"].map(index) == [2, 1, 0, 1, 0])
            // No event-loop publishers configured: record-API requests use the lanes.
            #expect(state.eventLoopPublisher(for: "a", on: MultiThreadedEventLoopGroup.singleton.next()) == nil)
            for lane in lanes.dropFirst() { await lane.close() }
        }
    }
}
