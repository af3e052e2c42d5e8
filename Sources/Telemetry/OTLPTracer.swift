import Synchronization
package import Tracing

/// The span a context belongs to, as this tracer keeps it in an `InstrumentationContext`.
private enum TraceContextKey: InstrumentationContextKey {
    typealias Value = TraceContext
    static var nameOverride: String? { "traceparent" }
}

extension InstrumentationContext {
    /// The W3C trace context of the span this context belongs to (or of a remote parent read
    /// from a `traceparent` header).
    package var traceContext: TraceContext? {
        get { self[TraceContextKey.self] }
        set { self[TraceContextKey.self] = newValue }
    }
}

/// A swift-distributed-tracing `Tracer` that propagates W3C trace context (`traceparent`) and
/// hands each ended, sampled span to a ``SpanQueue``, from which ``OTLPExporter`` sends them.
///
/// Bootstrap it once per process (`InstrumentationSystem.bootstrap(tracer)`), so that the
/// worker's handler spans and any span an app or library starts (`withSpan`) go to the same
/// exporter.
package struct OTLPTracer: Tracer {
    package typealias Span = OTLPSpan

    let sampler: Sampler
    let queue: SpanQueue

    package init(sampler: Sampler = .default, queue: SpanQueue) {
        self.sampler = sampler
        self.queue = queue
    }

    package func startSpan<Instant: TracerInstant>(
        _ operationName: String,
        context: @autoclosure () -> InstrumentationContext,
        ofKind kind: SpanKind,
        at instant: @autoclosure () -> Instant,
        function: String,
        file fileID: String,
        line: UInt
    ) -> OTLPSpan {
        var context = context()
        let parent = context.traceContext
        var own: TraceContext
        if let parent {
            own = TraceContext(traceHigh: parent.traceHigh, traceLow: parent.traceLow, spanID: TraceContext.randomSpanID(), sampled: false)
        } else {
            own = TraceContext.random(sampled: false)
        }
        own.sampled = sampler.samples(trace: own, parent: parent)
        context.traceContext = own
        return OTLPSpan(
            name: operationName,
            kind: kind,
            context: context,
            trace: own,
            parentSpanID: parent?.spanID,
            start: instant().nanosecondsSinceEpoch,
            queue: own.sampled ? queue : nil
        )
    }

    package func activeSpan(identifiedBy context: InstrumentationContext) -> OTLPSpan? { nil }

    /// Asks the exporter to send what it holds now rather than at its next scheduled export.
    package func forceFlush() {
        queue.requestFlush()
    }

    package func extract<Carrier, Extract: Extractor>(
        _ carrier: Carrier,
        into context: inout InstrumentationContext,
        using extractor: Extract
    ) where Extract.Carrier == Carrier {
        guard let value = extractor.extract(key: "traceparent", from: carrier), let trace = TraceContext(traceparent: value) else { return }
        context.traceContext = trace
    }

    package func inject<Carrier, Inject: Injector>(
        _ context: InstrumentationContext,
        into carrier: inout Carrier,
        using injector: Inject
    ) where Inject.Carrier == Carrier {
        guard let trace = context.traceContext else { return }
        injector.inject(trace.traceparent, forKey: "traceparent", into: &carrier)
    }
}

/// A span of ``OTLPTracer``. Not sampled, it keeps nothing and ``isRecording`` is false.
package final class OTLPSpan: Span {
    package let context: InstrumentationContext
    let trace: TraceContext
    let parentSpanID: UInt64?
    let kind: SpanKind
    let start: UInt64
    /// Where the span goes when it ends; `nil` when it is not sampled.
    private let queue: SpanQueue?

    private struct State {
        var name: String
        var attributes = SpanAttributes()
        var events: [SpanEvent] = []
        var links: [SpanLink] = []
        var status: SpanStatus?
        var ended = false
    }

    // Guarded by the mutex: a span may be changed from any task until it ends.
    private let state: Mutex<State>

    init(
        name: String,
        kind: SpanKind,
        context: InstrumentationContext,
        trace: TraceContext,
        parentSpanID: UInt64?,
        start: UInt64,
        queue: SpanQueue?
    ) {
        self.context = context
        self.trace = trace
        self.parentSpanID = parentSpanID
        self.kind = kind
        self.start = start
        self.queue = queue
        self.state = Mutex(State(name: name))
    }

    package var isRecording: Bool { queue != nil && !state.withLock { $0.ended } }

    package var operationName: String {
        get { state.withLock { $0.name } }
        set { update { $0.name = newValue } }
    }

    package var attributes: SpanAttributes {
        get { state.withLock { $0.attributes } }
        set { update { $0.attributes = newValue } }
    }

    package func setStatus(_ status: SpanStatus) {
        update { $0.status = status }
    }

    package func addEvent(_ event: SpanEvent) {
        update { $0.events.append(event) }
    }

    package func addLink(_ link: SpanLink) {
        update { $0.links.append(link) }
    }

    /// An `exception` event, as OpenTelemetry's semantic conventions name it.
    package func recordError<Instant: TracerInstant>(_ error: any Error, attributes: SpanAttributes, at instant: @autoclosure () -> Instant)
    {
        guard queue != nil else { return }
        var all = attributes
        all["exception.type"] = String(describing: type(of: error))
        all["exception.message"] = String(describing: error)
        addEvent(SpanEvent(name: "exception", at: instant(), attributes: all))
    }

    package func end<Instant: TracerInstant>(at instant: @autoclosure () -> Instant) {
        guard let queue else { return }
        let finished = state.withLock { state -> State? in
            guard !state.ended else { return nil }
            state.ended = true
            return state
        }
        guard let finished else { return }
        queue.append(
            FinishedSpan(
                name: finished.name,
                kind: kind,
                trace: trace,
                parentSpanID: parentSpanID,
                start: start,
                end: instant().nanosecondsSinceEpoch,
                attributes: finished.attributes,
                events: finished.events,
                links: finished.links.compactMap { link in
                    link.context.traceContext.map { FinishedSpan.Link(trace: $0, attributes: link.attributes) }
                },
                status: finished.status
            )
        )
    }

    private func update(_ body: (inout State) -> Void) {
        guard queue != nil else { return }
        state.withLock { state in
            guard !state.ended else { return }
            body(&state)
        }
    }
}

/// An ended span, as the exporter sends it.
package struct FinishedSpan: Sendable {
    package struct Link: Sendable {
        package var trace: TraceContext
        package var attributes: SpanAttributes
    }

    package var name: String
    package var kind: SpanKind
    package var trace: TraceContext
    package var parentSpanID: UInt64?
    /// Nanoseconds since 1970.
    package var start: UInt64
    package var end: UInt64
    package var attributes: SpanAttributes
    package var events: [SpanEvent]
    package var links: [Link]
    package var status: SpanStatus?
}
