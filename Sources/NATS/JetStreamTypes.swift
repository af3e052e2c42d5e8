package import NIOCore

/// Where a stream keeps its messages.
package struct StorageType: Hashable, Sendable {
    enum Base: Hashable, Sendable { case file, memory }
    let base: Base
    package static let file = StorageType(base: .file)
    package static let memory = StorageType(base: .memory)
}

/// The parts of a JetStream stream configuration that Autonomous sets.
package struct StreamConfiguration: Sendable, Hashable {
    package var name: String
    package var subjects: [String]
    package var storage: StorageType = .file
    package var replicas: Int = 1
    /// Window in which a repeated `Nats-Msg-Id` is dropped as a duplicate.
    package var duplicateWindow: Duration = .seconds(120)
    /// 0 means unlimited.
    package var maxAge: Duration = .zero
    /// -1 means unlimited.
    package var maxBytes: Int64 = -1
    /// -1 means unlimited.
    package var maxMessageSize: Int32 = -1
    package var description: String?

    package init(name: String, subjects: [String]) {
        self.name = name
        self.subjects = subjects
    }
}

/// The parts of a durable pull consumer configuration that Autonomous sets.
package struct ConsumerConfiguration: Sendable, Hashable {
    package var durableName: String
    package var filterSubject: String?
    package var ackWait: Duration = .seconds(30)
    /// -1 means unlimited.
    package var maxDeliver: Int = -1
    package var backoff: [Duration] = []
    package var maxAckPending: Int = 65_536
    package var maxWaiting: Int = 512
    /// 0 inherits the stream's replicas.
    package var replicas: Int = 0
    /// Keep the consumer's state in memory (for short-lived readers).
    package var memoryStorage = false
    /// Start delivering at this stream sequence instead of the first message. Only a new
    /// consumer takes it: JetStream cannot change where an existing one starts, so an update
    /// keeps the existing consumer's start.
    package var startSequence: UInt64?
    package var description: String?

    package init(durableName: String, filterSubject: String? = nil) {
        self.durableName = durableName
        self.filterSubject = filterSubject
    }
}

/// What `StreamInfo` reports.
package struct StreamState: Sendable, Hashable {
    /// Configured replicas.
    package var replicas: Int
    /// Configured subjects.
    package var subjects: [String]
    package var messages: UInt64
    package var bytes: UInt64
    package var firstSequence: UInt64
    package var lastSequence: UInt64
    /// How long the stream remembers message ids to drop repeats.
    package var duplicateWindow: Duration = .zero
    /// Configured retention: 0 keeps records forever.
    package var maxAge: Duration = .zero
    /// Configured size limit: -1 is unlimited.
    package var maxBytes: Int64 = -1
}

/// What `ConsumerInfo` reports.
package struct ConsumerState: Sendable, Hashable {
    package var numPending: UInt64
    package var numAckPending: Int64
    package var numRedelivered: Int64
    package var ackFloorStreamSequence: UInt64
    /// The last stream sequence delivered to a client.
    package var deliveredStreamSequence: UInt64 = 0
    /// Pull requests waiting at the server (0 when no client is fetching).
    package var numWaiting: Int64 = 0
}

/// Where an ephemeral reader starts in its stream. (Not by time: nats-server 2.9's start-time
/// lookup was seen to start after every message now and then; ``NATSConnection/firstSequence(stream:atOrAfter:)``
/// finds a time's sequence instead.)
package enum ReadStart: Sendable, Hashable {
    case first
    case sequence(UInt64)
}

/// A message to publish to JetStream.
package struct OutgoingMessage: Sendable {
    package var subject: String
    package var payload: ByteBuffer
    /// Header name/value pairs; set `Nats-Msg-Id` here for de-duplication.
    package var headers: [(String, String)]

    package init(subject: String, payload: ByteBuffer, headers: [(String, String)] = []) {
        self.subject = subject
        self.payload = payload
        self.headers = headers
    }
}

/// JetStream's acknowledgment of one published message.
package struct PublishAck: Sendable, Hashable {
    package var sequence: UInt64
    /// The message id was seen inside the duplicate window; the stream did not store it again.
    package var duplicate: Bool

    package init(sequence: UInt64, duplicate: Bool) {
        self.sequence = sequence
        self.duplicate = duplicate
    }
}

/// A message read from a stream by sequence (`js_GetMsg`).
package struct StoredMessage: Sendable {
    package var subject: String
    package var sequence: UInt64
    package var payload: [UInt8]
    package var headers: [String: String]
    /// When the stream stored it, in nanoseconds since 1970.
    package var timestamp: Int64 = 0
}

extension Duration {
    var milliseconds: Int64 {
        let (seconds, attoseconds) = components
        return seconds * 1000 + attoseconds / 1_000_000_000_000_000
    }

    package var nanoseconds: Int64 {
        let (seconds, attoseconds) = components
        return seconds * 1_000_000_000 + attoseconds / 1_000_000_000
    }
}
