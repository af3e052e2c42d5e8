import AsyncHTTPClient
public import ClusterCore
import Foundation
import NIOCore
import NIOHTTP1

/// Chat completion through any OpenAI-compatible API (`POST {base}/chat/completions`).
///
/// The base URL comes from `baseURL`, else the `OPENAI_BASE_URL` environment variable, else
/// `https://api.openai.com/v1`, so self-hosted OpenAI-compatible servers work too. Each input
/// record's prompt (the `prompt` field, or a template over its fields) becomes one user
/// message; the answer is written to `into` as `{prompt, completion, model, source_id}` plus
/// the `passthrough` fields copied from the input. The record id is sent as `Idempotency-Key`.
public struct OpenAICompletion: Component {
    public let kind = "openai-completion"
    public var output: String
    public var apiKey: Secret
    public var model: String
    public var temperature: Double
    public var prompt: Template
    public var systemPrompt: String?
    public var maxTokens: Int?
    public var passthrough: [String]
    public var baseURL: String?
    public var timeout: Duration

    public init<Row: Record>(
        into output: Table<Row>,
        apiKey: Secret = .secret("OPENAI_API_KEY"),
        model: String = "gpt-4o-mini",
        temperature: Double = 0.7,
        prompt: Template = "{prompt}",
        systemPrompt: String? = nil,
        maxTokens: Int? = nil,
        passthrough: [String] = [],
        baseURL: String? = nil,
        timeout: Duration = .seconds(60)
    ) {
        self.output = output.name
        self.apiKey = apiKey
        self.model = model
        self.temperature = temperature
        self.prompt = prompt
        self.systemPrompt = systemPrompt
        self.maxTokens = maxTokens
        self.passthrough = passthrough
        self.baseURL = baseURL
        self.timeout = timeout
    }

    public var requiredFields: [String] { prompt.fields }
    public var produces: [String: [String]] { [output: ["prompt", "completion", "model", "source_id"] + passthrough] }
    public var secrets: [Secret] { [apiKey] }

    public func makeHandler(
        _ environment: ComponentEnvironment
    ) throws -> @Sendable (Records<JSONValue>, HandlerContext) async throws -> Void {
        let key = try apiKey.resolve(in: environment.environment)
        let base = (baseURL ?? environment.environment["OPENAI_BASE_URL"] ?? "https://api.openai.com/v1").trimmingSuffix("/")
        guard URL(string: base) != nil else { throw ConfigurationError("OPENAI_BASE_URL '\(base)' is not a URL") }
        let component = self
        return { records, ctx in
            let table = TableRef(name: component.output)
            for entry in records.entries {
                let text = try component.prompt.render(entry.value)
                let completion = try await component.complete(text, key: key, base: base, idempotencyKey: entry.id)
                var out: JSONObject = [
                    "prompt": .string(text),
                    "completion": .string(completion.text),
                    "model": .string(completion.model),
                    "source_id": .string(entry.id),
                ]
                for field in component.passthrough where !entry.value[field].isNull {
                    out[field] = entry.value[field]
                }
                try await table.append(.object(out), causedBy: entry.metadata, ctx)
            }
        }
    }

    struct Completion {
        var text: String
        var model: String
    }

    func complete(_ prompt: String, key: String, base: String, idempotencyKey: String) async throws -> Completion {
        var messages: [JSONValue] = []
        if let systemPrompt { messages.append(["role": "system", "content": .string(systemPrompt)]) }
        messages.append(["role": "user", "content": .string(prompt)])
        var body: JSONObject = [
            "model": .string(model),
            "messages": .array(messages),
            "temperature": .double(temperature),
        ]
        if let maxTokens { body["max_tokens"] = .int(Int64(maxTokens)) }
        var request = HTTPClientRequest(url: base + "/chat/completions")
        request.method = .POST
        request.headers.add(name: "Authorization", value: "Bearer \(key)")
        request.headers.add(name: "Content-Type", value: "application/json")
        request.headers.add(name: "Idempotency-Key", value: idempotencyKey)
        request.body = .bytes(ByteBuffer(bytes: JSONWriter.encode(.object(body))))
        let response = try await HTTPClient.shared.execute(request, timeout: .seconds(timeout.components.seconds))
        let bytes = try await response.body.collect(upTo: 8 * 1024 * 1024)
        let answer = (try? JSONParser.parse(Array(bytes.readableBytesView))) ?? .null
        guard (200..<300).contains(Int(response.status.code)) else {
            let message = answer["error"]["message"].stringValue ?? "HTTP \(response.status.code)"
            throw ComponentError(component: kind, status: Int(response.status.code), message: message)
        }
        guard let text = answer["choices"][0]["message"]["content"].stringValue else {
            throw ComponentError(component: kind, status: Int(response.status.code), message: "response has no choices[0].message.content")
        }
        return Completion(text: text, model: answer["model"].stringValue ?? model)
    }
}

/// A remote API refused or failed a component's call. Never contains credentials.
public struct ComponentError: Error, Sendable, CustomStringConvertible {
    public var component: String
    public var status: Int
    public var message: String
    public var description: String { "\(component): \(message) (HTTP \(status))" }
}

/// A table addressed by name from inside a component (outputs are checked at startup).
struct TableRef {
    let name: String

    func append(_ value: JSONValue, causedBy cause: RecordMetadata, _ ctx: HandlerContext) async throws {
        try await ctx.append(name: name, [PendingRecord(payload: JSONWriter.encode(value), cause: cause)])
    }
}

extension String {
    func trimmingSuffix(_ suffix: String) -> String {
        var s = self
        while s.hasSuffix(suffix) { s.removeLast(suffix.count) }
        return s
    }
}
