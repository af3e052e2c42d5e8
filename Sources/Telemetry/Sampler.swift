/// Which new spans are recorded and exported, as OpenTelemetry's `OTEL_TRACES_SAMPLER` names
/// them. A span that is not sampled still gets ids and is propagated (with the `sampled` flag
/// off), so the services after it can follow the caller's decision.
package enum Sampler: Sendable, Equatable {
    case alwaysOn
    case alwaysOff
    /// Records this fraction of traces, decided from the trace id, so every process that sees
    /// a trace decides the same.
    case traceIDRatio(Double)
    /// Follows the parent's `sampled` flag when there is a parent; else `root` decides.
    indirect case parentBased(root: Sampler)

    /// OpenTelemetry's default: follow the parent, record every new trace.
    package static let `default` = Sampler.parentBased(root: .alwaysOn)

    /// Whether a span of `trace` whose parent is `parent` (`nil`: a new trace) is recorded.
    package func samples(trace: TraceContext, parent: TraceContext?) -> Bool {
        switch self {
        case .alwaysOn:
            return true
        case .alwaysOff:
            return false
        case .traceIDRatio(let ratio):
            if ratio >= 1 { return true }
            if ratio <= 0 { return false }
            // The trace id's low 63 bits against the ratio of 2^63.
            let bound = UInt64(ratio * 9_223_372_036_854_775_808.0)
            return trace.traceLow & 0x7fff_ffff_ffff_ffff < bound
        case .parentBased(let root):
            if let parent { return parent.sampled }
            return root.samples(trace: trace, parent: nil)
        }
    }

    /// The sampler `OTEL_TRACES_SAMPLER` (and `OTEL_TRACES_SAMPLER_ARG`, a ratio from 0 to 1)
    /// name; `nil` for a name OpenTelemetry does not define or this runtime does not support.
    package init?(name: String, argument: String?) {
        func ratio() -> Double? {
            guard let argument else { return 1 }
            guard let value = Double(argument), (0...1).contains(value) else { return nil }
            return value
        }
        switch name {
        case "always_on": self = .alwaysOn
        case "always_off": self = .alwaysOff
        case "traceidratio":
            guard let ratio = ratio() else { return nil }
            self = .traceIDRatio(ratio)
        case "parentbased_always_on": self = .parentBased(root: .alwaysOn)
        case "parentbased_always_off": self = .parentBased(root: .alwaysOff)
        case "parentbased_traceidratio":
            guard let ratio = ratio() else { return nil }
            self = .parentBased(root: .traceIDRatio(ratio))
        default: return nil
        }
    }
}
