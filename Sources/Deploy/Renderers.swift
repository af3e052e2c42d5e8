public import ClusterCore
import Foundation

/// What `<app> describe` reports, as far as deploying needs it.
public struct AppDescription: Sendable {
    public var name: String
    public var handlers: [String]
    /// Each handler's source: a table's or a schedule's name.
    public var sources: [String: (name: String, isTable: Bool)]
    public var routes: [(method: String, path: String)]
    public var schedules: [(name: String, schedule: String)]

    public init(json: JSONValue) throws {
        guard let name = json["app"].stringValue else { throw DeployError("`describe` did not print an app graph") }
        self.name = name
        handlers = json["handlers"].arrayValue?.compactMap { $0["name"].stringValue } ?? []
        sources = [:]
        for handler in json["handlers"].arrayValue ?? [] {
            guard let name = handler["name"].stringValue, let source = handler["source"].stringValue else { continue }
            sources[name] = (source, handler["source_kind"].stringValue != "schedule")
        }
        routes = json["routes"].arrayValue?.compactMap { route in
            guard let method = route["method"].stringValue, let path = route["path"].stringValue else { return nil }
            return (method, path)
        } ?? []
        schedules = json["schedules"].arrayValue?.compactMap { schedule in
            guard let name = schedule["name"].stringValue, let spec = schedule["schedule"].stringValue else { return nil }
            return (name, spec)
        } ?? []
    }

    /// The stream `handler`'s consumer reads, for `tenant`.
    public func streamName(of handler: String, tenant: String) -> String {
        guard let source = sources[handler] else { return Wire.streamName(tenant: tenant) }
        return Wire.streamName(tenant: tenant, source: source.name, isTable: source.isTable)
    }

    /// Runs `<binary> describe`.
    public static func of(binary: String) throws -> AppDescription {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: binary)
        process.arguments = ["describe"]
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = FileHandle.standardError
        try process.run()
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else { throw DeployError("\(binary) describe failed (exit \(process.terminationStatus))") }
        do {
            return try AppDescription(json: try JSONParser.parse(Array(data)))
        } catch let error as JSONParseError {
            throw DeployError("\(binary) describe printed invalid JSON: \(error)")
        }
    }

    /// Checks that worker groups name real handlers, each at most once.
    public func check(_ deployment: DeploymentConfiguration.Deployment) throws {
        var seen = Set<String>()
        for (i, group) in deployment.workerGroups.enumerated() {
            for handler in group.handlers {
                guard handlers.contains(handler) else {
                    throw DeployError("deployment.worker_groups[\(i)]: handler '\(handler)' is not in the app (it has \(handlers.joined(separator: ", ")))")
                }
                guard seen.insert(handler).inserted else {
                    throw DeployError("deployment.worker_groups[\(i)]: handler '\(handler)' is in two worker groups")
                }
            }
        }
    }
}

/// Writes a kustomize overlay for one app on top of `deploy/k8s/overlays/<target>`.
public enum KubernetesRenderer {
    /// Returns the files to write (name → contents).
    public static func render(
        app: AppDescription,
        deployment: DeploymentConfiguration.Deployment,
        manifests: String,
        outputDirectory: String
    ) throws -> [String: String] {
        let overlay = "\(manifests)/overlays/\(deployment.target)"
        guard FileManager.default.fileExists(atPath: overlay + "/kustomization.yaml") else {
            let available = (try? FileManager.default.contentsOfDirectory(atPath: "\(manifests)/overlays"))?.sorted().joined(separator: ", ") ?? "none"
            throw DeployError("no kustomize overlay '\(deployment.target)' in \(manifests)/overlays (available: \(available))")
        }
        let base = try String(contentsOfFile: "\(manifests)/base/worker-deployment.yaml", encoding: .utf8)
        var files: [String: String] = [:]
        var resources = [relativePath(from: outputDirectory, to: overlay)]
        for group in deployment.workerGroups {
            let name = "worker-\(group.name)"
            let handlers = group.handlers.joined(separator: ",")
            files["\(name).yaml"] = base
                .replacingOccurrences(of: "name: worker\n", with: "name: \(name)\n")
                .replacingOccurrences(of: "component: worker\n", with: "component: \(name)\n")
                .replacingOccurrences(of: "args: [\"worker\"]", with: "args: [\"worker\", \"--handlers\", \"\(handlers)\"]")
                .replacingOccurrences(of: "replicas: 2\n", with: "replicas: \(group.replicas)\n")
            resources.append("\(name).yaml")
        }
        var lines = [
            "# Generated by `autonomous deploy` for \(app.name); edit autonomous.json instead.",
            "apiVersion: kustomize.config.k8s.io/v1beta1",
            "kind: Kustomization",
        ]
        if let namespace = deployment.namespace { lines.append("namespace: \(namespace)") }
        lines.append("resources:")
        lines += resources.map { "  - \($0)" }
        if let image = deployment.image {
            lines.append("images:")
            lines.append("  - name: autonomous-app")
            if let at = image.firstIndex(of: "@") {
                lines.append("    newName: \(image[..<at])")
                lines.append("    digest: \(image[image.index(after: at)...])")
            } else if let colon = image.lastIndex(of: ":"), !image[colon...].contains("/") {
                lines.append("    newName: \(image[..<colon])")
                lines.append("    newTag: \"\(image[image.index(after: colon)...])\"")
            } else {
                lines.append("    newName: \(image)")
            }
        }
        lines.append("patches:")
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
            lines += patch(kind: "Deployment", name: "worker", operations: [("/spec/template/spec/containers/0/args", "[\"worker\", \"--except-handlers\", \"\(grouped)\"]")])
        }
        if deployment.target.contains("keda") {
            let triggers = app.handlers.map { handler in
                let stream = app.streamName(of: handler, tenant: deployment.tenant)
                return "{\"type\": \"nats-jetstream\", \"metadata\": {\"natsServerMonitoringEndpoint\": \"nats.nats.svc.cluster.local:8222\", \"account\": \"$G\", \"stream\": \"\(stream)\", \"consumer\": \"\(Wire.consumerName(handler: handler))\", \"lagThreshold\": \"1000\"}}"
            }
            lines += patch(kind: "ScaledObject", name: "worker", operations: [("/spec/triggers", "[" + triggers.joined(separator: ", ") + "]")])
        }
        files["kustomization.yaml"] = lines.joined(separator: "\n") + "\n"
        return files
    }

    private static func patch(kind: String, name: String, operations: [(path: String, value: String)]) -> [String] {
        var lines = ["  - target:", "      kind: \(kind)", "      name: \(name)", "    patch: |-"]
        for operation in operations {
            lines += ["      - op: replace", "        path: \(operation.path)", "        value: \(operation.value)"]
        }
        return lines
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
public enum NomadRenderer {
    public static func render(app: AppDescription, deployment: DeploymentConfiguration.Deployment) throws -> [String: String] {
        guard deployment.workerGroups.isEmpty else {
            throw DeployError("deployment.worker_groups: the nomad engine runs one worker group; remove worker_groups or use kubernetes/process")
        }
        var lines = ["# Generated by `autonomous deploy` for \(app.name); edit autonomous.json instead."]
        if let image = deployment.image { lines.append("image = \"\(image)\"") }
        if let url = deployment.natsURL { lines.append("nats_url = \"\(url)\"") }
        lines.append("tenant = \"\(deployment.tenant)\"")
        lines.append("datacenters = [\"\(deployment.target)\"]")
        lines.append("ingress_count = \(deployment.replicas["ingress"] ?? 2)")
        lines.append("worker_count = \(deployment.replicas["worker"] ?? 2)")
        lines.append("coordinator_count = \(deployment.replicas["coordinator"] ?? 1)")
        return ["autonomous.vars.hcl": lines.joined(separator: "\n") + "\n"]
    }
}
