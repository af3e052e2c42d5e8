import ArgumentParser
import ClusterCore
import Foundation
import Logging
import NATS

struct DeadLetterCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dlq",
        abstract: "List, replay or purge records that handlers gave up on.",
        discussion: """
            A NATS server behind TLS or NATS accounts: AUTONOMOUS_NATS_CA, AUTONOMOUS_NATS_CERT and \
            AUTONOMOUS_NATS_KEY (PEM files of the servers' CA and of a client certificate and key), \
            AUTONOMOUS_NATS_CREDS (a credentials file), as for the app's processes.
            """,
        subcommands: [List.self, Replay.self, Purge.self]
    )

    struct Options: ParsableArguments {
        @Option(name: .customLong("nats-url"), help: "NATS server URL. [env: AUTONOMOUS_NATS_URL]")
        var natsURL: String?

        @Option(help: "Tenant. [env: AUTONOMOUS_TENANT, default: default]")
        var tenant: String?

        @Option(help: "Only this handler's dead letters.")
        var handler: String?

        @Option(help: "Only dead letters whose last failure is at or after this ISO 8601 time.")
        var since: String?

        @Option(help: "Only dead letters whose last failure is at or before this ISO 8601 time.")
        var until: String?

        func date(_ text: String?, _ flag: String) throws -> Date? {
            guard let text else { return nil }
            guard let date = ISO8601.parse(text) else {
                throw ValidationError("--\(flag) '\(text)' is not an ISO 8601 time, e.g. 2026-11-26T10:00:00Z")
            }
            return date
        }

        func connect() async throws -> (NATSConnection, String) {
            let environment = ProcessInfo.processInfo.environment
            let settings = CLIEnvironment(environment)
            guard let url = natsURL ?? settings.natsURL else {
                throw ValidationError("pass --nats-url or set AUTONOMOUS_NATS_URL")
            }
            let tenant = tenant ?? settings.tenant ?? "default"
            if let problem = Names.problem(with: tenant, kind: "tenant") { throw ValidationError(problem) }
            if let handler, let problem = Names.problem(with: handler, kind: "handler") { throw ValidationError(problem) }
            var configuration = NATSConnection.Configuration(url: url)
            do {
                try configuration.readSecurity(from: environment)
            } catch {
                throw ValidationError(error.message)
            }
            configuration.connectTimeout = .seconds(5)
            configuration.name = "autonomous-dlq"
            var logger = Logger(label: "autonomous.dlq")
            logger.logLevel = .warning
            return (try await NATSConnection.connect(configuration: configuration, logger: logger), tenant)
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List dead letters, oldest first.")
        @OptionGroup var options: Options

        func run() async throws {
            let (connection, tenant) = try await options.connect()
            let letters: [DeadLetter]
            do {
                letters = try await DeadLetters.list(
                    connection: connection,
                    tenant: tenant,
                    handler: options.handler,
                    since: try options.date(options.since, "since"),
                    until: try options.date(options.until, "until")
                )
            } catch {
                await connection.close()
                throw error
            }
            await connection.close()
            if letters.isEmpty {
                print("No dead letters.")
                return
            }
            for letter in letters {
                let first = letter.firstFailure.map(ISO8601.format) ?? "?"
                let last = letter.lastFailure.map(ISO8601.format) ?? "?"
                print(
                    "\(letter.sequence)  first=\(first)  last=\(last)  \(letter.handler)  \(letter.table)  \(letter.recordID)  attempts=\(letter.attempts)  \(letter.error)"
                )
            }
            print("\(letters.count) dead letter(s).")
        }
    }

    struct Replay: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Give dead letters back to the handler that failed them (after you fixed it)."
        )
        @OptionGroup var options: Options

        func run() async throws {
            let (connection, tenant) = try await options.connect()
            do {
                let count = try await DeadLetters.replay(
                    connection: connection,
                    tenant: tenant,
                    handler: options.handler,
                    since: try options.date(options.since, "since"),
                    until: try options.date(options.until, "until")
                )
                await connection.close()
                print("Replayed \(count) dead letter(s).")
            } catch {
                await connection.close()
                throw error
            }
        }
    }

    struct Purge: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Delete dead letters for good.")
        @OptionGroup var options: Options

        func run() async throws {
            let (connection, tenant) = try await options.connect()
            do {
                let count = try await DeadLetters.purge(connection: connection, tenant: tenant, handler: options.handler)
                await connection.close()
                print("Purged \(count) dead letter(s).")
            } catch {
                await connection.close()
                throw error
            }
        }
    }
}
