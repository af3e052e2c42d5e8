import AsyncHTTPClient
import Autonomous
import AutonomousTesting
import Foundation
import NIOCore
import NIOHTTP1
import Testing

@Suite("Metrics exposition")
struct MetricsTests {
    static func get(_ url: String) async throws -> (status: Int, contentType: String?, text: String) {
        let response = try await HTTPClient.shared.execute(HTTPClientRequest(url: url), timeout: .seconds(10))
        let body = try await response.body.collect(upTo: 4 * 1024 * 1024)
        return (Int(response.status.code), response.headers.first(name: "content-type"), String(buffer: body))
    }

    /// The value of `name{labels}` in Prometheus text, if present.
    static func value(_ text: String, _ series: String) -> Double? {
        for line in text.split(separator: "\n") where line.hasPrefix(series + " ") {
            return Double(line.dropFirst(series.count + 1))
        }
        return nil
    }

    /// Before the fix `/metrics`, which names tenants and handlers, was served on the ingress's
    /// public port.
    @Test(
        "GET /metrics on the admin (and health) port, not on the ingress's public port: Prometheus text with the ingress and worker counters"
    )
    func exposition() async throws {
        var builder = AppBuilder(name: "Metered")
        let input = builder.table("metered_in")
        let output = builder.table("metered_out")
        input.onNewRecords("metered-copy") { records, ctx in try await output.append(records.map { $0 }, ctx) }
        let graph = try builder.build()
        try await withRunningApp(graph, configure: { $0.adminPort = 0 }) { app in
            #expect(try await app.post("/v1/tables/metered_in/records", body: #"{"n":1}"#).status == 202)
            #expect(
                try await app.post("/v1/tables/metered_in/records", body: "{\"n\":2}\n{\"n\":3}", contentType: "application/x-ndjson")
                    .status == 202
            )
            _ = try await app.records(in: "metered_out", atLeast: 3)
            // The worker counts a batch after acking it, just after its outputs are stored.
            #expect(
                try await eventually(timeout: .seconds(5)) {
                    Self.value(
                        try await Self.get(app.adminURL + "/metrics").text,
                        #"autonomous_worker_records_processed_total{handler="metered-copy"}"#
                    ) == 3
                }
            )
            let ingress = try await Self.get(app.adminURL + "/metrics")
            #expect(ingress.status == 200)
            #expect(ingress.contentType?.hasPrefix("text/plain") == true)
            #expect((Self.value(ingress.text, "autonomous_ingress_records_accepted_total") ?? 0) >= 3)
            #expect(ingress.text.contains("# TYPE autonomous_worker_batch_duration_seconds histogram"))
            // Every refused request counts, small record-API requests (answered on the event
            // loop) as much as the others.
            let rejectedBefore = Self.value(ingress.text, "autonomous_ingress_requests_rejected_total") ?? 0
            for _ in 0..<10 {
                #expect(try await app.post("/v1/tables/metered_in/records", body: "[]").status == 400)
            }
            #expect(try await app.post("/v1/tables/nope/records", body: "{}").status == 404)
            let rejectedAfter =
                Self.value(try await Self.get(app.adminURL + "/metrics").text, "autonomous_ingress_requests_rejected_total") ?? 0
            #expect(rejectedAfter - rejectedBefore >= 11, "\(rejectedBefore) → \(rejectedAfter)")
            let admin = try await Self.get(app.adminURL + "/metrics")
            #expect(admin.status == 200)
            let publicPort = try await Self.get(app.baseURL + "/metrics")
            #expect(publicPort.status == 404, "the ingress's port serves no metrics")
            #expect(try await Self.get(app.baseURL + "/readyz").status == 200, "but health, for load balancers")
            #expect(Self.value(admin.text, #"autonomous_worker_records_processed_total{handler="metered-copy"}"#) == 3)
        }
    }
}
