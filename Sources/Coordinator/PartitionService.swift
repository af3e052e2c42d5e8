import ClusterCore
import Foundation
import Logging
import NATS

/// Partition leases for the ordered handlers of another runtime (Python workers): the same
/// call as `CoordinatorEndpoint.assignPartitions`, as plain JSON over core NATS request/reply on
/// ``Wire/partitionSubject`` (queue group `coordinators`), so that a worker in any language can
/// hold partitions (docs/python.md, "Ordered handlers").
///
/// Request: `{"v": 1, "tenant", "handler", "worker", "held": [partition], "released": [partition]}`.
/// Reply: `{"granted": {"<partition>": token}, "revoke": [partition], "ttl_ms"}` or
/// `{"error": {"code", "message"}}`.
enum PartitionService {
    static func run(connection: NATSConnection, backend: any CoordinatorBackend, logger: Logger) async {
        await JSONRequestService.serve(subject: Wire.partitionSubject, queue: "coordinators", connection: connection, logger: logger) {
            payload in
            await answer(payload, backend: backend)
        }
    }

    static func answer(_ payload: [UInt8], backend: any CoordinatorBackend) async -> JSONValue {
        func refusal(_ code: String, _ message: String) -> JSONValue {
            ["error": ["code": .string(code), "message": .string(message)]]
        }
        func partitions(_ value: JSONValue?) -> [Int]? {
            guard case .array(let items)? = value else { return value == nil ? [] : nil }
            let numbers = items.compactMap(\.intValue)
            return numbers.count == items.count && numbers.allSatisfy({ (0..<1024).contains($0) }) ? numbers : nil
        }
        guard case .object(let request)? = try? JSONParser.parse(payload), request["v"]?.intValue == 1,
            let tenant = request["tenant"]?.stringValue, let handler = request["handler"]?.stringValue,
            let worker = request["worker"]?.stringValue, let held = partitions(request["held"]),
            let released = partitions(request["released"])
        else {
            return refusal(
                "invalidArgument",
                "a partition request is {\"v\": 1, \"tenant\", \"handler\", \"worker\", \"held\", \"released\"}"
            )
        }
        do {
            let assignment = try await backend.assignPartitions(
                PartitionRequest(tenant: tenant, handler: handler, worker: worker, held: held, released: released)
            )
            let granted = JSONObject(assignment.granted.sorted { $0.key < $1.key }.map { (String($0.key), JSONValue.int($0.value)) })
            return [
                "granted": .object(granted),
                "revoke": .array(assignment.revoke.sorted().map { .int(Int64($0)) }),
                "ttl_ms": .int(Int64(assignment.ttlMilliseconds)),
            ]
        } catch let error as ClusterCallError {
            return refusal(error.code.rawValue, error.message)
        } catch {
            return refusal("unavailable", "the coordinator store did not answer; try again")
        }
    }
}
