package import Foundation

/// The app graph as other programs read it: what `<app> describe` prints, what the deploy
/// tool renders from, and what an app written in another language will print the same way.
/// One Codable type on both sides; the JSON uses snake_case keys and carries
/// ``formatVersion`` so a reader can refuse a graph newer than it understands
/// (`docs/wire.md`, "The app graph").
package struct AppDescription: Codable, Sendable, Hashable {
    /// The version of this format that this build writes, and the newest it reads.
    package static let currentFormatVersion = 1

    package var formatVersion: Int
    package var app: String
    /// The tenant whose subjects and streams are shown.
    package var tenant: String
    /// The tenant's stream of schedule ticks and dead letters (each table has its own).
    package var stream: String
    package var tables: [Table]
    package var handlers: [Handler]
    package var routes: [Route]
    package var schedules: [Schedule]

    package struct Table: Codable, Sendable, Hashable {
        package var name: String
        /// `table`, or `schedule` for a schedule's table of ticks.
        package var kind: String
        package var semanticType: String
        package var subject: String
        package var stream: String
        /// The Swift type's name, or `JSON` for a dynamic table.
        package var recordType: String
        /// Every top-level field a record may have, when known.
        package var fields: [String]?
        package var requiredFields: [String]?
        /// Set when an ordered handler reads the table.
        package var partitioning: Partitioning?
        /// `open` or `closed`: whether the record API takes records for it (absent for a
        /// schedule's ticks, and in descriptions from before it existed).
        package var recordAPI: String?
        /// The storage of `autonomous.json` the app binds the table to, if any.
        package var storage: String?
        /// The app's retention for the table's streams, when it sets one.
        package var retention: Retention?

        enum CodingKeys: String, CodingKey {
            case name, kind, subject, stream, fields, partitioning, storage, retention
            case semanticType = "semantic_type"
            case recordType = "record_type"
            case requiredFields = "required_fields"
            case recordAPI = "record_api"
        }
    }

    package struct Retention: Codable, Sendable, Hashable {
        package var maxAgeSeconds: Int64?
        package var maxBytes: Int64?

        enum CodingKeys: String, CodingKey {
            case maxAgeSeconds = "max_age_seconds"
            case maxBytes = "max_bytes"
        }
    }

    package struct Partitioning: Codable, Sendable, Hashable {
        package var field: String
        package var partitions: Int
    }

    package struct Handler: Codable, Sendable, Hashable {
        package var name: String
        package var source: String
        /// `table` or `schedule`.
        package var sourceKind: String
        package var consumer: String
        package var batchSize: Int
        package var concurrency: Int
        package var maxAttempts: Int
        /// Longest one run may take, in seconds (absent in descriptions from before it existed).
        package var timeoutSeconds: Double?
        package var deadLetterSubject: String
        package var component: String?
        package var outputs: [String]?
        /// Names of the secrets (environment variables) it needs, never their values.
        package var secrets: [String]?
        /// The key an ordered handler keeps each record's order by.
        package var orderedBy: String?
        /// The ordered handler's partition count.
        package var partitions: Int?
        /// The runtime that runs the handler when it is not the app's own Swift code
        /// (``ExternalRuntime``, e.g. `python`); absent for Swift handlers.
        package var runtime: String?
        /// How long a batch may wait to fill once its first record is there, in seconds.
        package var maxWaitSeconds: Double?
        /// Seconds before each redelivery after a failure, by attempt (the last repeats).
        package var retryBackoffSeconds: [Double]?
        /// Records delivered but not yet acknowledged, across all workers, when the handler sets it.
        package var maxAckPending: Int?
        /// A component's settings, for a graph written in another language whose handler is a
        /// component the Swift runtime builds by `component` kind (docs/python.md).
        package var componentConfig: JSONValue?

        enum CodingKeys: String, CodingKey {
            case name, source, consumer, concurrency, component, outputs, secrets, partitions, runtime
            case maxWaitSeconds = "max_wait_seconds"
            case retryBackoffSeconds = "retry_backoff_seconds"
            case maxAckPending = "max_ack_pending"
            case componentConfig = "component_config"
            case sourceKind = "source_kind"
            case batchSize = "batch_size"
            case maxAttempts = "max_attempts"
            case timeoutSeconds = "timeout_seconds"
            case deadLetterSubject = "dead_letter_subject"
            case orderedBy = "ordered_by"
        }
    }

    package struct Route: Codable, Sendable, Hashable {
        package var method: String
        package var path: String
        /// `route` (runs app code) or `webhook` (appends the verified body to `table`).
        package var kind: String
        package var table: String?
        /// How the sender is verified: `api-key`, `unauthenticated`, `slack`, `github`,
        /// `stripe`, `standard-webhooks`, `shopify`, `hmac-sha256` or `custom`.
        package var verification: String?
        /// The environment variable that holds the verification's secret (never its value).
        package var secret: String?
        /// How old a signed timestamp may be, in seconds (Slack, Stripe, Standard Webhooks).
        package var toleranceSeconds: Double?
        /// The runtime whose processes answer the route when it is not the app's own Swift code.
        package var runtime: String?

        enum CodingKeys: String, CodingKey {
            case method, path, kind, table, verification, secret, runtime
            case toleranceSeconds = "tolerance_seconds"
        }
    }

    package struct Schedule: Codable, Sendable, Hashable {
        package var name: String
        package var schedule: String
        package var timeZone: String
        package var subject: String
        /// The cron expression, or
        package var cron: String?
        /// the interval in seconds: what the schedule is, for a runtime that serves it.
        package var everySeconds: Int64?
        /// `skip`, `fire-once` or `fire-all(N)`: what happens to ticks missed while no coordinator led.
        package var catchUp: String?
        package var jitterSeconds: Double?

        enum CodingKeys: String, CodingKey {
            case name, schedule, subject, cron
            case timeZone = "time_zone"
            case everySeconds = "every_seconds"
            case catchUp = "catch_up"
            case jitterSeconds = "jitter_seconds"
        }
    }

    enum CodingKeys: String, CodingKey {
        case app, tenant, stream, tables, handlers, routes, schedules
        case formatVersion = "format_version"
    }

    /// Reads a graph that `describe` printed; refuses one of a newer format, naming both.
    package static func decode(_ data: Data) throws -> AppDescription {
        struct Version: Decodable {
            var formatVersion: Int?
            enum CodingKeys: String, CodingKey { case formatVersion = "format_version" }
        }
        let version = try JSONDecoder().decode(Version.self, from: data).formatVersion ?? 0
        guard version >= 1 else {
            throw ConfigurationError("the app graph has no format_version; it was printed by a release before the format was versioned")
        }
        guard version <= currentFormatVersion else {
            throw ConfigurationError(
                "the app graph is of format \(version); this build reads formats up to \(currentFormatVersion): use an autonomous command as new as the app"
            )
        }
        return try JSONDecoder().decode(AppDescription.self, from: data)
    }

    /// The graph as `describe` prints it: indented, keys sorted.
    package func encoded() -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        // Every field is a plain string, number, array or optional of them: encoding cannot fail.
        return try! encoder.encode(self)
    }
}

extension AppGraph {
    /// The graph as other programs read it, with `tenant`'s subjects and streams.
    package func description(tenant: String) -> AppDescription {
        AppDescription(
            formatVersion: AppDescription.currentFormatVersion,
            app: name,
            tenant: tenant,
            stream: Wire.streamName(tenant: tenant),
            tables: tables.map { table in
                AppDescription.Table(
                    name: table.name,
                    kind: table.kind.rawValue,
                    semanticType: table.semanticType.description,
                    subject: table.subject(tenant: tenant),
                    stream: table.streamName(tenant: tenant),
                    recordType: table.typeName ?? "JSON",
                    fields: table.knownFields,
                    requiredFields: table.requiredFields,
                    partitioning: table.partitioning.map { AppDescription.Partitioning(field: $0.field, partitions: $0.partitions) },
                    recordAPI: table.kind == .table ? (acceptsRecordAPI(table) ? "open" : "closed") : nil,
                    storage: table.kind == .table ? table.storage : nil,
                    retention: table.retention == StreamRetention()
                        ? nil
                        : AppDescription.Retention(
                            maxAgeSeconds: table.retention.maxAge?.components.seconds,
                            maxBytes: table.retention.maxBytes
                        )
                )
            },
            handlers: handlers.map { handler in
                AppDescription.Handler(
                    name: handler.name,
                    source: handler.source,
                    sourceKind: handler.sourceKind.rawValue,
                    consumer: handler.consumerName,
                    batchSize: handler.options.batchSize,
                    concurrency: handler.options.concurrency,
                    maxAttempts: handler.options.maxAttempts,
                    timeoutSeconds: handler.options.timeout.inSeconds,
                    deadLetterSubject: Wire.deadLetterSubject(tenant: tenant, handler: handler.name),
                    component: handler.component,
                    outputs: handler.outputs.isEmpty ? nil : handler.outputs,
                    secrets: handler.secrets.isEmpty ? nil : handler.secrets.map(\.name),
                    orderedBy: handler.options.ordering?.field,
                    partitions: handler.options.ordering?.partitions,
                    runtime: handler.runtime,
                    maxWaitSeconds: handler.options.maxWait.inSeconds,
                    retryBackoffSeconds: handler.options.retryBackoff.map(\.inSeconds),
                    maxAckPending: handler.options.maxAckPending
                )
            },
            routes: routes.map {
                AppDescription.Route(
                    method: $0.method,
                    path: $0.path,
                    kind: "route",
                    verification: $0.verification.label,
                    secret: $0.verification.secrets.first?.name,
                    toleranceSeconds: $0.verification.tolerance?.inSeconds,
                    runtime: $0.runtime
                )
            }
                + webhooks.map {
                    AppDescription.Route(
                        method: "POST",
                        path: $0.path,
                        kind: "webhook",
                        table: $0.table,
                        verification: $0.verification.label,
                        secret: $0.verification.secrets.first?.name,
                        toleranceSeconds: $0.verification.tolerance?.inSeconds
                    )
                },
            schedules: schedules.map {
                AppDescription.Schedule(
                    name: $0.name,
                    schedule: $0.schedule.description,
                    timeZone: $0.schedule.timeZoneIdentifier,
                    subject: Wire.scheduleSubject(tenant: tenant, schedule: $0.name),
                    cron: $0.schedule.cronExpression,
                    everySeconds: $0.schedule.intervalSeconds,
                    catchUp: $0.schedule.catchUpPolicy.description,
                    jitterSeconds: $0.schedule.maximumJitter == .zero ? nil : $0.schedule.maximumJitter.inSeconds
                )
            }
        )
    }
}
