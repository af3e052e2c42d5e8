import Autonomous
import AutonomousTesting
import ClusterCore
import Foundation
import Testing

/// Tables no storage keeps are read from their streams: by time, by sequence, either order,
/// paged, filtered, from outside and from a route.
@Suite("Reading a table from its stream", .serialized)
struct StreamReadTests {
    static func graph() throws -> AppGraph {
        var app = AppBuilder(name: "Streamed")
        let events = app.table("events")
        // A route reading the table, which no storage keeps, through the Swift API.
        app.get("/latest") { _, ctx in
            let page = try await events.records(limit: 1, ctx)
            return .json([
                "latest": page.entries.first.map { $0.value["n"] } ?? .null,
                "odd": .int(Int64(try await events.count(where: ["kind": "odd"], ctx))),
                "all": .int(Int64(try await events.count(ctx))),
            ])
        }
        // Nearest neighbours of a table read from its stream (in process).
        app.get("/similar") { _, ctx in
            let hits = try await events.nearest(to: [4, 1], field: "v", limit: 3, ctx)
            return .json(["n": .array(hits.map { $0.value["n"] }), "scores": .array(hits.map { .double($0.score) })])
        }
        return try app.build()
    }

    /// Every page of a read, following cursors.
    static func pages(_ app: RunningApp, _ query: String) async throws -> [JSONValue] {
        var records: [JSONValue] = []
        var cursor: String?
        var pages = 0
        repeat {
            let path = "/v1/tables/events/records?" + query + (cursor.map { "&cursor=\($0)" } ?? "")
            let answer = try await app.get(path)
            #expect(answer.status == 200, "\(path): \(answer.body)")
            records += answer.body["records"].arrayValue ?? []
            cursor = answer.body["next_cursor"].stringValue
            pages += 1
        } while cursor != nil && pages < 100
        return records
    }

    @Test("Oldest and newest first, pages, filters, since and until, since_sequence, counts; bad cursors are refused")
    func streamReads() async throws {
        try await withRunningApp(try Self.graph()) { app in
            // Five requests of 50, a little apart, so the time window below has edges.
            for first in stride(from: 0, to: 250, by: 50) {
                let lines = (first..<first + 50).map { #"{"n":\#($0),"kind":"\#($0 % 2 == 0 ? "even" : "odd")","v":[\#($0 % 5),1]}"# }
                let posted = try await app.post(
                    "/v1/tables/events/records",
                    body: lines.joined(separator: "\n"),
                    contentType: "application/x-ndjson"
                )
                #expect(posted.status == 202)
                try await Task.sleep(for: .milliseconds(20))
            }

            let oldest = try await Self.pages(app, "order=oldest&limit=100")
            #expect(oldest.count == 250)
            #expect(Set(oldest.compactMap { $0["record"]["n"].intValue }) == Set(0..<250))
            let sequences = oldest.compactMap { $0["sequence"].intValue }
            #expect(sequences.count == 250 && sequences == sequences.sorted() && Set(sequences).count == 250)

            let newest = try await Self.pages(app, "limit=60")
            #expect(newest.compactMap { $0["sequence"].intValue } == Array(sequences.reversed()))

            let odd = try await Self.pages(app, "order=oldest&limit=40&where=%7B%22kind%22%3A%22odd%22%7D")
            #expect(odd.count == 125)
            #expect(odd.allSatisfy { ($0["record"]["n"].intValue ?? 0) % 2 == 1 })

            // By sequence: the 200th record on.
            let fromSequence = try await Self.pages(app, "order=oldest&since_sequence=\(sequences[199])")
            #expect(fromSequence.compactMap { $0["sequence"].intValue } == Array(sequences[199...]))

            // By time: from the third request's first record until the fifth's (the answer's
            // times are cut to the millisecond; the requests are 50 ms apart).
            let times = oldest.compactMap { $0["ingest_time"].stringValue }
            let since = try #require(times[100].addingPercentEncoding(withAllowedCharacters: .alphanumerics))
            let until = try #require(times[200].addingPercentEncoding(withAllowedCharacters: .alphanumerics))
            #expect(times[99] < times[100] && times[199] < times[200])
            let window = try await Self.pages(app, "order=oldest&since=\(since)&until=\(until)")
            #expect(window.compactMap { $0["sequence"].intValue } == Array(sequences[100..<200]))
            let newestWindow = try await Self.pages(app, "limit=30&since=\(since)&until=\(until)")
            #expect(newestWindow.compactMap { $0["sequence"].intValue } == Array(sequences[100..<200].reversed()))

            // The Swift API in a route.
            let latest = try await app.get("/latest")
            #expect(latest.status == 200)
            #expect(latest.body["latest"].intValue == newest.first?["record"]["n"].intValue)
            #expect(latest.body["odd"] == 125)
            #expect(latest.body["all"] == 250)

            let similar = try await app.get("/similar")
            #expect(similar.status == 200)
            #expect(similar.body["n"].arrayValue?.compactMap(\.intValue).allSatisfy { $0 % 5 == 4 } == true)
            #expect(similar.body["n"].arrayValue?.count == 3)
            let scores = similar.body["scores"].arrayValue?.compactMap(\.doubleValue) ?? []
            #expect(scores.count == 3 && scores.allSatisfy { abs($0 - 1) < 1e-12 })

            // A storage's cursor, or none at all, is not a stream cursor.
            let storageCursor = RecordCursor(micros: 1, id: "order-1").text
            let bad = try await app.get("/v1/tables/events/records?cursor=\(storageCursor)")
            #expect(bad.status == 400 && bad.body["error"]["field"] == "cursor")
            let zero = try await app.get("/v1/tables/events/records?since_sequence=0")
            #expect(zero.status == 400 && zero.body["error"]["field"] == "since_sequence")
        }
    }

    @Test("A tenant's key reads only its own tenant's stream, by time, sequence and cursor")
    func tenants() async throws {
        let token = "stream-admin-token-0123456789"
        let configure: (inout RuntimeConfiguration) -> Void = {
            $0.adminPort = 0
            $0.adminToken = token
            $0.requireAPIKey = true
        }
        try await withRunningApp(try Self.graph(), configure: configure) { app in
            let keys = try await app.tenantsWithKeys(["acme", "globex"], adminToken: token)
            @Sendable func auth(_ tenant: String) -> [(String, String)] { keys[tenant] ?? [] }
            for (tenant, count) in [("acme", 3), ("globex", 5)] {
                let lines = (0..<count).map { #"{"n":\#($0),"owner":"\#(tenant)"}"# }.joined(separator: "\n")
                let posted = try await eventuallyValue { () -> Int? in
                    let answer = try await app.http(
                        "POST",
                        app.baseURL + "/v1/tables/events/records",
                        body: lines,
                        headers: auth(tenant) + [("Content-Type", "application/x-ndjson"), ("Idempotency-Key", "load-\(tenant)")]
                    )
                    return answer.status == 202 ? answer.status : nil
                }
                #expect(posted == 202)
            }
            for (tenant, count) in [("acme", 3), ("globex", 5)] {
                for query in ["", "?order=oldest&limit=2", "?since_sequence=1", "?since=2020-01-01T00:00:00Z"] {
                    var owners: [String] = []
                    var cursor: String?
                    repeat {
                        let separator = query.isEmpty ? "?" : "&"
                        let path = "/v1/tables/events/records" + query + (cursor.map { separator + "cursor=\($0)" } ?? "")
                        let page = try await app.http("GET", app.baseURL + path, headers: auth(tenant))
                        #expect(page.status == 200, "\(page.body)")
                        owners += page.body["records"].arrayValue?.compactMap { $0["record"]["owner"].stringValue } ?? []
                        cursor = page.body["next_cursor"].stringValue
                    } while cursor != nil
                    #expect(owners == Array(repeating: tenant, count: count), "\(tenant) \(query): \(owners)")
                }
                // The other tenant's path with this key is refused.
                let other = tenant == "acme" ? "globex" : "acme"
                let refused = try await app.http("GET", app.baseURL + "/v1/tenants/\(other)/tables/events/records", headers: auth(tenant))
                #expect(refused.status == 403)
                // No key at all.
                #expect(try await app.http("GET", app.baseURL + "/v1/tables/events/records").status == 401)
            }
        }
    }
}
