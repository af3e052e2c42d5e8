import AsyncHTTPClient
import Autonomous
import AutonomousTesting
import Foundation
import NIOCore
import NIOHTTP1
import Testing

/// Request ids and W3C trace context through the ingress, into records and handlers' outputs.
@Suite("Request ids and trace context")
struct RequestTracingTests {
    static func graph() throws -> AppGraph {
        var app = AppBuilder(name: "Traced")
        let events = app.table("events")
        let copies = app.table("copies")
        events.onNewRecords("copy", writes: [copies]) { records, ctx in
            try await copies.append(records.map { $0 }, ctx)
        }
        app.post("/events") { request, ctx in
            try await events.append(try request.json(), ctx)
            return .accepted
        }
        app.webhook("/hooks/events", into: events)
        return try app.build()
    }

    static let trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

    static let routeTrace = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    static let webhookTrace = "00-0af7651916cd43dd8448eb211c80319c-00000000000000a1-00"

    func post(
        _ app: RunningApp,
        path: String = "/v1/tables/events/records",
        body: String,
        headers: [(String, String)]
    ) async throws -> (status: Int, requestID: String?) {
        var request = HTTPClientRequest(url: app.baseURL + path)
        request.method = .POST
        request.headers.add(name: "Content-Type", value: "application/json")
        for (name, value) in headers { request.headers.add(name: name, value: value) }
        request.body = .bytes(ByteBuffer(string: body))
        let response = try await HTTPClient.shared.execute(request, timeout: .seconds(30))
        _ = try await response.body.collect(upTo: 1 << 20)
        return (Int(response.status.code), response.headers.first(name: "x-request-id"))
    }

    @Test("A request's traceparent reaches its records and their handlers' outputs, on both ingress paths; ids are echoed or made")
    func traceparent() async throws {
        try await withRunningApp(try Self.graph(), configure: { $0.accessLog = true }) { app in
            // Small body: answered on the event loop. Big body (over the inline limit): Hummingbird's path.
            let big =
                "[" + (0..<2_000).map { #"{"n":\#($0),"pad":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}"# }.joined(separator: ",")
                + "]"
            let small = try await post(app, body: #"{"n":-1}"#, headers: [("traceparent", Self.trace), ("X-Request-Id", "client-req-1")])
            #expect(small.status == 202)
            #expect(small.requestID == "client-req-1", "a valid id is echoed")
            let large = try await post(app, body: big, headers: [("traceparent", Self.trace)])
            #expect(large.status == 202)
            #expect(large.requestID != nil && large.requestID != "client-req-1", "an id is made when none is sent")
            // Invalid trace contexts and request ids are ignored, never stored or echoed.
            let upper = try await post(
                app,
                body: #"{"n":-2}"#,
                headers: [("traceparent", Self.trace.uppercased()), ("X-Request-Id", "bad id with spaces")]
            )
            #expect(upper.status == 202)
            #expect(upper.requestID != "bad id with spaces" && upper.requestID != nil)
            let zeros = try await post(
                app,
                body: #"{"n":-3}"#,
                headers: [("traceparent", "00-00000000000000000000000000000000-00f067aa0ba902b7-01")]
            )
            #expect(zeros.status == 202)
            let plain = try await post(app, body: #"{"n":-4}"#, headers: [])
            #expect(plain.requestID != nil && plain.requestID != large.requestID)

            // A route's appends and a webhook's record carry their request's trace too.
            #expect(try await post(app, path: "/events", body: #"{"n":-5}"#, headers: [("traceparent", Self.routeTrace)]).status == 202)
            #expect(
                try await post(app, path: "/hooks/events", body: #"{"n":-6}"#, headers: [("traceparent", Self.webhookTrace)]).status == 200
            )

            let events = try await app.records(in: "events", atLeast: 2_006)
            let traced = events.filter { $0.headers["traceparent"] == Self.trace }
            #expect(traced.count == 2_001, "the small and the big request's records carry the trace")
            #expect(
                events.filter { $0.headers["traceparent"] == Self.routeTrace }.count == 1,
                "the route's append carries its request's trace"
            )
            #expect(
                events.filter { $0.headers["traceparent"] == Self.webhookTrace }.count == 1,
                "the webhook's record carries its request's trace"
            )
            #expect(events.filter { $0.headers["traceparent"] != nil }.count == 2_003, "invalid trace contexts were not stored")
            let copies = try await app.records(in: "copies", atLeast: 2_006)
            #expect(copies.filter { $0.headers["traceparent"] == Self.trace }.count == 2_001, "handlers' outputs keep the trace")
            #expect(copies.filter { $0.headers["traceparent"] == Self.routeTrace }.count == 1)
        }
    }
}
