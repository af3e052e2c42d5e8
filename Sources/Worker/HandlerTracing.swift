import ClusterCore
import Tracing

/// How a handler run's span relates to the traces its records carry (`traceparent`), as
/// OpenTelemetry's messaging conventions ask for batches: when every record of the run carries
/// the same trace context (one record, or one request's records), the span is its child;
/// otherwise the span starts a trace of its own and links to each record's context.
struct HandlerSpanPlan: Equatable {
    /// The `traceparent` the span continues.
    var parent: String?
    /// The `traceparent`s the span links to, each once, at most ``maxLinks``.
    var links: [String]

    static let maxLinks = 128

    init(traceparents: [String?]) {
        var distinct: [String] = []
        var seen = Set<String>()
        var untraced = false
        for traceparent in traceparents {
            guard let traceparent else {
                untraced = true
                continue
            }
            if seen.insert(traceparent).inserted, distinct.count < Self.maxLinks { distinct.append(traceparent) }
        }
        if !untraced, seen.count == 1 {
            parent = distinct.first
            links = []
        } else {
            parent = nil
            links = distinct
        }
    }
}

/// Starts and ends the span of each handler run when a tracer is bootstrapped
/// (`InstrumentationSystem.bootstrap`); with none, a run costs one branch.
struct HandlerTracing: Sendable {
    /// `nil` when no tracer is bootstrapped.
    private let tracer: (any Tracer)?

    init() {
        let tracer = InstrumentationSystem.tracer
        self.tracer = tracer is NoOpTracer ? nil : tracer
    }

    var isEnabled: Bool { tracer != nil }

    /// Runs `body` inside a `process <source>` span (kind consumer) for `records`; `body` gets
    /// the `traceparent` its outputs carry (the span's own) and runs with the span's context
    /// as the task's, so spans an app or library starts in the handler are its children.
    func run(
        handler: HandlerDefinition,
        tenant: String,
        records: [IncomingRecord],
        _ body: (_ outputTraceparent: String?) async -> Result<Int, any Error>
    ) async -> Result<Int, any Error> {
        guard let tracer else { return await body(nil) }
        let plan = HandlerSpanPlan(traceparents: records.map(\.metadata.traceparent))
        var parent = InstrumentationContext.topLevel
        if let traceparent = plan.parent { tracer.extract(["traceparent": traceparent], into: &parent, using: HeaderExtractor()) }
        let span = tracer.startAnySpan("process \(handler.source)", context: parent, ofKind: .consumer)
        for traceparent in plan.links {
            var linked = InstrumentationContext.topLevel
            tracer.extract(["traceparent": traceparent], into: &linked, using: HeaderExtractor())
            span.addLink(SpanLink(context: linked, attributes: [:]))
        }
        var carrier: [String: String] = [:]
        tracer.inject(span.context, into: &carrier, using: HeaderInjector())
        if span.isRecording {
            span.updateAttributes { attributes in
                attributes["messaging.system"] = "nats"
                attributes["messaging.operation.type"] = "process"
                attributes["messaging.operation.name"] = "process"
                attributes["messaging.destination.name"] = handler.source
                attributes["messaging.consumer.group.name"] = handler.name
                if records.count == 1, let record = records.first {
                    attributes["messaging.message.id"] = record.metadata.id
                    attributes["autonomous.delivery_count"] = record.metadata.deliveryCount
                } else {
                    attributes["messaging.batch.message_count"] = records.count
                }
                attributes["autonomous.handler"] = handler.name
                attributes["autonomous.tenant"] = tenant
            }
        }
        let result = await InstrumentationContext.$current.withValue(span.context) {
            await body(carrier["traceparent"])
        }
        switch result {
        case .success(let outputs):
            if span.isRecording { span.attributes["autonomous.outputs"] = outputs }
        case .failure(let error):
            span.recordError(error)
            span.setStatus(SpanStatus(code: .error, message: String(describing: type(of: error))))
        }
        span.end()
        return result
    }
}

private struct HeaderExtractor: Extractor {
    func extract(key: String, from carrier: [String: String]) -> String? { carrier[key] }
}

private struct HeaderInjector: Injector {
    func inject(_ value: String, forKey key: String, into carrier: inout [String: String]) { carrier[key] = value }
}
