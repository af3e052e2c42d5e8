import AsyncHTTPClient
import Autonomous
import AutonomousTesting
import Deploy
import Foundation
import NATS
import NIOCore
import NIOHTTP1
import Synchronization
import Testing

/// Drives the `autonomous` command as an operator would.
@Suite("Process deploy engine", .serialized)
struct ProcessEngineTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    static let cli = root.appendingPathComponent(".build/debug/autonomous").path
    static let orderFlow = root.appendingPathComponent(".build/debug/OrderFlow").path

    @discardableResult
    func autonomous(_ arguments: [String], in directory: String) throws -> (status: Int32, output: String) {
        try runAutonomousCLI(arguments, in: directory)
    }

    func pgIsReady(port: Int) throws -> Bool {
        let candidates =
            ["/usr/bin/pg_isready"]
            + ((try? FileManager.default.contentsOfDirectory(atPath: "/usr/lib/postgresql")) ?? []).map {
                "/usr/lib/postgresql/\($0)/bin/pg_isready"
            }
        guard let binary = candidates.first(where: { FileManager.default.isExecutableFile(atPath: $0) }) else {
            throw ConfigurationError("pg_isready not found")
        }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: binary)
        process.arguments = ["-h", "127.0.0.1", "-p", String(port), "-d", "orders", "-U", "postgres"]
        process.standardOutput = FileHandle.nullDevice
        try process.run()
        process.waitUntilExit()
        return process.terminationStatus == 0
    }

    func status(in directory: String) throws -> JSONValue {
        try JSONParser.parse(Array(FileManager.default.contents(atPath: directory + "/.autonomous/process/local/status.json") ?? Data()))
    }

    /// Posts `batch` as NDJSON with an idempotency key, retrying 429/503 and connection errors.
    func post(_ url: String, key: String, lines: [String]) async throws {
        for attempt in 0..<100 {
            var request = HTTPClientRequest(url: url + "/v1/tables/orders/records")
            request.method = .POST
            request.headers.add(name: "Content-Type", value: "application/x-ndjson")
            request.headers.add(name: "Idempotency-Key", value: key)
            request.body = .bytes(ByteBuffer(string: lines.joined(separator: "\n")))
            if let response = try? await HTTPClient.shared.execute(request, timeout: .seconds(30)) {
                _ = try? await response.body.collect(upTo: 1 << 20)
                if response.status.code == 202 { return }
                #expect(response.status.code == 429 || response.status.code == 503, "unexpected \(response.status)")
            }
            try await Task.sleep(for: .milliseconds(100 * min(attempt + 1, 10)))
        }
        throw ConfigurationError("batch \(key) was never accepted")
    }

    @Test("2 ingress, 3 workers, 1 coordinator; scale workers 3 → 1 → 3 under load; exactly once; down leaves nothing")
    func deployScaleDown() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("aut-process-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        // Ingress slots from `port`, health from `port + 100` (the engine's default
        // offset), Postgres at `port + 500`.
        let port = LoopbackPorts.freeBase(spans: [0..<10, 100..<300, 500..<501])
        let postgresPort = port + 500
        try #"""
        {"storages": [{"type": "database", "url": "postgresql://127.0.0.1:\#(postgresPort)/orders", "name": "local-pg"}],
         "deployment": {"engine": "process", "http_port": \#(port), "replicas": {"ingress": 2, "worker": 3}}}
        """#.write(toFile: directory + "/autonomous.json", atomically: true, encoding: .utf8)

        let up = try autonomous(["deploy", Self.orderFlow, "--log-level", "warning"], in: directory)
        #expect(up.status == 0, "\(up.output)")
        #expect(up.output.contains("Deploying 'OrderFlow' to 'local' with process... DONE"))
        #expect(up.output.contains("Live endpoints:"))
        var cluster = try status(in: directory)
        #expect(cluster["processes"]["ingress"].arrayValue?.count == 2)
        #expect(cluster["processes"]["worker"].arrayValue?.count == 3)
        #expect(cluster["processes"]["coordinator"].arrayValue?.count == 1)
        let ingress = (cluster["ingress"].arrayValue ?? []).compactMap(\.stringValue)
        #expect(ingress.count == 2)
        let natsURL = try #require(cluster["natsURL"].stringValue)
        let allPIDs = (cluster["allPIDs"].arrayValue ?? []).compactMap(\.intValue).map { Int32($0) }
        #expect(allPIDs.count == 8, "nats-server, postgres, coordinator, 2 ingress, 3 workers")
        #expect(cluster["postgresURL"] == .string("postgres://postgres@127.0.0.1:\(postgresPort)/orders"))
        #expect(up.output.contains("postgresql://127.0.0.1:\(postgresPort)/orders (local-pg)"))
        #expect(try pgIsReady(port: postgresPort))

        // Traffic on both ingress processes while workers are scaled down and up again.
        let batches = 40
        let perBatch = 500
        let accepted = Counter()
        let load = Task {
            try await withThrowingTaskGroup(of: Void.self) { group in
                for b in 0..<batches {
                    group.addTask {
                        let lines = (0..<perBatch).map { i in
                            #"{"order_id":"o-\#(b)-\#(i)","customer":"c\#(i % 7)","items":[{"sku":"s","quantity":\#(i % 3 + 1),"unit_price":\#(i)}]}"#
                        }
                        try await post(ingress[b % ingress.count], key: "batch-\(b)", lines: lines)
                        accepted.increment()
                    }
                    if b % 4 == 3 { try await group.next() }
                }
                try await group.waitForAll()
            }
        }
        try await Task.sleep(for: .milliseconds(300))
        #expect(accepted.value < batches, "scaling must happen while load is still being sent")
        let down = try autonomous(["deploy", Self.orderFlow, "--scale", "worker=1", "--log-level", "warning"], in: directory)
        #expect(down.status == 0, "\(down.output)")
        #expect(try status(in: directory)["processes"]["worker"].arrayValue?.count == 1)
        try await Task.sleep(for: .milliseconds(300))
        let upAgain = try autonomous(["deploy", Self.orderFlow, "--scale", "worker=3", "--log-level", "warning"], in: directory)
        #expect(upAgain.status == 0, "\(upAgain.output)")
        cluster = try status(in: directory)
        #expect(cluster["processes"]["worker"].arrayValue?.count == 3)
        try await load.value

        // Audit: every accepted order enriched exactly once.
        let total = batches * perBatch
        var configuration = NATSConnection.Configuration(url: natsURL)
        // The cluster's NATS runs with a user per role; tools use `operator`.
        let passwords = try JSONParser.parse(
            Array(FileManager.default.contents(atPath: directory + "/.autonomous/process/local/nats-auth/passwords.json") ?? Data())
        )
        configuration.user = "operator"
        configuration.password = try #require(passwords["operator"].stringValue)
        configuration.connectTimeout = .seconds(5)
        let connection = try await NATSConnection.connect(configuration: configuration, logger: TestNATSServer.logger)
        let enriched = try await StreamAudit.read(
            connection: connection,
            stream: "AUT_DEFAULT_tbl_enriched_orders",
            subject: "aut.default.tbl.enriched_orders",
            atLeast: total,
            timeout: .seconds(120)
        )
        let orders = try await StreamAudit.read(
            connection: connection,
            stream: "AUT_DEFAULT_tbl_orders",
            subject: "aut.default.tbl.orders",
            atLeast: total,
            timeout: .seconds(30)
        )
        await connection.close()
        #expect(orders.count == total)
        #expect(enriched.count == total)
        let ids = enriched.compactMap { try? JSONParser.parse($0.payload)["order_id"].stringValue }
        #expect(Set(ids).count == total, "every order exactly once")
        #expect(Set(enriched.compactMap(\.causedBy)) == Set(orders.compactMap(\.id)))

        let stopped = try autonomous(["down"], in: directory)
        #expect(stopped.status == 0, "\(stopped.output)")
        #expect(stopped.output.contains("no process is left"))
        let finalPIDs = (try status(in: directory)["allPIDs"].arrayValue ?? []).compactMap(\.intValue).map { Int32($0) }
        for pid in Set(allPIDs + finalPIDs) {
            #expect(kill(pid, 0) != 0, "process \(pid) is still running")
        }
        if let data = cluster["postgresData"].stringValue, data.hasPrefix("/var/tmp/autonomous-postgres-") {
            try? FileManager.default.removeItem(atPath: data)
        }
        let again = try autonomous(["down"], in: directory)
        #expect(again.output.contains("No 'local' cluster is running."))
    }

    /// Before the fix the old process on the port answered the readiness check, the engine
    /// said the cluster was up, and the new ingress crash-looped twice a second.
    @Test("A port taken by another process fails the deploy naming the port, instead of reporting the cluster up")
    func portInUse() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("aut-port-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: directory) }
        var specification = ProcessCluster.Specification(app: Self.orderFlow, directory: directory)
        specification.useFreePorts()
        specification.logLevel = "warning"
        // Something else listens where ingress 0 would.
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        try #require(LoopbackPorts.bindLoopback(fd, port: specification.httpPort) == 0 && listen(fd, 8) == 0)
        do {
            let cluster = try await ProcessCluster.up(specification, logger: TestNATSServer.logger)
            await cluster.down()
            Issue.record("the cluster came up with its ingress port taken")
        } catch let error as DeployError {
            #expect(error.message.contains("port \(specification.httpPort) of ingress 0 is in use"), "\(error)")
        }
    }

    @Test("A malformed autonomous.json fails with a message naming the file and path")
    func malformedConfiguration() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("aut-config-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let cases = [
            (
                #"{"deployment": {"engine": "swarm"}}"#,
                "autonomous.json: deployment.engine: unknown engine 'swarm'; expected kubernetes, helm, nomad or process"
            ),
            (
                #"{"storages": [{"type": "database", "name": "pg"}], "deployment": {"engine": "process"}}"#,
                "autonomous.json: storages[0].url: missing"
            ),
            (
                #"{"deployment": {"engine": "process", "replicas": {"worker": true}}}"#,
                "autonomous.json: deployment.replicas.worker: expected an integer, got a boolean"
            ),
        ]
        for (text, message) in cases {
            try text.write(toFile: directory + "/autonomous.json", atomically: true, encoding: .utf8)
            let result = try autonomous(["deploy", Self.orderFlow, "--dry-run"], in: directory)
            #expect(result.status != 0)
            #expect(result.output.contains(message), "\(result.output)")
        }
    }

    @Test("Kubernetes and Nomad deploys render files and say what they would run")
    func renderDryRun() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("aut-render-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        try """
        {"deployment": {"engine": "kubernetes", "target": "production", "image": "registry.example.com/shop/orderflow:1.2.3",
          "replicas": {"ingress": 3, "worker": 4},
          "worker_groups": [{"name": "enrich", "handlers": ["enrich-orders"], "replicas": 2}]}}
        """.write(toFile: directory + "/autonomous.json", atomically: true, encoding: .utf8)
        let manifests = Self.root.appendingPathComponent("deploy/k8s").path
        let k8s = try autonomous(["deploy", Self.orderFlow, "--dry-run", "--manifests", manifests], in: directory)
        #expect(k8s.status == 0, "\(k8s.output)")
        #expect(
            k8s.output.contains("would run: kubectl apply -k .autonomous/deploy/kubernetes-production")
                || k8s.output.contains("kubectl is not installed")
        )
        let kustomization = try String(
            contentsOfFile: directory + "/.autonomous/deploy/kubernetes-production/kustomization.yaml",
            encoding: .utf8
        )
        #expect(kustomization.contains("newTag: \"1.2.3\""))
        let group = try String(contentsOfFile: directory + "/.autonomous/deploy/kubernetes-production/worker-enrich.yaml", encoding: .utf8)
        #expect(group.contains(#"args: ["worker", "--handlers", "enrich-orders"]"#))
        if FileManager.default.fileExists(atPath: directory + "/.autonomous/deploy/kubernetes-production/rendered.yaml") {
            let rendered = try String(
                contentsOfFile: directory + "/.autonomous/deploy/kubernetes-production/rendered.yaml",
                encoding: .utf8
            )
            // Every container runs the image asked for, not the base's (the base renames
            // `autonomous-app`, so the overlay must match the renamed image too).
            let images = rendered.split(separator: "\n").filter { $0.contains("image:") }.map { $0.trimmingCharacters(in: .whitespaces) }
            #expect(images.count >= 4 && Set(images) == ["image: registry.example.com/shop/orderflow:1.2.3"], "\(images)")
            #expect(rendered.contains("name: worker-enrich"))
            // The NATS URL the deploy reports is the one rendered (the production overlay's).
            #expect(rendered.contains("nats://nats.nats.svc.cluster.local:4222"))
            #expect(k8s.output.contains("NATS JetStream: nats://nats.nats.svc.cluster.local:4222"), "\(k8s.output)")
            #expect(rendered.contains("--except-handlers"))
        }
        let unknown = try autonomous(
            ["deploy", Self.orderFlow, "--dry-run", "--engine", "kubernetes", "--target", "mars", "--manifests", manifests],
            in: directory
        )
        #expect(unknown.status != 0)
        #expect(unknown.output.contains("no kustomize overlay 'mars'"))

        try #"{"deployment": {"engine": "nomad", "target": "dc1", "image": "registry.example.com/shop/orderflow:1.2.3"}}"#
            .write(toFile: directory + "/autonomous.json", atomically: true, encoding: .utf8)
        let job = Self.root.appendingPathComponent("deploy/nomad/autonomous.nomad.hcl").path
        let nomad = try autonomous(["deploy", Self.orderFlow, "--dry-run", "--nomad-job", job], in: directory)
        #expect(nomad.status == 0, "\(nomad.output)")
        #expect(nomad.output.contains("nomad job run -var-file=.autonomous/deploy/nomad-dc1/autonomous.vars.hcl \(job)"))
        #expect(nomad.output.contains("NATS JetStream: nats://nats.service.consul:4222"), "the job's default, as rendered: \(nomad.output)")
        let vars = try String(contentsOfFile: directory + "/.autonomous/deploy/nomad-dc1/autonomous.vars.hcl", encoding: .utf8)
        #expect(vars.contains(#"image = "registry.example.com/shop/orderflow:1.2.3""#))
    }
}

extension ProcessEngineTests {
    /// The Helm binary `scripts/install-helm.sh` installs (it installs it when missing).
    static func helmDirectory() throws -> String {
        let directory = root.appendingPathComponent(".build-venv/bin").path
        if !FileManager.default.isExecutableFile(atPath: directory + "/helm") {
            let process = Process()
            process.executableURL = URL(fileURLWithPath: "/bin/bash")
            process.arguments = [root.appendingPathComponent("scripts/install-helm.sh").path, directory]
            process.standardOutput = FileHandle.nullDevice
            try process.run()
            process.waitUntilExit()
            guard process.terminationStatus == 0 else { throw ConfigurationError("scripts/install-helm.sh failed") }
        }
        return directory
    }

    @Test("Helm deploys write a values file from autonomous.json and render the chart with it")
    func helmDryRun() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("aut-helm-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        try """
        {"storages": [{"type": "database", "url": {"secret": "DATABASE_URL"}, "name": "pg"}],
         "deployment": {"engine": "helm", "target": "shop", "namespace": "orders", "image": "registry.example.com/shop/orderflow:1.2.3",
          "nats_url": "nats://nats.messaging:4222", "tenant": "acme", "replicas": {"ingress": 4, "worker": 5, "coordinator": 2},
          "worker_groups": [{"name": "slow_llm", "handlers": ["enrich-orders"], "replicas": 0}]}}
        """.write(toFile: directory + "/autonomous.json", atomically: true, encoding: .utf8)
        let chart = Self.root.appendingPathComponent("deploy/helm/autonomous").path
        let path = try Self.helmDirectory() + ":" + (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin")
        let result = try runAutonomousCLI(
            ["deploy", Self.orderFlow, "--dry-run", "--chart", chart],
            in: directory,
            environment: ["PATH": path]
        )
        #expect(result.status == 0, "\(result.output)")
        let out = directory + "/.autonomous/deploy/helm-shop"
        #expect(
            result.output.contains(
                "would run: helm upgrade --install shop \(chart) --namespace orders -f \(".autonomous/deploy/helm-shop")/values.yaml --create-namespace --wait"
            ),
            "\(result.output)"
        )
        #expect(result.output.contains("NATS JetStream: nats://nats.messaging:4222"), "\(result.output)")
        let rendered = try String(contentsOfFile: out + "/rendered.yaml", encoding: .utf8)
        let images = Set(rendered.split(separator: "\n").filter { $0.contains("image:") }.map { $0.trimmingCharacters(in: .whitespaces) })
        #expect(images == [#"image: "registry.example.com/shop/orderflow:1.2.3""#], "\(images)")
        #expect(rendered.contains("namespace: orders"))
        #expect(rendered.contains(#"AUTONOMOUS_TENANT: "acme""#))
        #expect(rendered.contains(#"AUTONOMOUS_REQUIRE_API_KEY: "true""#))
        #expect(rendered.contains("secretName: autonomous-tls"))
        #expect(rendered.contains(#"args: ["worker","--handlers","enrich-orders"]"#))
        #expect(rendered.contains(#"args: ["worker","--except-handlers","enrich-orders"]"#))
        #expect(rendered.contains("name: shop-autonomous-worker-slow-llm"))
        // Counts from autonomous.json, 0 included (a group switched off).
        #expect(rendered.contains("replicas: 4"))
        #expect(rendered.contains("minReplicas: 5"))
        #expect(rendered.contains("replicas: 0"))
        #expect(rendered.contains("type: RollingUpdate"))

        // A target that cannot be a release name is refused before helm runs.
        let bad = try runAutonomousCLI(
            ["deploy", Self.orderFlow, "--dry-run", "--chart", chart, "--target", "Shop!"],
            in: directory,
            environment: ["PATH": path]
        )
        #expect(bad.status != 0)
        #expect(bad.output.contains("target 'Shop!' is the Helm release name"), "\(bad.output)")
    }
}

final class Counter: Sendable {
    private let count = Mutex(0)
    func increment() { count.withLock { $0 += 1 } }
    var value: Int { count.withLock { $0 } }
}
