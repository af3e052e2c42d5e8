import Foundation
import Telemetry
import Testing
import Tracing

@Suite("Trace context, samplers and the OTLP tracer")
struct TelemetryTests {
    static let trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

    @Test("traceparent parses and prints back; invalid ones are refused")
    func traceparent() throws {
        let context = try #require(TraceContext(traceparent: Self.trace))
        #expect(context.traceIDHex == "4bf92f3577b34da6a3ce929d0e0e4736")
        #expect(context.spanIDHex == "00f067aa0ba902b7")
        #expect(context.sampled)
        #expect(context.traceparent == Self.trace)
        #expect(TraceContext(traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00")?.sampled == false)
        for bad in [
            Self.trace.uppercased(),
            "01" + Self.trace.dropFirst(2),
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "",
        ] {
            #expect(TraceContext(traceparent: bad) == nil, "\(bad)")
        }
        let random = TraceContext.random(sampled: true)
        #expect(TraceContext(traceparent: random.traceparent) == random)
    }

    @Test("Samplers decide as OpenTelemetry names them; a ratio decides by the trace id alone")
    func samplers() throws {
        let sampled = try #require(TraceContext(traceparent: Self.trace))
        var unsampled = sampled
        unsampled.sampled = false
        #expect(Sampler.default.samples(trace: sampled, parent: unsampled) == false)
        #expect(Sampler.default.samples(trace: sampled, parent: sampled))
        #expect(Sampler.default.samples(trace: sampled, parent: nil))
        #expect(Sampler.alwaysOff.samples(trace: sampled, parent: sampled) == false)
        #expect(Sampler(name: "parentbased_always_off", argument: nil)?.samples(trace: sampled, parent: nil) == false)
        let half = try #require(Sampler(name: "traceidratio", argument: "0.5"))
        var kept = 0
        for _ in 0..<4_000 {
            let trace = TraceContext.random(sampled: false)
            let first = half.samples(trace: trace, parent: nil)
            #expect(first == half.samples(trace: trace, parent: nil), "the same trace gets the same decision")
            if first { kept += 1 }
        }
        #expect((1_600...2_400).contains(kept), "about half of 4,000 random traces: \(kept)")
        #expect(Sampler(name: "traceidratio", argument: "1.5") == nil)
        #expect(Sampler(name: "jaeger_remote", argument: nil) == nil)
    }

    @Test("The tracer continues a remote parent, propagates the span it starts, and queues only sampled spans")
    func tracer() throws {
        let queue = SpanQueue(capacity: 10, batchSize: 5)
        let tracer = OTLPTracer(queue: queue)
        var parent = InstrumentationContext.topLevel
        tracer.extract(["traceparent": Self.trace], into: &parent, using: DictionaryExtractor())
        let span = tracer.startSpan("process orders", context: parent, ofKind: .consumer)
        span.attributes["messaging.system"] = "nats"
        span.recordError(SampleError())
        span.setStatus(SpanStatus(code: .error))
        var carrier: [String: String] = [:]
        tracer.inject(span.context, into: &carrier, using: DictionaryInjector())
        let injected = try #require(carrier["traceparent"].flatMap(TraceContext.init(traceparent:)))
        #expect(injected.traceIDHex == "4bf92f3577b34da6a3ce929d0e0e4736", "same trace")
        #expect(injected.spanIDHex != "00f067aa0ba902b7", "its own span id")
        #expect(injected.sampled)
        span.end()
        span.end()
        let finished = queue.take()
        #expect(finished.count == 1, "ended once")
        let only = try #require(finished.first)
        #expect(only.parentSpanID.map { String($0, radix: 16) } == "f067aa0ba902b7")
        #expect(only.events.map(\.name) == ["exception"])

        // A parent that is not sampled: the span is propagated but not recorded.
        var quiet = InstrumentationContext.topLevel
        tracer.extract(["traceparent": String(Self.trace.dropLast(2)) + "00"], into: &quiet, using: DictionaryExtractor())
        let unsampled = tracer.startSpan("process orders", context: quiet, ofKind: .consumer)
        #expect(!unsampled.isRecording)
        var quietCarrier: [String: String] = [:]
        tracer.inject(unsampled.context, into: &quietCarrier, using: DictionaryInjector())
        #expect(quietCarrier["traceparent"]?.hasSuffix("-00") == true)
        unsampled.end()
        #expect(queue.take().isEmpty)
    }

    @Test("The queue is bounded and hands out batches")
    func queueBounds() {
        let queue = SpanQueue(capacity: 3, batchSize: 2)
        let tracer = OTLPTracer(sampler: .alwaysOn, queue: queue)
        for _ in 0..<5 { tracer.startSpan("s", context: .topLevel, ofKind: .internal).end() }
        #expect(queue.count == 3, "two dropped")
        #expect(queue.take().count == 2)
        #expect(queue.take().count == 1)
        #expect(queue.take().isEmpty)
    }

    @Test("OTLP JSON: hex ids, decimal-string times, numeric kinds, typed attribute values, links")
    func json() throws {
        let queue = SpanQueue()
        let tracer = OTLPTracer(sampler: .alwaysOn, queue: queue)
        var parent = InstrumentationContext.topLevel
        tracer.extract(["traceparent": Self.trace], into: &parent, using: DictionaryExtractor())
        let span = tracer.startSpan("process orders", context: .topLevel, ofKind: .consumer)
        span.addLink(SpanLink(context: parent, attributes: [:]))
        span.attributes["messaging.batch.message_count"] = 3
        span.attributes["messaging.system"] = "nats"
        span.attributes["ok"] = true
        span.end()
        let body = OTLPJSON.encode(queue.take(), resource: [("service.name", "orders-worker")])
        let json = try #require(try JSONSerialization.jsonObject(with: Data(body)) as? [String: Any])
        let resourceSpans = try #require((json["resourceSpans"] as? [[String: Any]])?.first)
        let resource = try #require((resourceSpans["resource"] as? [String: Any])?["attributes"] as? [[String: Any]])
        #expect(resource.first?["key"] as? String == "service.name")
        #expect((resource.first?["value"] as? [String: Any])?["stringValue"] as? String == "orders-worker")
        let scope = try #require((resourceSpans["scopeSpans"] as? [[String: Any]])?.first)
        let encoded = try #require((scope["spans"] as? [[String: Any]])?.first)
        #expect((encoded["traceId"] as? String)?.count == 32)
        #expect((encoded["spanId"] as? String)?.count == 16)
        #expect(encoded["parentSpanId"] == nil, "a root span")
        #expect(encoded["kind"] as? Int == 5)
        #expect(UInt64(encoded["startTimeUnixNano"] as? String ?? "") != nil)
        let attributes = try #require(encoded["attributes"] as? [[String: Any]])
        let count = attributes.first { $0["key"] as? String == "messaging.batch.message_count" }?["value"] as? [String: Any]
        #expect(count?["intValue"] as? String == "3")
        let ok = attributes.first { $0["key"] as? String == "ok" }?["value"] as? [String: Any]
        #expect(ok?["boolValue"] as? Bool == true)
        let link = try #require((encoded["links"] as? [[String: Any]])?.first)
        #expect(link["traceId"] as? String == "4bf92f3577b34da6a3ce929d0e0e4736")
        #expect(link["spanId"] as? String == "00f067aa0ba902b7")
    }

    @Test("Configuration comes from OpenTelemetry's variables; bad values name the variable and never show a header's value")
    func configuration() throws {
        #expect(try OTLPConfiguration.fromEnvironment([:]) == nil)
        #expect(
            try OTLPConfiguration.fromEnvironment(["OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "true"]) == nil
        )
        #expect(
            try OTLPConfiguration.fromEnvironment(["OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_EXPORTER": "none"]) == nil
        )
        let base = try #require(
            try OTLPConfiguration.fromEnvironment([
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318",
                "OTEL_EXPORTER_OTLP_HEADERS": "x-api-key=s3cr%3Dt,tenant=acme",
                "OTEL_SERVICE_NAME": "orders",
                "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
                "OTEL_TRACES_SAMPLER_ARG": "0.25",
                "OTEL_BSP_SCHEDULE_DELAY": "200",
            ])
        )
        #expect(base.endpoint.absoluteString == "http://collector:4318/v1/traces")
        #expect(base.headers.map(\.name) == ["x-api-key", "tenant"])
        #expect(base.headers.first?.value == "s3cr=t")
        #expect(!base.description.contains("s3cr"), "headers' values are not described")
        #expect(base.sampler == .parentBased(root: .traceIDRatio(0.25)))
        #expect(base.scheduleDelay == .milliseconds(200))
        let whole = try #require(try OTLPConfiguration.fromEnvironment(["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://c/custom/path"]))
        #expect(whole.endpoint.absoluteString == "https://c/custom/path")

        func refusal(_ environment: [String: String]) -> String {
            do {
                _ = try OTLPConfiguration.fromEnvironment(environment)
                return "accepted"
            } catch {
                return error.description
            }
        }
        #expect(refusal(["OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4318"]).hasPrefix("OTEL_EXPORTER_OTLP_ENDPOINT must be"))
        #expect(refusal(["OTEL_EXPORTER_OTLP_ENDPOINT": "http://u:p@c:4318"]).hasPrefix("OTEL_EXPORTER_OTLP_ENDPOINT"))
        #expect(
            refusal(["OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"])
                .hasPrefix("OTEL_EXPORTER_OTLP_PROTOCOL 'grpc' is not supported")
        )
        let header = refusal(["OTEL_EXPORTER_OTLP_ENDPOINT": "http://c", "OTEL_EXPORTER_OTLP_HEADERS": "a=1,broken-secret-value"])
        #expect(header.hasPrefix("OTEL_EXPORTER_OTLP_HEADERS entry 2"))
        #expect(!header.contains("broken-secret-value"))
        #expect(refusal(["OTEL_EXPORTER_OTLP_ENDPOINT": "http://c", "OTEL_TRACES_SAMPLER": "sometimes"]).hasPrefix("OTEL_TRACES_SAMPLER "))
        #expect(
            refusal(["OTEL_EXPORTER_OTLP_ENDPOINT": "http://c", "OTEL_BSP_SCHEDULE_DELAY": "soon"]).hasPrefix("OTEL_BSP_SCHEDULE_DELAY")
        )
        #expect(
            refusal(["OTEL_EXPORTER_OTLP_ENDPOINT": "https://c", "OTEL_EXPORTER_OTLP_CERTIFICATE": "/nonexistent/ca.pem"])
                .hasPrefix("OTEL_EXPORTER_OTLP_CERTIFICATE names '/nonexistent/ca.pem', which cannot be read")
        )
    }
}

private struct SampleError: Error {}

struct DictionaryExtractor: Extractor {
    func extract(key: String, from carrier: [String: String]) -> String? { carrier[key] }
}

struct DictionaryInjector: Injector {
    func inject(_ value: String, forKey key: String, into carrier: inout [String: String]) { carrier[key] = value }
}
