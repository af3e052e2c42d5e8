package import Logging
package import NATS

/// Serves JSON requests on a core NATS subject in a queue group: each request's answer is
/// published to its reply subject, requests answered concurrently, until cancelled. For the
/// plain-JSON calls of other runtimes' processes (table reads, partition leases).
package enum JSONRequestService {
    package static func serve(
        subject: String,
        queue: String,
        connection: NATSConnection,
        logger: Logger,
        answer: @escaping @Sendable ([UInt8]) async -> JSONValue
    ) async {
        let subscription: CoreSubscription
        do {
            subscription = try connection.subscribeCore(subject: subject, queue: queue)
        } catch {
            logger.error("Cannot serve requests", metadata: ["nats.subject": "\(subject)", "error": "\(error)"])
            return
        }
        await withTaskCancellationHandler {
            await withDiscardingTaskGroup { group in
                for await request in subscription {
                    guard let reply = request.reply else { continue }
                    group.addTask {
                        let body = await answer(request.payload)
                        try? connection.publishCore(CoreMessage(subject: reply, payload: JSONWriter.encode(body)))
                    }
                }
            }
        } onCancel: {
            subscription.unsubscribe()
        }
    }
}
