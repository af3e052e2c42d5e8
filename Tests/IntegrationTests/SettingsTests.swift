import ArgumentParser
import Configuration
import Coordinator
import Foundation
import Testing

@testable import Autonomous

/// Settings through swift-configuration: flags, then the environment, then a JSON file.
@Suite("Process settings")
struct SettingsTests {
    static func configuration(
        _ arguments: [String] = [],
        environment: [String: String] = [:],
        file: String? = nil
    ) async throws -> RuntimeConfiguration {
        let options = try CommonOptions.parse(arguments)
        var path: String?
        if let file {
            let url = FileManager.default.temporaryDirectory.appendingPathComponent("aut-settings-\(UUID().uuidString).json")
            try Data(file.utf8).write(to: url)
            path = url.path
        }
        defer { if let path { try? FileManager.default.removeItem(atPath: path) } }
        let settings = try await SettingsSources(
            flags: options.flagSettings,
            environment: environment,
            filePath: path ?? options.settingsFile
        )
        return try options.runtimeConfiguration(from: settings)
    }

    /// The message a refused setting stops the process with.
    static func refusal(_ arguments: [String] = [], environment: [String: String] = [:], file: String? = nil) async -> String {
        do {
            _ = try await configuration(arguments, environment: environment, file: file)
            return "(accepted)"
        } catch let error as ValidationError {
            return error.message
        } catch {
            return "\(error)"
        }
    }

    @Test("Flags win over the environment, the environment over the file, the file over the defaults")
    func precedence() async throws {
        let file = #"{"http": {"port": 4000, "host": "0.0.0.0"}, "tenant": "filed", "ingress": {"lanes": 2}}"#
        let fromFile = try await Self.configuration(file: file)
        #expect(fromFile.httpPort == 4000 && fromFile.httpHost == "0.0.0.0" && fromFile.tenant == "filed" && fromFile.ingressLanes == 2)
        let fromEnvironment = try await Self.configuration(environment: ["AUTONOMOUS_HTTP_PORT": "5000"], file: file)
        #expect(fromEnvironment.httpPort == 5000 && fromEnvironment.tenant == "filed")
        let fromFlag = try await Self.configuration(["--port", "6000"], environment: ["AUTONOMOUS_HTTP_PORT": "5000"], file: file)
        #expect(fromFlag.httpPort == 6000)
        let defaults = try await Self.configuration()
        #expect(defaults.httpPort == 3000 && defaults.tenant == "default" && defaults.ingressLanes == 4 && !defaults.requireAPIKey)
    }

    @Test("A file sets any setting, typed: numbers, seconds, and true/false")
    func fileTypes() async throws {
        let file = #"""
            {"requireApiKey": true, "ackWait": 2.5, "leaseTtl": 4, "shutdownTimeout": 9,
             "rateLimit": {"perNode": true, "maxDelayMs": 250}, "ingress": {"eventLoopPublish": false},
             "streamReplicas": 3, "admin": {"port": 7071, "token": "0123456789abcdef01234567"}, "handlers": "a, b"}
            """#
        let configuration = try await Self.configuration(file: file)
        #expect(configuration.requireAPIKey && !configuration.shareRateLimitsAcrossNodes && !configuration.ingressEventLoopPublishing)
        #expect(configuration.topology.ackWait == .milliseconds(2500) && configuration.leaseTTL == .seconds(4))
        #expect(configuration.shutdownTimeout == .seconds(9) && configuration.rateLimitMaxDelay == .milliseconds(250))
        #expect(configuration.topology.replicas == 3 && configuration.adminPort == 7071)
        #expect(configuration.adminToken == "0123456789abcdef01234567" && configuration.handlers == ["a", "b"])
    }

    @Test("A malformed value stops the process naming where it came from: the flag, the variable, or the file and key")
    func refusals() async {
        #expect(await Self.refusal(["--port", "70000"]) == "--port '70000' is not a port number (0-65535)")
        #expect(
            await Self.refusal(environment: ["AUTONOMOUS_HTTP_PORT": "eighty"])
                == "AUTONOMOUS_HTTP_PORT 'eighty' is not a port number (0-65535)"
        )
        #expect(
            await Self.refusal(environment: ["AUTONOMOUS_ACK_WAIT": "0"]) == "AUTONOMOUS_ACK_WAIT '0.0' must be seconds between 1 and 3600"
        )
        let fromFile = await Self.refusal(file: #"{"ingress": {"lanes": 100}}"#)
        #expect(fromFile.hasPrefix("ingress.lanes in /") && fromFile.hasSuffix(".json '100' must be 1 to 64"), "\(fromFile)")
        let badBool = await Self.refusal(file: #"{"requireApiKey": "maybe"}"#)
        #expect(badBool.contains("requireApiKey in") && badBool.hasSuffix("'maybe' must be true or false"), "\(badBool)")
        #expect(
            await Self.refusal(environment: ["AUTONOMOUS_ADMIN_TOKEN": "short"])
                == "AUTONOMOUS_ADMIN_TOKEN must be at least 24 characters (it has 5) (make one with: openssl rand -hex 32)"
        )
        // A settings file that is not there, or not JSON, is refused with its path.
        let missing = await Self.refusal(["--config", "/nonexistent/settings.json"])
        #expect(missing.hasPrefix("settings file /nonexistent/settings.json:"), "\(missing)")
        let notJSON = await Self.refusal(file: "port = 3000")
        #expect(notJSON.hasPrefix("settings file /"), "\(notJSON)")
    }

    @Test("Every key names the environment variable the docs list")
    func environmentNames() {
        let expected = [
            "nats.url": "AUTONOMOUS_NATS_URL", "http.port": "AUTONOMOUS_HTTP_PORT", "dataDir": "AUTONOMOUS_DATA_DIR",
            "logLevel": "AUTONOMOUS_LOG_LEVEL", "requireApiKey": "AUTONOMOUS_REQUIRE_API_KEY", "leaseTtl": "AUTONOMOUS_LEASE_TTL",
            "rateLimit.maxDelayMs": "AUTONOMOUS_RATE_LIMIT_MAX_DELAY_MS",
            "ingress.eventLoopPublish": "AUTONOMOUS_INGRESS_EVENT_LOOP_PUBLISH",
            "streamReplicas": "AUTONOMOUS_STREAM_REPLICAS", "admin.token": "AUTONOMOUS_ADMIN_TOKEN",
        ]
        for (key, name) in expected { #expect(Setting(key).environmentName == name) }
    }

    /// Before the fix the admin API and `/metrics` listened wherever the ingress did (0.0.0.0
    /// in the image), and a 16-character token of one letter was taken.
    @Test("The admin API and the health port listen on loopback unless told otherwise; weak admin tokens are refused")
    func adminAndHealthAddresses() async throws {
        let defaults = try await Self.configuration(["--host", "0.0.0.0"])
        #expect(defaults.httpHost == "0.0.0.0" && defaults.adminHost == "127.0.0.1" && defaults.healthHost == "127.0.0.1")
        let chosen = try await Self.configuration(
            ["--admin-host", "10.0.0.5"],
            environment: ["AUTONOMOUS_HEALTH_HOST": "0.0.0.0", "AUTONOMOUS_ADMIN_HOST": "10.9.9.9"]
        )
        #expect(chosen.adminHost == "10.0.0.5" && chosen.healthHost == "0.0.0.0")
        #expect(Setting("admin.host").environmentName == "AUTONOMOUS_ADMIN_HOST")
        #expect(Setting("health.host").environmentName == "AUTONOMOUS_HEALTH_HOST")

        let short = await Self.refusal(environment: ["AUTONOMOUS_ADMIN_TOKEN": "abcdefghijklmnop"])
        #expect(short.contains("at least 24 characters"), "\(short)")
        let repetitive = await Self.refusal(environment: ["AUTONOMOUS_ADMIN_TOKEN": String(repeating: "ab", count: 16)])
        #expect(repetitive.contains("different characters"), "\(repetitive)")
        #expect(!repetitive.contains("abab"), "the token is never echoed")
        let strong = try await Self.configuration(environment: ["AUTONOMOUS_ADMIN_TOKEN": "3f9c1e07a2b84d5e9c1f6a0b7d2e4c81"])
        #expect(strong.adminToken != nil)
    }
}
