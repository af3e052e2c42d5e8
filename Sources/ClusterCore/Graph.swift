package import Foundation
public import Logging
package import NATS
package import NIOCore
import Synchronization

/// A table as the runtime sees it, typed or dynamic.
public struct TableDefinition: Sendable {
    public enum Kind: String, Sendable {
        /// An ordinary table, subject `aut.<tenant>.tbl.<name>`.
        case table
        /// A schedule's table of ticks, subject `aut.<tenant>.sched.<name>`.
        case schedule
    }

    public let name: String
    public let kind: Kind
    public let semanticType: SemanticType
    /// Swift type name for typed tables, `nil` for dynamic (JSON) tables.
    package let typeName: String?
    /// Top-level fields every record has (typed tables whose fields could be probed).
    package let requiredFields: [String]?
    /// All top-level fields a record may have, when known.
    package let knownFields: [String]?
    /// What each known field holds (a typed table's columns in a storage).
    package let fieldKinds: [String: FieldKind]
    /// Checks one record body against the table's type: `nil` when it fits, else (field, problem).
    let check: @Sendable ([UInt8]) -> (field: String?, problem: String)?
    /// Set when an ordered handler reads the table: its records go to partition subjects
    /// `aut.<tenant>.tbl.<name>.<partition>`.
    public internal(set) var partitioning: HandlerOrdering? = nil
    /// Whether the record API takes records for the table (see ``RecordAPIAccess``).
    public internal(set) var recordAPI: RecordAPIAccess = .automatic
    /// The storage that keeps the table's records as well (a name from `autonomous.json`),
    /// if any. See ``AppBuilder/table(_:of:recordAPI:storage:retention:)``.
    public internal(set) var storage: String? = nil
    /// How long each tenant's stream of the table keeps records; `nil` fields take the
    /// cluster's defaults. `autonomous.json` can override it per deployment.
    public internal(set) var retention = StreamRetention()

    /// The table's subject (without a partition).
    package func subject(tenant: String) -> String {
        switch kind {
        case .table: return Wire.tableSubject(tenant: tenant, table: name)
        case .schedule: return Wire.scheduleSubject(tenant: tenant, schedule: name)
        }
    }

    /// The subject of one record: its partition's for a partitioned table.
    package func subject(tenant: String, payload: ByteBuffer) -> String {
        guard let partitioning else { return subject(tenant: tenant) }
        let key = Wire.partitionKey(payload, field: partitioning.field)
        return subject(tenant: tenant) + "." + String(Wire.partition(key, of: partitioning.partitions))
    }

    /// The stream holding the table's records: its own for a table, the tenant's for a
    /// schedule's ticks.
    package func streamName(tenant: String) -> String {
        Wire.streamName(tenant: tenant, source: name, isTable: kind == .table)
    }

    /// What a consumer of every record of the table filters on.
    package func filterSubject(tenant: String) -> String {
        partitioning == nil ? subject(tenant: tenant) : subject(tenant: tenant) + ".>"
    }

    /// Validates a record body against the table's type.
    package func validate(_ body: [UInt8]) -> (field: String?, problem: String)? { check(body) }

    package var isTyped: Bool { typeName != nil }

    static func make<Row: Record>(_ name: String, kind: Kind, of type: Row.Type) -> TableDefinition {
        if Row.self == JSONValue.self {
            return TableDefinition(
                name: name,
                kind: kind,
                semanticType: Row.semanticType,
                typeName: nil,
                requiredFields: nil,
                knownFields: nil,
                fieldKinds: [:],
                check: { _ in nil }
            )
        }
        let probe = SchemaProbe.columns(of: Row.self)
        let required = probe?.required ?? []
        return TableDefinition(
            name: name,
            kind: kind,
            semanticType: Row.semanticType,
            typeName: String(describing: Row.self),
            requiredFields: probe?.required,
            knownFields: probe?.all,
            fieldKinds: probe?.kinds ?? [:],
            check: { body in
                do {
                    try JSONDecoder().decode(Row.self, from: Data(body)).validate()
                    return nil
                } catch let error as RecordValidationError {
                    return (error.field, error.description)
                } catch let error as DecodingError {
                    // A record missing several top-level fields hears of all of them at once.
                    if case .keyNotFound(_, let context) = error, context.codingPath.isEmpty,
                        case .object(let object)? = try? JSONParser.parse(body)
                    {
                        let missing = required.filter { object[$0] == nil }
                        if missing.count > 1 {
                            return (missing[0], "missing required fields " + missing.map { "'\($0)'" }.joined(separator: ", "))
                        }
                    }
                    // Foundation reports a number that fits no Swift number (or a fraction for a
                    // whole-number field) as "not valid JSON", with no field; the body is valid JSON
                    // (the ingress checked it), so say what is wrong and, where it can be found, where.
                    if case .dataCorrupted(let context) = error, context.codingPath.isEmpty, let value = try? JSONParser.parse(body) {
                        if let (path, number) = SchemaProbe.outOfRangeNumber(in: value) {
                            return (path, "field '\(path)': \(number) is out of range for a number field")
                        }
                        return (nil, "a number does not fit its field's type: a fraction where a whole number is expected, or out of range")
                    }
                    return SchemaProbe.describe(error)
                } catch {
                    return (nil, "\(error)")
                }
            }
        )
    }
}

/// Whether clients may append to a table through the record API
/// (`POST /v1/tables/{table}/records`).
public enum RecordAPIAccess: String, Sendable, Hashable {
    /// Open unless a handler or schedule declares that it writes the table (`writes:`, or a
    /// component's outputs): a table the app derives is not for clients to fill.
    case automatic
    /// Open, even when handlers write it too.
    case open
    /// Closed: only the app's handlers, routes and webhooks append to it.
    case closed
}

/// A table handle of any record type, for listing the tables a handler writes.
public protocol TableReference: Sendable {
    var name: String { get }
}

/// How a handler consumes: batch size, wait, concurrency, retries.
public struct HandlerOptions: Sendable {
    /// Most records per batch.
    public var batchSize: Int
    /// Longest wait for a batch to fill once the first record is there.
    public var maxWait: Duration
    /// Batches in flight at once in one worker process.
    public var concurrency: Int
    /// Deliveries before a record goes to the dead-letter subject.
    public var maxAttempts: Int
    /// Delay before redelivery after a failure, by attempt (the last entry repeats).
    public var retryBackoff: [Duration]
    /// Records delivered to this handler but not yet acked, across all workers (flow
    /// control); `nil` uses the deployment's default.
    public var maxAckPending: Int?
    /// Set by ``ordered(by:partitions:)``: records with the same key are handled one at a
    /// time, in order.
    public var ordering: HandlerOrdering?
    /// Longest one run of the handler (one batch, outputs included) may take. A run that takes
    /// longer is cancelled and counts as a failed attempt: retried with backoff, then
    /// dead-lettered after `maxAttempts`. A handler that ignores cancellation keeps running in
    /// the background; its late outputs are the same records (same ids), so they are stored
    /// once.
    public var timeout: Duration

    public init(
        batchSize: Int = 256,
        maxWait: Duration = .milliseconds(500),
        concurrency: Int = 2,
        maxAttempts: Int = 5,
        retryBackoff: [Duration] = [.seconds(1), .seconds(5), .seconds(30), .seconds(120)],
        maxAckPending: Int? = nil,
        timeout: Duration = .seconds(300)
    ) {
        self.timeout = timeout
        self.maxAckPending = maxAckPending
        self.batchSize = batchSize
        self.maxWait = maxWait
        self.concurrency = concurrency
        self.maxAttempts = maxAttempts
        self.retryBackoff = retryBackoff
    }

    /// Handles records with the same value of `field` in the order they were stored, one at a
    /// time. Keys are hashed into `partitions` partition subjects, and the coordinator leases
    /// each partition to one worker at a time (more partitions: more parallelism).
    public func ordered(by field: String, partitions: Int = 16) -> HandlerOptions {
        var copy = self
        copy.ordering = HandlerOrdering(field: field, partitions: partitions)
        return copy
    }

    package func backoff(afterAttempt attempt: Int) -> Duration {
        guard !retryBackoff.isEmpty else { return .seconds(1) }
        return retryBackoff[min(max(attempt - 1, 0), retryBackoff.count - 1)]
    }
}

/// How an ordered handler partitions its records.
public struct HandlerOrdering: Sendable, Hashable {
    /// Top-level field whose value is the ordering key.
    public var field: String
    /// Number of partitions (1...1024).
    public var partitions: Int

    public init(field: String, partitions: Int) {
        self.field = field
        self.partitions = partitions
    }

    /// `h_<handler>_p<partition>`: each partition has its own durable consumer.
    package static func consumerName(handler: String, partition: Int) -> String {
        Wire.consumerName(handler: handler) + "_p\(partition)"
    }
}

/// What a component or handler may read at startup: the environment (for secrets and base
/// URLs) and a logger.
public struct ComponentEnvironment: Sendable, CustomStringConvertible {
    public var environment: [String: String]
    public var logger: Logger

    /// Never the values: the environment holds the process's secrets.
    public var description: String { "ComponentEnvironment(\(environment.count) variables, not shown)" }

    package init(environment: [String: String], logger: Logger) {
        self.environment = environment
        self.logger = logger
    }
}

/// Runs one batch of raw records.
package typealias HandlerInvoker = @Sendable ([IncomingRecord], HandlerContext) async throws -> Void

/// A record that does not fit the table's type. The worker sends it to the dead-letter
/// subject instead of retrying it.
package struct UndecodableRecordError: Error, Sendable, CustomStringConvertible {
    package var recordID: String
    package var message: String
    package var description: String { "record \(recordID) does not fit its table's type: \(message)" }
}

public struct HandlerDefinition: Sendable {
    public let name: String
    /// The table (or schedule) whose new records the handler receives.
    public let source: String
    public let sourceKind: TableDefinition.Kind
    public let options: HandlerOptions
    /// The component kind, for handlers that are components.
    public let component: String?
    /// Fields the handler reads from every record (components declare them).
    public let requiredFields: [String]
    /// Tables the handler appends to, when declared.
    public let outputs: [String]
    /// Output tables and the fields the handler writes into each.
    public let producedFields: [String: [String]]
    public let secrets: [Secret]
    /// Resolves secrets and settings and returns the function that runs batches.
    package let prepare: @Sendable (ComponentEnvironment) throws -> HandlerInvoker
    /// Whether a redelivered record runs alone, with run notes that catch a record that stops
    /// the process (docs/wire.md, "Poison records"). Storage sinks run no app code and write
    /// redeliveries in batches like first deliveries.
    package var isolatesRedeliveries = true
    /// For an ordered handler with one partition: its consumer reads every record of the
    /// table, whatever the table's partitioning, one batch at a time across the cluster (an
    /// S3 sink, whose object names follow the stream's order).
    package var consumesWholeTable = false
    /// Where the handler's consumer starts when it is first created: the first record stored
    /// at or after this time (a storage sink's `backfill` in autonomous.json); `nil` for the
    /// stream's first record.
    package var startTime: Date? = nil
    /// The runtime that runs the handler when it is not Swift code in this app (``ExternalRuntime``):
    /// Swift workers leave it to that runtime's workers.
    package var runtime: String? = nil

    package var consumerName: String { Wire.consumerName(handler: name) }

    /// The handler that runs `component` on the new records of `source`.
    package static func component(_ component: any Component, name: String?, source: String, options: HandlerOptions) -> HandlerDefinition {
        HandlerDefinition(
            name: name ?? "\(component.kind)-\(source)",
            source: source,
            sourceKind: .table,
            options: options,
            component: component.kind,
            requiredFields: component.requiredFields,
            outputs: component.produces.keys.sorted(),
            producedFields: component.produces,
            secrets: component.secrets,
            prepare: { environment in
                let run = try component.makeHandler(environment)
                return { raw, ctx in try await run(Records<JSONValue>.decoding(raw, lineage: ctx.lineage), ctx) }
            }
        )
    }

    /// What the consumer of one partition reads: the partition's subject, or the whole table
    /// (``consumesWholeTable``).
    package func partitionFilter(source: TableDefinition, tenant: String, partition: Int) -> String {
        consumesWholeTable ? source.filterSubject(tenant: tenant) : source.subject(tenant: tenant) + ".\(partition)"
    }

    /// The durable consumer of one partition of an ordered handler. At most `batchSize`
    /// records are unacknowledged, so a partition moves forward one batch at a time.
    package func partitionConsumer(
        source: TableDefinition,
        tenant: String,
        partition: Int,
        ackWait: Duration,
        startSequence: UInt64? = nil
    ) -> ConsumerConfiguration {
        var consumer = ConsumerConfiguration(durableName: HandlerOrdering.consumerName(handler: name, partition: partition))
        consumer.filterSubject = partitionFilter(source: source, tenant: tenant, partition: partition)
        consumer.ackWait = ackWait
        consumer.maxAckPending = options.batchSize
        consumer.startSequence = startSequence
        consumer.description = "Autonomous ordered handler \(name), partition \(partition)"
        return consumer
    }
}

/// A reusable handler: declares what it reads and writes so the graph can be checked at
/// startup, and builds its invoker from the environment (secrets, base URLs).
public protocol Component: Sendable {
    /// A short kind, e.g. `openai-completion`; the default handler name is `<kind>-<source table>`.
    var kind: String { get }
    /// Fields every input record must have.
    var requiredFields: [String] { get }
    /// Output table names and the fields written into each.
    var produces: [String: [String]] { get }
    /// Secrets the component needs.
    var secrets: [Secret] { get }
    /// Resolves secrets and settings (throwing a clear error when one is missing).
    func makeHandler(_ environment: ComponentEnvironment) throws -> @Sendable (Records<JSONValue>, HandlerContext) async throws -> Void
}

/// A named schedule and its tick table.
public struct ScheduleDefinition: Sendable {
    public let name: String
    public let schedule: Schedule
}

/// A reactive table handle: append records, react to new ones.
public struct Table<Row: Record>: TableReference {
    public let name: String
    let registry: GraphRegistry
    let binding: TableBinding

    /// The table as the runtime sees it: once the app is built, the frozen graph's definition
    /// (with the partitioning its ordered handlers set).
    public var definition: TableDefinition { binding.definition }

    func encode(_ row: Row) throws -> [UInt8] {
        if let json = row as? JSONValue {
            guard case .object = json else {
                throw ConfigurationError("records appended to table '\(name)' must be JSON objects")
            }
            return JSONWriter.encode(json)
        }
        // Sorted keys: the same record always has the same body (a redelivered record's
        // outputs are byte for byte the ones stored before).
        try row.validate()
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.withoutEscapingSlashes, .sortedKeys]
        return Array(try encoder.encode(row))
    }

    /// Appends one record. In a handler, its source is the record the loop over the batch is
    /// on (see ``Records``).
    public func append(_ row: Row, _ ctx: some AppendContext) async throws {
        try await ctx.append([PendingRecord(payload: encode(row), cause: nil)], to: definition)
    }

    /// Appends one record derived from `source` (its lineage and id follow from it).
    public func append(_ row: Row, causedBy source: RecordMetadata, _ ctx: some AppendContext) async throws {
        try await ctx.append([PendingRecord(payload: encode(row), cause: source)], to: definition)
    }

    /// Appends one record derived from `source` (its lineage and id follow from it).
    public func append<Source>(_ row: Row, causedBy source: Entry<Source>, _ ctx: some AppendContext) async throws {
        try await append(row, causedBy: source.metadata, ctx)
    }

    /// Appends one record that sums up a whole batch. Its source is the batch as a whole, so
    /// its id is the same only when the same records are handled together again: after a
    /// crash, a batch that comes back split or merged with others sums up again.
    public func append<Source>(_ row: Row, summarizing records: Records<Source>, _ ctx: some AppendContext) async throws {
        guard let cause = RecordMetadata.summary(of: records.entries.map(\.metadata)) else {
            throw LineageError(handler: nil, table: name, reason: "summarizing no records")
        }
        try await append(row, causedBy: cause, ctx)
    }

    /// Appends records. In a handler, their source is the record the loop over the batch is
    /// on (see ``Records``).
    public func append<S: Sequence>(_ rows: S, _ ctx: some AppendContext) async throws where S.Element == Row {
        let pending = try rows.map { PendingRecord(payload: try encode($0), cause: nil) }
        if pending.isEmpty { return }
        try await ctx.append(pending, to: definition)
    }

    /// Appends a batch's own records (or a filtered part of it), each caused by itself.
    public func append(_ records: Records<Row>, _ ctx: some AppendContext) async throws {
        try await append(Derived(values: records.entries.map(\.value), causes: records.entries.map(\.metadata)), ctx)
    }

    /// Appends records derived from a batch (`records.map { … }`), each with its source's lineage.
    public func append(_ derived: Derived<Row>, _ ctx: some AppendContext) async throws {
        var pending: [PendingRecord] = []
        pending.reserveCapacity(derived.count)
        for (value, cause) in zip(derived.values, derived.causes) {
            pending.append(PendingRecord(payload: try encode(value), cause: cause))
        }
        if pending.isEmpty { return }
        try await ctx.append(pending, to: definition)
    }

    /// Runs `body` with every batch of new records.
    ///
    /// `writes` lists the tables `body` appends to. The record API then refuses outside writes
    /// to them (see ``RecordAPIAccess``), `describe` shows the edges, and an append to a table
    /// not listed fails. A handler that lists nothing may append anywhere; the worker logs a
    /// warning the first time it appends to each table it did not list.
    public func onNewRecords(
        _ name: String,
        options: HandlerOptions = HandlerOptions(),
        writes: [any TableReference] = [],
        _ body: @escaping @Sendable (Records<Row>, HandlerContext) async throws -> Void
    ) {
        let table = self.name
        registry.addHandler(
            HandlerDefinition(
                name: name,
                source: table,
                sourceKind: .table,
                options: options,
                component: nil,
                requiredFields: [],
                outputs: Set(writes.map(\.name)).sorted(),
                producedFields: [:],
                secrets: [],
                prepare: { _ in
                    { raw, ctx in try await body(Records<Row>.decoding(raw, lineage: ctx.lineage), ctx) }
                }
            )
        )
    }

    /// Binds a component to this table's new records.
    public func onNewRecords<C: Component>(_ component: C, name: String? = nil, options: HandlerOptions = HandlerOptions()) {
        registry.addHandler(.component(component, name: name, source: self.name, options: options))
    }
}

extension Records {
    /// Decodes raw records; a record that does not fit `Row` throws ``UndecodableRecordError``.
    /// `lineage` is the handler context's, so appends in loops over the batch know their source.
    package static func decoding(_ raw: [IncomingRecord]) throws -> Records<Row> {
        try decoding(raw, lineage: nil)
    }

    package static func decoding(_ raw: [IncomingRecord], lineage: LineageCursor?) throws -> Records<Row> {
        var entries: [Entry<Row>] = []
        entries.reserveCapacity(raw.count)
        if Row.self == JSONValue.self {
            for record in raw {
                do {
                    let value = try JSONParser.parse(record.payload)
                    entries.append(Entry(value: value as! Row, metadata: record.metadata))
                } catch {
                    throw UndecodableRecordError(recordID: record.metadata.id, message: error.description)
                }
            }
        } else {
            let decoder = JSONDecoder()
            for record in raw {
                let value: Row
                do {
                    value = try decoder.decode(Row.self, from: Data(record.payload))
                } catch let error as DecodingError {
                    let (field, problem) = SchemaProbe.describe(error)
                    throw UndecodableRecordError(recordID: record.metadata.id, message: field.map { "\($0): \(problem)" } ?? problem)
                }
                do {
                    try value.validate()
                } catch {
                    throw UndecodableRecordError(recordID: record.metadata.id, message: "\(error)")
                }
                entries.append(Entry(value: value, metadata: record.metadata))
            }
        }
        return Records(entries, lineage: lineage)
    }
}

/// The definition every handle of one table appends with: the declared one until the app is
/// built, then the frozen graph's (which adds the partitioning of its ordered handlers).
final class TableBinding: Sendable {
    private let current: Mutex<TableDefinition>

    init(_ definition: TableDefinition) { current = Mutex(definition) }

    var definition: TableDefinition {
        get { current.withLock { $0 } }
        set { current.withLock { $0 = newValue } }
    }
}

/// Collects the app's definitions while `build` runs. Thread safe, though building is
/// normally single threaded.
final class GraphRegistry: Sendable {
    struct State {
        var tables: [TableDefinition] = []
        var handlers: [HandlerDefinition] = []
        var routes: [RouteDefinition] = []
        var webhooks: [WebhookDefinition] = []
        var schedules: [ScheduleDefinition] = []
        var problems: [String] = []
        var handlerSubscriptions: [(handler: String, table: String)] = []
    }

    let state = Mutex(State())
    /// One binding per declared table (not schedules), shared by every handle to it.
    private let bindings = Mutex<[String: TableBinding]>([:])

    /// Declares a table (once per name and kind) and returns the binding its handles use.
    @discardableResult
    func addTable(_ definition: TableDefinition) -> TableBinding? {
        let binding: TableBinding? =
            definition.kind == .table
            ? bindings.withLock { bindings in
                if let existing = bindings[definition.name] { return existing }
                let made = TableBinding(definition)
                bindings[definition.name] = made
                return made
            }
            : nil
        state.withLock { state in
            if let existing = state.tables.first(where: { $0.name == definition.name && $0.kind == definition.kind }) {
                if existing.typeName != definition.typeName || existing.semanticType != definition.semanticType {
                    state.problems.append(
                        "table '\(definition.name)' is declared twice with different types "
                            + "(\(existing.typeName ?? "JSON") and \(definition.typeName ?? "JSON"))"
                    )
                }
                return
            }
            state.tables.append(definition)
        }
        return binding
    }

    /// Points every table handle at the frozen graph's definition of its table.
    func bind(_ tables: [TableDefinition]) {
        bindings.withLock { bindings in
            for table in tables where table.kind == .table { bindings[table.name]?.definition = table }
        }
    }

    func addHandler(_ handler: HandlerDefinition) {
        state.withLock { $0.handlers.append(handler) }
    }
}

/// Declares an app: tables, handlers, routes, webhooks and schedules.
public struct AppBuilder {
    let registry = GraphRegistry()
    public var name: String

    public init(name: String) {
        self.name = name
    }

    /// A dynamic table of JSON objects.
    public mutating func table(
        _ name: String,
        recordAPI: RecordAPIAccess = .automatic,
        storage: String? = nil,
        retention: StreamRetention = StreamRetention()
    ) -> Table<JSONValue> {
        table(name, of: JSONValue.self, recordAPI: recordAPI, storage: storage, retention: retention)
    }

    /// A typed table of `Row` records. `recordAPI` says whether clients may append to it
    /// through the record API (by default: unless a handler declares it writes it).
    ///
    /// `storage` names a storage of `autonomous.json` that keeps the table's records as well,
    /// for ``Table/records(since:until:sinceSequence:where:order:limit:cursor:_:)`` and history beyond the
    /// stream's retention. `autonomous.json` can bind (or rebind) it per deployment instead;
    /// `dev` keeps every table in SQLite when nothing else is configured.
    ///
    /// `retention` bounds how long (or how many bytes of) the table's records its stream keeps
    /// per tenant, e.g. `StreamRetention(maxAge: .seconds(7 * 86_400))`; handlers that fall
    /// further behind lose the records dropped. Unset, the cluster's defaults apply (forever).
    public mutating func table<Row: Record>(
        _ name: String,
        of type: Row.Type,
        recordAPI: RecordAPIAccess = .automatic,
        storage: String? = nil,
        retention: StreamRetention = StreamRetention()
    ) -> Table<Row> {
        var definition = TableDefinition.make(name, kind: .table, of: Row.self)
        definition.recordAPI = recordAPI
        definition.storage = storage
        definition.retention = retention
        let binding = registry.addTable(definition)!
        return Table(name: name, registry: registry, binding: binding)
    }

    /// `method path` runs `handler`. Callers need an API key when the ingress requires keys,
    /// unless `verify` says how else they prove themselves (see ``WebhookVerification``).
    public mutating func route(
        _ method: String,
        _ path: String,
        verify: WebhookVerification = .apiKey,
        _ handler: @escaping RouteHandler
    ) {
        registry.state.withLock {
            $0.routes.append(RouteDefinition(method: method.uppercased(), path: path, verification: verify, handler: handler))
        }
    }

    /// `POST path` runs `handler`.
    public mutating func post(_ path: String, verify: WebhookVerification = .apiKey, _ handler: @escaping RouteHandler) {
        route("POST", path, verify: verify, handler)
    }

    /// `GET path` runs `handler`.
    public mutating func get(_ path: String, verify: WebhookVerification = .apiKey, _ handler: @escaping RouteHandler) {
        route("GET", path, verify: verify, handler)
    }

    /// `POST path` appends the request body (one JSON object, sent as `application/json`) to
    /// `table`, once the sender is verified: by an API key (the default), a provider's
    /// signature, or not at all when `verify` is ``WebhookVerification/unauthenticated``.
    public mutating func webhook<Row: Record>(_ path: String, into table: Table<Row>, verify: WebhookVerification = .apiKey) {
        registry.state.withLock {
            $0.webhooks.append(WebhookDefinition(path: path, table: table.name, verification: verify))
        }
    }

    /// Fires `schedule` and runs `body` with each tick. Each tick is a record in the
    /// schedule's own table (subject `aut.<tenant>.sched.<name>`).
    public mutating func schedule(
        _ name: String,
        _ schedule: Schedule,
        options: HandlerOptions = HandlerOptions(batchSize: 16, concurrency: 1),
        writes: [any TableReference] = [],
        _ body: @escaping @Sendable (Tick, HandlerContext) async throws -> Void
    ) {
        registry.addTable(.make(name, kind: .schedule, of: Tick.self))
        registry.state.withLock { $0.schedules.append(ScheduleDefinition(name: name, schedule: schedule)) }
        registry.addHandler(
            HandlerDefinition(
                name: "schedule-\(name)",
                source: name,
                sourceKind: .schedule,
                options: options,
                component: nil,
                requiredFields: [],
                outputs: Set(writes.map(\.name)).sorted(),
                producedFields: [:],
                secrets: [],
                prepare: { _ in
                    { raw, ctx in
                        // One tick at a time, each the source of what is appended while it runs.
                        for entry in try Records<Tick>.decoding(raw).entries {
                            try await ctx.handling(entry.metadata) { try await body(entry.value, ctx) }
                        }
                    }
                }
            )
        )
    }

    /// Reacts to new records of the table named `table` (dynamic records). The graph check
    /// fails if no such table exists.
    public mutating func onNewRecords(
        in table: String,
        _ name: String,
        options: HandlerOptions = HandlerOptions(),
        writes: [any TableReference] = [],
        _ body: @escaping @Sendable (Records<JSONValue>, HandlerContext) async throws -> Void
    ) {
        registry.addHandler(
            HandlerDefinition(
                name: name,
                source: table,
                sourceKind: .table,
                options: options,
                component: nil,
                requiredFields: [],
                outputs: Set(writes.map(\.name)).sorted(),
                producedFields: [:],
                secrets: [],
                prepare: { _ in { raw, ctx in try await body(Records<JSONValue>.decoding(raw, lineage: ctx.lineage), ctx) } }
            )
        )
    }

    /// Checks the graph and freezes it.
    public func build() throws(AppGraphError) -> AppGraph {
        let state = registry.state.withLock { $0 }
        let graph = try AppGraph.checked(
            name: name,
            tables: state.tables,
            handlers: state.handlers,
            routes: state.routes,
            webhooks: state.webhooks,
            schedules: state.schedules,
            problems: state.problems
        )
        registry.bind(graph.tables)
        return graph
    }
}

extension AppGraph {
    /// Partitions the tables that ordered handlers read, then checks the graph.
    static func checked(
        name: String,
        tables declared: [TableDefinition],
        handlers: [HandlerDefinition],
        routes: [RouteDefinition],
        webhooks: [WebhookDefinition],
        schedules: [ScheduleDefinition],
        problems earlier: [String] = []
    ) throws(AppGraphError) -> AppGraph {
        var tables = declared
        var problems = earlier
        for index in tables.indices where tables[index].kind == .table {
            let orderings = Set(
                handlers.filter { $0.source == tables[index].name && $0.sourceKind == .table }.compactMap(\.options.ordering)
            )
            if orderings.count > 1 {
                problems.append(
                    "table '\(tables[index].name)': its ordered handlers must use the same key and partition count "
                        + "(found \(orderings.map { "\($0.field)/\($0.partitions)" }.sorted().joined(separator: ", ")))"
                )
            }
            tables[index].partitioning = orderings.count == 1 ? orderings.first : nil
        }
        let graph = AppGraph(name: name, tables: tables, handlers: handlers, routes: routes, webhooks: webhooks, schedules: schedules)
        problems += graph.problems()
        if !problems.isEmpty { throw AppGraphError(problems: problems) }
        return graph
    }
}

/// The app graph failed its startup check. Each problem names its culprit.
public struct AppGraphError: Error, Sendable, CustomStringConvertible {
    public var problems: [String]
    public var description: String {
        "the app graph is invalid:\n" + problems.map { "  - \($0)" }.joined(separator: "\n")
    }
}
