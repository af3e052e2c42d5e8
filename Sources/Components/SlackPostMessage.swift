import AsyncHTTPClient
public import ClusterCore
import Foundation
import NIOCore
import NIOHTTP1

/// Posts a message with Slack's `chat.postMessage` for every record.
///
/// `text` and `channel` are templates over the record's fields. The API base URL comes from
/// `apiURL`, else `SLACK_API_URL`, else `https://slack.com/api`. Slack answers HTTP 200 with
/// `{"ok": false, "error": …}` on failure; that is raised as an error (and retried).
///
/// With `into`, each message posted is recorded there as `{"channel", "ts", "source_id"}`
/// (Slack's channel and timestamp of the message, and the id of the record it was posted
/// for), so reactions to the message (which name its channel and `ts`) can be traced back.
public struct SlackPostMessage: Component {
    public let kind = "slack-post-message"
    public var token: Secret
    public var channel: Template
    public var text: Template
    public var threadTS: Template?
    public var apiURL: String?
    /// Where the messages posted are recorded, if anywhere.
    public var into: String?

    public init(
        token: Secret = .secret("SLACK_BOT_TOKEN"),
        channel: Template = "{channel}",
        text: Template,
        threadTS: Template? = nil,
        apiURL: String? = nil,
        into messages: (any TableReference)? = nil
    ) {
        self.token = token
        self.channel = channel
        self.text = text
        self.threadTS = threadTS
        self.apiURL = apiURL
        self.into = messages?.name
    }

    public var requiredFields: [String] { channel.fields + text.fields }
    public var produces: [String: [String]] { into.map { [$0: ["channel", "ts", "source_id"]] } ?? [:] }
    public var secrets: [Secret] { [token] }

    public func makeHandler(
        _ environment: ComponentEnvironment
    ) throws -> @Sendable (Records<JSONValue>, HandlerContext) async throws -> Void {
        let bearer = try token.resolve(in: environment.environment)
        let base = (apiURL ?? environment.environment["SLACK_API_URL"] ?? "https://slack.com/api").trimmingSuffix("/")
        guard URL(string: base) != nil else { throw ConfigurationError("SLACK_API_URL '\(base)' is not a URL") }
        let component = self
        return { records, ctx in
            for entry in records.entries {
                var body: JSONObject = [
                    "channel": .string(try component.channel.render(entry.value)),
                    "text": .string(try component.text.render(entry.value)),
                ]
                if let threadTS = component.threadTS, let ts = try? threadTS.render(entry.value) {
                    body["thread_ts"] = .string(ts)
                }
                let answer = try await component.post(body, token: bearer, base: base)
                if let into = component.into {
                    let posted: JSONValue = [
                        "channel": answer["channel"].stringValue.map(JSONValue.string) ?? body["channel"] ?? .null,
                        "ts": answer["ts"],
                        "source_id": .string(entry.metadata.id),
                    ]
                    try await ctx.append(name: into, [PendingRecord(payload: JSONWriter.encode(posted), cause: entry.metadata)])
                }
            }
        }
    }

    @discardableResult
    func post(_ body: JSONObject, token: String, base: String) async throws -> JSONValue {
        var request = HTTPClientRequest(url: base + "/chat.postMessage")
        request.method = .POST
        request.headers.add(name: "Authorization", value: "Bearer \(token)")
        request.headers.add(name: "Content-Type", value: "application/json; charset=utf-8")
        request.body = .bytes(ByteBuffer(bytes: JSONWriter.encode(.object(body))))
        let response = try await HTTPClient.shared.execute(request, timeout: .seconds(30))
        let bytes = try await response.body.collect(upTo: 1024 * 1024)
        let answer = (try? JSONParser.parse(Array(bytes.readableBytesView))) ?? .null
        guard (200..<300).contains(Int(response.status.code)), answer["ok"] == true else {
            throw ComponentError(
                component: kind,
                status: Int(response.status.code),
                message: answer["error"].stringValue ?? "chat.postMessage failed"
            )
        }
        return answer
    }
}
