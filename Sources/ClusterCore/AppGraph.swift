import Foundation

/// A checked, frozen app: what `describe` prints and what every role runs.
public struct AppGraph: Sendable {
    public let name: String
    public let tables: [TableDefinition]
    public let handlers: [HandlerDefinition]
    public let routes: [RouteDefinition]
    public let webhooks: [WebhookDefinition]
    public let schedules: [ScheduleDefinition]

    /// Paths the ingress serves itself.
    package static let reservedPaths = ["/healthz", "/readyz", "/metrics"]
    package static let reservedPrefix = "/v1/"

    public func table(_ name: String) -> TableDefinition? {
        tables.first { $0.name == name && $0.kind == .table }
    }

    /// Whether the record API takes records for `table`: ``RecordAPIAccess/open``, or
    /// ``RecordAPIAccess/automatic`` and no handler or schedule declares that it writes it.
    package func acceptsRecordAPI(_ table: TableDefinition) -> Bool {
        switch table.recordAPI {
        case .open: return true
        case .closed: return false
        case .automatic: return writers(of: table.name).isEmpty
        }
    }

    /// The handlers (and schedules) that declare they write `table`.
    package func writers(of table: String) -> [String] {
        handlers.filter { $0.outputs.contains(table) }.map(\.name)
    }

    package func source(of handler: HandlerDefinition) -> TableDefinition? {
        tables.first { $0.name == handler.source && $0.kind == handler.sourceKind }
    }

    /// Every secret a worker needs to run all handlers.
    package var secrets: [Secret] {
        var seen = Set<Secret>()
        return (handlers.flatMap(\.secrets) + webhooks.flatMap(\.verification.secrets)).filter { seen.insert($0).inserted }
    }

    func problems() -> [String] {
        var problems: [String] = []
        var tableNames = Set<String>()
        for table in tables where table.kind == .table {
            if let problem = Names.problem(with: table.name, kind: "table") { problems.append(problem) }
            tableNames.insert(table.name)
        }
        var scheduleNames = Set<String>()
        for schedule in schedules {
            if let problem = Names.problem(with: schedule.name, kind: "schedule") { problems.append(problem) }
            if !scheduleNames.insert(schedule.name).inserted {
                problems.append("schedule '\(schedule.name)' is declared twice")
            }
            if let problem = schedule.schedule.problem {
                problems.append("schedule '\(schedule.name)': \(problem)")
            }
        }
        var handlerNames = Set<String>()
        for handler in handlers {
            if let problem = Names.problem(with: handler.name, kind: "handler") { problems.append(problem) }
            if let runtime = handler.runtime, let problem = Names.problem(with: runtime, kind: "runtime") {
                problems.append("handler '\(handler.name)': \(problem)")
            }
            if !handlerNames.insert(handler.name).inserted {
                problems.append("two handlers are named '\(handler.name)'; handler names must be unique (they name durable consumers)")
            }
            guard let source = source(of: handler) else {
                problems.append("handler '\(handler.name)' is bound to table '\(handler.source)', which is not declared")
                continue
            }
            if handler.options.batchSize < 1 || handler.options.batchSize > 10_000 {
                problems.append("handler '\(handler.name)': batchSize must be between 1 and 10000")
            }
            if handler.options.concurrency < 1 || handler.options.concurrency > 64 {
                problems.append("handler '\(handler.name)': concurrency must be between 1 and 64")
            }
            if let pending = handler.options.maxAckPending, pending < handler.options.batchSize {
                problems.append("handler '\(handler.name)': maxAckPending must be at least batchSize (\(handler.options.batchSize))")
            }
            if let ordering = handler.options.ordering {
                if handler.sourceKind != .table {
                    problems.append("handler '\(handler.name)': only handlers of tables can be ordered")
                }
                if !(1...1024).contains(ordering.partitions) {
                    problems.append("handler '\(handler.name)': partitions must be between 1 and 1024")
                }
                if ordering.field.isEmpty {
                    problems.append("handler '\(handler.name)': ordered(by:) needs a field name")
                } else if let fields = source.knownFields, !fields.contains(ordering.field) {
                    problems.append(
                        "handler '\(handler.name)' is ordered by '\(ordering.field)', but records of table '\(source.name)' "
                            + "(\(source.typeName ?? "JSON")) have no such field"
                    )
                }
            }
            if handler.options.maxAttempts < 1 {
                problems.append("handler '\(handler.name)': maxAttempts must be at least 1")
            }
            if handler.options.timeout <= .zero {
                problems.append("handler '\(handler.name)': timeout must be more than zero")
            }
            if let fields = source.knownFields {
                for field in handler.requiredFields where !fields.contains(field) {
                    problems.append(
                        "handler '\(handler.name)' (\(handler.component ?? "handler")) needs field '\(field)', "
                            + "but records of table '\(source.name)' (\(source.typeName ?? "JSON")) have no such field"
                    )
                }
            }
            for output in handler.outputs where table(output) == nil && handler.producedFields[output] == nil {
                problems.append("handler '\(handler.name)' writes to table '\(output)', which is not declared")
            }
            for (output, fields) in handler.producedFields.sorted(by: { $0.key < $1.key }) {
                guard let target = table(output) else {
                    problems.append("handler '\(handler.name)' writes to table '\(output)', which is not declared")
                    continue
                }
                for field in target.requiredFields ?? [] where !fields.contains(field) {
                    problems.append(
                        "handler '\(handler.name)' (\(handler.component ?? "handler")) writes records without field '\(field)' "
                            + "to table '\(output)', whose type \(target.typeName ?? "JSON") requires it"
                    )
                }
            }
        }
        var routeKeys = Set<String>()
        func checkPath(_ method: String, _ path: String, _ what: String) {
            if !path.hasPrefix("/") { problems.append("\(what) path '\(path)' must start with '/'") }
            if Self.reservedPaths.contains(path) || path.hasPrefix(Self.reservedPrefix) {
                problems.append("\(what) path '\(path)' is reserved by the ingress")
            }
            if !routeKeys.insert("\(method) \(path)").inserted {
                problems.append("route \(method) \(path) is registered twice")
            }
        }
        for route in routes {
            checkPath(route.method, route.path, "route")
            if let runtime = route.runtime, let problem = Names.problem(with: runtime, kind: "runtime") {
                problems.append("route \(route.method) \(route.path): \(problem)")
            }
            if let problem = route.pattern?.problem { problems.append("route \(route.method) \(route.path): \(problem)") }
        }
        for webhook in webhooks {
            checkPath("POST", webhook.path, "webhook")
            if !tableNames.contains(webhook.table) {
                problems.append("webhook \(webhook.path) writes to table '\(webhook.table)', which is not declared")
            }
        }
        return problems
    }
}
