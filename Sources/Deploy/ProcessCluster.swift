import AsyncHTTPClient
import ChildProcess
import Foundation
package import Logging
import NATS
import NIOCore
import NIOHTTP1

/// The `process` deploy engine: a whole cluster as supervised processes on this machine —
/// nats-server (unless an external URL is given), coordinators, N ingress and M worker
/// processes of an app binary — with logs under `directory/logs`.
///
/// Children that crash are restarted. ``scale(_:to:)`` adds or drains replicas (SIGTERM, so a
/// stopping worker finishes and acks what it holds); ``down()`` stops everything in reverse
/// dependency order. The fault and load tests drive clusters through this API; the
/// `autonomous` command runs it as a daemon.
package actor ProcessCluster {
    package struct Specification: Sendable, Codable, Equatable {
        /// Path of the app binary.
        package var app: String
        /// Logs, NATS data and coordinator state go here.
        package var directory: String
        package var tenant: String = "default"
        /// An existing NATS; `nil` starts nats-server under `directory/nats`.
        package var natsURL: String?
        /// Ingress `i` listens on `httpPort + i`.
        package var httpPort: Int = 3000
        /// Coordinator 0 serves health and the admin API on `healthPort` (coordinator `n` on
        /// `healthPort + 50 + n`), worker `n` serves health on `healthPort + 1 + n`, ingress `n`
        /// on `healthPort + 90 + n`; all on loopback.
        package var healthPort: Int = 3100
        /// Replicas by role: `ingress`, `worker`, `worker-<group>` for worker groups, and
        /// `coordinator` (default 1; more run as standbys, which needs Postgres).
        package var replicas: [String: Int] = ["ingress": 1, "worker": 1]
        /// Handlers of each worker group (role `worker-<group>` runs only these).
        package var workerGroups: [String: [String]] = [:]
        /// Extra environment for every child (secrets come from here or the parent's environment).
        package var environment: [String: String] = [:]
        /// Log level of the children.
        package var logLevel: String = "info"
        /// nats-server nodes to run when `natsURL` is nil: 1, or 3 for a JetStream cluster
        /// whose streams get 3 replicas.
        package var natsNodes: Int = 1
        /// A local PostgreSQL to run for the app (`autonomous.json` storage on 127.0.0.1).
        package var postgres: Postgres?
        /// When the engine runs nats-server itself: run it with ``NATSAuthorization`` (one user
        /// per role, a producer user per tenant; passwords in `directory/nats-auth`).
        package var natsAuthorization = true
        /// Tenants besides `tenant` that get a producer user.
        package var producerTenants: [String] = []
        /// An app written in Python: its Swift roles run `serve <role> <graph>` of this
        /// `autonomous` binary (``app`` is then that binary), from the graph file `graph`.
        package var serveGraph: String?
        /// The Python module whose workers run the app's Python handlers and routes (role
        /// `python-worker`: `python -m autonomous worker <module>`): the app itself, or, for a
        /// Swift app that names Python handlers, the module with their functions.
        package var pythonApp: String?
        /// The Python interpreter of the `python-worker` role (with the package installed;
        /// `nil`: `python3`).
        package var python: String?
        /// For a Swift app's Python handlers: the app's graph (`describe`), passed as `--graph`.
        package var pythonGraph: String?

        package struct Postgres: Sendable, Codable, Equatable {
            package var port: Int
            package var database: String
            package init(port: Int, database: String) {
                self.port = port
                self.database = database
            }
        }

        package init(app: String, directory: String) {
            self.app = app
            self.directory = directory
        }
    }

    struct Child {
        let slot: Int
        let process: OwnedProcess
        let port: Int
        let started = ContinuousClock.now
        /// Set once the child is seen exited: when its replacement starts.
        var restartAt: ContinuousClock.Instant?
        /// Sent a signal through ``ProcessCluster/signal(_:role:slot:)``: an exit someone asked
        /// for, restarted at once and not counted as a crash loop.
        var signalled = false
    }

    package nonisolated let specification: Specification
    /// The NATS servers, without credentials (what the children and status.json get).
    package nonisolated let natsURL: String
    /// NATS users and their passwords when the cluster runs with ``NATSAuthorization``.
    package nonisolated let natsPasswords: [String: String]
    private let logger: Logger
    private var natsNodes: [NATSServerProcess] = []
    private var nats: NATSServerProcess? { natsNodes.first }
    private let postgres: LocalPostgres?
    private var children: [String: [Int: Child]] = [:]
    private var desired: [String: Int] = [:]
    /// Restarts children that exit (every 250 ms); started by `up`, ended by `down`.
    private var monitor: Task<Void, Never>?
    private var stopping = false
    package private(set) var restarts = 0
    /// Per role and slot: how soon a child that keeps exiting is started again.
    private var backoffs: [String: RestartBackoff] = [:]

    private init(
        specification: Specification,
        natsURL: String,
        natsPasswords: [String: String],
        nats: [NATSServerProcess],
        postgres: LocalPostgres?,
        logger: Logger
    ) {
        self.specification = specification
        self.natsURL = natsURL
        self.natsPasswords = natsPasswords
        self.natsNodes = nats
        self.postgres = postgres
        self.logger = logger
    }

    /// Starts the cluster and returns once every process is ready.
    package static func up(_ specification: Specification, logger: Logger) async throws -> ProcessCluster {
        guard FileManager.default.isExecutableFile(atPath: specification.app) else {
            throw DeployError("app binary \(specification.app) does not exist or is not executable")
        }
        try FileManager.default.createDirectory(atPath: specification.directory + "/logs", withIntermediateDirectories: true)
        var nats: [NATSServerProcess] = []
        let url: String
        var passwords: [String: String] = [:]
        var authorization: [String] = []
        if specification.natsURL == nil && specification.natsAuthorization {
            let directory = specification.directory + "/nats-auth"
            let users = NATSAuthorization.users(producerTenants: [specification.tenant] + specification.producerTenants)
            passwords = try NATSAuthorization.passwords(for: users, in: directory)
            let file = directory + "/authorization.conf"
            let text = NATSAuthorization.render(users: users) { "\"\(passwords[$0] ?? "")\"" }
            try NATSAuthorization.writePrivate(Data(text.utf8), to: file)
            authorization = ["-c", file]
        }
        if let external = specification.natsURL {
            url = external
        } else if specification.natsNodes > 1 {
            // A JetStream cluster on loopback: fixed route ports, client ports picked by each node.
            // The app's own ports are not bound yet, so a free base could still be one of
            // them: keep the routes clear of the HTTP and health ranges.
            let reserved =
                min(specification.httpPort, specification.healthPort)..<(max(specification.httpPort, specification.healthPort) + 300)
            var routeBase = LoopbackPorts.freeBase(spans: [0..<specification.natsNodes])
            for _ in 0..<100 where (routeBase..<(routeBase + specification.natsNodes)).overlaps(reserved) {
                routeBase = LoopbackPorts.freeBase(spans: [0..<specification.natsNodes])
            }
            let routes = (0..<specification.natsNodes).map { "nats://127.0.0.1:\(routeBase + $0)" }.joined(separator: ",")
            do {
                for node in 0..<specification.natsNodes {
                    nats.append(
                        try await NATSServerProcess.start(
                            directory: specification.directory + "/nats-\(node)",
                            extraArguments: [
                                "-n", "node\(node)", "--cluster_name", "autonomous",
                                "--cluster", "nats://127.0.0.1:\(routeBase + node)", "--routes", routes,
                            ] + authorization,
                            logger: logger
                        )
                    )
                }
            } catch {
                for node in nats { await node.stop() }
                throw error
            }
            url = nats.map(\.url).joined(separator: ",")
        } else {
            let server = try await NATSServerProcess.start(
                directory: specification.directory + "/nats",
                extraArguments: authorization,
                logger: logger
            )
            nats = [server]
            url = server.url
        }
        var postgres: LocalPostgres?
        if let database = specification.postgres {
            do {
                postgres = try await LocalPostgres.start(
                    directory: specification.directory + "/postgres",
                    port: database.port,
                    database: database.database,
                    logger: logger
                )
            } catch {
                for node in nats { await node.stop() }
                throw error
            }
        }
        let cluster = ProcessCluster(
            specification: specification,
            natsURL: url,
            natsPasswords: passwords,
            nats: nats,
            postgres: postgres,
            logger: logger
        )
        do {
            try await cluster.start()
        } catch {
            await cluster.down()
            throw error
        }
        return cluster
    }

    private func start() async throws {
        try await scale("coordinator", to: specification.replicas["coordinator"] ?? 1)
        for (role, count) in specification.replicas.sorted(by: { $0.key < $1.key }) where role != "ingress" && role != "coordinator" {
            try await scale(role, to: count)
        }
        try await scale("ingress", to: specification.replicas["ingress"] ?? 1)
        let interval = Duration.milliseconds(250)
        monitor = Task { [weak self] in
            while !Task.isCancelled {
                try? await Task.sleep(for: interval)
                await self?.restartCrashed()
            }
        }
    }

    /// Roles and their running process ids.
    package func processIDs() -> [String: [Int32]] {
        children.mapValues { $0.values.sorted { $0.slot < $1.slot }.map(\.process.processIdentifier) }
    }

    /// Every process id of the cluster, nats-server included.
    package func allProcessIDs() -> [Int32] {
        children.values.flatMap { $0.values.map(\.process.processIdentifier) } + natsNodes.map(\.processIdentifier)
            + (postgres?.processIdentifier.map { [$0] } ?? [])
    }

    /// The NATS servers with the `operator` user's credentials in each URL (for tools and
    /// tests; never given to the children), or ``natsURL`` when the cluster runs NATS open.
    package nonisolated var operatorURL: String { url(for: "operator") }

    /// The NATS servers with `user`'s credentials (``natsURL`` when that user has none).
    package nonisolated func url(for user: String) -> String {
        guard let password = natsPasswords[user] else { return natsURL }
        return natsURL.split(separator: ",").map { server in
            guard let scheme = server.range(of: "://") else { return "nats://\(user):\(password)@\(server)" }
            return "\(server[..<scheme.upperBound])\(user):\(password)@\(server[scheme.upperBound...])"
        }.joined(separator: ",")
    }

    /// The local PostgreSQL's URL, when the cluster runs one.
    package nonisolated var postgresURL: String? { postgres?.url }

    /// Where the local PostgreSQL keeps its data (kept by `down`).
    package nonisolated var postgresDataDirectory: String? { postgres?.dataDirectory }

    /// The ingress base URLs, by slot.
    package func ingressURLs() -> [String] {
        let scheme = (specification.environment["AUTONOMOUS_TLS_CERT"] ?? "").isEmpty ? "http" : "https"
        return (children["ingress"] ?? [:]).values.sorted { $0.slot < $1.slot }.map { "\(scheme)://127.0.0.1:\($0.port)" }
    }

    /// Where each ingress serves `/metrics` (its health port, on loopback).
    package func ingressHealthURLs() -> [String] {
        (children["ingress"] ?? [:]).values.sorted { $0.slot < $1.slot }.map {
            "http://127.0.0.1:\(Self.ingressHealthPort(healthPort: specification.healthPort, slot: $0.slot))"
        }
    }

    /// Ingress `n`'s health port: `healthPort + 90 + n` (workers take `+1…+49`, coordinators
    /// `+50…`).
    static func ingressHealthPort(healthPort: Int, slot: Int) -> Int { healthPort + 90 + slot }

    package func replicas(of role: String) -> Int { children[role]?.count ?? 0 }

    /// Changes the number of replicas of `role`, waiting until new ones are ready and removed
    /// ones have drained and exited.
    package func scale(_ role: String, to count: Int) async throws {
        guard role == "ingress" || role == "worker" || role == "coordinator" || role.hasPrefix("worker-") || role == Self.pythonRole else {
            throw DeployError("unknown role '\(role)'; expected ingress, worker, worker-<group>, python-worker or coordinator")
        }
        if role == Self.pythonRole, specification.pythonApp == nil, count > 0 {
            throw DeployError("python-worker: the app has no Python module to run (a Python app, or deployment.python_app)")
        }
        if role == Self.pythonRole, count > 29 { throw DeployError("invalid replica count \(count) for python-worker (up to 29)") }
        if role.hasPrefix("worker-") && specification.workerGroups[String(role.dropFirst("worker-".count))] == nil {
            throw DeployError("unknown worker group '\(role.dropFirst("worker-".count))'")
        }
        guard count >= 0, count <= (role == "ingress" ? 10 : 49), role != "coordinator" || count >= 1 else {
            throw DeployError("invalid replica count \(count) for \(role) (ingress: 0 to 10; others: up to 49)")
        }
        desired[role] = count
        var current = children[role] ?? [:]
        while current.count > count, let slot = current.keys.max() {
            let child = current.removeValue(forKey: slot)!
            children[role] = current
            await Self.terminate(child.process, timeout: .seconds(60))
        }
        var started: [Child] = []
        while current.count < count {
            let slot = (0...).first { current[$0] == nil }!
            let child = try await launch(role: role, slot: slot)
            current[slot] = child
            children[role] = current
            started.append(child)
        }
        for child in started { try await waitUntilReady(role: role, child: child) }
    }

    private func port(role: String, slot: Int) -> Int {
        switch role {
        case "ingress": return specification.httpPort + slot
        case "coordinator": return slot == 0 ? specification.healthPort : specification.healthPort + 50 + slot
        case "worker": return specification.healthPort + 1 + slot
        case Self.pythonRole: return specification.healthPort + 60 + slot
        default:
            let groups = specification.workerGroups.keys.sorted()
            let index = groups.firstIndex(of: String(role.dropFirst("worker-".count))) ?? 0
            return specification.healthPort + 100 * (index + 1) + slot
        }
    }

    private func launch(role: String, slot: Int) async throws -> Child {
        let port = port(role: role, slot: slot)
        // Another process on the port would answer the readiness check in this one's place
        // while this one exits at startup, again and again.
        var ports = [port]
        if role == "ingress" { ports.append(Self.ingressHealthPort(healthPort: specification.healthPort, slot: slot)) }
        for taken in ports where !LoopbackPorts.isFree(taken) {
            throw DeployError("port \(taken) of \(role) \(slot) is in use by another process; stop it or choose other ports (http_port)")
        }
        let logPath = "\(specification.directory)/logs/\(role)-\(slot).log"
        if role == Self.pythonRole { return try await launchPython(slot: slot, port: port, logPath: logPath) }
        var arguments = [
            role.hasPrefix("worker") ? "worker" : role,
            "--nats-url", natsURL,
            "--tenant", specification.tenant,
            "--log-level", specification.logLevel,
            "--data-dir", "\(specification.directory)/\(role)-\(slot)",
        ]
        if role == "ingress" {
            arguments += [
                "--port", String(port), "--health-port", String(Self.ingressHealthPort(healthPort: specification.healthPort, slot: slot)),
            ]
        } else {
            arguments += ["--health-port", String(port)]
        }
        if role.hasPrefix("worker-"), let handlers = specification.workerGroups[String(role.dropFirst("worker-".count))] {
            arguments += ["--handlers", handlers.joined(separator: ",")]
        } else if role == "worker", !specification.workerGroups.isEmpty {
            arguments += ["--except-handlers", specification.workerGroups.values.flatMap { $0 }.sorted().joined(separator: ",")]
        }
        var environment = ProcessInfo.processInfo.environment.merging(specification.environment) { _, new in new }
        if specification.natsNodes > 1 && specification.natsURL == nil {
            environment["AUTONOMOUS_STREAM_REPLICAS"] = String(min(3, specification.natsNodes))
        }
        if let postgres { environment["AUTONOMOUS_POSTGRES_URL"] = postgres.url }
        // The role's own NATS user, in the environment (never in arguments `ps` shows).
        let user = role.hasPrefix("worker") ? "worker" : role
        if let password = natsPasswords[user] {
            environment["AUTONOMOUS_NATS_USER"] = user
            environment["AUTONOMOUS_NATS_PASSWORD"] = password
        }
        if environment["LD_PRELOAD"] == nil, environment["AUTONOMOUS_ALLOCATOR"] != "system", let jemalloc = Self.jemalloc {
            // glibc's malloc is the largest single cost of the record hot path (issue 6):
            // jemalloc, where installed, made scenario a about 15 % faster.
            environment["LD_PRELOAD"] = jemalloc
        }
        if let graph = specification.serveGraph { arguments = ["serve"] + [arguments[0], graph] + arguments.dropFirst() }
        let process = try await OwnedProcess.start(
            specification.app,
            arguments: arguments,
            environment: environment,
            output: .file(logPath)
        )
        logger.info(
            "Started",
            metadata: ["deploy.role": "\(role)", "deploy.slot": "\(slot)", "deploy.pid": "\(process.processIdentifier)"]
        )
        return Child(slot: slot, process: process, port: port)
    }

    /// The role of the Python worker processes.
    package static let pythonRole = "python-worker"

    /// A Python worker: `python -m autonomous worker <module>`, configured through its
    /// environment, with its health port (`/readyz` once its consumers are bound).
    private func launchPython(slot: Int, port: Int, logPath: String) async throws -> Child {
        guard let module = specification.pythonApp else { throw DeployError("python-worker: no Python module") }
        var environment = ProcessInfo.processInfo.environment.merging(specification.environment) { _, new in new }
        environment["AUTONOMOUS_NATS_URL"] = natsURL
        environment["AUTONOMOUS_TENANT"] = specification.tenant
        environment["AUTONOMOUS_HEALTH_PORT"] = String(port)
        environment["AUTONOMOUS_HEALTH_HOST"] = "127.0.0.1"
        environment["AUTONOMOUS_LOG_LEVEL"] = specification.logLevel
        if let password = natsPasswords["worker"] {
            environment["AUTONOMOUS_NATS_USER"] = "worker"
            environment["AUTONOMOUS_NATS_PASSWORD"] = password
        }
        let arguments = ["-m", "autonomous", "worker", module] + (specification.pythonGraph.map { ["--graph", $0] } ?? [])
        let process = try await OwnedProcess.start(
            specification.python ?? "python3",
            arguments: arguments,
            environment: environment,
            output: .file(logPath)
        )
        logger.info(
            "Started",
            metadata: ["deploy.role": "\(Self.pythonRole)", "deploy.slot": "\(slot)", "deploy.pid": "\(process.processIdentifier)"]
        )
        return Child(slot: slot, process: process, port: port)
    }

    private func waitUntilReady(role: String, child: Child, timeout: Duration = .seconds(60)) async throws {
        let clock = ContinuousClock()
        let deadline = clock.now.advanced(by: timeout)
        // An ingress is asked on its health port, which stays plain HTTP when the ingress
        // serves HTTPS (AUTONOMOUS_TLS_CERT).
        let port = role == "ingress" ? Self.ingressHealthPort(healthPort: specification.healthPort, slot: child.slot) : child.port
        let url = "http://127.0.0.1:\(port)/readyz"
        while clock.now < deadline {
            guard child.process.isRunning else {
                throw DeployError("\(role) \(child.slot) exited at startup; see \(specification.directory)/logs/\(role)-\(child.slot).log")
            }
            if let response = try? await HTTPClient.shared.execute(HTTPClientRequest(url: url), timeout: .seconds(1)),
                response.status.code == 200
            {
                // Ready, and still ours: the answer came from the process we started.
                try await Task.sleep(for: .milliseconds(200))
                guard child.process.isRunning else {
                    throw DeployError(
                        "\(role) \(child.slot) exited at startup; see \(specification.directory)/logs/\(role)-\(child.slot).log"
                    )
                }
                return
            }
            try await Task.sleep(for: .milliseconds(100))
        }
        throw DeployError(
            "\(role) \(child.slot) was not ready within \(timeout); see \(specification.directory)/logs/\(role)-\(child.slot).log"
        )
    }

    /// Restarts children that exited, each after its ``RestartBackoff`` delay: at once after a
    /// run of a while, later and later while it keeps exiting soon after it starts.
    private func restartCrashed() async {
        guard !stopping else { return }
        let now = ContinuousClock.now
        for (role, slots) in children {
            for (slot, child) in slots where !child.process.isRunning {
                let key = "\(role)-\(slot)"
                guard let restartAt = child.restartAt else {
                    let delay =
                        child.signalled ? .zero : backoffs[key, default: RestartBackoff()].delay(afterRunning: now - child.started)
                    children[role]?[slot]?.restartAt = now + delay
                    logger.warning(
                        "Process exited; restarting",
                        metadata: [
                            "deploy.role": "\(role)", "deploy.slot": "\(slot)",
                            "deploy.status": "\(child.process.terminationStatus.map(String.init) ?? "exited")",
                            "deploy.restart_in": "\(delay)",
                        ]
                    )
                    continue
                }
                guard now >= restartAt else { continue }
                restarts += 1
                if let replacement = try? await launch(role: role, slot: slot) {
                    // The cluster may have been stopped or scaled down while it started.
                    guard !stopping, children[role]?[slot] != nil else {
                        await Self.terminate(replacement.process, timeout: .seconds(60))
                        continue
                    }
                    children[role]?[slot] = replacement
                } else {
                    children[role]?[slot]?.restartAt = nil
                }
            }
        }
    }

    /// Stops the embedded nats-server (fault tests). The app processes keep running and
    /// reconnect once ``restartNATS()`` brings it back.
    package func stopNATS(kill: Bool = false) async throws {
        guard let nats else { throw DeployError("the cluster uses an external NATS") }
        if kill { await nats.kill9() } else { await nats.stop() }
    }

    /// Starts the embedded nats-server again on the same port and data directory.
    package func restartNATS() async throws {
        guard let old = nats else { throw DeployError("the cluster uses an external NATS") }
        guard let port = URLComponents(string: natsURL)?.port else { throw DeployError("cannot read the NATS port from \(natsURL)") }
        if old.isRunning { await old.stop() }
        natsNodes[0] = try await NATSServerProcess.start(directory: old.directory, port: port, logger: logger)
    }

    /// Sends `signal` to one replica (fault tests); the supervisor restarts it if it dies.
    package func signal(_ signal: Int32, role: String, slot: Int) {
        guard let child = children[role]?[slot] else { return }
        children[role]?[slot]?.signalled = true
        child.process.send(signal)
    }

    /// Stops everything: ingress first, then Python and Swift workers, then the coordinator, then nats-server.
    package func down() async {
        stopping = true
        // The monitor is owned by the cluster: cancelled and awaited here, so nothing of the
        // cluster runs after `down` returns.
        if let monitor {
            monitor.cancel()
            await monitor.value
            self.monitor = nil
        }
        // Python workers before Swift workers: both drain; the storages' sinks run in the latter.
        let order = ["ingress", Self.pythonRole] + children.keys.filter { $0.hasPrefix("worker") }.sorted() + ["coordinator"]
        for role in order {
            let stopping = (children.removeValue(forKey: role) ?? [:]).values.map(\.process)
            await withTaskGroup(of: Void.self) { group in
                for process in stopping {
                    group.addTask { await Self.terminate(process, timeout: .seconds(60)) }
                }
            }
        }
        await postgres?.stop()
        for node in natsNodes { await node.stop() }
    }

    /// Kills one node of the NATS cluster with SIGKILL (fault tests).
    package func killNATSNode(_ node: Int) async {
        guard natsNodes.indices.contains(node) else { return }
        await natsNodes[node].kill9()
    }

    /// SIGTERM, then SIGKILL after `timeout`; returns once the process is reaped.
    static func terminate(_ process: OwnedProcess, timeout: Duration) async {
        await process.stop(timeout: timeout)
    }
}

/// How soon a supervised process that exited is started again: at once when it had run for
/// `healthyAfter`, else after `initial`, doubling with each quick exit up to `maximum`. A
/// process that crash-loops (a port in use, a poison record) is restarted a few times a
/// minute, not many times a second.
package struct RestartBackoff: Sendable, Equatable {
    package var initial: Duration = .seconds(1)
    package var maximum: Duration = .seconds(30)
    package var healthyAfter: Duration = .seconds(30)
    /// Quick exits in a row so far.
    package private(set) var quickExits = 0

    package init() {}

    /// The delay before the next start of a process that exited after running `ran`.
    package mutating func delay(afterRunning ran: Duration) -> Duration {
        if ran >= healthyAfter {
            quickExits = 0
            return .zero
        }
        quickExits += 1
        var delay = initial
        for _ in 1..<quickExits where delay < maximum { delay *= 2 }
        return min(delay, maximum)
    }
}

/// A deployment failed; the message says what to fix.
package struct DeployError: Error, Sendable, CustomStringConvertible {
    package var message: String
    package init(_ message: String) { self.message = message }
    package var description: String { message }
}

extension ProcessCluster {
    /// jemalloc's shared library when the system has it (Debian package `libjemalloc2`).
    package static let jemalloc: String? = {
        #if arch(x86_64)
        let candidates = ["/usr/lib/x86_64-linux-gnu/libjemalloc.so.2", "/usr/lib64/libjemalloc.so.2", "/usr/local/lib/libjemalloc.so.2"]
        #else
        let candidates = ["/usr/lib/aarch64-linux-gnu/libjemalloc.so.2", "/usr/lib64/libjemalloc.so.2", "/usr/local/lib/libjemalloc.so.2"]
        #endif
        return candidates.first { FileManager.default.isReadableFile(atPath: $0) }
    }()
}
