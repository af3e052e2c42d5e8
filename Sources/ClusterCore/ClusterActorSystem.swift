package import Distributed
package import Foundation
package import Logging
package import NATS
import Synchronization

/// Identifies a distributed actor by the NATS subject its calls go to.
///
/// With a `queue`, several processes host the same actor and NATS hands each call to one of
/// them (the coordinators do this: any coordinator answers).
package struct ClusterActorID: Hashable, Sendable, Codable, CustomStringConvertible {
    package var subject: String
    package var queue: String?

    package init(subject: String, queue: String? = nil) {
        self.subject = subject
        self.queue = queue
    }

    /// The coordinators' RPC endpoint, served by every coordinator.
    package static let coordinator = ClusterActorID(subject: "aut._coord.rpc", queue: "coordinators")

    package var description: String { subject }
}

/// Why a cluster call failed: the remote side's domain error, or the transport's.
package struct ClusterCallError: Error, Codable, Sendable, Hashable, CustomStringConvertible {
    package enum Code: String, Codable, Sendable {
        /// Nobody serves the actor's subject (for the coordinator: none is running).
        case unavailable
        /// No reply within the call timeout.
        case timeout
        /// The two sides speak different envelope versions.
        case versionMismatch
        case notFound
        case duplicate
        case invalidArgument
        case unauthorized
        case forbidden
        /// The remote side failed in a way it did not describe.
        case `internal`
    }

    package var code: Code
    package var message: String

    package init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    package var description: String { "\(code.rawValue): \(message)" }

    /// Compares only the ``code``.
    package static func == (lhs: ClusterCallError, rhs: ClusterCallError) -> Bool { lhs.code == rhs.code }
    package func hash(into hasher: inout Hasher) { hasher.combine(code) }

    /// Whether the peer does not know the call: a coordinator of an earlier release during a
    /// rolling upgrade (releases before `versionMismatch` for unknown calls answered `internal`
    /// naming `targetAccessorNotFound`).
    package var isUnknownCall: Bool {
        code == .versionMismatch || (code == .internal && message.contains("targetAccessorNotFound"))
    }
}

/// The cluster's `DistributedActorSystem`: calls travel as JSON envelopes over NATS
/// request/reply (see docs/wire.md, "Cluster calls").
///
/// A call to an actor hosted by this system runs locally without touching NATS; a call to
/// any other ID is sent to the ID's subject and waits at most `callTimeout` for the reply.
///
/// Calls from other processes are served by ``run()``, which the process runs for as long as
/// it hosts actors (the runtime's connection service does); every call is a child task of it.
package final class ClusterActorSystem: DistributedActorSystem, Sendable {
    package typealias ActorID = ClusterActorID
    package typealias InvocationEncoder = ClusterInvocationEncoder
    package typealias InvocationDecoder = ClusterInvocationDecoder
    package typealias ResultHandler = ClusterResultHandler
    package typealias SerializationRequirement = Codable

    /// Version of the call envelope; a peer with another version gets `.versionMismatch`.
    package static let envelopeVersion = 1

    package let connection: NATSConnection
    package let callTimeout: Duration
    let logger: Logger

    private struct Hosted {
        var actors: [ClusterActorID: any DistributedActor] = [:]
        var subscriptions: [ClusterActorID: CoreSubscription] = [:]
    }

    private let hosted = Mutex(Hosted())
    /// Subscriptions of actors that became ready, for ``run()`` to serve.
    private let ready: AsyncStream<(ClusterActorID, CoreSubscription)>
    private let readyContinuation: AsyncStream<(ClusterActorID, CoreSubscription)>.Continuation

    @TaskLocal static var pendingID: ClusterActorID?

    package init(connection: NATSConnection, callTimeout: Duration = .seconds(5), logger: Logger) {
        self.connection = connection
        self.callTimeout = callTimeout
        self.logger = logger
        (ready, readyContinuation) = AsyncStream.makeStream(of: (ClusterActorID, CoreSubscription).self)
    }

    /// Serves calls to the actors hosted here until ``shutdown()``: a child task per actor,
    /// and one per call. Returns once every call in progress has answered.
    package func run() async {
        await withDiscardingTaskGroup { group in
            for await (id, subscription) in ready {
                group.addTask {
                    await withDiscardingTaskGroup { calls in
                        for await message in subscription {
                            calls.addTask { await self.serve(message, for: id) }
                        }
                    }
                }
            }
        }
    }

    /// Creates an actor under a well-known ID (instead of a random one).
    package static func withID<T>(_ id: ClusterActorID, _ body: () throws -> T) rethrows -> T {
        try $pendingID.withValue(id, operation: body)
    }

    // MARK: DistributedActorSystem

    package func resolve<Act>(id: ClusterActorID, as actorType: Act.Type) throws -> Act?
    where Act: DistributedActor, Act.ID == ClusterActorID {
        hosted.withLock { $0.actors[id] as? Act }
    }

    package func assignID<Act>(_ actorType: Act.Type) -> ClusterActorID where Act: DistributedActor, Act.ID == ClusterActorID {
        Self.pendingID ?? ClusterActorID(subject: "aut._actor.\(UUID().uuidString.lowercased())")
    }

    package func actorReady<Act>(_ actor: Act) where Act: DistributedActor, Act.ID == ClusterActorID {
        let id = actor.id
        let subscription: CoreSubscription
        do {
            subscription = try connection.subscribeCore(subject: id.subject, queue: id.queue)
        } catch {
            logger.error("Cannot serve distributed actor", metadata: ["cluster.actor": "\(id)", "error": "\(error)"])
            return
        }
        hosted.withLock { state in
            state.actors[id] = actor
            state.subscriptions[id]?.unsubscribe()
            state.subscriptions[id] = subscription
        }
        readyContinuation.yield((id, subscription))
    }

    package func resignID(_ id: ClusterActorID) {
        let subscription = hosted.withLock { state in
            state.actors[id] = nil
            return state.subscriptions.removeValue(forKey: id)
        }
        subscription?.unsubscribe()
    }

    /// Stops serving every hosted actor (their subscriptions end, and so does ``run()``).
    package func shutdown() {
        readyContinuation.finish()
        let subscriptions = hosted.withLock { state in
            defer { state = Hosted() }
            return Array(state.subscriptions.values)
        }
        subscriptions.forEach { $0.unsubscribe() }
    }

    package func makeInvocationEncoder() -> ClusterInvocationEncoder { ClusterInvocationEncoder() }

    package func remoteCall<Act, Err, Res>(
        on actor: Act,
        target: RemoteCallTarget,
        invocation: inout ClusterInvocationEncoder,
        throwing: Err.Type,
        returning: Res.Type
    ) async throws -> Res where Act: DistributedActor, Act.ID == ClusterActorID, Err: Error, Res: Codable {
        let data = try await send(to: actor.id, target: target, envelope: invocation.envelope)
        guard let data else { throw ClusterCallError(.internal, "\(target.identifier) returned no value") }
        do {
            return try JSONDecoder().decode(Res.self, from: data)
        } catch {
            throw ClusterCallError(.versionMismatch, "cannot decode the reply of \(actor.id): \(error)")
        }
    }

    package func remoteCallVoid<Act, Err>(
        on actor: Act,
        target: RemoteCallTarget,
        invocation: inout ClusterInvocationEncoder,
        throwing: Err.Type
    ) async throws where Act: DistributedActor, Act.ID == ClusterActorID, Err: Error {
        _ = try await send(to: actor.id, target: target, envelope: invocation.envelope)
    }

    // MARK: Transport

    private func send(to id: ClusterActorID, target: RemoteCallTarget, envelope: CallEnvelope) async throws -> Data? {
        var envelope = envelope
        envelope.target = target.identifier
        let payload = Array(try JSONEncoder().encode(envelope))
        let reply: CoreMessage
        do {
            reply = try await connection.request(CoreMessage(subject: id.subject, payload: payload), timeout: callTimeout)
        } catch let error as NATSError where error.code == .noResponders {
            throw ClusterCallError(
                .unavailable,
                "nobody answers on \(id.subject); is the \(id.queue == "coordinators" ? "coordinator" : "peer") running?"
            )
        } catch let error as NATSError where error.code == .timeout {
            throw ClusterCallError(.timeout, "no reply from \(id.subject) within \(callTimeout)")
        } catch let error as NATSError {
            throw ClusterCallError(.unavailable, "cannot reach \(id.subject): \(error.message)")
        }
        let decoded: ReplyEnvelope
        do {
            decoded = try JSONDecoder().decode(ReplyEnvelope.self, from: Data(reply.payload))
        } catch {
            throw ClusterCallError(.versionMismatch, "unreadable reply from \(id.subject)")
        }
        if let error = decoded.error { throw error }
        return decoded.result
    }

    private func serve(_ message: CoreMessage, for id: ClusterActorID) async {
        guard let replySubject = message.reply else { return }
        let reply: ReplyEnvelope
        if let envelope = try? JSONDecoder().decode(CallEnvelope.self, from: Data(message.payload)) {
            if envelope.v != Self.envelopeVersion {
                reply = ReplyEnvelope(
                    v: Self.envelopeVersion,
                    error: ClusterCallError(
                        .versionMismatch,
                        "call envelope version \(envelope.v); this peer speaks \(Self.envelopeVersion)"
                    )
                )
            } else if let actor = hosted.withLock({ $0.actors[id] }) {
                reply = await execute(envelope, on: actor)
            } else {
                reply = ReplyEnvelope(v: Self.envelopeVersion, error: ClusterCallError(.unavailable, "\(id) is not hosted here any more"))
            }
        } else {
            reply = ReplyEnvelope(v: Self.envelopeVersion, error: ClusterCallError(.versionMismatch, "unreadable call envelope"))
        }
        do {
            try connection.publishCore(CoreMessage(subject: replySubject, payload: Array(try JSONEncoder().encode(reply))))
        } catch {
            logger.warning("Cannot send cluster reply", metadata: ["cluster.actor": "\(id)", "error": "\(error)"])
        }
    }

    private func execute(_ envelope: CallEnvelope, on actor: some DistributedActor) async -> ReplyEnvelope {
        var decoder = ClusterInvocationDecoder(envelope: envelope)
        let handler = ClusterResultHandler()
        do {
            try await executeDistributedTarget(
                on: actor,
                target: RemoteCallTarget(envelope.target),
                invocationDecoder: &decoder,
                handler: handler
            )
        } catch {
            return ReplyEnvelope(
                v: Self.envelopeVersion,
                error: ClusterCallError(.versionMismatch, "cannot run \(envelope.target): \(error)")
            )
        }
        return handler.reply
    }
}

/// A call on the wire: target (the mangled method identifier), generic substitutions and
/// JSON-encoded arguments.
package struct CallEnvelope: Codable, Sendable {
    package var v: Int = ClusterActorSystem.envelopeVersion
    package var target: String = ""
    package var generics: [String] = []
    package var arguments: [Data] = []
}

struct ReplyEnvelope: Codable, Sendable {
    var v: Int
    var result: Data?
    var error: ClusterCallError?

    init(v: Int, result: Data? = nil, error: ClusterCallError? = nil) {
        self.v = v
        self.result = result
        self.error = error
    }
}

package struct ClusterInvocationEncoder: DistributedTargetInvocationEncoder {
    package typealias SerializationRequirement = Codable
    var envelope = CallEnvelope()

    package mutating func recordGenericSubstitution<T>(_ type: T.Type) throws {
        guard let name = _mangledTypeName(type) else {
            throw ClusterCallError(.invalidArgument, "cannot send generic type \(type)")
        }
        envelope.generics.append(name)
    }

    package mutating func recordArgument<Value: Codable>(_ argument: RemoteCallArgument<Value>) throws {
        envelope.arguments.append(try JSONEncoder().encode(argument.value))
    }

    package mutating func recordReturnType<R: Codable>(_ type: R.Type) throws {}
    package mutating func recordErrorType<E: Error>(_ type: E.Type) throws {}
    package mutating func doneRecording() throws {}
}

package struct ClusterInvocationDecoder: DistributedTargetInvocationDecoder {
    package typealias SerializationRequirement = Codable
    let envelope: CallEnvelope
    var nextArgument = 0

    init(envelope: CallEnvelope) {
        self.envelope = envelope
    }

    package mutating func decodeGenericSubstitutions() throws -> [any Any.Type] {
        try envelope.generics.map { name in
            guard let type = _typeByName(name) else { throw ClusterCallError(.versionMismatch, "unknown type \(name)") }
            return type
        }
    }

    package mutating func decodeNextArgument<Argument: Codable>() throws -> Argument {
        guard nextArgument < envelope.arguments.count else {
            throw ClusterCallError(.versionMismatch, "the call has fewer arguments than \(envelope.target) takes")
        }
        defer { nextArgument += 1 }
        do {
            return try JSONDecoder().decode(Argument.self, from: envelope.arguments[nextArgument])
        } catch {
            throw ClusterCallError(.versionMismatch, "argument \(nextArgument + 1) of \(envelope.target): \(error)")
        }
    }

    package mutating func decodeErrorType() throws -> (any Any.Type)? { nil }
    package mutating func decodeReturnType() throws -> (any Any.Type)? { nil }
}

package final class ClusterResultHandler: DistributedTargetInvocationResultHandler, Sendable {
    package typealias SerializationRequirement = Codable
    private let result = Mutex(ReplyEnvelope(v: ClusterActorSystem.envelopeVersion))

    var reply: ReplyEnvelope { result.withLock { $0 } }

    package func onReturn<Success: Codable>(value: Success) async throws {
        let data = try JSONEncoder().encode(value)
        result.withLock { $0.result = data }
    }

    package func onReturnVoid() async throws {}

    package func onThrow<Err: Error>(error: Err) async throws {
        let described: ClusterCallError
        if let error = error as? ClusterCallError {
            described = error
        } else if error is ExecuteDistributedTargetError {
            // A call this process does not know (a peer of another release).
            described = ClusterCallError(.versionMismatch, "\(error)")
        } else {
            described = ClusterCallError(.internal, "\(error)")
        }
        result.withLock { $0.error = described }
    }
}
