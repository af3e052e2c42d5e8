import Configuration
import Foundation

/// What the `autonomous` command reads from its environment, through swift-configuration as an
/// app's settings are: `AUTONOMOUS_ADMIN_URL` is the key `admin.url`, and so on. A flag given on
/// the command line wins over the variable. The admin token is marked secret, so
/// swift-configuration never prints its value (in access reports or errors).
struct CLIEnvironment: Sendable {
    private let reader: ConfigReader

    init(_ environment: [String: String] = ProcessInfo.processInfo.environment) {
        reader = ConfigReader(
            provider: EnvironmentVariablesProvider(
                environmentVariables: environment,
                secretsSpecifier: .specific(["AUTONOMOUS_ADMIN_TOKEN"])
            ).prefixKeys(with: "autonomous")
        )
    }

    /// A variable's value, `nil` when it is unset or empty.
    private func value(_ key: String) -> String? {
        guard let text = reader.string(forKey: ConfigKey(key)), !text.isEmpty else { return nil }
        return text
    }

    /// `AUTONOMOUS_ADMIN_URL`: a coordinator's admin API.
    var adminURL: String? { value("admin.url") }
    /// `AUTONOMOUS_ADMIN_TOKEN`: the coordinator's admin token (a secret).
    var adminToken: String? { value("admin.token") }
    /// `AUTONOMOUS_ADMIN_CA`: the CA of an admin API's certificate, when it is a private one.
    var adminCA: String? { value("admin.ca") }
    /// `AUTONOMOUS_NATS_URL`.
    var natsURL: String? { value("nats.url") }
    /// `AUTONOMOUS_TENANT`.
    var tenant: String? { value("tenant") }
    /// `AUTONOMOUS_LOG_LEVEL`.
    var logLevel: String? { value("log.level") }
}
