import Autonomous
import Components
import Foundation

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

/// How one prompt's answers were received on one day: the daily model build's output.
struct PromptFeedback: Record {
    static let semanticType: SemanticType = "llm.prompt.feedback@1"
    /// The UTC day the feedback is about (`2026-12-07`).
    var day: String
    var prompt: String
    var completions: Int
    var positive: Int
    var negative: Int
    /// (positive − negative) / reactions, 0 with no reaction.
    var score: Double
}

/// What the feedback counts as liked and disliked (Slack's reaction names).
enum Reactions {
    static let positive: Set<String> = ["+1", "thumbsup", "heart", "tada", "white_check_mark", "raised_hands", "star-struck"]
    static let negative: Set<String> = ["-1", "thumbsdown", "x", "confused", "disappointed"]
}

@main
struct SlackBotApp: AutonomousApp {
    var name: String { "SlackBot" }

    func build(_ app: inout AppBuilder) {
        let mentions = app.table("slack_mentions")
        let prompts = app.table("prompts", of: Prompt.self)
        let completions = app.table("completions", of: Completion.self)
        let reactions = app.table("slack_reactions")
        let posts = app.table("slack_posts")
        let feedback = app.table("prompt_feedback", of: PromptFeedback.self)
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
        completions.onNewRecords(
            SlackPostMessage(token: .secret("SLACK_BOT_TOKEN"), channel: "{channel}", text: "{completion}", into: posts)
        )

        // Capture reactions to the posts for feedback modelling (signed by Slack).
        app.webhook("/slack-reactions", into: reactions, verify: .slack(signingSecret: .secret("SLACK_SIGNING_SECRET")))

        // Once a day, build the response model from the day's completions and the reactions to
        // them (the quick start's `build_response_model(completions, slack_reactions)`): a
        // reaction names the message it is on (channel and ts), the message names the
        // completion it posted, the completion its prompt. One feedback record per prompt.
        app.schedule("rebuild-model", .daily(at: "03:00", timeZone: "UTC"), writes: [feedback, modelBuilds]) { tick, ctx in
            let until = tick.fireDate ?? Date()
            let since = until.addingTimeInterval(-86_400)
            var promptOf: [String: String] = [:]  // completion id → prompt
            var completionsPerPrompt: [String: Int] = [:]
            var cursor: String?
            repeat {
                let page = try await completions.records(since: since, until: until, limit: 1_000, cursor: cursor, ctx)
                for entry in page.entries {
                    promptOf[entry.metadata.id] = entry.value.prompt
                    completionsPerPrompt[entry.value.prompt, default: 0] += 1
                }
                cursor = page.nextCursor
            } while cursor != nil
            var completionOf: [String: String] = [:]  // "channel ts" → completion id
            repeat {
                let page = try await posts.records(since: since, until: until, limit: 1_000, cursor: cursor, ctx)
                for entry in page.entries {
                    guard let channel = entry.value["channel"].stringValue, let ts = entry.value["ts"].stringValue,
                        let source = entry.value["source_id"].stringValue
                    else { continue }
                    completionOf[channel + " " + ts] = source
                }
                cursor = page.nextCursor
            } while cursor != nil
            var votes: [String: (positive: Int, negative: Int)] = [:]
            repeat {
                let page = try await reactions.records(since: since, until: until, limit: 1_000, cursor: cursor, ctx)
                for entry in page.entries {
                    let event = entry.value["event"]
                    guard event["type"] == "reaction_added", let name = event["reaction"].stringValue,
                        let channel = event["item"]["channel"].stringValue, let ts = event["item"]["ts"].stringValue,
                        let completion = completionOf[channel + " " + ts], let prompt = promptOf[completion]
                    else { continue }
                    if Reactions.positive.contains(name) { votes[prompt, default: (0, 0)].positive += 1 }
                    if Reactions.negative.contains(name) { votes[prompt, default: (0, 0)].negative += 1 }
                }
                cursor = page.nextCursor
            } while cursor != nil
            let day = String(tick.fireTime.prefix(10))
            for prompt in completionsPerPrompt.keys.sorted() {
                let (positive, negative) = votes[prompt] ?? (0, 0)
                let total = positive + negative
                try await feedback.append(
                    PromptFeedback(
                        day: day,
                        prompt: prompt,
                        completions: completionsPerPrompt[prompt] ?? 0,
                        positive: positive,
                        negative: negative,
                        score: total == 0 ? 0 : Double(positive - negative) / Double(total)
                    ),
                    ctx
                )
            }
            try await modelBuilds.append(
                ["requested_for": .string(tick.fireTime), "status": "built", "prompts": .int(Int64(completionsPerPrompt.count))],
                ctx
            )
        }
    }
}
