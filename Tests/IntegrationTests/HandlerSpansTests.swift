import AsyncHTTPClient
import Autonomous
import AutonomousTesting
import Foundation
import HTTPTypes
import Hummingbird
import NIOCore
import NIOHTTP1
import Synchronization
import Testing

/// A loopback OTLP/HTTP collector: takes `POST /v1/traces` with JSON bodies as the
/// OpenTelemetry Collector does, answers the first export 503 with `Retry-After` as a busy
/// collector would, and remembers the spans and the headers it was sent.
final class FakeCollector: Sendable {
    struct Span: Sendable {
        var name: String
        var traceID: String
        var spanID: String
        var parentSpanID: String?
        var kind: Int
        var attributes: [String: JSONValue]
        var service: String?
    }

    let spans = Mutex<[Span]>([])
    let apiKeys = Mutex<[String?]>([])
    let refusals = Mutex(0)
    let refuseFirst: Int

    init(refuseFirst: Int) { self.refuseFirst = refuseFirst }

    func router() -> Router<BasicRequestContext> {
        let router = Router()
        add(to: router)
        return router
    }

    /// Serves `POST /v1/traces` on `router`.
    func add(to router: Router<BasicRequestContext>) {
        router.post("/v1/traces") { request, _ -> Response in
            let refuse = self.refusals.withLock { count -> Bool in
                guard count < self.refuseFirst else { return false }
                count += 1
                return true
            }
            if refuse { return Response(status: .serviceUnavailable, headers: [.retryAfter: "1"]) }
            guard request.headers[.contentType] == "application/json" else { return Response(status: .unsupportedMediaType) }
            let body = try await request.body.collect(upTo: 8 << 20)
            let json = try JSONParser.parse(Array(body.readableBytesView))
            self.apiKeys.withLock { $0.append(request.headers[HTTPField.Name("x-api-key")!]) }
            var received: [Span] = []
            for resourceSpans in json["resourceSpans"].arrayValue ?? [] {
                let service = (resourceSpans["resource"]["attributes"].arrayValue ?? [])
                    .first { $0["key"] == "service.name" }?["value"]["stringValue"].stringValue
                for scope in resourceSpans["scopeSpans"].arrayValue ?? [] {
                    for span in scope["spans"].arrayValue ?? [] {
                        var attributes: [String: JSONValue] = [:]
                        for attribute in span["attributes"].arrayValue ?? [] {
                            if let key = attribute["key"].stringValue { attributes[key] = attribute["value"] }
                        }
                        received.append(
                            Span(
                                name: span["name"].stringValue ?? "",
                                traceID: span["traceId"].stringValue ?? "",
                                spanID: span["spanId"].stringValue ?? "",
                                parentSpanID: span["parentSpanId"].stringValue,
                                kind: span["kind"].intValue ?? 0,
                                attributes: attributes,
                                service: service
                            )
                        )
                    }
                }
            }
            self.spans.withLock { $0.append(contentsOf: received) }
            return Response(status: .ok, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(string: "{}")))
        }
    }

    func spans(inTrace trace: String) -> [Span] {
        spans.withLock { $0.filter { $0.traceID == trace } }
    }
}

@Suite("Handler spans exported over OTLP", .serialized)
struct HandlerSpansTests {
    static let traceID = "4bf92f3577b34da6a3ce929d0e0e4736"
    static let secondTraceID = "0af7651916cd43dd8448eb211c80319c"

    /// Runs `body` with `router` served on a loopback port (fake collector and APIs) and a data
    /// directory for a `dev` process, removed afterwards.
    func withFakeServer(
        _ router: Router<BasicRequestContext>,
        _ body: (_ port: Int, _ dataDirectory: String) async throws -> Void
    ) async throws {
        let (portStream, portContinuation) = AsyncStream.makeStream(of: Int.self)
        let server = Application(
            router: router,
            configuration: .init(address: .hostname("127.0.0.1", port: 0)),
            onServerRunning: { channel in portContinuation.yield(channel.localAddress!.port!) },
            logger: TestNATSServer.logger
        )
        let dataDirectory = FileManager.default.temporaryDirectory.appendingPathComponent("aut-spans-\(UUID().uuidString)").path
        defer {
            for path in [dataDirectory, dataDirectory + ".stdout", dataDirectory + ".stderr"] {
                try? FileManager.default.removeItem(atPath: path)
            }
        }
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await server.run() }
            var ports = portStream.makeAsyncIterator()
            let port = try #require(await ports.next())
            try await body(port, dataDirectory)
            group.cancelAll()
        }
    }

    func post(_ url: String, _ body: String, traceparent: String) async throws -> Int {
        var request = HTTPClientRequest(url: url)
        request.method = .POST
        request.headers.add(name: "Content-Type", value: "application/json")
        request.headers.add(name: "traceparent", value: traceparent)
        request.body = .bytes(ByteBuffer(string: body))
        return Int(try await HTTPClient.shared.execute(request, timeout: .seconds(30)).status.code)
    }

    @Test(
        "OrderFlow dev with OTEL_EXPORTER_OTLP_ENDPOINT: each handler run is a span in the caller's trace, outputs carry it on, a busy collector gets the batch again, and shutdown sends the rest"
    )
    func handlerSpans() async throws {
        let collector = FakeCollector(refuseFirst: 1)
        try await withFakeServer(collector.router()) { collectorPort, dataDirectory in
            let apiKey = "otlp-key-6f0e2d4c9b"
            let dev = try DevModeTests.DevProcess(
                dataDirectory: dataDirectory,
                environment: [
                    "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:\(collectorPort)",
                    "OTEL_EXPORTER_OTLP_HEADERS": "x-api-key=\(apiKey)",
                    // Sent when three spans wait, or at shutdown: never by the clock in this test.
                    "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "3",
                    "OTEL_BSP_SCHEDULE_DELAY": "600000",
                ],
                logLevel: "info"
            )
            let (port, natsURL) = try await dev.waitForBanner()
            let url = "http://127.0.0.1:\(port)/v1/tables/orders/records"
            let order = #"{"order_id":"T-1","customer":"ada","items":[{"sku":"tv","quantity":1,"unit_price":1500}]}"#
            #expect(try await post(url, order, traceparent: "00-\(Self.traceID)-00f067aa0ba902b7-01") == 202)
            // The enriched order carries the trace on, with the handler run's span as parent.
            let enriched = try await DevModeTests().enrichedOrders(natsURL: natsURL, atLeast: 1)
            let carried = try #require(enriched.first?.headers["traceparent"])
            #expect(carried.hasPrefix("00-\(Self.traceID)-") && carried.hasSuffix("-01"))
            #expect(!carried.contains("00f067aa0ba902b7"), "the output's parent is the handler's span, not the caller's")

            let second = #"{"order_id":"T-2","customer":"bob","items":[{"sku":"pen","quantity":2,"unit_price":3}]}"#
            #expect(try await post(url, second, traceparent: "00-\(Self.secondTraceID)-b7ad6b7169203331-01") == 202)
            // Four spans: three go in the first export (refused once, then sent again), the
            // last one waits for the shutdown.
            #expect(try await eventually { collector.spans.withLock { $0.count } >= 3 })
            #expect(collector.refusals.withLock { $0 } == 1)
            let status = await dev.stop(signal: SIGTERM)
            #expect(status == 0, "\((try? String(contentsOfFile: dev.errors, encoding: .utf8)) ?? "")")
            #expect(try await eventually { collector.spans(inTrace: Self.secondTraceID).count == 2 }, "the last span was sent at shutdown")

            let first = collector.spans(inTrace: Self.traceID)
            let enrich = try #require(first.first { $0.name == "process orders" })
            #expect(enrich.parentSpanID == "00f067aa0ba902b7", "a child of the caller's span")
            #expect(enrich.kind == 5, "a consumer span")
            #expect(enrich.attributes["autonomous.handler"]?["stringValue"] == "enrich-orders")
            #expect(enrich.attributes["messaging.system"]?["stringValue"] == "nats")
            #expect(enrich.attributes["messaging.destination.name"]?["stringValue"] == "orders")
            #expect(enrich.attributes["autonomous.outputs"]?["intValue"] == "1")
            #expect(enrich.service == "OrderFlow-all")
            #expect(carried == "00-\(Self.traceID)-\(enrich.spanID)-01")
            let flag = try #require(first.first { $0.name == "process enriched_orders" })
            #expect(flag.parentSpanID == enrich.spanID, "the next handler's span is a child of the first's")
            #expect(flag.attributes["autonomous.handler"]?["stringValue"] == "flag-high-value")
            let secondSpans = collector.spans(inTrace: Self.secondTraceID)
            #expect(Set(secondSpans.map(\.name)) == ["process orders", "process enriched_orders"])
            #expect(
                collector.spans.withLock { $0.allSatisfy { $0.name.hasPrefix("process ") } },
                "only handler spans: the exporter's own requests are not traced (they would be exported in turn, for ever)"
            )
            #expect(collector.apiKeys.withLock { $0.allSatisfy { $0 == apiKey } && !$0.isEmpty })

            let logs =
                ((try? String(contentsOfFile: dev.output, encoding: .utf8)) ?? "")
                + ((try? String(contentsOfFile: dev.errors, encoding: .utf8)) ?? "")
            #expect(!logs.contains(apiKey), "the exporter's header is never logged")
        }
    }

    @Test("SlackBot dev: a mention's trace runs through the route, every handler, and the components' HTTP calls to OpenAI and Slack")
    func componentSpans() async throws {
        let fakes = FakeAPIs(answer: "Traced answer")
        let collector = FakeCollector(refuseFirst: 0)
        let router = fakes.router()
        collector.add(to: router)
        try await withFakeServer(router) { fakePort, dataDirectory in
            let dev = try DevModeTests.DevProcess(
                dataDirectory: dataDirectory,
                app: "SlackBot",
                environment: [
                    "OPENAI_API_KEY": "sk-test-key",
                    "OPENAI_BASE_URL": "http://127.0.0.1:\(fakePort)/v1",
                    "SLACK_BOT_TOKEN": "xoxb-test-token",
                    "SLACK_API_URL": "http://127.0.0.1:\(fakePort)/api",
                    "SLACK_SIGNING_SECRET": "signing-secret",
                    "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:\(fakePort)",
                    "OTEL_BSP_SCHEDULE_DELAY": "100",
                ]
            )
            let (port, _) = try await dev.waitForBanner()
            let mention =
                #"{"type":"event_callback","event":{"type":"app_mention","text":"<@U1> trace me","channel":"C9","ts":"1700000000.000002"}}"#
            var request = HTTPClientRequest(url: "http://127.0.0.1:\(port)/slack-mentions")
            request.method = .POST
            request.headers.add(name: "Content-Type", value: "application/json")
            request.headers.add(name: "traceparent", value: "00-\(Self.traceID)-00f067aa0ba902b7-01")
            for (name, value) in SlackBotTests.slackHeaders(mention) { request.headers.add(name: name, value: value) }
            request.body = .bytes(ByteBuffer(string: mention))
            #expect(try await HTTPClient.shared.execute(request, timeout: .seconds(30)).status.code == 200)
            #expect(try await eventually { fakes.slackMessages.withLock { !$0.isEmpty } })
            // Handlers: mention → prompt → completion (OpenAI call) → Slack message (Slack call).
            let names = ["process slack_mentions", "process prompts", "process completions"]
            #expect(try await eventually { Set(collector.spans(inTrace: Self.traceID).map(\.name)).isSuperset(of: names) })
            #expect(try await eventually { collector.spans(inTrace: Self.traceID).filter { $0.kind == 3 }.count >= 2 })
            #expect(await dev.stop(signal: SIGTERM) == 0)

            let spans = collector.spans(inTrace: Self.traceID)
            let byName = Dictionary(spans.map { ($0.name, $0) }, uniquingKeysWith: { first, _ in first })
            let mentions = try #require(byName["process slack_mentions"])
            let prompts = try #require(byName["process prompts"])
            let completions = try #require(byName["process completions"])
            #expect(mentions.parentSpanID == "00f067aa0ba902b7", "the route's record carried the request's trace")
            #expect(prompts.parentSpanID == mentions.spanID)
            #expect(completions.parentSpanID == prompts.spanID)
            let clientSpans = spans.filter { $0.kind == 3 }
            #expect(
                clientSpans.contains { $0.parentSpanID == prompts.spanID },
                "the OpenAI call is a child of the completion handler's span"
            )
            #expect(clientSpans.contains { $0.parentSpanID == completions.spanID }, "the Slack call is a child of the Slack handler's span")
        }
    }

    @Test("A malformed OpenTelemetry variable stops the process naming it")
    func badVariables() async throws {
        let binary = DevModeTests.packageRoot.appendingPathComponent(".build/debug/OrderFlow").path
        let (status, output) = try await runProgram(
            binary,
            ["ingress", "--nats-url", "nats://127.0.0.1:1"],
            environment: ["OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"]
        )
        #expect(status != 0 && output.contains("OTEL_EXPORTER_OTLP_PROTOCOL 'grpc' is not supported"), "\(output)")
    }
}
