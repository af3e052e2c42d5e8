package import Foundation

/// An app graph rebuilt from its description: how the `autonomous` command serves the ingress
/// and coordinator of an app written in another language (docs/python.md). Its handlers and
/// routes run in that language's processes (``ExternalRuntime``); Swift processes only
/// provision their consumers, forward their routes, fire their schedules and keep their tables.
extension AppGraph {
    /// `components` builds a handler's component from its kind and `component_config` (the
    /// Swift component catalog); without it a graph naming components is refused.
    package init(
        description: AppDescription,
        components: ((String, JSONValue) throws -> any Component)? = nil
    ) throws(AppGraphError) {
        var problems: [String] = []
        var tables: [TableDefinition] = []
        for table in description.tables {
            switch table.kind {
            case "schedule":
                tables.append(.make(table.name, kind: .schedule, of: Tick.self))
            case "table":
                var definition = TableDefinition.described(table)
                switch table.recordAPI {
                case "open": definition.recordAPI = .open
                case "closed": definition.recordAPI = .closed
                default: break
                }
                definition.storage = table.storage
                if let retention = table.retention {
                    if let age = retention.maxAgeSeconds, age <= 0 {
                        problems.append("table '\(table.name)': retention max_age_seconds must be positive")
                    } else if let bytes = retention.maxBytes, bytes <= 0 {
                        problems.append("table '\(table.name)': retention max_bytes must be positive")
                    } else {
                        definition.retention = StreamRetention(
                            maxAge: retention.maxAgeSeconds.map { .seconds($0) },
                            maxBytes: retention.maxBytes
                        )
                    }
                }
                tables.append(definition)
            default:
                problems.append("table '\(table.name)': kind '\(table.kind)' is neither 'table' nor 'schedule'")
            }
        }
        var handlers: [HandlerDefinition] = []
        for handler in description.handlers {
            if handler.runtime == nil || handler.runtime == "swift", let kind = handler.component,
                let configuration = handler.componentConfig
            {
                guard let components else {
                    problems.append("handler '\(handler.name)': component '\(kind)' cannot be built here")
                    continue
                }
                do {
                    let component = try components(kind, configuration)
                    handlers.append(
                        .component(
                            component,
                            name: handler.name,
                            source: handler.source,
                            options: Self.options(of: handler, problems: &problems)
                        )
                    )
                } catch {
                    problems.append("handler '\(handler.name)': \(error)")
                }
                continue
            }
            guard let runtime = handler.runtime, runtime != "swift" else {
                problems.append(
                    "handler '\(handler.name)' names no runtime other than Swift; a graph the autonomous command serves "
                        + "runs its handlers in another language's workers (set its runtime, e.g. \"python\")"
                )
                continue
            }
            guard let kind = TableDefinition.Kind(rawValue: handler.sourceKind) else {
                problems.append("handler '\(handler.name)': source_kind '\(handler.sourceKind)' is neither 'table' nor 'schedule'")
                continue
            }
            let options = Self.options(of: handler, problems: &problems)
            let name = handler.name
            var definition = HandlerDefinition(
                name: name,
                source: handler.source,
                sourceKind: kind,
                options: options,
                component: handler.component,
                requiredFields: [],
                outputs: handler.outputs ?? [],
                producedFields: [:],
                secrets: (handler.secrets ?? []).map(Secret.secret),
                prepare: { _ in throw ExternalRuntimeError(what: "handler '\(name)'", runtime: runtime) }
            )
            definition.runtime = runtime
            handlers.append(definition)
        }
        var routes: [RouteDefinition] = []
        var webhooks: [WebhookDefinition] = []
        for route in description.routes {
            let verification: WebhookVerification
            do {
                verification = try WebhookVerification.described(route)
            } catch {
                problems.append(error.message)
                continue
            }
            switch route.kind {
            case "webhook":
                guard let table = route.table else {
                    problems.append("webhook \(route.path) names no table")
                    continue
                }
                webhooks.append(WebhookDefinition(path: route.path, table: table, verification: verification))
            case "route":
                guard let runtime = route.runtime, runtime != "swift" else {
                    problems.append(
                        "route \(route.method) \(route.path) names no runtime other than Swift; a graph the autonomous command "
                            + "serves forwards its routes to another language's processes"
                    )
                    continue
                }
                let method = route.method.uppercased()
                var definition = RouteDefinition(
                    method: method,
                    path: route.path,
                    verification: verification,
                    handler: { _, _ in throw ExternalRuntimeError(what: "route \(method) \(route.path)", runtime: runtime) }
                )
                definition.runtime = runtime
                routes.append(definition)
            default:
                problems.append("route \(route.method) \(route.path): kind '\(route.kind)' is neither 'route' nor 'webhook'")
            }
        }
        var schedules: [ScheduleDefinition] = []
        for schedule in description.schedules {
            var value: Schedule
            if let cron = schedule.cron {
                value = .cron(cron, timeZone: schedule.timeZone)
            } else if let seconds = schedule.everySeconds {
                value = .every(.seconds(seconds))
            } else {
                problems.append("schedule '\(schedule.name)' has neither cron nor every_seconds")
                continue
            }
            switch schedule.catchUp {
            case nil, "fire-once": break
            case "skip": value = value.catchUp(.skip)
            case let policy?:
                if policy.hasPrefix("fire-all("), policy.hasSuffix(")"), let limit = Int(policy.dropFirst(9).dropLast()) {
                    value = value.catchUp(.fireAll(limit: limit))
                } else {
                    problems.append("schedule '\(schedule.name)': catch_up '\(policy)' is not skip, fire-once or fire-all(N)")
                }
            }
            if let jitter = schedule.jitterSeconds { value = value.jitter(.seconds(jitter)) }
            schedules.append(ScheduleDefinition(name: schedule.name, schedule: value))
        }
        if !problems.isEmpty { throw AppGraphError(problems: problems) }
        self = try AppGraph.checked(
            name: description.app,
            tables: tables,
            handlers: handlers,
            routes: routes,
            webhooks: webhooks,
            schedules: schedules
        )
    }

    /// A described handler's options; a value out of range is a problem.
    static func options(of handler: AppDescription.Handler, problems: inout [String]) -> HandlerOptions {
        var options = HandlerOptions(
            batchSize: handler.batchSize,
            concurrency: handler.concurrency,
            maxAttempts: handler.maxAttempts,
            maxAckPending: handler.maxAckPending
        )
        if let seconds = handler.maxWaitSeconds { options.maxWait = .seconds(seconds) }
        if let seconds = handler.timeoutSeconds { options.timeout = .seconds(seconds) }
        if let backoff = handler.retryBackoffSeconds {
            if backoff.contains(where: { !($0 >= 0 && $0 <= 86_400) }) {
                problems.append("handler '\(handler.name)': retry_backoff_seconds must be between 0 and 86400")
            } else {
                options.retryBackoff = backoff.map { .seconds($0) }
            }
        }
        if let field = handler.orderedBy { options = options.ordered(by: field, partitions: handler.partitions ?? 16) }
        return options
    }
}

extension TableDefinition {
    /// A table declared in another language: records are JSON objects with the described
    /// required fields.
    static func described(_ table: AppDescription.Table) -> TableDefinition {
        let required = table.requiredFields ?? []
        return TableDefinition(
            name: table.name,
            kind: .table,
            semanticType: SemanticType(stringLiteral: table.semanticType),
            typeName: table.recordType == "JSON" ? nil : table.recordType,
            requiredFields: table.requiredFields,
            knownFields: table.fields,
            fieldKinds: [:],
            check: { body in
                guard case .object(let object)? = try? JSONParser.parse(body) else {
                    return (nil, "a record must be a JSON object")
                }
                let missing = required.filter { object[$0] == nil || object[$0] == .null }
                if missing.count == 1 { return (missing[0], "missing required field '\(missing[0])'") }
                if missing.count > 1 {
                    return (missing[0], "missing required fields " + missing.map { "'\($0)'" }.joined(separator: ", "))
                }
                return nil
            }
        )
    }
}

extension WebhookVerification {
    /// The verification a route's description names, with its secret's variable.
    static func described(_ route: AppDescription.Route) throws(ConfigurationError) -> WebhookVerification {
        let label = route.verification ?? "api-key"
        func secret() throws(ConfigurationError) -> Secret {
            guard let name = route.secret, !name.isEmpty else {
                throw ConfigurationError(
                    "\(route.kind) \(route.method) \(route.path): verification '\(label)' needs a secret (the variable that holds it)"
                )
            }
            return .secret(name)
        }
        let tolerance = Duration.seconds(route.toleranceSeconds ?? 300)
        switch label {
        case "api-key": return .apiKey
        case "unauthenticated": return .unauthenticated
        case "slack": return .slack(signingSecret: try secret(), tolerance: tolerance)
        case "github": return .github(secret: try secret())
        case "stripe": return .stripe(signingSecret: try secret(), tolerance: tolerance)
        case "standard-webhooks": return .standardWebhooks(secret: try secret(), tolerance: tolerance)
        case "shopify": return .shopify(secret: try secret())
        default:
            throw ConfigurationError(
                "\(route.kind) \(route.method) \(route.path): verification '\(label)' cannot be served from a description "
                    + "(use api-key, unauthenticated, slack, github, stripe, standard-webhooks or shopify)"
            )
        }
    }
}
