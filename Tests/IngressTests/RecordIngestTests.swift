import ClusterCore
import Testing

@testable import Ingress

@Suite("Record API targets")
struct RecordIngestTests {
    @Test("Both record paths name their table (and tenant); other paths are not the record API; other methods get 405")
    func targets() throws {
        #expect(try RecordIngest.target(method: "POST", path: "/v1/tables/orders/records") == .init(table: "orders"))
        #expect(
            try RecordIngest.target(method: "POST", path: "/v1/tenants/acme/tables/orders/records")
                == .init(table: "orders", tenant: "acme")
        )
        for path in [
            "/v1/tables//records", "/v1/tables/records", "/v1/tenants/acme/tables/orders", "/orders", "/v1/tenants/acme/x/orders/records",
        ] {
            #expect(try RecordIngest.target(method: "POST", path: Substring(path)) == nil, "\(path)")
        }
        // A name that is not valid still reaches the pipeline, which refuses it with a 400.
        #expect(try RecordIngest.target(method: "POST", path: "/v1/tables/a.b/records") == .init(table: "a.b"))
        let refusal = #expect(throws: RouteError.self) { try RecordIngest.target(method: "GET", path: "/v1/tables/orders/records") }
        #expect(refusal?.status == 405 && refusal?.code == "method_not_allowed")
    }
}
