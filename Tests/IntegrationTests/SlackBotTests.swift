import AsyncHTTPClient
import Autonomous
import AutonomousTesting
import ClusterCore
import Foundation
import HTTPTypes
import Hummingbird
import NIOCore
import Synchronization
import Testing

@testable import SlackBot

/// Loopback stand-ins for the OpenAI and Slack HTTP APIs that speak their real formats and
/// remember what they were sent.
final class FakeAPIs: Sendable {
    let completionRequests = Mutex<[(authorization: String?, body: JSONValue)]>([])
    let slackMessages = Mutex<[(authorization: String?, body: JSONValue)]>([])
    let answer: String

    init(answer: String) { self.answer = answer }

    func router() -> Router<BasicRequestContext> {
        let router = Router()
        router.post("/v1/chat/completions") { request, _ -> Response in
            let body = try await request.body.collect(upTo: 1 << 20)
            let value = try JSONParser.parse(Array(body.readableBytesView))
            self.completionRequests.withLock { $0.append((request.headers[.authorization], value)) }
            let reply: JSONValue = [
                "id": "chatcmpl-test", "object": "chat.completion", "created": 1_700_000_000, "model": "gpt-4o-mini-2024-07-18",
                "choices": [["index": 0, "message": ["role": "assistant", "content": .string(self.answer)], "finish_reason": "stop"]],
                "usage": ["prompt_tokens": 20, "completion_tokens": 5, "total_tokens": 25],
            ]
            return Response(
                status: .ok,
                headers: [.contentType: "application/json"],
                body: .init(byteBuffer: ByteBuffer(bytes: JSONWriter.encode(reply)))
            )
        }
        router.post("/api/chat.postMessage") { request, _ -> Response in
            let body = try await request.body.collect(upTo: 1 << 20)
            let value = try JSONParser.parse(Array(body.readableBytesView))
            self.slackMessages.withLock { $0.append((request.headers[.authorization], value)) }
            let reply: JSONValue = ["ok": true, "channel": value["channel"], "ts": "1700000000.000100", "message": ["text": value["text"]]]
            return Response(
                status: .ok,
                headers: [.contentType: "application/json"],
                body: .init(byteBuffer: ByteBuffer(bytes: JSONWriter.encode(reply)))
            )
        }
        return router
    }
}

@Suite("SlackBot example end to end against fake OpenAI and Slack", .serialized)
struct SlackBotTests {
    /// The headers Slack signs a request with (`v0` HMAC-SHA256 of timestamp and body).
    static func slackHeaders(_ body: String, secret: String = "signing-secret") -> [(String, String)] {
        let timestamp = String(Int(Date().timeIntervalSince1970))
        return [
            ("X-Slack-Request-Timestamp", timestamp),
            ("X-Slack-Signature", WebhookVerification.slackSignature(secret: secret, timestamp: timestamp, body: Array(body.utf8))),
        ]
    }

    /// Runs `body` with the fakes serving on a loopback port, and the environment that points
    /// SlackBot at them.
    static func withFakes(answer: String, _ body: (FakeAPIs, [String: String]) async throws -> Void) async throws {
        let fakes = FakeAPIs(answer: answer)
        let (portStream, portContinuation) = AsyncStream.makeStream(of: Int.self)
        let fakeServer = Application(
            router: fakes.router(),
            configuration: .init(address: .hostname("127.0.0.1", port: 0)),
            onServerRunning: { channel in portContinuation.yield(channel.localAddress!.port!) },
            logger: TestNATSServer.logger
        )
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await fakeServer.run() }
            var ports = portStream.makeAsyncIterator()
            let fakePort = try #require(await ports.next())
            let environment = [
                "OPENAI_API_KEY": "sk-test-key",
                "OPENAI_BASE_URL": "http://127.0.0.1:\(fakePort)/v1",
                "SLACK_BOT_TOKEN": "xoxb-test-token",
                "SLACK_API_URL": "http://127.0.0.1:\(fakePort)/api",
                "SLACK_SIGNING_SECRET": "signing-secret",
            ]
            try await body(fakes, environment)
            group.cancelAll()
        }
    }

    @Test("A Slack mention becomes a prompt, a completion and a Slack message with the completion text")
    func mentionToSlackMessage() async throws {
        try await Self.withFakes(answer: "Happy to help, friend!") { fakes, environment in
            try await withRunningApp(try SlackBotApp.graph(), environment: environment) { app in
                let mention =
                    #"{"type":"event_callback","event":{"type":"app_mention","text":"<@U1> how do I deploy?","channel":"C123","ts":"1700000000.000001"}}"#
                // Before the fix anyone could post a mention: the route had no verification.
                let unsigned = try await app.post("/slack-mentions", body: mention)
                #expect(unsigned.status == 401 && unsigned.body["error"]["code"] == "invalid_signature")
                let forged = try await app.post(
                    "/slack-mentions",
                    body: mention,
                    headers: Self.slackHeaders(mention, secret: "wrong-secret")
                )
                #expect(forged.status == 401)
                let response = try await app.post("/slack-mentions", body: mention, headers: Self.slackHeaders(mention))
                #expect(response.status == 200)

                let delivered = try await eventually { fakes.slackMessages.withLock { !$0.isEmpty } }
                #expect(delivered)
                let message = try #require(fakes.slackMessages.withLock { $0.first })
                #expect(message.body["text"] == "Happy to help, friend!")
                #expect(message.body["channel"] == "C123")
                #expect(message.authorization == "Bearer xoxb-test-token")

                let request = try #require(fakes.completionRequests.withLock { $0.first })
                #expect(request.authorization == "Bearer sk-test-key")
                #expect(request.body["messages"][0]["role"] == "user")
                #expect(request.body["messages"][0]["content"].stringValue?.contains("how do I deploy?") == true)
                #expect(request.body["temperature"].doubleValue == 0.8)

                let completions = try await app.records(in: "completions", atLeast: 1)
                #expect(completions.count == 1)
                let completion = try JSONParser.parse(try #require(completions.first).payload)
                #expect(completion["completion"] == "Happy to help, friend!")
                #expect(completion["channel"] == "C123")
                // The Slack challenge handshake is answered without storing anything.
                let handshake = #"{"type":"url_verification","challenge":"abc123"}"#
                let challenge = try await app.post("/slack-mentions", body: handshake, headers: Self.slackHeaders(handshake))
                #expect(challenge.body["challenge"] == "abc123")
                // One message per mention: nothing was sent twice.
                try await Task.sleep(for: .milliseconds(300))
                #expect(fakes.slackMessages.withLock { $0.count } == 1)
            }
        }
    }

    @Test("The daily model build reads the day's completions, posts and reactions, and scores each prompt")
    func dailyFeedback() async throws {
        try await Self.withFakes(answer: "Use autonomous deploy.") { fakes, environment in
            let adminToken = "test-admin-token-0123456789"
            let configure: (inout RuntimeConfiguration) -> Void = {
                $0.keepUnboundTablesInSQLite = true
                $0.adminPort = 0
                $0.adminToken = adminToken
            }
            try await withRunningApp(try SlackBotApp.graph(), environment: environment, configure: configure) { app in
                let mention =
                    #"{"type":"event_callback","event":{"type":"app_mention","text":"<@U1> how do I deploy?","channel":"C123","ts":"1700000000.000001"}}"#
                #expect(try await app.post("/slack-mentions", body: mention, headers: Self.slackHeaders(mention)).status == 200)
                // The bot's answer is posted and recorded with Slack's ts for it.
                let posted = try await app.records(in: "slack_posts", atLeast: 1)
                let post = try JSONParser.parse(posted[0].payload)
                #expect(post["ts"] == "1700000000.000100")
                #expect(post["channel"] == "C123")
                // People react to it: two likes and a dislike, and one reaction elsewhere.
                for (n, (reaction, ts)) in [
                    ("thumbsup", "1700000000.000100"), ("heart", "1700000000.000100"), ("thumbsdown", "1700000000.000100"),
                    ("thumbsup", "1699999999.000001"),
                ].enumerated() {
                    let event =
                        #"{"type":"event_callback","event_id":"Ev\#(n)","event":{"type":"reaction_added","reaction":"\#(reaction)","item":{"type":"message","channel":"C123","ts":"\#(ts)"}}}"#
                    #expect(try await app.post("/slack-reactions", body: event, headers: Self.slackHeaders(event)).status == 200)
                }
                // Once the tables are kept, an operator runs the daily build now.
                let kept = try await eventually(timeout: .seconds(30)) {
                    let reactions = try await app.get("/v1/tables/slack_reactions/records").body["records"].arrayValue?.count
                    let posts = try await app.get("/v1/tables/slack_posts/records").body["records"].arrayValue?.count
                    let completions = try await app.get("/v1/tables/completions/records").body["records"].arrayValue?.count
                    return reactions == 4 && posts == 1 && completions == 1
                }
                #expect(kept)
                let trigger = try await app.http(
                    "POST",
                    app.adminURL + "/v1/admin/tenants/default/schedules/rebuild-model/trigger",
                    headers: [("Authorization", "Bearer \(adminToken)")]
                )
                #expect((200..<300).contains(trigger.status), "\(trigger.body)")
                let feedback = try await app.records(in: "prompt_feedback", atLeast: 1)
                #expect(feedback.count == 1)
                let summary = try JSONDecoder().decode(PromptFeedback.self, from: Data(feedback[0].payload))
                #expect(summary.prompt.contains("how do I deploy?"))
                #expect(summary.completions == 1)
                #expect(summary.positive == 2)
                #expect(summary.negative == 1)
                #expect(abs(summary.score - 1.0 / 3.0) < 1e-9)
                let builds = try await app.records(in: "model_builds", atLeast: 1)
                #expect(try JSONParser.parse(builds[0].payload)["prompts"] == 1)
            }
        }
    }

    @Test("A missing secret fails at startup and names the variable")
    func missingSecret() async throws {
        let error = await #expect(throws: ConfigurationError.self) {
            try await withRunningApp(try SlackBotApp.graph(), environment: ["SLACK_SIGNING_SECRET": "x", "SLACK_BOT_TOKEN": "y"]) { _ in }
        }
        #expect(error?.message.contains("OPENAI_API_KEY") == true)
    }
}
