import NIOCore

/// Where a stream keeps its messages.
public struct StorageType: Hashable, Sendable {
    enum Base: Hashable, Sendable { case file, memory }
    let base: Base
    public static let file = StorageType(base: .file)
    public static let memory = StorageType(base: .memory)
}

/// The parts of a JetStream stream configuration that Autonomous sets.
public struct StreamConfiguration: Sendable, Hashable {
    public var name: String
    public var subjects: [String]
    public var storage: StorageType = .file
    public var replicas: Int = 1
    /// Window in which a repeated `Nats-Msg-Id` is dropped as a duplicate.
    public var duplicateWindow: Duration = .seconds(120)
    /// 0 means unlimited.
    public var maxAge: Duration = .zero
    /// -1 means unlimited.
    public var maxBytes: Int64 = -1
    /// -1 means unlimited.
    public var maxMessageSize: Int32 = -1
    public var description: String?

    public init(name: String, subjects: [String]) {
        self.name = name
        self.subjects = subjects
    }
}

/// The parts of a durable pull consumer configuration that Autonomous sets.
public struct ConsumerConfiguration: Sendable, Hashable {
    public var durableName: String
    public var filterSubject: String?
    public var ackWait: Duration = .seconds(30)
    /// -1 means unlimited.
    public var maxDeliver: Int = -1
    public var backoff: [Duration] = []
    public var maxAckPending: Int = 65_536
    public var maxWaiting: Int = 512
    /// 0 inherits the stream's replicas.
    public var replicas: Int = 0
    /// Keep the consumer's state in memory (for short-lived readers).
    public var memoryStorage = false
    /// Start delivering at this stream sequence instead of the first message.
    public var startSequence: UInt64?
    public var description: String?

    public init(durableName: String, filterSubject: String? = nil) {
        self.durableName = durableName
        self.filterSubject = filterSubject
    }
}

/// What `StreamInfo` reports.
public struct StreamState: Sendable, Hashable {
    /// Configured replicas.
    public var replicas: Int
    /// Configured subjects.
    public var subjects: [String]
    public var messages: UInt64
    public var bytes: UInt64
    public var firstSequence: UInt64
    public var lastSequence: UInt64
}

/// What `ConsumerInfo` reports.
public struct ConsumerState: Sendable, Hashable {
    public var numPending: UInt64
    public var numAckPending: Int64
    public var numRedelivered: Int64
    public var ackFloorStreamSequence: UInt64
}

/// A message to publish to JetStream.
public struct OutgoingMessage: Sendable {
    public var subject: String
    public var payload: ByteBuffer
    /// Header name/value pairs; set `Nats-Msg-Id` here for de-duplication.
    public var headers: [(String, String)]

    public init(subject: String, payload: ByteBuffer, headers: [(String, String)] = []) {
        self.subject = subject
        self.payload = payload
        self.headers = headers
    }
}

/// JetStream's acknowledgment of one published message.
public struct PublishAck: Sendable, Hashable {
    public var sequence: UInt64
    /// The message id was seen inside the duplicate window; the stream did not store it again.
    public var duplicate: Bool

    public init(sequence: UInt64, duplicate: Bool) {
        self.sequence = sequence
        self.duplicate = duplicate
    }
}

/// A message read from a stream by sequence (`js_GetMsg`).
public struct StoredMessage: Sendable {
    public var subject: String
    public var sequence: UInt64
    public var payload: [UInt8]
    public var headers: [String: String]
}

extension Duration {
    var milliseconds: Int64 {
        let (seconds, attoseconds) = components
        return seconds * 1000 + attoseconds / 1_000_000_000_000_000
    }

    var nanoseconds: Int64 {
        let (seconds, attoseconds) = components
        return seconds * 1_000_000_000 + attoseconds / 1_000_000_000
    }
}
