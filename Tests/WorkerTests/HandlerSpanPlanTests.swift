import Testing

@testable import Worker

@Suite("How a handler run's span joins its records' traces")
struct HandlerSpanPlanTests {
    let a = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    let b = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"

    struct Expected: Equatable {
        var parent: String?
        var links: [String]
    }

    func plan(_ traceparents: [String?]) -> Expected {
        let plan = HandlerSpanPlan(traceparents: traceparents)
        return Expected(parent: plan.parent, links: plan.links)
    }

    @Test("One record, or records that all share one trace context: the span is its child")
    func oneTrace() {
        #expect(plan([a]) == Expected(parent: a, links: []))
        #expect(HandlerSpanPlan(traceparents: [a, a, a]).parent == a)
        #expect(HandlerSpanPlan(traceparents: [a, a, a]).links.isEmpty)
    }

    @Test("Records of several traces, or some untraced: a new trace that links to each context once")
    func severalTraces() {
        #expect(plan([a, b, a]) == Expected(parent: nil, links: [a, b]))
        #expect(plan([a, nil]) == Expected(parent: nil, links: [a]))
        #expect(plan([nil, nil]) == Expected(parent: nil, links: []))
        #expect(plan([]) == Expected(parent: nil, links: []))
    }

    @Test("Links are capped")
    func cappedLinks() {
        let many = (0..<500).map { i -> String? in
            let hex = String(i + 1, radix: 16)
            return "00-" + String(repeating: "0", count: 32 - hex.count) + hex + "-00f067aa0ba902b7-01"
        }
        let plan = HandlerSpanPlan(traceparents: many)
        #expect(plan.parent == nil)
        #expect(plan.links.count == HandlerSpanPlan.maxLinks)
    }
}
