import Autonomous
import Components

struct Prompt: Record {
    static let semanticType: SemanticType = "llm.prompt@1"
    var prompt: String
    var channel: String
}

struct Completion: Record {
    static let semanticType: SemanticType = "llm.completion@1"
    var prompt: String, completion: String, model: String, channel: String, source_id: String
}

@main struct SlackBotApp: AutonomousApp {
    func build(_ app: inout AppBuilder) {
        let mentions    = app.table("slack_mentions")                    // dynamic JSON records
        let prompts     = app.table("prompts", of: Prompt.self)          // typed (Codable) records
        let completions = app.table("completions", of: Completion.self)
        let reactions   = app.table("slack_reactions")

        app.post("/slack-mentions", verify: .slack(signingSecret: .secret("SLACK_SIGNING_SECRET"))) { request, ctx in
            try await mentions.append(["timestamp": .now, "payload": try request.json()], ctx)
            return .ok
        }
        mentions.onNewRecords("prompt-from-mention", writes: [prompts]) { records, ctx in
            try await prompts.append(records.map {
                Prompt(prompt: "Reply kindly to: \($0["payload"]["event"]["text"])",
                       channel: $0["payload"]["event"]["channel"].stringValue ?? "general")
            }, ctx)
        }
        prompts.onNewRecords(OpenAICompletion(into: completions, apiKey: .secret("OPENAI_API_KEY"),
                                              temperature: 0.8, passthrough: ["channel"]))
        completions.onNewRecords(SlackPostMessage(token: .secret("SLACK_BOT_TOKEN"), text: "{completion}"))
        app.webhook("/slack-reactions", into: reactions, verify: .slack(signingSecret: .secret("SLACK_SIGNING_SECRET")))
        app.schedule("rebuild-model", .daily(at: "03:00", timeZone: "UTC")) { tick, ctx in /* … */ }
    }
}
