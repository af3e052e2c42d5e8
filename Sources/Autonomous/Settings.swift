import ArgumentParser
import Configuration
import Foundation
import SystemPackage

/// One setting of an app process: its key (`http.port`), which names it everywhere — as the
/// environment variable `AUTONOMOUS_HTTP_PORT` and as `{"http": {"port": …}}` in a settings
/// file — and the flag that sets it, if any.
struct Setting: Sendable {
    let key: String
    let flag: String?

    init(_ key: String, flag: String? = nil) {
        self.key = key
        self.flag = flag
    }

    /// The environment variable: `AUTONOMOUS_` and the key's words in capitals.
    var environmentName: String {
        var words: [String] = ["AUTONOMOUS"]
        for component in key.split(separator: ".") {
            var word = ""
            var previous: Character?
            for character in component {
                if let previous, previous.isLowercase, character.isUppercase { word.append("_") }
                word.append(character)
                previous = character
            }
            words.append(word.uppercased())
        }
        return words.joined(separator: "_")
    }
}

/// Where an app process's settings come from, through swift-configuration: command-line
/// flags first, then `AUTONOMOUS_*` environment variables, then a JSON settings file
/// (`--config <file>` or `AUTONOMOUS_CONFIG`), then the defaults. A value that is there but
/// malformed stops the process with a message that names where it came from.
struct SettingsSources: Sendable {
    private let flags: ConfigReader
    private let environment: ConfigReader
    private let file: ConfigReader?
    private let filePath: String?
    private let all: ConfigReader

    /// `flags`: the settings given on the command line, by key.
    init(flags: [String: ConfigContent], environment: [String: String], filePath: String?) async throws {
        var values: [AbsoluteConfigKey: ConfigValue] = [:]
        for (key, content) in flags { values[AbsoluteConfigKey(ConfigKey(key))] = ConfigValue(content, isSecret: false) }
        let flagProvider = InMemoryProvider(name: "flags", values: values)
        let secrets: Set<String> = ["AUTONOMOUS_ADMIN_TOKEN", "AUTONOMOUS_POSTGRES_PASSWORD"]
        let environmentProvider = EnvironmentVariablesProvider(
            environmentVariables: environment,
            secretsSpecifier: .specific(secrets)
        ).prefixKeys(with: "autonomous")
        var providers: [any ConfigProvider] = [flagProvider, environmentProvider]
        self.flags = ConfigReader(provider: flagProvider)
        self.environment = ConfigReader(provider: environmentProvider)
        if let filePath {
            let fileProvider: FileProvider<JSONSnapshot>
            do {
                fileProvider = try await FileProvider<JSONSnapshot>(filePath: FilePath(filePath))
            } catch {
                throw ValidationError("settings file \(filePath): \(error)")
            }
            providers.append(fileProvider)
            self.file = ConfigReader(provider: fileProvider)
        } else {
            self.file = nil
        }
        self.filePath = filePath
        self.all = ConfigReader(providers: providers)
    }

    func string(_ setting: Setting) -> String? {
        all.string(forKey: ConfigKey(setting.key))
    }

    /// A whole number in `range`; `problem` says what it must be.
    func int(_ setting: Setting, in range: ClosedRange<Int>, problem: String) throws -> Int? {
        let key = ConfigKey(setting.key)
        if let value = all.int(forKey: key) {
            guard range.contains(value) else { throw refusal(setting, "\(value)", problem) }
            return value
        }
        if let text = all.string(forKey: key) { throw refusal(setting, text, problem) }
        return nil
    }

    /// A number of seconds in `range`.
    func seconds(_ setting: Setting, in range: ClosedRange<Double>) throws -> Duration? {
        let key = ConfigKey(setting.key)
        let problem = "must be seconds between \(Int(range.lowerBound)) and \(Int(range.upperBound))"
        let value: Double
        if let number = all.double(forKey: key) {
            value = number
        } else if let whole = all.int(forKey: key) {
            value = Double(whole)
        } else if let text = all.string(forKey: key) {
            throw refusal(setting, text, problem)
        } else {
            return nil
        }
        guard range.contains(value) else { throw refusal(setting, "\(value)", problem) }
        return .milliseconds(Int64(value * 1000))
    }

    /// True or false: `1`/`true`/`yes`, `0`/`false`/`no`/empty, or a JSON boolean.
    func bool(_ setting: Setting) throws -> Bool? {
        let key = ConfigKey(setting.key)
        if let text = all.string(forKey: key) {
            switch text.lowercased() {
            case "1", "true", "yes": return true
            case "0", "false", "no", "": return false
            default: throw refusal(setting, text, "must be true or false")
            }
        }
        return all.bool(forKey: key)
    }

    /// A malformed value's error, naming where it came from (flag, variable, or file and key).
    func refusal(_ setting: Setting, _ value: String, _ problem: String) -> ValidationError {
        let key = ConfigKey(setting.key)
        let source: String
        if let flag = setting.flag, flags.string(forKey: key) != nil || flags.int(forKey: key) != nil || flags.bool(forKey: key) != nil {
            source = flag
        } else if environment.string(forKey: key) != nil {
            source = setting.environmentName
        } else if let filePath {
            source = "\(setting.key) in \(filePath)"
        } else {
            source = setting.environmentName
        }
        return ValidationError("\(source) '\(value)' \(problem)")
    }
}
