import ClusterCore
import Deploy
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

@Suite("autonomous.json")
struct DeploymentConfigurationTests {
    func problems(_ text: String) -> [String] {
        do {
            _ = try DeploymentConfiguration.parse(Array(text.utf8), file: "autonomous.json")
            return []
        } catch {
            return error.problems
        }
    }

    @Test("The original README's file parses")
    func originalExample() throws {
        let text = """
            {
              "storages": [
                {"type": "database", "url": "postgresql://localhost/db", "name": "local-pg"},
                {"type": "file", "url": "s3://bucket/path", "name": "s3-fs"}
              ],
              "runtimes": [{"dockerfile": "docker/DOCKERFILE", "name": "custom-node"}],
              "deployment": {"engine": "kubernetes", "target": "local"}
            }
            """
        let configuration = try DeploymentConfiguration.parse(Array(text.utf8))
        #expect(configuration.storages.count == 2)
        #expect(configuration.storages[0].url == .plain("postgresql://localhost/db"))
        #expect(configuration.deployment.engine == .kubernetes)
        #expect(configuration.deployment.target == "local")
    }

    @Test("Replicas, worker groups and secret references")
    func fullDeployment() throws {
        let text = """
            {"storages": [{"type": "database", "url": {"secret": "DATABASE_URL"}, "name": "pg"}],
             "deployment": {"engine": "process", "replicas": {"ingress": 2, "worker": 3, "coordinator": 1},
                            "worker_groups": [{"name": "llm", "handlers": ["openai-completion-prompts"], "replicas": 2}]}}
            """
        let configuration = try DeploymentConfiguration.parse(Array(text.utf8))
        #expect(configuration.storages[0].url == .secret("DATABASE_URL"))
        #expect(configuration.deployment.replicas["worker"] == 3)
        #expect(configuration.deployment.workerGroups.first?.handlers == ["openai-completion-prompts"])
    }

    @Test(
        "Malformed files name the path and the problem",
        arguments: [
            (
                #"{"deployment": {"engine": "docker"}}"#,
                "deployment.engine: unknown engine 'docker'; expected kubernetes, helm, nomad or process"
            ),
            (#"{"storages": [{"type": "database", "name": "pg"}]}"#, "storages[0].url: missing"),
            (#"{"storages": {"type": "database"}}"#, "storages: expected an array, got an object"),
            (#"{"storages": [{"type": 5, "url": "postgres://h/db", "name": "pg"}]}"#, "storages[0].type: expected a string, got a number"),
            (
                #"{"storages": [{"type": "database", "url": "postgres://u:hunter2@h/db", "name": "pg"}]}"#,
                "storages[0].url: contains a password"
            ),
            (
                #"{"storages": [{"type": "database", "url": "mysql://h/db", "name": "pg"}]}"#,
                "storages[0].url: a database URL must start with"
            ),
            (
                #"{"deployment": {"engine": "process", "replicas": {"worker": "three"}}}"#,
                "deployment.replicas.worker: expected an integer, got a string"
            ),
            (
                #"{"deployment": {"engine": "process", "replicas": {"coordinator": 2}}}"#,
                "deployment.replicas.coordinator: more than one coordinator needs a shared Postgres"
            ),
            (
                #"{"deployment": {"engine": "process", "replicas": {"coordinator": 9}}}"#,
                "deployment.replicas.coordinator: must be between 1 and 5"
            ),
            (
                #"{"deployment": {"engine": "process", "worker_groups": [{"name": "g"}]}}"#,
                "deployment.worker_groups[0].handlers: expected a non-empty array"
            ),
            (#"{"deployment": {"engine": "process", "tenant": "Acme"}}"#, "deployment.tenant: tenant name 'Acme'"),
            (#"{"storage": []}"#, "$.storage: unknown key"),
            (#"{"deployment": {}}"#, "deployment.engine: missing"),
        ]
    )
    func malformed(text: String, expected: String) {
        let found = problems(text)
        #expect(found.contains { $0.hasPrefix(expected) }, "\(found)")
    }

    @Test("Syntax errors give the line and column")
    func syntax() {
        let found = problems("{\n  \"deployment\": {\n    \"engine\": \"process\",\n  }\n}")
        #expect(found == ["line 4, column 3: expected a string key in object"])
    }

    @Test("The error message names the file")
    func fileName() {
        do {
            _ = try DeploymentConfiguration.parse(Array(#"{"deployment": 1}"#.utf8), file: "ops/autonomous.json")
            Issue.record("expected an error")
        } catch {
            #expect(error.description == "ops/autonomous.json: deployment: expected an object, got a number")
        }
    }
}

@Suite("App description")
struct AppDescriptionTests {
    @Test("A handler's consumer is on its source table's stream, a schedule's on the tenant stream")
    func handlerStreams() throws {
        var app = AppBuilder(name: "Streams")
        let orders = app.table("orders")
        _ = app.table("enriched")
        orders.onNewRecords("enrich") { _, _ in }
        app.schedule("nightly", .daily(at: "03:00")) { _, _ in }
        // `describe` runs for one tenant; the deploy renders for another.
        let description = try AppDescription.decode(try app.build().description(tenant: "default").encoded())
        #expect(description.streamName(of: "enrich", tenant: "acme") == "AUT_ACME_tbl_orders")
        let schedule = try #require(description.handlers.first { $0.name != "enrich" }?.name)
        #expect(description.streamName(of: schedule, tenant: "acme") == "AUT_ACME")
        #expect(Wire.tableStreamName(tenant: "a_1", table: "x") != Wire.tableStreamName(tenant: "a", table: "1_x"))
    }

    @Test("Without replicas in autonomous.json the overlay's own counts stand: Kubernetes gets no replica patch, Nomad the job's defaults")
    func replicasOnlyWhenGiven() throws {
        var app = AppBuilder(name: "Counts")
        _ = app.table("orders")
        let description = try AppDescription.decode(try app.build().description(tenant: "default").encoded())
        let manifests = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("deploy/k8s").path
        var deployment = DeploymentConfiguration().deployment
        deployment.target = "production"
        let files = try KubernetesRenderer.render(app: description, deployment: deployment, manifests: manifests, outputDirectory: "/tmp/x")
        let kustomization = try #require(files["kustomization.yaml"])
        #expect(!kustomization.contains("/spec/replicas"), "\(kustomization)")
        let nomad = try #require(try NomadRenderer.render(app: description, deployment: deployment)["autonomous.vars.hcl"])
        #expect(nomad.contains("ingress_count = 2") && nomad.contains("worker_count = 2"), "\(nomad)")
        // Given, they are rendered.
        deployment.replicas = ["ingress": 5]
        let given = try #require(
            try KubernetesRenderer.render(app: description, deployment: deployment, manifests: manifests, outputDirectory: "/tmp/x")[
                "kustomization.yaml"
            ]
        )
        #expect(given.contains("\"5\"") || given.contains(" 5"), "\(given)")
    }

    @Test("A graph of a newer format, or of none, is refused with a message saying why")
    func versions() throws {
        var app = AppBuilder(name: "Versions")
        _ = app.table("orders")
        var description = try app.build().description(tenant: "default")
        description.formatVersion = AppDescription.currentFormatVersion + 1
        #expect(throws: ConfigurationError.self) { try AppDescription.decode(description.encoded()) }
        do {
            _ = try AppDescription.decode(description.encoded())
        } catch {
            #expect("\(error)".contains("format \(AppDescription.currentFormatVersion + 1)"))
        }
        #expect(throws: ConfigurationError.self) { try AppDescription.decode(Data(#"{"app":"old","tables":[]}"#.utf8)) }
    }
}

@Suite("Loopback ports")
struct LoopbackPortsTests {
    @Test("A port a server listens on is not free; a picked base is below the ephemeral range")
    func listening() throws {
        let base = LoopbackPorts.freeBase(spans: [0..<3])
        #expect((10_000..<30_000).contains(base))
        #expect(LoopbackPorts.isFree(base))
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        try #require(LoopbackPorts.bindLoopback(fd, port: base) == 0 && listen(fd, 1) == 0)
        #expect(!LoopbackPorts.isFree(base))
        #expect(!LoopbackPorts.isFree(0) && !LoopbackPorts.isFree(70_000))
    }

    /// Before the fix the process engine restarted a crash-looping child every 250 ms.
    @Test("A process that keeps exiting soon after it starts is restarted later and later; one that ran a while at once")
    func restartBackoff() {
        var backoff = RestartBackoff()
        let quick = Duration.seconds(2)
        let delays = (0..<7).map { _ in backoff.delay(afterRunning: quick) }
        #expect(delays == [.seconds(1), .seconds(2), .seconds(4), .seconds(8), .seconds(16), .seconds(30), .seconds(30)])
        #expect(backoff.delay(afterRunning: .seconds(45)) == .zero, "a run of a while starts over")
        #expect(backoff.quickExits == 0)
        #expect(backoff.delay(afterRunning: quick) == .seconds(1))
    }
}

@Suite("NATS users")
struct NATSUsersTests {
    @Test("Producers may publish only their tenant's records and read only their own inbox; roles never get the whole server")
    func users() {
        let users = NATSAuthorization.users(producerTenants: ["acme", "BAD NAME"])
        let producer = users.first { $0.name == "producer-acme" }
        #expect(producer?.publish == ["aut.acme.tbl.>"])
        #expect(producer?.subscribe == ["_INBOX_acme.>"])
        #expect(!users.contains { $0.name.contains("BAD") }, "an invalid tenant name never reaches the configuration")
        for role in ["coordinator", "ingress", "worker"] {
            let user = users.first { $0.name == role }
            #expect(user != nil)
            #expect(!(user?.publish.contains(">") ?? true) && !(user?.subscribe.contains(">") ?? true), "\(role)")
        }
        // The ingress makes only ephemeral readers: no durable consumer, no stream change.
        let ingressPublish = users.first { $0.name == "ingress" }?.publish ?? []
        #expect(
            !ingressPublish.contains {
                $0.contains("DURABLE") || $0.hasPrefix("$JS.API.STREAM.DELETE") || $0.hasPrefix("$JS.API.STREAM.UPDATE")
            }
        )
        #expect(!ingressPublish.contains { $0.hasPrefix("$JS.API.CONSUMER.CREATE") && $0 != "$JS.API.CONSUMER.CREATE.*" })
        #expect(!ingressPublish.contains("$JS.ACK.>") && !ingressPublish.contains("$JS.API.>"))
        let text = NATSAuthorization.render(users: users) { "$" + NATSAuthorization.passwordVariable(of: $0) }
        #expect(text.contains("password: $NATS_PASSWORD_PRODUCER_ACME"))
        #expect(text.contains(#"subscribe: {allow: ["_INBOX_acme.>"]}"#))
    }

    @Test("A Python app on Kubernetes: python-worker Deployment with its image, Swift roles serving the mounted graph")
    func kubernetesPython() throws {
        var app = AppBuilder(name: "Py")
        let orders = app.table("orders")
        orders.onNewRecords("score", runsIn: .python)
        let description = try AppDescription.decode(try app.build().description(tenant: "default").encoded())
        let manifests = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("deploy/k8s").path
        let out = FileManager.default.temporaryDirectory.appendingPathComponent("aut-py-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: out) }
        var deployment = DeploymentConfiguration().deployment
        deployment.target = "production"
        deployment.replicas["python-worker"] = 3
        let python = PythonDeployment(graph: description.encoded(), module: "/app/main.py", isPythonApp: true)
        #expect(throws: DeployError.self) {
            try KubernetesRenderer.render(
                app: description,
                deployment: deployment,
                manifests: manifests,
                outputDirectory: out,
                python: python
            )
        }
        deployment.pythonImage = "registry.example.com/py:1"
        let files = try KubernetesRenderer.render(
            app: description,
            deployment: deployment,
            manifests: manifests,
            outputDirectory: out,
            python: python
        )
        let worker = try #require(files["python-worker.yaml"])
        #expect(worker.contains("name: python-worker\n"))
        #expect(worker.contains("command: [\"python\"]\n          args: [\"-m\", \"autonomous\", \"worker\", \"/app/main.py\"]"))
        #expect(worker.contains("replicas: 3\n"))
        #expect(worker.contains("AUTONOMOUS_HEALTH_HOST"))
        let kustomization = try #require(files["kustomization.yaml"])
        #expect(kustomization.contains("  - name: autonomous-python\n    newName: registry.example.com/py\n    newTag: \"1\""))
        #expect(kustomization.contains("value: [\"serve\", \"ingress\", \"/etc/autonomous/graph/graph.json\"]"))
        #expect(kustomization.contains("  - name: autonomous-graph\n    files:\n      - graph.json"))
        #expect(files["graph.json"] == String(decoding: description.encoded(), as: UTF8.self))
        // A Swift app's Python workers get the graph mounted and passed as --graph.
        let mixed = PythonDeployment(graph: description.encoded(), module: "/app/handlers.py", isPythonApp: false)
        let mixedFiles = try KubernetesRenderer.render(
            app: description,
            deployment: deployment,
            manifests: manifests,
            outputDirectory: out,
            python: mixed
        )
        #expect(try #require(mixedFiles["python-worker.yaml"]).contains("\"--graph\", \"/etc/autonomous/graph/graph.json\"]"))
        #expect(try #require(mixedFiles["python-worker.yaml"]).contains("      volumes:\n        - name: graph\n"))
        #expect(!(try #require(mixedFiles["kustomization.yaml"]).contains("\"serve\"")))
    }

    @Test("The local overlay's deploy makes the users' Secret once, owner-readable, and keeps its passwords on the next deploy")
    func kubernetesSecret() throws {
        var app = AppBuilder(name: "Users")
        _ = app.table("orders")
        let description = try AppDescription.decode(try app.build().description(tenant: "default").encoded())
        let manifests = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("deploy/k8s").path
        let out = FileManager.default.temporaryDirectory.appendingPathComponent("aut-users-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: out) }
        var deployment = DeploymentConfiguration().deployment
        deployment.target = "local"
        deployment.tenant = "acme"
        let files = try KubernetesRenderer.render(app: description, deployment: deployment, manifests: manifests, outputDirectory: out)
        let kustomization = try #require(files["kustomization.yaml"])
        #expect(kustomization.contains("secretGenerator:\n  - name: autonomous-nats-users"))
        // The generated Secret lands in the overlay's namespace, where the pods that read it run.
        #expect(kustomization.contains("\nnamespace: autonomous-local\n"))
        #expect(kustomization.contains("NATS_PASSWORD_PRODUCER_ACME"))
        #expect(files["nats-authorization.conf"]?.contains(#"publish: {allow: ["aut.acme.tbl.>"]}"#) == true)
        let first = try String(contentsOfFile: out + "/nats-users.env", encoding: .utf8)
        #expect(first.split(separator: "\n").count == 5 && first.contains("producer-acme="))
        let mode = try FileManager.default.attributesOfItem(atPath: out + "/nats-users.env")[.posixPermissions] as? Int
        #expect(mode == 0o600)
        _ = try KubernetesRenderer.render(app: description, deployment: deployment, manifests: manifests, outputDirectory: out)
        #expect(try String(contentsOfFile: out + "/nats-users.env", encoding: .utf8) == first, "passwords survive a redeploy")
        // The production overlay's NATS is external: no users are made for it.
        deployment.target = "production"
        let production = try KubernetesRenderer.render(app: description, deployment: deployment, manifests: manifests, outputDirectory: out)
        #expect(!(production["kustomization.yaml"]?.contains("secretGenerator") ?? true))
    }
}
