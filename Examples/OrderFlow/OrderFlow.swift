import Autonomous
import Foundation

// OrderFlow: orders arrive by webhook (or the /orders route), a handler enriches and totals
// them, high-value orders go to a review table, and a schedule writes a summary every minute.
// It needs no API keys:
//
//     swift run OrderFlow dev
//     curl -X POST localhost:3000/webhooks/orders -H 'Content-Type: application/json' \
//          -d '{"order_id":"A-1","customer":"ada","items":[{"sku":"book","quantity":2,"unit_price":12.5}]}'

struct Item: Codable, Sendable {
    var sku: String
    var quantity: Int
    var unit_price: Double
}

struct Order: Record {
    static let semanticType: SemanticType = "commerce.order@1"
    var order_id: String
    var customer: String
    var items: [Item]
    var currency: String?

    /// Bounds that keep the totals in range: the record API answers 422 naming the item.
    static let maxItems = 1_000
    static let maxQuantity = 1_000_000
    static let maxUnitPrice = 1_000_000_000.0

    func validate() throws {
        guard !items.isEmpty else { throw RecordValidationError(field: "items", "an order needs at least one item") }
        guard items.count <= Self.maxItems else {
            throw RecordValidationError(field: "items", "an order has at most \(Self.maxItems) items")
        }
        for (i, item) in items.enumerated() {
            guard (1...Self.maxQuantity).contains(item.quantity) else {
                throw RecordValidationError(field: "items[\(i)].quantity", "must be between 1 and \(Self.maxQuantity)")
            }
            guard item.unit_price.isFinite, (0...Self.maxUnitPrice).contains(item.unit_price) else {
                throw RecordValidationError(field: "items[\(i)].unit_price", "must be between 0 and \(Int(Self.maxUnitPrice))")
            }
        }
    }
}

struct EnrichedOrder: Record {
    static let semanticType: SemanticType = "commerce.order.enriched@1"
    var order_id: String
    var customer: String
    var currency: String
    var item_count: Int
    var total: Double
    var high_value: Bool
}

struct Review: Record {
    static let semanticType: SemanticType = "commerce.order.review@1"
    var order_id: String
    var customer: String
    var total: Double
    var reason: String
}

/// Totals seen by this process since the last summary, per tenant (each tenant's summary
/// counts its own orders only). Each worker process summarises the orders it enriched; with
/// several workers, add their summaries up.
actor OrderStats {
    struct Totals: Equatable {
        var orders = 0
        var revenue = 0.0
        var highValue = 0
    }

    private var byTenant: [String: Totals] = [:]

    func add(_ order: EnrichedOrder, tenant: String) {
        byTenant[tenant, default: Totals()].orders += 1
        byTenant[tenant, default: Totals()].revenue += order.total
        if order.high_value { byTenant[tenant, default: Totals()].highValue += 1 }
    }

    /// The tenant's totals since its last summary, which start again from zero.
    func drain(tenant: String) -> Totals {
        byTenant.removeValue(forKey: tenant) ?? Totals()
    }
}

@main
struct OrderFlowApp: AutonomousApp {
    var name: String { "OrderFlow" }

    /// Orders at or above this total go to review.
    static let reviewThreshold = 1000.0

    func build(_ app: inout AppBuilder) {
        let orders = app.table("orders", of: Order.self)
        let enriched = app.table("enriched_orders", of: EnrichedOrder.self)
        let reviews = app.table("order_reviews", of: Review.self)
        let summaries = app.table("order_summaries")
        let stats = OrderStats()

        // A shop platform posts orders here.
        app.webhook("/webhooks/orders", into: orders)

        // Our own checkout posts here; the route checks the order and answers with its total.
        app.post("/orders") { request, ctx in
            // Decoding checks `Order.validate()` too: a bad order is a 422 naming the field.
            let order = try request.decode(Order.self)
            try await orders.append(order, ctx)
            let total = order.items.reduce(0) { $0 + Double($1.quantity) * $1.unit_price }
            return .json(["status": "accepted", "order_id": .string(order.order_id), "total": .double(total)], status: 202)
        }

        // An order and where it stands, from the storages that keep the tables (SQLite in
        // dev; what autonomous.json names elsewhere): 404 until its enriched record is kept.
        app.get("/orders/{id}") { request, ctx in
            let id = request.parameters["id"] ?? ""
            guard let found = try await enriched.records(where: ["order_id": .string(id)], limit: 1, ctx).entries.first else {
                throw RouteError(status: 404, code: "not_found", message: "no order '\(id.prefix(64))' yet", field: "id")
            }
            let review = try await reviews.records(where: ["order_id": .string(id)], limit: 1, ctx).entries.first
            let order = found.value
            return .json([
                "order_id": .string(order.order_id),
                "customer": .string(order.customer),
                "currency": .string(order.currency),
                "item_count": .int(Int64(order.item_count)),
                "total": .double(order.total),
                "status": .string(review == nil ? "accepted" : "in review"),
                "received": JSONValue(found.metadata.ingestTime),
            ])
        }

        orders.onNewRecords("enrich-orders", options: HandlerOptions(batchSize: 512), writes: [enriched]) { records, ctx in
            let out = records.map { order -> EnrichedOrder in
                let total = order.items.reduce(0) { $0 + Double($1.quantity) * $1.unit_price }
                return EnrichedOrder(
                    order_id: order.order_id,
                    customer: order.customer,
                    currency: order.currency ?? "EUR",
                    item_count: order.items.reduce(0) { $0 + $1.quantity },
                    total: (total * 100).rounded() / 100,
                    high_value: total >= Self.reviewThreshold
                )
            }
            try await enriched.append(out, ctx)
            for order in out.values { await stats.add(order, tenant: ctx.tenant) }
        }

        enriched.onNewRecords("flag-high-value", writes: [reviews]) { records, ctx in
            let flagged = records.filter(\.high_value).map { order in
                Review(
                    order_id: order.order_id,
                    customer: order.customer,
                    total: order.total,
                    reason: "total ≥ \(Int(Self.reviewThreshold))"
                )
            }
            try await reviews.append(flagged, ctx)
        }

        app.schedule("minute-summary", .every(.seconds(60)), writes: [summaries]) { tick, ctx in
            let totals = await stats.drain(tenant: ctx.tenant)
            try await summaries.append(
                [
                    "minute": .string(tick.fireTime),
                    "orders": .int(Int64(totals.orders)),
                    "revenue": .double((totals.revenue * 100).rounded() / 100),
                    "high_value_orders": .int(Int64(totals.highValue)),
                ],
                ctx
            )
        }
    }
}
