import Autonomous
import AutonomousTesting
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

@Suite("OrderFlow example against a real nats-server")
struct OrderFlowIngressTests {
    /// Before the fix such an order was accepted and its `item_count` sum trapped the worker
    /// (an arithmetic overflow), over and over.
    @Test("An order whose quantity would overflow its totals gets 422 naming the item, by the record API, the webhook and the route")
    func overflowingQuantity() async throws {
        var builder = AppBuilder(name: "OrderFlow")
        OrderFlowApp().build(&builder)
        try await withRunningApp(try builder.build()) { app in
            let huge =
                #"{"order_id":"x","customer":"c","items":[{"sku":"s","quantity":1,"unit_price":1},{"sku":"t","quantity":9223372036854775807,"unit_price":1}]}"#
            for path in ["/v1/tables/orders/records", "/webhooks/orders", "/orders"] {
                let answer = try await app.http("POST", app.baseURL + path, body: huge)
                #expect(answer.status == 422, "\(path): \(answer.body)")
                #expect(answer.body["error"]["field"] == "items[1].quantity", "\(path): \(answer.body)")
                #expect(answer.body["error"]["message"].stringValue?.contains("between 1 and 1000000") == true, "\(path)")
            }
            let negative = #"{"order_id":"y","customer":"c","items":[{"sku":"s","quantity":1,"unit_price":-5}]}"#
            let refused = try await app.http("POST", app.baseURL + "/v1/tables/orders/records", body: negative)
            #expect(refused.status == 422 && refused.body["error"]["field"] == "items[0].unit_price")
            let fine = #"{"order_id":"z","customer":"c","items":[{"sku":"s","quantity":3,"unit_price":2.5}]}"#
            #expect(try await app.http("POST", app.baseURL + "/orders", body: fine).status == 202)
            let enriched = try await app.records(in: "enriched_orders", tenant: "default", atLeast: 1)
            #expect(enriched.count == 1 && enriched.first?.text.contains(#""item_count":3"#) == true)
        }
    }

    /// Before the fix `enriched_orders` and `order_reviews` took records from anyone.
    @Test("Tables a handler declares it writes refuse the record API (403 naming the handler); input tables take records")
    func outputTablesAreClosed() async throws {
        var builder = AppBuilder(name: "OrderFlow")
        OrderFlowApp().build(&builder)
        let graph = try builder.build()
        let described = Dictionary(uniqueKeysWithValues: graph.description(tenant: "default").tables.map { ($0.name, $0.recordAPI) })
        #expect(described["orders"] == "open" && described["enriched_orders"] == "closed" && described["order_reviews"] == "closed")
        #expect(described["order_summaries"] == "closed")
        try await withRunningApp(graph) { app in
            for (table, writer) in [("enriched_orders", "enrich-orders"), ("order_reviews", "flag-high-value")] {
                let forged = #"{"order_id":"x","customer":"c","currency":"EUR","item_count":1,"total":5000,"high_value":true,"reason":"r"}"#
                for path in ["/v1/tables/\(table)/records", "/v1/tenants/default/tables/\(table)/records"] {
                    let answer = try await app.post(path, body: forged)
                    #expect(answer.status == 403 && answer.body["error"]["code"] == "table_not_writable", "\(path): \(answer)")
                    #expect(answer.body["error"]["message"].stringValue?.contains(writer) == true)
                }
            }
            let order = #"{"order_id":"o-1","customer":"c","items":[{"sku":"s","quantity":1,"unit_price":2}]}"#
            #expect(try await app.post("/v1/tables/orders/records", body: order).status == 202)
            #expect(try await app.records(in: "enriched_orders", tenant: "default", atLeast: 1).count == 1)
        }
    }
}

@Suite("OrderFlow answers from its kept tables")
struct OrderFlowStorageTests {
    @Test("GET /orders/{id} answers from storage: 404 before, the order and its review after; wrong methods and bad paths are refused")
    func orderByID() async throws {
        var builder = AppBuilder(name: "OrderFlow")
        OrderFlowApp().build(&builder)
        try await withRunningApp(try builder.build(), configure: { $0.keepUnboundTablesInSQLite = true }) { app in
            #expect(try await app.get("/orders/A-2").status == 404)
            let posted = try await app.post(
                "/orders",
                body: #"{"order_id":"A-2","customer":"bob","items":[{"sku":"tv","quantity":1,"unit_price":1499}]}"#
            )
            #expect(posted.status == 202)
            #expect(
                try await app.post(
                    "/v1/tables/orders/records",
                    body: #"{"order_id":"A b/1","customer":"cy","items":[{"sku":"pen","quantity":2,"unit_price":2}]}"#
                ).status == 202
            )
            let reviewed = try await eventually(timeout: .seconds(30)) {
                try await app.get("/orders/A-2").body["status"] == "in review"
            }
            #expect(reviewed)
            let order = try await app.get("/orders/A-2")
            #expect(order.body["total"] == 1499.0)
            #expect(order.body["customer"] == "bob")
            #expect(order.body["received"].stringValue?.hasSuffix("Z") == true)
            // A percent-encoded id is decoded; a slash inside it stays inside it.
            let small = try await eventually { try await app.get("/orders/A%20b%2F1").status == 200 }
            #expect(small)
            #expect(try await app.get("/orders/A%20b%2F1").body["status"] == "accepted")
            let wrongMethod = try await app.post("/orders/A-2", body: "{}")
            #expect(wrongMethod.status == 405)
            #expect(try await app.get("/orders/A-2/extra").status == 404)
            #expect(try await app.get("/orders/").status == 404)
        }
    }

    @Test("A route path parameter must be a whole, named segment")
    func patternProblems() {
        var app = AppBuilder(name: "Bad")
        app.get("/a/{id}x") { _, _ in .ok }
        app.get("/b/{1st}") { _, _ in .ok }
        app.get("/c/{id}/{id}") { _, _ in .ok }
        #expect {
            try app.build()
        } throws: { error in
            let text = "\(error)"
            return text.contains("a path parameter must be a whole segment") && text.contains("'{1st}' must be a name")
                && text.contains("'{id}' appears twice")
        }
    }
}
