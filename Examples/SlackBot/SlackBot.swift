import Autonomous
import Components

// The quick start of the original README in Swift: answer Slack mentions with an OpenAI
// completion, and keep reactions for feedback modelling.
//
// Needs OPENAI_API_KEY, SLACK_BOT_TOKEN and SLACK_SIGNING_SECRET in the environment
// (OPENAI_BASE_URL and SLACK_API_URL point it at compatible or fake servers).

struct Prompt: Record {
    static let semanticType: SemanticType = "llm.prompt@1"
    var prompt: String
    var channel: String
    var thread_ts: String?
}

struct Completion: Record {
    static let semanticType: SemanticType = "llm.completion@1"
    var prompt: String
    var completion: String
    var model: String
    var channel: String
    var source_id: String
}

@main
struct SlackBotApp: AutonomousApp {
    var name: String { "SlackBot" }

    func build(_ app: inout AppBuilder) {
        let mentions = app.table("slack_mentions")
        let prompts = app.table("prompts", of: Prompt.self)
        let completions = app.table("completions", of: Completion.self)
        let reactions = app.table("slack_reactions")
        let modelBuilds = app.table("model_builds")

        // Slack's Events API posts mentions of the bot here, signed with the app's signing secret.
        app.post("/slack-mentions", verify: .slack(signingSecret: .secret("SLACK_SIGNING_SECRET"))) { request, ctx in
            let payload = try request.json()
            if payload["type"] == "url_verification" { return .json(["challenge": payload["challenge"]]) }
            try await mentions.append(["timestamp": .now, "payload": payload], ctx)
            return .ok
        }

        // React to mentions in real time.
        mentions.onNewRecords("prompt-from-mention", writes: [prompts]) { records, ctx in
            try await prompts.append(
                records.map {
                    Prompt(
                        prompt: "Respond to the following message with a friendly reply: \($0["payload"]["event"]["text"])",
                        channel: $0["payload"]["event"]["channel"].stringValue ?? "general",
                        thread_ts: $0["payload"]["event"]["ts"].stringValue
                    )
                },
                ctx
            )
        }

        // Pre-built components: completion, then a Slack message with it.
        prompts.onNewRecords(
            OpenAICompletion(into: completions, apiKey: .secret("OPENAI_API_KEY"), temperature: 0.8, passthrough: ["channel", "thread_ts"])
        )
        completions.onNewRecords(SlackPostMessage(token: .secret("SLACK_BOT_TOKEN"), channel: "{channel}", text: "{completion}"))

        // Capture reactions to the posts for feedback modelling (signed by Slack).
        app.webhook("/slack-reactions", into: reactions, verify: .slack(signingSecret: .secret("SLACK_SIGNING_SECRET")))

        // Rebuild the fine-tuned model once a day.
        app.schedule("rebuild-model", .daily(at: "03:00", timeZone: "UTC"), writes: [modelBuilds]) { tick, ctx in
            try await modelBuilds.append(["requested_for": .string(tick.fireTime), "status": "requested"], ctx)
        }
    }
}
