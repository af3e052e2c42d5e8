package import ClusterCore
package import Foundation

extension AppDescription {
    /// The stream `handler`'s consumer reads, for `tenant`.
    package func streamName(of handler: String, tenant: String) -> String {
        guard let source = handlers.first(where: { $0.name == handler }) else { return Wire.streamName(tenant: tenant) }
        return Wire.streamName(tenant: tenant, source: source.source, isTable: source.sourceKind != "schedule")
    }

    /// Runs `<binary> describe`.
    package static func of(binary: String) async throws -> AppDescription {
        let (status, output): (Int32, [UInt8])
        do {
            (status, output) = try await Command.output(binary, ["describe"])
        } catch {
            throw DeployError("cannot run \(binary) describe: \(error)")
        }
        guard status == 0 else { throw DeployError("\(binary) describe failed (exit \(status))") }
        do {
            return try AppDescription.decode(Data(output))
        } catch let error as ConfigurationError {
            throw DeployError("\(binary) describe: \(error)")
        } catch {
            throw DeployError("\(binary) describe printed no app graph: \(error)")
        }
    }

    /// Checks that worker groups name real handlers, each at most once.
    package func check(_ deployment: DeploymentConfiguration.Deployment) throws {
        var seen = Set<String>()
        let names = handlers.map(\.name)
        for (i, group) in deployment.workerGroups.enumerated() {
            for handler in group.handlers {
                guard names.contains(handler) else {
                    throw DeployError(
                        "deployment.worker_groups[\(i)]: handler '\(handler)' is not in the app (it has \(names.joined(separator: ", ")))"
                    )
                }
                guard seen.insert(handler).inserted else {
                    throw DeployError("deployment.worker_groups[\(i)]: handler '\(handler)' is in two worker groups")
                }
            }
        }
    }
}

/// An image as `deploy --image` and autonomous.json give it: `name`, `name:tag` or
/// `name@sha256:…` (a registry's `host:port/` is part of the name).
struct ImageReference {
    var repository: String
    var tag: String?
    var digest: String?

    /// As the Helm chart's `image` values: `repository`, and `tag` or `digest` when given.
    var values: [String: String] {
        var fields = ["repository": repository]
        fields["tag"] = tag
        fields["digest"] = digest
        return fields
    }

    init(_ image: String) {
        if let at = image.firstIndex(of: "@") {
            repository = String(image[..<at])
            digest = String(image[image.index(after: at)...])
        } else if let colon = image.lastIndex(of: ":"), !image[colon...].contains("/") {
            repository = String(image[..<colon])
            tag = String(image[image.index(after: colon)...])
        } else {
            repository = image
        }
    }
}

/// The Python side of a deployment: the `python-worker` role, and for an app written in Python
/// the Swift roles serving its graph (`autonomous serve <role> graph.json`).
package struct PythonDeployment: Sendable {
    /// The app's graph, as `describe` printed it (mounted from a ConfigMap or template).
    package var graph: Data
    /// The module the Python workers run, as a path inside the Python image (`/app/main.py`).
    package var module: String
    /// An app written in Python: its Swift roles run `autonomous serve` from the graph (the
    /// app image is the `autonomous` runtime's). A Swift app's Python workers get the graph as
    /// `--graph` instead.
    package var isPythonApp: Bool

    /// Where the graph is mounted in the pods and tasks.
    package static let graphPath = "/etc/autonomous/graph/graph.json"

    package init(graph: Data, module: String, isPythonApp: Bool) {
        self.graph = graph
        self.module = module
        self.isPythonApp = isPythonApp
    }

    /// The Python worker's arguments after `python`.
    var workerArguments: [String] {
        ["-m", "autonomous", "worker", module] + (isPythonApp ? [] : ["--graph", Self.graphPath])
    }

    /// Where a module given on this machine (`handlers/main.py`) is in the Python image:
    /// `Dockerfile.python` copies the app's directory to `/app`.
    package static func modulePath(_ local: String) -> String {
        "/app/" + (local as NSString).lastPathComponent
    }

    func check(_ deployment: DeploymentConfiguration.Deployment) throws {
        guard deployment.pythonImage != nil else {
            throw DeployError(
                "deployment.python_image: the python-worker role needs an image with Python, the autonomous package and the app's module (Dockerfile.python builds one)"
            )
        }
        if isPythonApp && !deployment.workerGroups.isEmpty {
            throw DeployError(
                "deployment.worker_groups: a Python app's Swift workers run only its storages' sinks and components; remove worker_groups"
            )
        }
    }
}

/// Writes a kustomize overlay for one app on top of `deploy/k8s/overlays/<target>`.
package enum KubernetesRenderer {
    /// Returns the files to write (name → contents).
    /// The names the base kustomization gives `autonomous-app` (its `images:` entries'
    /// `newName`s), which an overlay's image must also match.
    static func baseImageNames(manifests: String) -> [String] {
        guard let text = try? String(contentsOfFile: "\(manifests)/base/kustomization.yaml", encoding: .utf8) else { return [] }
        var names: [String] = []
        var inImages = false
        for line in text.split(separator: "\n", omittingEmptySubsequences: false) {
            if !line.hasPrefix(" ") && !line.hasPrefix("-") { inImages = line.hasPrefix("images:") }
            let trimmed = line.trimmingCharacters(in: .whitespaces)
            if inImages, trimmed.hasPrefix("newName:") {
                let name = trimmed.dropFirst("newName:".count).trimmingCharacters(in: .whitespaces).trimmingCharacters(
                    in: CharacterSet(charactersIn: "\"'")
                )
                if !name.isEmpty && name != "autonomous-app" && !names.contains(name) { names.append(name) }
            }
        }
        return names
    }

    package static func render(
        app: AppDescription,
        deployment: DeploymentConfiguration.Deployment,
        manifests: String,
        outputDirectory: String,
        python: PythonDeployment? = nil
    ) throws -> [String: String] {
        try python?.check(deployment)
        let overlay = "\(manifests)/overlays/\(deployment.target)"
        guard FileManager.default.fileExists(atPath: overlay + "/kustomization.yaml") else {
            let available =
                (try? FileManager.default.contentsOfDirectory(atPath: "\(manifests)/overlays"))?.sorted().joined(separator: ", ") ?? "none"
            throw DeployError("no kustomize overlay '\(deployment.target)' in \(manifests)/overlays (available: \(available))")
        }
        let base = try String(contentsOfFile: "\(manifests)/base/worker-deployment.yaml", encoding: .utf8)
        var files: [String: String] = [:]
        var resources = [relativePath(from: outputDirectory, to: overlay)]
        for group in deployment.workerGroups {
            // Kubernetes names take no '_'.
            let name = "worker-\(group.name.replacingOccurrences(of: "_", with: "-"))"
            let handlers = group.handlers.joined(separator: ",")
            files["\(name).yaml"] =
                base
                .replacingOccurrences(of: "name: worker\n", with: "name: \(name)\n")
                .replacingOccurrences(of: "component: worker\n", with: "component: \(name)\n")
                .replacingOccurrences(of: "args: [\"worker\"]", with: "args: [\"worker\", \"--handlers\", \"\(handlers)\"]")
                .replacingOccurrences(of: "replicas: 2\n", with: "replicas: \(group.replicas)\n")
            resources.append("\(name).yaml")
        }
        if let python {
            let arguments = python.workerArguments.map { "\"\($0)\"" }.joined(separator: ", ")
            let graphMount = python.isPythonApp ? "" : Self.graphVolumeYAML
            files["python-worker.yaml"] =
                base
                .replacingOccurrences(of: "name: worker\n", with: "name: python-worker\n")
                .replacingOccurrences(of: "component: worker\n", with: "component: python-worker\n")
                .replacingOccurrences(of: "image: autonomous-app\n", with: "image: autonomous-python\n")
                .replacingOccurrences(
                    of: "args: [\"worker\"]\n",
                    with: "command: [\"python\"]\n          args: [\(arguments)]\n"
                )
                .replacingOccurrences(
                    of: "          env:\n",
                    with: "          env:\n"
                        + "            - name: AUTONOMOUS_HEALTH_PORT\n              value: \"8081\"\n"
                        + "            - name: AUTONOMOUS_HEALTH_HOST\n              value: \"0.0.0.0\"\n"
                        + "            - name: PYTHONDONTWRITEBYTECODE\n              value: \"1\"\n"
                )
                .replacingOccurrences(of: "replicas: 2\n", with: "replicas: \(deployment.replicas[ProcessCluster.pythonRole] ?? 2)\n")
                + graphMount
            resources.append("python-worker.yaml")
            files["graph.json"] = String(decoding: python.graph, as: UTF8.self)
        }
        var lines = [
            "# Generated by `autonomous deploy` for \(app.app); edit autonomous.json instead.",
            "apiVersion: kustomize.config.k8s.io/v1beta1",
            "kind: Kustomization",
        ]
        // The overlay's namespace reaches only the overlay's own resources: what this file adds
        // (worker groups, Python workers, the generated ConfigMap and Secret) needs it too.
        if let namespace = deployment.namespace ?? Self.namespace(ofOverlay: overlay) { lines.append("namespace: \(namespace)") }
        lines.append("resources:")
        lines += resources.map { "  - \($0)" }
        if let image = deployment.image {
            // The base already renames `autonomous-app` (to its release image), and kustomize
            // applies that first: match both names, or the base's image would stay.
            lines.append("images:")
            let reference = ImageReference(image)
            for name in ["autonomous-app"] + Self.baseImageNames(manifests: manifests) {
                lines.append("  - name: \(name)")
                lines.append("    newName: \(reference.repository)")
                if let digest = reference.digest { lines.append("    digest: \(digest)") }
                if let tag = reference.tag { lines.append("    newTag: \"\(tag)\"") }
            }
        }
        if let python, let image = deployment.pythonImage {
            if deployment.image == nil { lines.append("images:") }
            let reference = ImageReference(image)
            lines.append("  - name: autonomous-python")
            lines.append("    newName: \(reference.repository)")
            if let digest = reference.digest { lines.append("    digest: \(digest)") }
            if let tag = reference.tag { lines.append("    newTag: \"\(tag)\"") }
            _ = python
        }
        lines.append("patches:")
        if let python, python.isPythonApp {
            // The Swift roles serve the Python app's graph, mounted from a ConfigMap.
            for role in ["ingress", "worker", "coordinator"] {
                let hasVolumes = role == "coordinator"
                let volume = "{\"name\": \"graph\", \"configMap\": {\"name\": \"autonomous-graph\"}}"
                let mount = "{\"name\": \"graph\", \"mountPath\": \"/etc/autonomous/graph\", \"readOnly\": true}"
                lines += patch(
                    kind: "Deployment",
                    name: role,
                    operations: [("/spec/template/spec/containers/0/args", "[\"serve\", \"\(role)\", \"\(PythonDeployment.graphPath)\"]")]
                )
                lines += [
                    "      - op: add",
                    "        path: /spec/template/spec/volumes\(hasVolumes ? "/-" : "")",
                    "        value: \(hasVolumes ? volume : "[\(volume)]")",
                    "      - op: add",
                    "        path: /spec/template/spec/containers/0/volumeMounts\(hasVolumes ? "/-" : "")",
                    "        value: \(hasVolumes ? mount : "[\(mount)]")",
                ]
            }
        }
        var config = [("AUTONOMOUS_TENANT", deployment.tenant)]
        if let url = deployment.natsURL { config.append(("AUTONOMOUS_NATS_URL", url)) }
        lines += patch(kind: "ConfigMap", name: "autonomous-config", operations: config.map { ("/data/\($0.0)", "\"\($0.1)\"") })
        if let ingress = deployment.replicas["ingress"] {
            lines += patch(kind: "Deployment", name: "ingress", operations: [("/spec/replicas", String(ingress))])
        }
        if let workers = deployment.replicas["worker"] {
            lines += patch(kind: "Deployment", name: "worker", operations: [("/spec/replicas", String(workers))])
        }
        if let coordinators = deployment.replicas["coordinator"], coordinators > 1 {
            // Standbys: a rolling update keeps one coordinator leading while pods are replaced.
            lines += patch(
                kind: "Deployment",
                name: "coordinator",
                operations: [("/spec/replicas", String(coordinators)), ("/spec/strategy", "{\"type\": \"RollingUpdate\"}")]
            )
        }
        if !deployment.workerGroups.isEmpty {
            let grouped = deployment.workerGroups.flatMap(\.handlers).sorted().joined(separator: ",")
            lines += patch(
                kind: "Deployment",
                name: "worker",
                operations: [("/spec/template/spec/containers/0/args", "[\"worker\", \"--except-handlers\", \"\(grouped)\"]")]
            )
        }
        if deployment.target.contains("keda") {
            let triggers = app.handlers.map { handler in
                let stream = app.streamName(of: handler.name, tenant: deployment.tenant)
                return
                    "{\"type\": \"nats-jetstream\", \"metadata\": {\"natsServerMonitoringEndpoint\": \"nats.nats.svc.cluster.local:8222\", \"account\": \"$G\", \"stream\": \"\(stream)\", \"consumer\": \"\(Wire.consumerName(handler: handler.name))\", \"lagThreshold\": \"1000\"}}"
            }
            lines += patch(
                kind: "ScaledObject",
                name: "worker",
                operations: [("/spec/triggers", "[" + triggers.joined(separator: ", ") + "]")]
            )
        }
        if FileManager.default.fileExists(atPath: overlay + "/nats-authorization.conf") {
            // The overlay runs its own NATS with a user per role: the users for this tenant, and
            // their passwords (random, kept in the output directory between deploys, 0600).
            let users = NATSAuthorization.users(producerTenants: [deployment.tenant])
            let passwords = try NATSAuthorization.passwords(for: users, in: outputDirectory)
            try NATSAuthorization.writePrivate(
                Data(users.map { "\($0.name)=\(passwords[$0.name] ?? "")\n" }.joined().utf8),
                to: outputDirectory + "/nats-users.env"
            )
            files["nats-authorization.conf"] = NATSAuthorization.render(users: users) { "$" + NATSAuthorization.passwordVariable(of: $0) }
            if deployment.tenant != "default" {
                // The overlay's NATS reads the default tenant's producer password; this tenant's instead.
                let producer = NATSAuthorization.producerName(tenant: deployment.tenant)
                lines += patch(
                    kind: "StatefulSet",
                    name: "nats",
                    operations: [
                        (
                            "/spec/template/spec/containers/0/env/4",
                            "{\"name\": \"\(NATSAuthorization.passwordVariable(of: producer))\", \"valueFrom\": {\"secretKeyRef\": {\"name\": \"autonomous-nats-users\", \"key\": \"\(producer)\"}}}"
                        )
                    ]
                )
            }
            lines += [
                "configMapGenerator:",
                "  - name: nats-authorization",
                "    behavior: replace",
                "    files:",
                "      - authorization.conf=nats-authorization.conf",
                "secretGenerator:",
                "  - name: autonomous-nats-users",
                "    envs:",
                "      - nats-users.env",
                "    options:",
                "      disableNameSuffixHash: true",
            ]
        }
        if python != nil {
            let generator = [
                "  - name: autonomous-graph",
                "    files:",
                "      - graph.json",
                "    options:",
                "      disableNameSuffixHash: true",
            ]
            if let index = lines.firstIndex(of: "configMapGenerator:") {
                lines.insert(contentsOf: generator, at: index + 1)
            } else {
                lines += ["configMapGenerator:"] + generator
            }
        }
        files["kustomization.yaml"] = lines.joined(separator: "\n") + "\n"
        return files
    }

    /// The graph ConfigMap mounted into a Swift app's Python workers (`--graph`), appended to
    /// the worker template (whose container ends the file).
    static let graphVolumeYAML =
        "          volumeMounts:\n            - name: graph\n              mountPath: /etc/autonomous/graph\n              readOnly: true\n"
        + "      volumes:\n        - name: graph\n          configMap:\n            name: autonomous-graph\n"

    private static func patch(kind: String, name: String, operations: [(path: String, value: String)]) -> [String] {
        var lines = ["  - target:", "      kind: \(kind)", "      name: \(name)", "    patch: |-"]
        for operation in operations {
            lines += ["      - op: replace", "        path: \(operation.path)", "        value: \(operation.value)"]
        }
        return lines
    }

    /// The `namespace:` an overlay's kustomization sets, if any.
    static func namespace(ofOverlay overlay: String) -> String? {
        guard let text = try? String(contentsOfFile: overlay + "/kustomization.yaml", encoding: .utf8) else { return nil }
        for line in text.split(separator: "\n") where line.hasPrefix("namespace:") {
            let value = line.dropFirst("namespace:".count).trimmingCharacters(in: .whitespaces).trimmingCharacters(
                in: CharacterSet(charactersIn: "\"'")
            )
            return value.isEmpty ? nil : value
        }
        return nil
    }

    static func relativePath(from directory: String, to target: String) -> String {
        let from = URL(fileURLWithPath: directory).standardizedFileURL.pathComponents
        let to = URL(fileURLWithPath: target).standardizedFileURL.pathComponents
        var common = 0
        while common < min(from.count, to.count) && from[common] == to[common] { common += 1 }
        return (Array(repeating: "..", count: from.count - common) + to[common...]).joined(separator: "/")
    }
}

/// Writes the Nomad variables file for the project's job.
package enum NomadRenderer {
    package static func render(
        app: AppDescription,
        deployment: DeploymentConfiguration.Deployment,
        python: PythonDeployment? = nil
    ) throws -> [String: String] {
        try python?.check(deployment)
        guard deployment.workerGroups.isEmpty else {
            throw DeployError(
                "deployment.worker_groups: the nomad engine runs one worker group; remove worker_groups or use kubernetes/process"
            )
        }
        var lines = ["# Generated by `autonomous deploy` for \(app.app); edit autonomous.json instead."]
        if let image = deployment.image { lines.append("image = \"\(image)\"") }
        if let url = deployment.natsURL { lines.append("nats_url = \"\(url)\"") }
        lines.append("tenant = \"\(deployment.tenant)\"")
        lines.append("datacenters = [\"\(deployment.target)\"]")
        lines.append("ingress_count = \(deployment.replicas["ingress"] ?? 2)")
        lines.append("worker_count = \(deployment.replicas["worker"] ?? 2)")
        lines.append("coordinator_count = \(deployment.replicas["coordinator"] ?? 1)")
        if let python, let image = deployment.pythonImage {
            lines.append("python_worker_count = \(deployment.replicas[ProcessCluster.pythonRole] ?? 2)")
            lines.append("python_image = \"\(image)\"")
            lines.append("python_module = \"\(python.module)\"")
            lines.append("serves_graph = \(python.isPythonApp)")
            // A heredoc: the graph's JSON quotes need no escaping (and it holds no line `EOT`).
            lines.append("graph = <<EOT\n\(String(decoding: python.graph, as: UTF8.self))\nEOT")
        }
        return ["autonomous.vars.hcl": lines.joined(separator: "\n") + "\n"]
    }
}

/// Writes the values file for the project's Helm chart (`deploy/helm/autonomous`).
package enum HelmRenderer {
    /// The release name: the deployment's target.
    package static func release(_ deployment: DeploymentConfiguration.Deployment) -> String { deployment.target }

    /// The namespace the release goes to.
    package static func namespace(_ deployment: DeploymentConfiguration.Deployment) -> String {
        deployment.namespace ?? "autonomous"
    }

    /// Returns the files to write (name → contents): `values.yaml`, written as JSON (which YAML
    /// reads), holding only what autonomous.json says; the chart's own values give the rest.
    package static func render(
        app: AppDescription,
        deployment: DeploymentConfiguration.Deployment,
        python: PythonDeployment? = nil
    ) throws -> [String: String] {
        try python?.check(deployment)
        guard Names.isValid(deployment.target) else {
            throw DeployError("target '\(deployment.target)' is the Helm release name: it must be [a-z0-9_-]")
        }
        var values: [String: Any] = ["tenant": deployment.tenant]
        if let url = deployment.natsURL { values["natsURL"] = url }
        if let image = deployment.image { values["image"] = ImageReference(image).values }
        if let ingress = deployment.replicas["ingress"] { values["ingress"] = ["replicas": ingress] }
        if let workers = deployment.replicas["worker"] {
            // With autoscaling on (the chart's default), the count is the autoscaler's floor.
            values["worker"] = ["replicas": workers, "autoscaling": ["minReplicas": max(workers, 1), "maxReplicas": max(workers, 50)]]
        }
        if let coordinators = deployment.replicas["coordinator"] { values["coordinator"] = ["replicas": coordinators] }
        if !deployment.workerGroups.isEmpty {
            values["workerGroups"] = deployment.workerGroups.map { ["name": $0.name, "handlers": $0.handlers, "replicas": $0.replicas] }
        }
        if let python, let image = deployment.pythonImage {
            values["python"] = [
                "enabled": true,
                "servesGraph": python.isPythonApp,
                "image": ImageReference(image).values,
                "module": python.module,
                "replicas": deployment.replicas[ProcessCluster.pythonRole] ?? 2,
            ]
            values["graph"] = String(decoding: python.graph, as: UTF8.self)
        }
        let json = try JSONSerialization.data(withJSONObject: values, options: [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes])
        return [
            "values.yaml": "# Generated by `autonomous deploy` for \(app.app); edit autonomous.json instead.\n"
                + String(decoding: json, as: UTF8.self) + "\n"
        ]
    }
}
