// The app that the Getting Started article (Sources/Autonomous/Autonomous.docc) walks
// through. The article shows the slices between `snippet.<name>` and `snippet.end`;
// DocCArticleTests checks that they match, and `swift build` compiles this file.

// snippet.records
import Autonomous

struct Order: Record {
    static let semanticType: SemanticType = "shop.order@1"
    var id: String
    var customer: String
    var amount: Double
}

struct Receipt: Record {
    static let semanticType: SemanticType = "shop.receipt@1"
    var order: String
    var text: String
}
// snippet.end

@main
struct Shop: AutonomousApp {
    func build(_ app: inout AppBuilder) {
        // snippet.tables
        let orders = app.table("orders", of: Order.self)
        let receipts = app.table("receipts", of: Receipt.self)
        let big = app.table("big_orders", of: Order.self)
        // snippet.end

        // snippet.route
        app.post("/orders") { request, ctx in
            let order = try request.decode(Order.self)
            guard order.amount > 0 else {
                throw RouteError(status: 422, code: "invalid_amount", message: "amount must be positive", field: "amount")
            }
            try await orders.append(order, ctx)
            return .accepted
        }
        // snippet.end

        // snippet.handler
        orders.onNewRecords("write-receipts", writes: [receipts, big]) { records, ctx in
            for order in records {
                ctx.logger.debug("Writing a receipt", metadata: ["shop.order": "\(order.id)"])
                try await receipts.append(Receipt(order: order.id, text: "Thank you, \(order.customer)"), ctx)
                if order.amount >= 1_000 {
                    try await big.append(order, ctx)
                }
            }
        }
        // snippet.end

        // snippet.schedule
        app.schedule("nightly-report", .daily(at: "02:00", timeZone: "Europe/Paris")) { tick, ctx in
            ctx.logger.info("Nightly report", metadata: ["shop.fire_time": "\(tick.fireTime)"])
        }
        // snippet.end
    }
}
