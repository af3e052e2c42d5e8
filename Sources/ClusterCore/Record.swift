public import Foundation
package import NATS

/// A named, versioned meaning of a record, e.g. `llm.prompt@1`.
public struct SemanticType: Sendable, Hashable, CustomStringConvertible, ExpressibleByStringLiteral, Codable {
    public var name: String
    public var version: Int

    public init(_ name: String, version: Int = 1) {
        self.name = name
        self.version = version
    }

    /// `"llm.prompt@2"` or `"llm.prompt"` (version 1).
    public init(stringLiteral value: String) {
        if let at = value.lastIndex(of: "@"), let version = Int(value[value.index(after: at)...]) {
            self.init(String(value[..<at]), version: version)
        } else {
            self.init(value)
        }
    }

    public var description: String { "\(name)@\(version)" }
}

/// A typed record: a `Codable` struct that names its semantic type.
///
/// ```swift
/// struct Prompt: Record {
///     static let semanticType: SemanticType = "llm.prompt@1"
///     var prompt: String
/// }
/// ```
public protocol Record: Codable, Sendable {
    static var semanticType: SemanticType { get }

    /// Checks what the type alone cannot say (ranges, non-empty lists). The record API answers
    /// 422 naming the field when it throws; an append from a handler or a route throws it to the
    /// caller; a worker sends a stored record that fails it to the dead-letter subject. Throw
    /// ``RecordValidationError`` to name the field. The default accepts every record.
    func validate() throws
}

extension Record {
    public func validate() throws {}
}

/// A record that does not keep a rule of its type (see ``Record/validate()``).
public struct RecordValidationError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The field at fault, as a path (`items[0].quantity`), when there is one.
    public var field: String?
    public var problem: String

    public init(field: String? = nil, _ problem: String) {
        self.field = field
        self.problem = problem
    }

    public var description: String { field.map { "field '\($0)': \(problem)" } ?? problem }
}

extension JSONValue: Record {
    public static var semanticType: SemanticType { "json@1" }
}

/// Everything known about a record besides its JSON body.
public struct RecordMetadata: Sendable, Hashable {
    public var id: String
    public var table: String
    public var tenant: String
    /// When JetStream stored the record.
    public var ingestTime: Date
    /// The id of the record whose handler produced this one, if any.
    public var causedBy: String?
    /// W3C trace context carried with the record.
    public var traceparent: String?
    /// `Aut-Type` as published.
    public var semanticType: String?
    /// 1 on first delivery to the current handler, more on redeliveries.
    public var deliveryCount: Int

    package init(
        id: String,
        table: String,
        tenant: String,
        ingestTime: Date = Date(),
        causedBy: String? = nil,
        traceparent: String? = nil,
        semanticType: String? = nil,
        deliveryCount: Int = 1
    ) {
        self.id = id
        self.table = table
        self.tenant = tenant
        self.ingestTime = ingestTime
        self.causedBy = causedBy
        self.traceparent = traceparent
        self.semanticType = semanticType
        self.deliveryCount = deliveryCount
    }
}

/// A record as it comes off the wire, before decoding.
package struct IncomingRecord: Sendable {
    package var metadata: RecordMetadata
    package var payload: [UInt8]
    /// The subject the record was stored under (its partition's, for partitioned tables).
    package var subject: String
    /// The record's sequence in its stream (0 when not read from a stream).
    package var streamSequence: UInt64

    package init(metadata: RecordMetadata, payload: [UInt8], subject: String = "", streamSequence: UInt64 = 0) {
        self.metadata = metadata
        self.payload = payload
        self.subject = subject
        self.streamSequence = streamSequence
    }
}

extension IncomingRecord {
    /// A record fetched from its table's stream with ``Wire/consumedHeaders``.
    package init(_ message: JetStreamMessage, table: String, tenant: String) {
        let values = message.headerValues
        self.init(
            metadata: RecordMetadata(
                id: values[0] ?? "seq-\(message.streamSequence)",
                table: table,
                tenant: tenant,
                ingestTime: Date(timeIntervalSince1970: Double(message.timestamp) / 1e9),
                causedBy: values[1],
                traceparent: values[3],
                semanticType: values[2],
                deliveryCount: Int(message.deliveryCount)
            ),
            payload: message.payload,
            subject: message.subject,
            streamSequence: message.streamSequence
        )
    }
}

/// One decoded record and its metadata.
public struct Entry<Row: Sendable>: Sendable {
    public var value: Row
    public var metadata: RecordMetadata

    package init(value: Row, metadata: RecordMetadata) {
        self.value = value
        self.metadata = metadata
    }

    public var id: String { metadata.id }
}

extension Entry where Row == JSONValue {
    public subscript(key: String) -> JSONValue { value[key] }
}

/// The batch a handler receives: a collection of rows, with their metadata in ``entries``.
///
/// Every output a handler appends gets its id from the record it was made from, so a record
/// that comes back after a crash (in another batch, or alone) produces the same ids and
/// JetStream drops the repeats. The batch knows which record that is in every natural shape:
/// `map`, `compactMap` and `flatMap` carry each result's source (``Derived``); iterating the
/// batch (`for record in records`, `forEach`, `enumerated()`, an index loop, with `await`s
/// inside) tells the handler's context which record the loop is on, so an append in the loop
/// body is caused by that record, whatever tables it goes to. `filter` keeps that knowledge.
public struct Records<Row: Record>: RandomAccessCollection, Sendable {
    public let entries: [Entry<Row>]
    /// Reports the record being handled to the handler's context (`nil` outside a handler).
    let lineage: LineageCursor?

    package init(_ entries: [Entry<Row>]) {
        self.entries = entries
        self.lineage = nil
    }

    package init(_ entries: [Entry<Row>], lineage: LineageCursor?) {
        self.entries = entries
        self.lineage = lineage
    }

    public var startIndex: Int { entries.startIndex }
    public var endIndex: Int { entries.endIndex }

    public subscript(position: Int) -> Row {
        let entry = entries[position]
        lineage?.enter(entry.metadata)
        return entry.value
    }

    public func makeIterator() -> Iterator { Iterator(entries: entries, lineage: lineage) }

    /// Hands out the batch's rows in order, telling the handler's context which one it is on.
    public struct Iterator: IteratorProtocol {
        let entries: [Entry<Row>]
        var walk: LineageWalk
        var index = 0

        init(entries: [Entry<Row>], lineage: LineageCursor?) {
            self.entries = entries
            self.walk = LineageWalk(cursor: lineage)
        }

        public mutating func next() -> Row? {
            guard index < entries.count else {
                walk.visit(nil)
                return nil
            }
            let entry = entries[index]
            index += 1
            walk.visit(entry.metadata)
            return entry.value
        }
    }

    /// Runs `body` on every row in order, each append in it caused by that row's record.
    /// (Disfavoured, so a `forEach` whose body does not `await` stays the synchronous one.)
    @_disfavoredOverload
    public func forEach(_ body: (Row) async throws -> Void) async rethrows {
        for row in self { try await body(row) }
    }

    public func map<T>(_ transform: (Row) throws -> T) rethrows -> Derived<T> {
        var values: [T] = []
        var causes: [RecordMetadata] = []
        values.reserveCapacity(entries.count)
        causes.reserveCapacity(entries.count)
        for entry in entries {
            values.append(try transform(entry.value))
            causes.append(entry.metadata)
        }
        return Derived(values: values, causes: causes, lineage: lineage)
    }

    public func compactMap<T>(_ transform: (Row) throws -> T?) rethrows -> Derived<T> {
        var values: [T] = []
        var causes: [RecordMetadata] = []
        for entry in entries {
            if let value = try transform(entry.value) {
                values.append(value)
                causes.append(entry.metadata)
            }
        }
        return Derived(values: values, causes: causes, lineage: lineage)
    }

    public func flatMap<S: Sequence>(_ transform: (Row) throws -> S) rethrows -> Derived<S.Element> {
        var values: [S.Element] = []
        var causes: [RecordMetadata] = []
        for entry in entries {
            for value in try transform(entry.value) {
                values.append(value)
                causes.append(entry.metadata)
            }
        }
        return Derived(values: values, causes: causes, lineage: lineage)
    }

    public func filter(_ isIncluded: (Row) throws -> Bool) rethrows -> Records<Row> {
        Records(try entries.filter { try isIncluded($0.value) }, lineage: lineage)
    }

    /// The rows in the order `areInIncreasingOrder` gives, still knowing their records.
    public func sorted(by areInIncreasingOrder: (Row, Row) throws -> Bool) rethrows -> Records<Row> {
        Records(try entries.sorted { try areInIncreasingOrder($0.value, $1.value) }, lineage: lineage)
    }
}

/// Values derived from a batch, each remembering the record it came from. Iterating them in a
/// handler makes an append in the loop body caused by the value's record, as for ``Records``.
public struct Derived<Value>: RandomAccessCollection {
    public let values: [Value]
    public let causes: [RecordMetadata]
    let lineage: LineageCursor?

    package init(values: [Value], causes: [RecordMetadata]) {
        self.init(values: values, causes: causes, lineage: nil)
    }

    init(values: [Value], causes: [RecordMetadata], lineage: LineageCursor?) {
        precondition(values.count == causes.count, "every derived value needs a cause")
        self.values = values
        self.causes = causes
        self.lineage = lineage
    }

    public var startIndex: Int { values.startIndex }
    public var endIndex: Int { values.endIndex }

    public subscript(position: Int) -> Value {
        lineage?.enter(causes[position])
        return values[position]
    }

    public func makeIterator() -> Iterator { Iterator(derived: self) }

    /// Hands out the values in order, telling the handler's context which record each came from.
    public struct Iterator: IteratorProtocol {
        let derived: Derived
        var walk: LineageWalk
        var index = 0

        init(derived: Derived) {
            self.derived = derived
            self.walk = LineageWalk(cursor: derived.lineage)
        }

        public mutating func next() -> Value? {
            guard index < derived.values.count else {
                walk.visit(nil)
                return nil
            }
            defer { index += 1 }
            walk.visit(derived.causes[index])
            return derived.values[index]
        }
    }
}

extension Derived: Sendable where Value: Sendable {}
extension Records.Iterator: Sendable {}
extension Derived.Iterator: Sendable where Value: Sendable {}

/// A schedule firing: the record in a schedule's table.
public struct Tick: Record, Hashable {
    public static let semanticType: SemanticType = "autonomous.tick@1"

    public var schedule: String
    /// The instant the tick was due (not when it was published).
    public var fireTime: String
    /// `true` for a tick an operator triggered by hand (absent for scheduled ticks).
    public var manual: Bool?

    package init(schedule: String, fireTime: Date, manual: Bool? = nil) {
        self.schedule = schedule
        self.fireTime = ISO8601.format(fireTime)
        self.manual = manual
    }

    public var fireDate: Date? { ISO8601.parse(fireTime) }

    enum CodingKeys: String, CodingKey {
        case schedule
        case fireTime = "fire_time"
        case manual
    }
}
