public import ClusterCore
import Foundation

/// The components an app in another language names in its graph (`component` and
/// `component_config` of a handler; docs/python.md, "Components"): the Swift runtime builds
/// them from their configuration and runs them in its workers.
package enum ComponentCatalog {
    /// The kinds that can be built from a configuration.
    package static let kinds = ["openai-completion", "slack-post-message"]

    /// Builds the component `kind` from its configuration; throws naming the field at fault.
    package static func make(kind: String, configuration: JSONValue) throws(ConfigurationError) -> any Component {
        guard case .object(let settings) = configuration else {
            throw ConfigurationError("component \(kind): component_config must be a JSON object")
        }
        let reader = Settings(kind: kind, values: settings)
        switch kind {
        case "openai-completion":
            var component = OpenAICompletion(outputName: try reader.string("into"))
            component.apiKey = .secret(try reader.optionalString("api_key_secret") ?? "OPENAI_API_KEY")
            if let model = try reader.optionalString("model") { component.model = model }
            if let temperature = try reader.optionalNumber("temperature") { component.temperature = temperature }
            if let prompt = try reader.optionalString("prompt") { component.prompt = Template(prompt) }
            component.systemPrompt = try reader.optionalString("system_prompt")
            component.maxTokens = try reader.optionalNumber("max_tokens").map { Int($0) }
            component.passthrough = try reader.optionalStrings("passthrough") ?? []
            component.baseURL = try reader.optionalString("base_url")
            if let seconds = try reader.optionalNumber("timeout_seconds") { component.timeout = .seconds(seconds) }
            return component
        case "slack-post-message":
            var component = SlackPostMessage(text: Template(try reader.string("text")))
            component.token = .secret(try reader.optionalString("token_secret") ?? "SLACK_BOT_TOKEN")
            if let channel = try reader.optionalString("channel") { component.channel = Template(channel) }
            component.threadTS = try reader.optionalString("thread_ts").map { Template($0) }
            component.apiURL = try reader.optionalString("api_url")
            component.into = try reader.optionalString("into")
            return component
        default:
            throw ConfigurationError("unknown component '\(kind)'; this build has \(kinds.joined(separator: ", "))")
        }
    }

    private struct Settings {
        var kind: String
        var values: JSONObject

        func string(_ key: String) throws(ConfigurationError) -> String {
            guard let value = try optionalString(key) else {
                throw ConfigurationError("component \(kind): component_config.\(key) is required")
            }
            return value
        }

        func optionalString(_ key: String) throws(ConfigurationError) -> String? {
            switch values[key] {
            case nil, .null?: return nil
            case .string(let text)?: return text
            default: throw ConfigurationError("component \(kind): component_config.\(key) must be a string")
            }
        }

        func optionalNumber(_ key: String) throws(ConfigurationError) -> Double? {
            switch values[key] {
            case nil, .null?: return nil
            case let value?:
                guard let number = value.doubleValue else {
                    throw ConfigurationError("component \(kind): component_config.\(key) must be a number")
                }
                return number
            }
        }

        func optionalStrings(_ key: String) throws(ConfigurationError) -> [String]? {
            switch values[key] {
            case nil, .null?: return nil
            case .array(let items)?:
                return try items.map { item throws(ConfigurationError) in
                    guard let text = item.stringValue else {
                        throw ConfigurationError("component \(kind): component_config.\(key) must be strings")
                    }
                    return text
                }
            default: throw ConfigurationError("component \(kind): component_config.\(key) must be a list of strings")
            }
        }
    }
}

extension OpenAICompletion {
    /// A completion into the table named `outputName`, with every other setting at its default.
    init(outputName: String) {
        self.output = outputName
        self.apiKey = .secret("OPENAI_API_KEY")
        self.model = "gpt-4o-mini"
        self.temperature = 0.7
        self.prompt = "{prompt}"
        self.systemPrompt = nil
        self.maxTokens = nil
        self.passthrough = []
        self.baseURL = nil
        self.timeout = .seconds(60)
    }
}
