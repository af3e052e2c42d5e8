import ArgumentParser
import ClusterCore
import Components
import Deploy
import Foundation
import Logging

/// The operator's tool: deploy an app, stop a local cluster, describe an app.
@main
struct AutonomousCLI: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "autonomous",
        abstract: "Operate Autonomous apps.",
        subcommands: [
            InitCommand.self, DeployCommand.self, DownCommand.self, DeadLetterCommand.self, DescribeCommand.self,
            TenantsCommand.self, KeysCommand.self, SchedulesCommand.self, StoragesCommand.self, NATSAuthorizationCommand.self,
            SuperviseCommand.self, PythonDevCommand.self, ServeCommand.self, IngressAlias.self, WorkerAlias.self,
            CoordinatorAlias.self,
        ]
    )
}

/// Finds an app binary: a path, or a product name under `.build/{debug,release}`.
func resolveApp(_ app: String) throws -> String {
    let candidates = [app, ".build/debug/\(app)", ".build/release/\(app)"]
    for candidate in candidates where FileManager.default.isExecutableFile(atPath: candidate) {
        return URL(fileURLWithPath: candidate).standardizedFileURL.path
    }
    throw ValidationError("app '\(app)' not found: pass the binary's path or build it (swift build --product \(app))")
}

func makeLogger(_ level: String) -> Logger {
    LoggingSystem.bootstrap { label in
        var handler = StreamLogHandler.standardError(label: label)
        handler.logLevel = Logger.Level(rawValue: level) ?? .info
        return handler
    }
    return Logger(label: "autonomous")
}

struct DescribeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "describe", abstract: "Print an app's graph (runs `<app> describe`).")

    @Argument(help: "The app binary or product name, e.g. OrderFlow; or a Python app, e.g. main.py.")
    var app: String

    @Option(help: "The Python interpreter for a .py app. [env: AUTONOMOUS_PYTHON, default: python3]")
    var python: String?

    func run() async throws {
        if PythonApp.isPython(app) {
            let description = try await PythonApp.describe(app, python: PythonApp.interpreter(python), tenant: "default")
            // Checked as the runtime will read it: a graph it cannot serve fails here.
            do {
                _ = try AppGraph(description: description) { try ComponentCatalog.make(kind: $0, configuration: $1) }
            } catch {
                throw ValidationError("\(app): \(error)")
            }
            FileHandle.standardOutput.write(description.encoded() + Data("\n".utf8))
            return
        }
        let binary = try resolveApp(app)
        let status = try await Command.passthrough(binary, ["describe"])
        if status != 0 { throw ExitCode(status) }
    }
}

struct NATSAuthorizationCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "nats-auth",
        abstract: "Print the NATS authorization block: a user per role and a producer user per tenant.",
        discussion: """
            Include it in your nats-server configuration. Passwords are read from the server's \
            environment (NATS_PASSWORD_COORDINATOR, NATS_PASSWORD_INGRESS, NATS_PASSWORD_WORKER, \
            NATS_PASSWORD_OPERATOR, NATS_PASSWORD_PRODUCER_<TENANT>); each role gets its own as \
            AUTONOMOUS_NATS_USER and AUTONOMOUS_NATS_PASSWORD. See docs/deploy.md.
            """
    )

    @Option(name: .customLong("tenant"), help: "A tenant whose external producers get a user (repeatable; default: default).")
    var tenants: [String] = []

    func run() throws {
        let tenants = self.tenants.isEmpty ? ["default"] : self.tenants
        for tenant in tenants {
            if let problem = Names.problem(with: tenant, kind: "tenant") { throw ValidationError("--tenant: \(problem)") }
        }
        let users = NATSAuthorization.users(producerTenants: tenants)
        print(NATSAuthorization.render(users: users) { "$" + NATSAuthorization.passwordVariable(of: $0) }, terminator: "")
    }
}

struct DeployCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "deploy",
        abstract: "Deploy an app as autonomous.json describes.",
        discussion: """
            kubernetes: writes a kustomize overlay for the app on top of deploy/k8s/overlays/<target> \
            and runs `kubectl apply -k` when kubectl reaches a cluster (otherwise prints the command).

            helm: writes a values file for the chart deploy/helm/autonomous and runs \
            `helm upgrade --install` when helm reaches a cluster (otherwise prints the command); \
            the target is the release name, deployment.namespace its namespace (default autonomous).

            nomad: writes the variables file for deploy/nomad/autonomous.nomad.hcl and runs \
            `nomad job run` when nomad is installed (otherwise prints the command).

            process: runs the cluster on this machine as supervised processes (nats-server, the \
            coordinator, ingress and worker processes), logs in .autonomous/process/<target>/logs. \
            Run it again with --scale to change replicas; `autonomous down` stops it.

            A Python app (main.py): the Swift roles serve its graph (`autonomous serve`), and its \
            handlers and routes run in the python-worker role (deployment.python_image on \
            kubernetes, helm and nomad). A Swift app with Python handlers names their module in \
            deployment.python_app. See docs/python.md.
            """
    )

    @Argument(help: "The app binary or product name, e.g. OrderFlow; or a Python app, e.g. main.py.")
    var app: String

    @Option(help: "kubernetes, helm, nomad or process (default: autonomous.json's deployment.engine).")
    var engine: String?

    @Option(help: "Overlay (kubernetes), release (helm), datacenter (nomad) or cluster name (process).")
    var target: String?

    @Option(name: .customLong("config"), help: "Path of autonomous.json (missing file: process engine defaults).")
    var configPath: String = "autonomous.json"

    @Flag(name: .customLong("dry-run"), help: "Render and print what would run, change nothing.")
    var dryRun = false

    @Option(name: .customLong("out"), help: "Where rendered files go (default .autonomous/deploy/<engine>-<target>).")
    var outputDirectory: String?

    @Option(help: "Replicas, e.g. --scale worker=4 (repeatable).")
    var scale: [String] = []

    @Option(help: "App image for kubernetes/helm/nomad (name:tag or name@sha256:…).")
    var image: String?

    @Option(help: "The Python interpreter of a Python app's workers (process engine). [env: AUTONOMOUS_PYTHON, default: python3]")
    var python: String?

    @Option(help: "Directory with the project's kustomize base and overlays.")
    var manifests: String = "deploy/k8s"

    @Option(help: "The Helm chart (helm engine).")
    var chart: String = "deploy/helm/autonomous"

    @Option(name: .customLong("nomad-job"), help: "The Nomad job file.")
    var nomadJob: String = "deploy/nomad/autonomous.nomad.hcl"

    @Option(name: .customLong("log-level"))
    var logLevel: String = "info"

    func run() async throws {
        var configuration = DeploymentConfiguration()
        if FileManager.default.fileExists(atPath: configPath) {
            do { configuration = try DeploymentConfiguration.load(path: configPath) } catch { throw ValidationError(error.description) }
        } else if configPath != "autonomous.json" {
            throw ValidationError("\(configPath): no such file")
        }
        var deployment = configuration.deployment
        if let engine {
            guard let value = DeploymentConfiguration.Engine(engine) else {
                throw ValidationError("--engine: unknown engine '\(engine)'; expected kubernetes, helm, nomad or process")
            }
            deployment.engine = value
        }
        if let target { deployment.target = target }
        if let image { deployment.image = image }
        for item in scale {
            let parts = item.split(separator: "=")
            guard parts.count == 2, let n = Int(parts[1]), n >= 0 else {
                throw ValidationError("--scale \(item): expected ROLE=COUNT, e.g. worker=4")
            }
            deployment.replicas[String(parts[0])] = n
        }
        guard Names.isValid(deployment.target) || deployment.engine != .process else {
            throw ValidationError("target '\(deployment.target)' must be [a-z0-9_-]")
        }
        let isPython = PythonApp.isPython(app)
        let binary = isPython ? try ownBinary() : try resolveApp(app)
        let description =
            isPython
            ? try await PythonApp.describe(app, python: PythonApp.interpreter(python), tenant: deployment.tenant)
            : try await AppDescription.of(binary: binary)
        do { try description.check(deployment) } catch let error as DeployError { throw ValidationError(error.message) }
        let pythonHandlers = description.handlers.filter { $0.runtime == "python" }.map(\.name)
        let pythonModule = isPython ? app : deployment.pythonApp
        if !isPython, !pythonHandlers.isEmpty, deployment.pythonApp == nil {
            throw ValidationError(
                "handlers \(pythonHandlers.joined(separator: ", ")) run in Python: set deployment.python_app in \(configPath) to the module that defines them"
            )
        }
        if isPython {
            do {
                _ = try AppGraph(description: description) { try ComponentCatalog.make(kind: $0, configuration: $1) }
            } catch {
                throw ValidationError("\(app): \(error)")
            }
        }
        let out = outputDirectory ?? ".autonomous/deploy/\(deployment.engine)-\(deployment.target)"
        // The graph the Swift roles of a Python app serve, and a Swift app's Python workers read.
        let graphFile = URL(fileURLWithPath: out).standardizedFileURL.appendingPathComponent("graph.json").path
        if pythonModule != nil {
            try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
            guard FileManager.default.createFile(atPath: graphFile, contents: description.encoded()) else {
                throw ValidationError("cannot write \(graphFile)")
            }
            print("wrote \(graphFile)")
        }
        let pythonDeployment = pythonModule.map {
            PythonDeployment(graph: description.encoded(), module: PythonDeployment.modulePath($0), isPythonApp: isPython)
        }
        let result: String
        switch deployment.engine {
        case .kubernetes:
            let files: [String: String]
            do {
                files = try KubernetesRenderer.render(
                    app: description,
                    deployment: deployment,
                    manifests: manifests,
                    outputDirectory: out,
                    python: pythonDeployment
                )
            } catch let error as DeployError {
                throw ValidationError(error.message)
            }
            try write(files, to: out)
            result = try await apply(
                tool: "kubectl",
                probe: ["cluster-info", "--request-timeout=5s"],
                command: ["apply", "-k", out],
                render: ["kustomize", out],
                renderedFile: out + "/rendered.yaml"
            )
        case .helm:
            let files: [String: String]
            do {
                files = try HelmRenderer.render(app: description, deployment: deployment, python: pythonDeployment)
            } catch let error as DeployError {
                throw ValidationError(error.message)
            }
            try write(files, to: out)
            let release = HelmRenderer.release(deployment)
            let namespace = HelmRenderer.namespace(deployment)
            let chartArguments = [release, chart, "--namespace", namespace, "-f", "\(out)/values.yaml"]
            result = try await apply(
                tool: "helm",
                probe: ["list", "--namespace", namespace],
                command: ["upgrade", "--install"] + chartArguments + ["--create-namespace", "--wait"],
                render: ["template"] + chartArguments,
                renderedFile: out + "/rendered.yaml"
            )
        case .nomad:
            let files: [String: String]
            do {
                files = try NomadRenderer.render(app: description, deployment: deployment, python: pythonDeployment)
            } catch let error as DeployError {
                throw ValidationError(error.message)
            }
            try write(files, to: out)
            result = try await apply(
                tool: "nomad",
                probe: ["node", "status"],
                command: ["job", "run", "-var-file=\(out)/autonomous.vars.hcl", nomadJob],
                render: nil,
                renderedFile: nil
            )
        default:
            result = try await deployProcesses(
                binary: binary,
                deployment: deployment,
                configuration: configuration,
                python: pythonModule.map { (module: $0, graph: graphFile, isApp: isPython) }
            )
        }
        print("Deploying '\(description.app)' to '\(deployment.target)' with \(deployment.engine)... \(result)")
        print("")
        print("Live endpoints:")
        let host = deployment.engine == .process ? "localhost:\(deployment.httpPort)" : "<ingress>"
        for route in description.routes { print("  \(host)\(route.path) \(route.method)") }
        print("  \(host)/v1/tables/{table}/records POST")
        print("")
        print("Live schedules:")
        if description.schedules.isEmpty { print("  (none)") }
        for schedule in description.schedules { print("  \(schedule.name)    \(schedule.schedule)") }
        print("")
        print("Storages online:")
        print(
            "  NATS JetStream: \(shownNATSURL(deployment: deployment, out: out)) (streams \(Wire.tableStreamName(tenant: deployment.tenant, table: "<table>")) and \(Wire.streamName(tenant: deployment.tenant)))"
        )
        if deployment.engine == .process && deployment.natsURL == nil {
            print(
                "  NATS users: .autonomous/process/\(deployment.target)/nats-auth/passwords.json (one per role; operator for `autonomous dlq`; producer-\(deployment.tenant) publishes only aut.\(deployment.tenant).tbl.> with inbox prefix _INBOX_\(deployment.tenant))"
            )
        }
        for storage in configuration.storages { print("  \(storage.url) (\(storage.name))") }
    }

    /// The NATS URL the deployed processes get: the one given, else what the rendered files
    /// say (the overlay's ConfigMap, the Nomad job's default), else where it comes from.
    private func shownNATSURL(deployment: DeploymentConfiguration.Deployment, out: String) -> String {
        if let url = deployment.natsURL { return url }
        func value(in path: String, after marker: String) -> String? {
            guard let text = try? String(contentsOfFile: path, encoding: .utf8), let range = text.range(of: marker) else { return nil }
            let rest = text[range.upperBound...].drop { $0 == " " || $0 == "=" || $0 == ":" || $0 == "\n" }
            let line = rest.prefix { $0 != "\n" }
            let quoted = line.split(separator: "\"", omittingEmptySubsequences: false)
            let found = quoted.count >= 3 ? String(quoted[1]) : line.trimmingCharacters(in: .whitespaces)
            return found.isEmpty ? nil : found
        }
        switch deployment.engine {
        case .kubernetes:
            return value(in: out + "/rendered.yaml", after: "AUTONOMOUS_NATS_URL:")
                ?? "AUTONOMOUS_NATS_URL as deploy/k8s/overlays/\(deployment.target) sets it"
        case .helm:
            return value(in: out + "/rendered.yaml", after: "AUTONOMOUS_NATS_URL:") ?? "the chart's natsURL value"
        case .nomad:
            // The `default` of the job's `variable "nats_url" { … }` block.
            if let text = try? String(contentsOfFile: nomadJob, encoding: .utf8), let block = text.range(of: "variable \"nats_url\"") {
                let rest = text[block.upperBound...]
                if let end = rest.firstIndex(of: "}"), let key = rest[..<end].range(of: "default") {
                    let parts = rest[key.upperBound...].prefix { $0 != "\n" }.split(separator: "\"", omittingEmptySubsequences: false)
                    if parts.count >= 3 { return String(parts[1]) }
                }
            }
            return "the Nomad job's nats_url default"
        default:
            return "embedded nats-server"
        }
    }

    private func write(_ files: [String: String], to directory: String) throws {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        for (name, contents) in files.sorted(by: { $0.key < $1.key }) {
            try contents.write(toFile: "\(directory)/\(name)", atomically: true, encoding: .utf8)
            print("wrote \(directory)/\(name)")
        }
    }

    private func toolPath(_ tool: String) -> String? {
        for directory in (ProcessInfo.processInfo.environment["PATH"] ?? "").split(separator: ":") {
            let candidate = "\(directory)/\(tool)"
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
        }
        return nil
    }

    private func apply(tool: String, probe: [String], command: [String], render: [String]?, renderedFile: String?) async throws -> String {
        let shown = ([tool] + command).joined(separator: " ")
        guard let path = toolPath(tool) else {
            let hint = tool == "helm" ? " (scripts/install-helm.sh installs it)" : ""
            print("\(tool) is not installed\(hint); to deploy, run: \(shown)")
            return "RENDERED"
        }
        if let render, let renderedFile {
            let (status, output) = try await Command.captured(path, render)
            guard status == 0 else { throw ValidationError("\(tool) \(render.joined(separator: " ")) failed:\n\(output)") }
            // It may hold Secrets (the NATS users' passwords): readable by its owner only.
            try? FileManager.default.removeItem(atPath: renderedFile)
            guard FileManager.default.createFile(atPath: renderedFile, contents: Data(output.utf8), attributes: [.posixPermissions: 0o600])
            else { throw ValidationError("cannot write \(renderedFile)") }
            print("wrote \(renderedFile)")
        }
        if dryRun {
            print("dry run; would run: \(shown)")
            return "RENDERED (dry run)"
        }
        let (probeStatus, _) = try await Command.captured(path, probe)
        guard probeStatus == 0 else {
            print("\(tool) reaches no cluster; to deploy, run: \(shown)")
            return "RENDERED"
        }
        let status = try await Command.passthrough(path, command)
        guard status == 0 else { throw ExitCode(status) }
        return "DONE"
    }

    /// This `autonomous` binary: the Swift roles of a Python app are `autonomous serve`.
    private func ownBinary() throws -> String {
        let path = URL(fileURLWithPath: CommandLine.arguments[0]).standardizedFileURL.path
        if FileManager.default.isExecutableFile(atPath: path) { return path }
        for directory in (ProcessInfo.processInfo.environment["PATH"] ?? "").split(separator: ":") {
            let candidate = "\(directory)/\(CommandLine.arguments[0])"
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
        }
        throw ValidationError("cannot find the autonomous binary itself (\(CommandLine.arguments[0]))")
    }

    private func deployProcesses(
        binary: String,
        deployment: DeploymentConfiguration.Deployment,
        configuration: DeploymentConfiguration,
        python: (module: String, graph: String, isApp: Bool)?
    ) async throws -> String {
        let directory = URL(fileURLWithPath: ".autonomous/process/\(deployment.target)").standardizedFileURL.path
        var specification = ProcessCluster.Specification(app: binary, directory: directory)
        specification.tenant = deployment.tenant
        specification.natsURL = deployment.natsURL
        specification.httpPort = deployment.httpPort
        specification.healthPort = deployment.httpPort + 100
        specification.logLevel = logLevel
        // The app's processes read their storages and the tables they keep from the same file.
        if FileManager.default.fileExists(atPath: configPath) {
            specification.environment["AUTONOMOUS_DEPLOYMENT_FILE"] = URL(fileURLWithPath: configPath).standardizedFileURL.path
        }
        specification.replicas = ["ingress": deployment.replicas["ingress"] ?? 1, "worker": deployment.replicas["worker"] ?? 1]
        if let coordinators = deployment.replicas["coordinator"] { specification.replicas["coordinator"] = coordinators }
        // A database storage on this machine is run by the engine as well.
        for storage in configuration.storages where storage.kind == .database {
            guard case .plain(let text) = storage.url, let url = URLComponents(string: text),
                url.scheme == "postgres" || url.scheme == "postgresql",
                url.host == "127.0.0.1" || url.host == "localhost"
            else { continue }
            let database = url.path.split(separator: "/").first.map(String.init) ?? "autonomous"
            specification.postgres = .init(port: url.port ?? 5432, database: database)
            break
        }
        for group in deployment.workerGroups {
            specification.workerGroups[group.name] = group.handlers
            specification.replicas["worker-\(group.name)"] = group.replicas
        }
        if let python {
            specification.pythonApp = URL(fileURLWithPath: python.module).standardizedFileURL.path
            specification.python = PythonApp.interpreter(self.python)
            if python.isApp {
                specification.serveGraph = python.graph
            } else {
                specification.pythonGraph = python.graph
            }
            specification.replicas[ProcessCluster.pythonRole] = deployment.replicas[ProcessCluster.pythonRole] ?? 1
        }
        if dryRun {
            print(
                "dry run; would start: \(specification.replicas.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")) coordinator=1"
            )
            return "RENDERED (dry run)"
        }
        let daemon = SupervisorControl(directory: directory)
        try await daemon.apply(specification)
        return "DONE"
    }
}

struct DownCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "down",
        abstract: "Stop a cluster started with `autonomous deploy --engine process`."
    )

    @Option(help: "The cluster name (deploy's --target).")
    var target: String = "local"

    func run() async throws {
        let directory = URL(fileURLWithPath: ".autonomous/process/\(target)").standardizedFileURL.path
        let stopped = try await SupervisorControl(directory: directory).stop()
        print(stopped ? "Stopped the '\(target)' cluster; no process is left." : "No '\(target)' cluster is running.")
    }
}

struct SuperviseCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "supervise",
        abstract: "Run a process cluster in the foreground (started by `deploy --engine process`).",
        shouldDisplay: false
    )

    @Option(help: "The cluster's state directory.")
    var state: String

    func run() async throws {
        let logger = makeLogger(CLIEnvironment().logLevel ?? "info")
        try await SupervisorControl(directory: state).runSupervisor(logger: logger)
    }
}
