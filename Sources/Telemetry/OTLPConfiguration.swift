package import Foundation

/// Where and how spans are exported, read from OpenTelemetry's standard environment variables
/// (https://opentelemetry.io/docs/specs/otel/protocol/exporter/ and
/// https://opentelemetry.io/docs/specs/otel/configuration/sdk-environment-variables/), so an
/// operator configures Autonomous as any other OpenTelemetry service.
///
/// Spans are exported only when an endpoint is set: `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (the
/// whole URL) or `OTEL_EXPORTER_OTLP_ENDPOINT` (a base URL; `/v1/traces` is appended).
/// Autonomous speaks OTLP/HTTP with JSON bodies (`http/json`), which the OpenTelemetry
/// Collector, Jaeger and Tempo accept on their OTLP/HTTP port (4318).
package struct OTLPConfiguration: Sendable, CustomStringConvertible {
    /// Where spans are POSTed.
    package var endpoint: URL
    /// Sent with every export (`OTEL_EXPORTER_OTLP_HEADERS`), e.g. an API key; never logged.
    package var headers: [(name: String, value: String)]
    /// A CA certificate (PEM) to trust for an `https` endpoint (`OTEL_EXPORTER_OTLP_CERTIFICATE`).
    package var certificateFile: String?
    /// How long one export may take (`OTEL_EXPORTER_OTLP_TIMEOUT`, milliseconds; 10 s).
    package var timeout: Duration
    /// `OTEL_SERVICE_NAME`; `nil`: the app's name and the process's role.
    package var serviceName: String?
    /// `OTEL_RESOURCE_ATTRIBUTES` (`key=value,…`).
    package var resourceAttributes: [(key: String, value: String)]
    /// `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG` (default `parentbased_always_on`).
    package var sampler: Sampler
    /// `OTEL_BSP_SCHEDULE_DELAY` (milliseconds; 5 s): longest time a span waits to be sent.
    package var scheduleDelay: Duration
    /// `OTEL_BSP_MAX_QUEUE_SIZE` (2048): spans held at most; more are dropped and counted.
    package var maxQueueSize: Int
    /// `OTEL_BSP_MAX_EXPORT_BATCH_SIZE` (512): spans per export request.
    package var maxExportBatchSize: Int

    package init(endpoint: URL) {
        self.endpoint = endpoint
        self.headers = []
        self.timeout = .seconds(10)
        self.resourceAttributes = []
        self.sampler = .default
        self.scheduleDelay = .seconds(5)
        self.maxQueueSize = 2048
        self.maxExportBatchSize = 512
    }

    /// The endpoint, never the headers (they often carry an API key).
    package var description: String {
        "OTLPConfiguration(endpoint: \(endpoint.absoluteString), headers: \(headers.map(\.name)), sampler: \(sampler))"
    }

    /// The configuration the environment describes; `nil` when no endpoint is set, or when
    /// `OTEL_SDK_DISABLED` is true or `OTEL_TRACES_EXPORTER` is `none`. A malformed value
    /// throws an error naming the variable.
    package static func fromEnvironment(_ environment: [String: String]) throws(OTLPConfigurationError) -> OTLPConfiguration? {
        func value(_ name: String) -> String? {
            guard let value = environment[name]?.trimmingCharacters(in: .whitespaces), !value.isEmpty else { return nil }
            return value
        }
        if let disabled = value("OTEL_SDK_DISABLED"), disabled.lowercased() == "true" { return nil }
        if let exporter = value("OTEL_TRACES_EXPORTER") {
            switch exporter {
            case "none": return nil
            case "otlp": break
            default:
                throw OTLPConfigurationError(variable: "OTEL_TRACES_EXPORTER", problem: "'\(exporter)' is not supported; use otlp or none")
            }
        }
        let endpoint: URL
        if let traces = value("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
            endpoint = try url(traces, variable: "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        } else if let base = value("OTEL_EXPORTER_OTLP_ENDPOINT") {
            let parsed = try url(base, variable: "OTEL_EXPORTER_OTLP_ENDPOINT")
            endpoint = parsed.appendingPathComponent("v1").appendingPathComponent("traces")
        } else {
            return nil
        }
        var configuration = OTLPConfiguration(endpoint: endpoint)
        for name in ["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"] {
            guard let proto = value(name) else { continue }
            guard proto == "http/json" else {
                throw OTLPConfigurationError(
                    variable: name,
                    problem: "'\(proto)' is not supported: Autonomous exports OTLP over HTTP with JSON bodies (http/json); "
                        + "point the endpoint at the collector's OTLP/HTTP port (4318)"
                )
            }
            break
        }
        for name in ["OTEL_EXPORTER_OTLP_HEADERS", "OTEL_EXPORTER_OTLP_TRACES_HEADERS"] {
            guard let text = value(name) else { continue }
            for (key, value) in try pairs(text, variable: name, secret: true) {
                configuration.headers.removeAll { $0.name.lowercased() == key.lowercased() }
                configuration.headers.append((key, value))
            }
        }
        for name in ["OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", "OTEL_EXPORTER_OTLP_CERTIFICATE"] {
            guard let path = value(name) else { continue }
            guard FileManager.default.isReadableFile(atPath: path) else {
                throw OTLPConfigurationError(variable: name, problem: "names '\(path)', which cannot be read")
            }
            configuration.certificateFile = path
            break
        }
        for name in ["OTEL_EXPORTER_OTLP_TIMEOUT", "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT"] {
            if let ms = try wholeNumber(value(name), variable: name, range: 1...600_000) { configuration.timeout = .milliseconds(ms) }
        }
        configuration.serviceName = value("OTEL_SERVICE_NAME")
        if let text = value("OTEL_RESOURCE_ATTRIBUTES") {
            configuration.resourceAttributes = try pairs(text, variable: "OTEL_RESOURCE_ATTRIBUTES", secret: false)
        }
        if let name = value("OTEL_TRACES_SAMPLER") {
            let argument = value("OTEL_TRACES_SAMPLER_ARG")
            guard let sampler = Sampler(name: name, argument: argument) else {
                throw OTLPConfigurationError(
                    variable: argument == nil ? "OTEL_TRACES_SAMPLER" : "OTEL_TRACES_SAMPLER or OTEL_TRACES_SAMPLER_ARG",
                    problem: "'\(name)'\(argument.map { " with '\($0)'" } ?? "") is not a sampler: use always_on, always_off, "
                        + "traceidratio, parentbased_always_on, parentbased_always_off or parentbased_traceidratio, "
                        + "and a ratio from 0 to 1"
                )
            }
            configuration.sampler = sampler
        }
        if let ms = try wholeNumber(value("OTEL_BSP_SCHEDULE_DELAY"), variable: "OTEL_BSP_SCHEDULE_DELAY", range: 1...600_000) {
            configuration.scheduleDelay = .milliseconds(ms)
        }
        if let size = try wholeNumber(value("OTEL_BSP_MAX_QUEUE_SIZE"), variable: "OTEL_BSP_MAX_QUEUE_SIZE", range: 1...1_000_000) {
            configuration.maxQueueSize = size
        }
        if let size = try wholeNumber(
            value("OTEL_BSP_MAX_EXPORT_BATCH_SIZE"),
            variable: "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
            range: 1...100_000
        ) {
            configuration.maxExportBatchSize = size
        }
        return configuration
    }

    private static func url(_ text: String, variable: String) throws(OTLPConfigurationError) -> URL {
        guard let url = URL(string: text), let scheme = url.scheme?.lowercased(), scheme == "http" || scheme == "https",
            let host = url.host, !host.isEmpty, url.user == nil, url.password == nil
        else {
            throw OTLPConfigurationError(variable: variable, problem: "must be an http:// or https:// URL with a host and no credentials")
        }
        return url
    }

    /// A whole number in `range` (milliseconds, or a count).
    private static func wholeNumber(_ text: String?, variable: String, range: ClosedRange<Int>) throws(OTLPConfigurationError) -> Int? {
        guard let text else { return nil }
        guard let value = Int(text), range.contains(value) else {
            throw OTLPConfigurationError(
                variable: variable,
                problem: "'\(text)' must be a whole number from \(range.lowerBound) to \(range.upperBound)"
            )
        }
        return value
    }

    /// `key=value` pairs separated by commas, values percent-decoded (W3C Baggage format, as
    /// the specification asks). A secret's value is never repeated in an error.
    private static func pairs(_ text: String, variable: String, secret: Bool) throws(OTLPConfigurationError) -> [(String, String)] {
        var result: [(String, String)] = []
        for (index, item) in text.split(separator: ",", omittingEmptySubsequences: true).enumerated() {
            let parts = item.split(separator: "=", maxSplits: 1)
            let key = parts.first.map { $0.trimmingCharacters(in: .whitespaces) } ?? ""
            guard parts.count == 2, !key.isEmpty, key.allSatisfy({ $0.isASCII && !$0.isWhitespace && $0 != ":" }),
                let value = String(parts[1]).trimmingCharacters(in: .whitespaces).removingPercentEncoding,
                !value.contains(where: { $0 == "\r" || $0 == "\n" })
            else {
                throw OTLPConfigurationError(
                    variable: variable,
                    problem: "entry \(index + 1)\(secret ? "" : " ('\(item)')") is not key=value (values percent-encoded)"
                )
            }
            result.append((key, value))
        }
        return result
    }
}

/// An OpenTelemetry variable with a value Autonomous cannot use.
package struct OTLPConfigurationError: Error, Sendable, CustomStringConvertible {
    package var variable: String
    package var problem: String
    package var description: String { "\(variable) \(problem)" }
}
