import Testing

@testable import OrderFlow

@Suite("OrderFlow example")
struct OrderFlowTests {
    static func order(_ total: Double) -> EnrichedOrder {
        EnrichedOrder(
            order_id: "o",
            customer: "c",
            currency: "EUR",
            item_count: 1,
            total: total,
            high_value: total >= OrderFlowApp.reviewThreshold
        )
    }

    @Test("Each tenant's minute summary counts its own orders only")
    func summaryPerTenant() async {
        let stats = OrderStats()
        await stats.add(Self.order(10), tenant: "acme")
        await stats.add(Self.order(2000), tenant: "acme")
        await stats.add(Self.order(5), tenant: "globex")
        #expect(await stats.drain(tenant: "acme") == OrderStats.Totals(orders: 2, revenue: 2010, highValue: 1))
        #expect(await stats.drain(tenant: "globex") == OrderStats.Totals(orders: 1, revenue: 5, highValue: 0))
        #expect(await stats.drain(tenant: "acme") == OrderStats.Totals(), "a summary starts the next from zero")
    }
}
