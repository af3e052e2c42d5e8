import ArgumentParser
import Autonomous
import ClusterCore
import Components
import Deploy
import Foundation
import Logging
import Synchronization

/// Apps written in Python (docs/python.md): the `autonomous` command reads their graph from
/// `python -m autonomous describe main.py`, serves their ingress and coordinator from it, and
/// runs their handlers and routes in Python worker processes.
enum PythonApp {
    /// The interpreter: `--python`, else AUTONOMOUS_PYTHON, else `python3`.
    static func interpreter(_ flag: String?) -> String { pythonInterpreter(flag) }

    /// Whether `path` names a Python app rather than a graph file or an app binary.
    static func isPython(_ path: String) -> Bool { path.hasSuffix(".py") }

    /// The app's graph as its own `describe` prints it; a failure carries what Python said.
    static func describe(_ app: String, python: String, tenant: String) async throws -> AppDescription {
        guard FileManager.default.fileExists(atPath: app) else { throw ValidationError("\(app): no such file") }
        let result: (status: Int32, output: [UInt8])
        do {
            result = try await Command.output(python, ["-m", "autonomous", "describe", app, "--tenant", tenant])
        } catch {
            throw ValidationError("cannot run \(python): \(error) (install Python 3.11+ or set AUTONOMOUS_PYTHON)")
        }
        guard result.status == 0 else {
            throw ValidationError(
                "\(app): `\(python) -m autonomous describe` failed (status \(result.status)); its message is above. "
                    + "Is the package installed (pip install ./python)?"
            )
        }
        do {
            return try AppDescription.decode(Data(result.output))
        } catch {
            throw ValidationError("\(app): its description is not an app graph: \(error)")
        }
    }

    /// A graph from a `.py` app or a JSON file that `describe` printed.
    static func graph(_ source: String, python: String?, tenant: String) async throws -> AppGraph {
        let description: AppDescription
        if isPython(source) {
            description = try await describe(source, python: interpreter(python), tenant: tenant)
        } else {
            guard let data = FileManager.default.contents(atPath: source) else { throw ValidationError("\(source): cannot read the file") }
            do {
                description = try AppDescription.decode(data)
            } catch {
                throw ValidationError("\(source): \(error)")
            }
        }
        do {
            return try AppGraph(description: description) { kind, configuration in
                try ComponentCatalog.make(kind: kind, configuration: configuration)
            }
        } catch {
            throw ValidationError("\(source): \(error)")
        }
    }
}

struct PythonDevCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dev",
        abstract: "Run a Python app (main.py) in embedded dev mode: nats-server, SQLite, ingress, coordinator and Python workers.",
        discussion: """
            Reads the app's graph from `python -m autonomous describe <app>`, starts nats-server -js \
            on a free loopback port (unless --nats-url is given), serves the ingress, the \
            coordinator and the storages' sinks in this process, and runs the app's handlers and \
            routes in Python worker processes (`python -m autonomous worker <app>`), restarted if \
            they stop. Ctrl-C stops it all; the next run reuses the stored data. See docs/python.md.
            """
    )

    @Argument(help: "The Python app, e.g. main.py.")
    var app: String

    @Option(help: "The Python interpreter, with the autonomous package installed. [env: AUTONOMOUS_PYTHON, default: python3]")
    var python: String?

    @Option(name: .customLong("python-workers"), help: "Python worker processes to run. [default: 1]")
    var pythonWorkers: Int = 1

    @OptionGroup var options: CommonOptions

    func validate() throws {
        guard (1...64).contains(pythonWorkers) else { throw ValidationError("--python-workers must be 1 to 64") }
    }

    func run() async throws {
        let python = PythonApp.interpreter(self.python)
        let tenant = options.tenantFlag ?? ProcessInfo.processInfo.environment["AUTONOMOUS_TENANT"] ?? "default"
        let graph = try await PythonApp.graph(app, python: python, tenant: tenant)
        let workers = PythonWorkers()
        let app = URL(fileURLWithPath: self.app).standardizedFileURL.path
        let count = pythonWorkers
        try await GraphRoles.dev(
            options: options,
            graph: { graph },
            onReady: { environment in
                var variables = ProcessInfo.processInfo.environment
                variables["AUTONOMOUS_NATS_URL"] = environment.natsURL
                variables["AUTONOMOUS_TENANT"] = environment.tenant
                workers.start(count: count, python: python, app: app, environment: variables, logger: environment.logger)
            },
            onStop: { await workers.stop() }
        )
    }
}

struct ServeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve",
        abstract: "Serve a role of an app written in another language, from its graph.",
        discussion: """
            ROLE is ingress, coordinator, worker (the storages' sinks; the app's own handlers run \
            in its language's workers) or all. GRAPH is the app (main.py, described with \
            `python -m autonomous describe`) or a JSON file that describe printed. Settings as \
            for an app binary's roles (see `autonomous serve --help` and docs/python.md).
            """
    )

    @Argument(help: "ingress, coordinator, worker or all.")
    var role: String

    @Argument(help: "main.py, or a graph JSON file.")
    var graph: String

    @Option(help: "The Python interpreter that describes a .py app. [env: AUTONOMOUS_PYTHON, default: python3]")
    var python: String?

    @OptionGroup var options: CommonOptions

    func run() async throws {
        let roles: [String: Role] = ["ingress": .ingress, "coordinator": .coordinator, "worker": .worker, "all": .all]
        guard let selected = roles[role] else { throw ValidationError("role '\(role)' must be ingress, coordinator, worker or all") }
        let tenant = options.tenantFlag ?? ProcessInfo.processInfo.environment["AUTONOMOUS_TENANT"] ?? "default"
        let graph = try await PythonApp.graph(self.graph, python: python, tenant: tenant)
        try await GraphRoles.run(selected, name: role, options: options) { graph }
    }
}

/// `autonomous ingress|worker|coordinator` with the graph in AUTONOMOUS_GRAPH: the same as
/// `autonomous serve <role> $AUTONOMOUS_GRAPH`, so that an image of the `autonomous` binary
/// takes the role as its argument as an app binary's image does (the Nomad job, docs/deploy.md).
protocol GraphRoleAlias: AsyncParsableCommand {
    static var role: String { get }
    var options: CommonOptions { get }
}

extension GraphRoleAlias {
    static var configuration: CommandConfiguration {
        CommandConfiguration(
            commandName: role,
            abstract: "Serve the \(role) role of the app graph in AUTONOMOUS_GRAPH (a JSON file describe printed).",
            shouldDisplay: false
        )
    }

    func run() async throws {
        guard let graph = ProcessInfo.processInfo.environment["AUTONOMOUS_GRAPH"], !graph.isEmpty else {
            throw ValidationError(
                "autonomous \(Self.role) serves an app graph: set AUTONOMOUS_GRAPH to the JSON file describe printed, or run `autonomous serve \(Self.role) <graph>`"
            )
        }
        let roles: [String: Role] = ["ingress": .ingress, "coordinator": .coordinator, "worker": .worker, "all": .all]
        let tenant = options.tenantFlag ?? ProcessInfo.processInfo.environment["AUTONOMOUS_TENANT"] ?? "default"
        let loaded = try await PythonApp.graph(graph, python: nil, tenant: tenant)
        try await GraphRoles.run(roles[Self.role]!, name: Self.role, options: options) { loaded }
    }
}

struct IngressAlias: GraphRoleAlias {
    static let role = "ingress"
    @OptionGroup var options: CommonOptions
}

struct WorkerAlias: GraphRoleAlias {
    static let role = "worker"
    @OptionGroup var options: CommonOptions
}

struct CoordinatorAlias: GraphRoleAlias {
    static let role = "coordinator"
    @OptionGroup var options: CommonOptions
}
