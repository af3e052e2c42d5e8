import ArgumentParser
import ClusterCore
import Foundation

/// The operator's tool. `deploy`, `dlq` and `tenants` arrive with later releases; today it
/// describes an app binary's graph.
@main
struct AutonomousCLI: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "autonomous",
        abstract: "Operate Autonomous apps.",
        subcommands: [Describe.self]
    )

    struct Describe: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Print an app's graph (runs `<app> describe`)."
        )

        @Argument(help: "Path of the app binary, e.g. .build/debug/OrderFlow.")
        var app: String

        func run() async throws {
            guard FileManager.default.isExecutableFile(atPath: app) else {
                throw ValidationError("\(app): not an executable file")
            }
            let process = Process()
            process.executableURL = URL(fileURLWithPath: app)
            process.arguments = ["describe"]
            try process.run()
            process.waitUntilExit()
            if process.terminationStatus != 0 { throw ExitCode(process.terminationStatus) }
        }
    }
}
