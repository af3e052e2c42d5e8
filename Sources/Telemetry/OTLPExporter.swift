import AsyncHTTPClient
import CoreMetrics
import Foundation
package import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import ServiceLifecycle
import Synchronization
import Tracing

/// Sends ended spans from a ``SpanQueue`` to an OTLP/HTTP endpoint as JSON
/// (`ExportTraceServiceRequest`), in batches, at least every `scheduleDelay`.
///
/// Run it in the process's service group before the services whose spans it sends, so a
/// graceful shutdown stops it last: it then sends what is left (each request bounded by the
/// configured timeout) and stops. A failed export is retried twice when the answer says to
/// (429, 502, 503, 504, or no answer), then its spans are dropped and counted in
/// `autonomous_tracing_spans_dropped_total{reason="export_failed"}`; handlers never wait for it.
package struct OTLPExporter: Service, CustomStringConvertible {
    package let configuration: OTLPConfiguration
    package let queue: SpanQueue
    let resource: [(key: String, value: String)]
    let logger: Logger
    private let exported = CoreMetrics.Counter(label: "autonomous_tracing_spans_exported_total")
    private let failed = CoreMetrics.Counter(label: "autonomous_tracing_spans_dropped_total", dimensions: [("reason", "export_failed")])

    /// `service`: the service name when `OTEL_SERVICE_NAME` sets none (the app and role);
    /// `attributes`: resource attributes of this process (role, tenant).
    package init(configuration: OTLPConfiguration, service: String, attributes: [(key: String, value: String)] = [], logger: Logger) {
        self.configuration = configuration
        self.queue = SpanQueue(capacity: configuration.maxQueueSize, batchSize: configuration.maxExportBatchSize)
        var resource: [(key: String, value: String)] = [
            ("service.name", configuration.serviceName ?? service),
            ("telemetry.sdk.name", "autonomous"),
            ("telemetry.sdk.language", "swift"),
        ]
        resource.append(contentsOf: attributes)
        for (key, value) in configuration.resourceAttributes {
            resource.removeAll { $0.key == key }
            resource.append((key, value))
        }
        if configuration.serviceName != nil { resource.removeAll { $0.key == "service.name" && $0.value != configuration.serviceName } }
        self.resource = resource
        self.logger = logger
    }

    /// The tracer whose spans this exporter sends.
    package var tracer: OTLPTracer { OTLPTracer(sampler: configuration.sampler, queue: queue) }

    package var description: String { "OTLPExporter(\(configuration))" }

    package func run() async throws {
        var clientConfiguration = HTTPClient.Configuration()
        // Exports are not traced: a span per export would be exported in turn, for ever.
        clientConfiguration.tracing.tracer = nil
        clientConfiguration.timeout = .init(connect: .seconds(5), read: TimeAmount(configuration.timeout))
        if let certificate = configuration.certificateFile {
            var tls = TLSConfiguration.makeClientConfiguration()
            tls.trustRoots = .file(certificate)
            clientConfiguration.tlsConfiguration = tls
        }
        let client = HTTPClient(eventLoopGroup: MultiThreadedEventLoopGroup.singleton, configuration: clientConfiguration)
        logger.info("Exporting spans", metadata: ["otlp.endpoint": "\(configuration.endpoint.absoluteString)"])
        let health = ExportHealth()
        // Set on graceful shutdown: the loop then sends what is queued and returns. An export
        // in flight is not cancelled; each is bounded by the configured timeout.
        let stopping = Mutex(false)
        await withGracefulShutdownHandler {
            while !stopping.withLock({ $0 }) && !Task.isCancelled {
                await withTaskGroup(of: Void.self) { group in
                    group.addTask { await queue.waitForWork() }
                    group.addTask { try? await Task.sleep(for: configuration.scheduleDelay) }
                    await group.next()
                    group.cancelAll()
                }
                await sendAll(client: client, health: health, retrying: !stopping.withLock { $0 })
            }
            // What the stopped services left, once, without retries.
            await sendAll(client: client, health: health, retrying: false)
        } onGracefulShutdown: {
            stopping.withLock { $0 = true }
            queue.requestFlush()
        }
        try? await client.shutdown()
    }

    /// Whether the last export worked, so that a collector that is down is logged once when
    /// it goes and once when it comes back, not at every batch.
    final class ExportHealth: Sendable {
        // Guarded by the mutex; only the exporter's run loop touches it, one export at a time.
        private let state = Mutex(false)
        /// Sets whether exports fail; returns whether that changed.
        func set(failing: Bool) -> Bool {
            state.withLock { current in
                defer { current = failing }
                return current != failing
            }
        }
    }

    /// Sends the spans queued now, in batches (not those queued meanwhile, so that a span
    /// made while exporting cannot keep this going).
    private func sendAll(client: HTTPClient, health: ExportHealth, retrying: Bool) async {
        var left = queue.count
        while left > 0 {
            let batch = queue.take()
            if batch.isEmpty { return }
            left -= batch.count
            let body = OTLPJSON.encode(batch, resource: resource)
            var outcome = await send(body, client: client)
            var attempt = 1
            while retrying, attempt < 3, case .retry(let delay, _) = outcome, !Task.isCancelled {
                try? await Task.sleep(for: delay ?? .seconds(attempt))
                outcome = await send(body, client: client)
                attempt += 1
            }
            switch outcome {
            case .sent:
                exported.increment(by: Int64(batch.count))
                if health.set(failing: false) {
                    logger.notice("Spans are exported again", metadata: ["otlp.endpoint": "\(configuration.endpoint.absoluteString)"])
                }
            case .retry(_, let reason), .failed(let reason):
                failed.increment(by: Int64(batch.count))
                if health.set(failing: true) {
                    logger.warning(
                        "Could not export spans; dropping them until the endpoint answers",
                        metadata: ["otlp.endpoint": "\(configuration.endpoint.absoluteString)", "error": "\(reason)"]
                    )
                }
            }
        }
    }

    enum Outcome {
        case sent
        /// Worth trying again, after the delay the endpoint asked for (if any).
        case retry(Duration?, reason: String)
        case failed(String)
    }

    private func send(_ body: [UInt8], client: HTTPClient) async -> Outcome {
        var request = HTTPClientRequest(url: configuration.endpoint.absoluteString)
        request.method = .POST
        request.headers.add(name: "Content-Type", value: "application/json")
        for header in configuration.headers { request.headers.add(name: header.name, value: header.value) }
        request.body = .bytes(body)
        do {
            let response = try await client.execute(request, timeout: TimeAmount(configuration.timeout))
            _ = try? await response.body.collect(upTo: 1 << 20)
            switch response.status.code {
            case 200..<300:
                return .sent
            case 429, 502, 503, 504:
                let delay = response.headers.first(name: "Retry-After").flatMap(Int.init).map { Duration.seconds(min(max($0, 1), 5)) }
                return .retry(delay, reason: "HTTP \(response.status.code)")
            default:
                return .failed("HTTP \(response.status.code)")
            }
        } catch {
            return .retry(nil, reason: "\(type(of: error)): \(error)")
        }
    }
}

/// OTLP's JSON encoding of `ExportTraceServiceRequest`
/// (https://opentelemetry.io/docs/specs/otlp/#json-protobuf-encoding): ids as hex strings,
/// 64-bit numbers as decimal strings, enums as numbers.
package enum OTLPJSON {
    struct Request: Encodable {
        var resourceSpans: [ResourceSpans]
    }

    struct ResourceSpans: Encodable {
        var resource: Resource
        var scopeSpans: [ScopeSpans]
    }

    struct Resource: Encodable {
        var attributes: [KeyValue]
    }

    struct ScopeSpans: Encodable {
        var scope: Scope
        var spans: [EncodedSpan]
    }

    struct Scope: Encodable {
        var name: String
    }

    struct EncodedSpan: Encodable {
        var traceId: String
        var spanId: String
        var parentSpanId: String?
        var flags: UInt32
        var name: String
        var kind: Int
        var startTimeUnixNano: String
        var endTimeUnixNano: String
        var attributes: [KeyValue]
        var events: [Event]
        var links: [Link]
        var status: Status
    }

    struct Event: Encodable {
        var timeUnixNano: String
        var name: String
        var attributes: [KeyValue]
    }

    struct Link: Encodable {
        var traceId: String
        var spanId: String
        var flags: UInt32
        var attributes: [KeyValue]
    }

    struct Status: Encodable {
        var code: Int
        var message: String?
    }

    struct KeyValue: Encodable {
        var key: String
        var value: AnyValue
    }

    indirect enum AnyValue: Encodable {
        case string(String)
        case bool(Bool)
        case int(Int64)
        case double(Double)
        case array([AnyValue])

        enum CodingKeys: String, CodingKey {
            case stringValue, boolValue, intValue, doubleValue, arrayValue
        }

        struct ArrayValue: Encodable {
            var values: [AnyValue]
        }

        func encode(to encoder: any Encoder) throws {
            var container = encoder.container(keyedBy: CodingKeys.self)
            switch self {
            case .string(let value): try container.encode(value, forKey: .stringValue)
            case .bool(let value): try container.encode(value, forKey: .boolValue)
            case .int(let value): try container.encode(String(value), forKey: .intValue)
            case .double(let value): try container.encode(value, forKey: .doubleValue)
            case .array(let values): try container.encode(ArrayValue(values: values), forKey: .arrayValue)
            }
        }

        init(_ attribute: SpanAttribute) {
            switch attribute {
            case .int32(let value): self = .int(Int64(value))
            case .int64(let value): self = .int(value)
            case .double(let value): self = .double(value)
            case .bool(let value): self = .bool(value)
            case .string(let value): self = .string(value)
            case .int32Array(let values): self = .array(values.map { .int(Int64($0)) })
            case .int64Array(let values): self = .array(values.map { .int($0) })
            case .doubleArray(let values): self = .array(values.map { .double($0) })
            case .boolArray(let values): self = .array(values.map { .bool($0) })
            case .stringArray(let values): self = .array(values.map { .string($0) })
            case .stringConvertible(let value): self = .string(value.description)
            case .stringConvertibleArray(let values): self = .array(values.map { .string($0.description) })
            default: self = .string("\(attribute)")
            }
        }
    }

    /// OTLP's `SpanKind` numbers.
    static func kind(_ kind: SpanKind) -> Int {
        switch kind {
        case .internal: return 1
        case .server: return 2
        case .client: return 3
        case .producer: return 4
        case .consumer: return 5
        }
    }

    static func attributes(_ attributes: SpanAttributes) -> [KeyValue] {
        var result: [KeyValue] = []
        attributes.forEach { key, value in result.append(KeyValue(key: key, value: AnyValue(value))) }
        return result.sorted { $0.key < $1.key }
    }

    /// The request body for `spans`, all from one process (`resource`).
    package static func encode(_ spans: [FinishedSpan], resource: [(key: String, value: String)]) -> [UInt8] {
        let encoded = spans.map { span in
            EncodedSpan(
                traceId: span.trace.traceIDHex,
                spanId: span.trace.spanIDHex,
                parentSpanId: span.parentSpanID.map(TraceContext.hex),
                flags: span.trace.sampled ? 1 : 0,
                name: span.name,
                kind: kind(span.kind),
                startTimeUnixNano: String(span.start),
                endTimeUnixNano: String(max(span.start, span.end)),
                attributes: attributes(span.attributes),
                events: span.events.map {
                    Event(timeUnixNano: String($0.nanosecondsSinceEpoch), name: $0.name, attributes: attributes($0.attributes))
                },
                links: span.links.map {
                    Link(
                        traceId: $0.trace.traceIDHex,
                        spanId: $0.trace.spanIDHex,
                        flags: $0.trace.sampled ? 1 : 0,
                        attributes: attributes($0.attributes)
                    )
                },
                status: status(span.status)
            )
        }
        let request = Request(resourceSpans: [
            ResourceSpans(
                resource: Resource(attributes: resource.map { KeyValue(key: $0.key, value: .string($0.value)) }),
                scopeSpans: [ScopeSpans(scope: Scope(name: "autonomous"), spans: encoded)]
            )
        ])
        // Encoding plain strings and numbers cannot fail.
        return Array((try? JSONEncoder().encode(request)) ?? Data())
    }

    static func status(_ status: SpanStatus?) -> Status {
        guard let status else { return Status(code: 0) }
        switch status.code {
        case .ok: return Status(code: 1, message: status.message)
        case .error: return Status(code: 2, message: status.message)
        }
    }
}
