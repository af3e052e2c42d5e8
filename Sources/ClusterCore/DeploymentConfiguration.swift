package import Foundation

/// `autonomous.json`: storages, the tables they keep, runtimes and the deployment (engine,
/// target, replicas). `autonomous deploy` reads it, and so does every app process (storages
/// and tables; see `--deployment-file`).
///
/// Secrets are referenced, never inlined: a URL with a password is refused; use
/// `{"secret": "ENV_NAME"}` instead of a string where a value is secret.
/// The schema is `docs/autonomous.schema.json`.
package struct DeploymentConfiguration: Sendable, Equatable {
    package struct Storage: Sendable, Equatable {
        package enum Kind: String, Sendable, CaseIterable { case database, file }
        package var name: String
        package var kind: Kind
        package var url: Value
        /// The database password, when the URL has none (always a secret reference).
        package var password: Value? = nil
        /// S3: the endpoint of an S3-compatible server (`https://host:port`); AWS's when unset.
        package var endpoint: String? = nil
        /// S3: the bucket's region (default `AWS_REGION`, else us-east-1).
        package var region: String? = nil
        /// S3: the access key (secret references; default `AWS_ACCESS_KEY_ID` and
        /// `AWS_SECRET_ACCESS_KEY` from the environment).
        package var accessKeyID: Value? = nil
        package var secretAccessKey: Value? = nil
    }

    /// How one table is kept (`"tables": {"orders": {"storage": "warehouse"}}`).
    package struct TableSettings: Sendable, Equatable {
        /// The storage that keeps the table, a name from `storages`.
        package var storage: String?
        /// The stream's retention (`"retention": {"max_age": "30d", "max_bytes": 1073741824}`),
        /// over the app's.
        package var retention = StreamRetention()
        /// Where the storage's sink starts when it is first created (`"backfill"`: `"all"`, the
        /// default, or an RFC 3339 time); `nil` for the stream's first record.
        package var backfillFrom: Date?
    }

    /// A plain value or a reference to a secret in the environment.
    package enum Value: Sendable, Equatable, CustomStringConvertible {
        case plain(String)
        case secret(String)

        package var description: String {
            switch self {
            case .plain(let text): return text
            case .secret(let name): return "secret(\(name))"
            }
        }
    }

    package struct Runtime: Sendable, Equatable {
        package var name: String
        package var dockerfile: String
    }

    package struct Engine: Sendable, Hashable, CustomStringConvertible {
        package let name: String
        package static let kubernetes = Engine(name: "kubernetes")
        package static let helm = Engine(name: "helm")
        package static let nomad = Engine(name: "nomad")
        package static let process = Engine(name: "process")
        package static let all: [Engine] = [.kubernetes, .helm, .nomad, .process]
        package var description: String { name }

        package init?(_ name: String) {
            guard let engine = Self.all.first(where: { $0.name == name }) else { return nil }
            self = engine
        }

        private init(name: String) { self.name = name }
    }

    package struct WorkerGroup: Sendable, Equatable {
        package var name: String
        package var handlers: [String]
        package var replicas: Int
    }

    package struct Deployment: Sendable, Equatable {
        package var engine: Engine = .process
        package var target: String = "local"
        package var image: String?
        package var namespace: String?
        package var tenant: String = "default"
        package var natsURL: String?
        /// Replicas per role, as autonomous.json gives them. A role not named keeps what the
        /// target already says (the overlay's or the Nomad job's count; 1 in the process engine).
        package var replicas: [String: Int] = [:]
        package var workerGroups: [WorkerGroup] = []
        package var httpPort: Int = 3000
        /// The Python module with the functions of a Swift app's Python handlers (role
        /// `python-worker`); a Python app is its own module.
        package var pythonApp: String?
        /// The image of the `python-worker` role (kubernetes, helm, nomad): Python with the
        /// `autonomous` package and the app's module.
        package var pythonImage: String?
    }

    package var storages: [Storage] = []
    /// Per table, by table name.
    package var tables: [String: TableSettings] = [:]
    package var runtimes: [Runtime] = []
    package var deployment = Deployment()

    package init() {}

    /// Reads and validates a file; errors name the file, and the line or JSON path.
    package static func load(path: String) throws(DeploymentConfigurationError) -> DeploymentConfiguration {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw DeploymentConfigurationError(file: path, problems: ["cannot read the file"])
        }
        return try parse(Array(data), file: path)
    }

    package static func parse(
        _ bytes: [UInt8],
        file: String = "autonomous.json"
    ) throws(DeploymentConfigurationError) -> DeploymentConfiguration {
        let root: JSONValue
        do {
            root = try JSONParser.parse(bytes)
        } catch {
            let (line, column) = position(of: error.offset, in: bytes)
            throw DeploymentConfigurationError(file: file, problems: ["line \(line), column \(column): \(error.reason)"])
        }
        var reader = Reader()
        let configuration = reader.configuration(root)
        if !reader.problems.isEmpty { throw DeploymentConfigurationError(file: file, problems: reader.problems) }
        return configuration
    }

    static func position(of offset: Int, in bytes: [UInt8]) -> (line: Int, column: Int) {
        var line = 1
        var column = 1
        for byte in bytes.prefix(offset) {
            if byte == 0x0A {
                line += 1
                column = 1
            } else {
                column += 1
            }
        }
        return (line, column)
    }
}

/// `autonomous.json` is invalid. Each problem starts with the JSON path it concerns.
package struct DeploymentConfigurationError: Error, Sendable, CustomStringConvertible {
    package var file: String
    package var problems: [String]
    package var description: String {
        problems.map { "\(file): \($0)" }.joined(separator: "\n")
    }
}

/// Walks the JSON and collects every problem with its path.
private struct Reader {
    var problems: [String] = []

    mutating func fail(_ path: String, _ message: String) { problems.append("\(path): \(message)") }

    func kind(_ value: JSONValue) -> String {
        switch value {
        case .null: return "null"
        case .bool: return "a boolean"
        case .int, .double: return "a number"
        case .string: return "a string"
        case .array: return "an array"
        case .object: return "an object"
        }
    }

    mutating func object(_ value: JSONValue, _ path: String, allowed: Set<String>) -> [String: JSONValue]? {
        guard case .object(let object) = value else {
            fail(path, "expected an object, got \(kind(value))")
            return nil
        }
        for key in object.keys.sorted() where !allowed.contains(key) {
            fail("\(path).\(key)", "unknown key; expected one of \(allowed.sorted().joined(separator: ", "))")
        }
        return object.dictionary
    }

    mutating func string(_ object: [String: JSONValue], _ key: String, _ path: String, required: Bool) -> String? {
        guard let value = object[key] else {
            if required { fail("\(path).\(key)", "missing") }
            return nil
        }
        guard case .string(let text) = value, !text.isEmpty else {
            fail("\(path).\(key)", value.stringValue != nil ? "must not be empty" : "expected a string, got \(kind(value))")
            return nil
        }
        return text
    }

    mutating func integer(_ value: JSONValue, _ path: String, range: ClosedRange<Int>) -> Int? {
        guard case .int(let n) = value else {
            fail(path, "expected an integer, got \(kind(value))")
            return nil
        }
        guard range.contains(Int(n)) else {
            fail(path, "must be between \(range.lowerBound) and \(range.upperBound)")
            return nil
        }
        return Int(n)
    }

    mutating func secretOrPlain(_ object: [String: JSONValue], _ key: String, _ path: String) -> DeploymentConfiguration.Value? {
        guard let value = object[key] else {
            fail("\(path).\(key)", "missing")
            return nil
        }
        switch value {
        case .string(let text):
            guard !text.isEmpty else {
                fail("\(path).\(key)", "must not be empty")
                return nil
            }
            if let url = URLComponents(string: text), url.password != nil {
                fail("\(path).\(key)", "contains a password; reference a secret instead: {\"secret\": \"ENV_NAME\"}")
                return nil
            }
            return .plain(text)
        case .object(let reference):
            guard let name = reference["secret"]?.stringValue, reference.count == 1 else {
                fail("\(path).\(key)", "a reference must be {\"secret\": \"ENV_NAME\"}")
                return nil
            }
            guard name.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "_" }), !name.isEmpty else {
                fail("\(path).\(key).secret", "must be an environment variable name ([A-Za-z0-9_])")
                return nil
            }
            return .secret(name)
        default:
            fail("\(path).\(key)", "expected a string or {\"secret\": \"ENV_NAME\"}, got \(kind(value))")
            return nil
        }
    }

    mutating func configuration(_ root: JSONValue) -> DeploymentConfiguration {
        var configuration = DeploymentConfiguration()
        guard let object = object(root, "$", allowed: ["$schema", "storages", "tables", "runtimes", "deployment"]) else {
            return configuration
        }
        if let storages = object["storages"] {
            if case .array(let items) = storages {
                var names = Set<String>()
                for (i, item) in items.enumerated() {
                    let path = "storages[\(i)]"
                    guard
                        let storage = self.object(
                            item,
                            path,
                            allowed: ["type", "url", "name", "password", "endpoint", "region", "access_key_id", "secret_access_key"]
                        )
                    else { continue }
                    let name = string(storage, "name", path, required: true)
                    if let name, !names.insert(name).inserted { fail("\(path).name", "duplicate storage name '\(name)'") }
                    var kind: DeploymentConfiguration.Storage.Kind?
                    if let type = string(storage, "type", path, required: true) {
                        kind = .init(rawValue: type)
                        if kind == nil { fail("\(path).type", "unknown storage type '\(type)'; expected database or file") }
                    }
                    let url = secretOrPlain(storage, "url", path)
                    if case .plain(let text)? = url, let kind {
                        let schemes = kind == .database ? ["postgres", "postgresql", "sqlite"] : ["s3", "file"]
                        let scheme = URLComponents(string: text)?.scheme ?? ""
                        if !schemes.contains(scheme) {
                            fail(
                                "\(path).url",
                                "a \(kind.rawValue) URL must start with \(schemes.map { $0 + "://" }.joined(separator: " or "))"
                            )
                        }
                    }
                    var password: DeploymentConfiguration.Value?
                    if storage["password"] != nil {
                        password = secretOrPlain(storage, "password", path)
                        if case .plain? = password {
                            fail("\(path).password", "must be a secret reference: {\"secret\": \"ENV_NAME\"}")
                        }
                    }
                    var entry = name.flatMap { name in
                        kind.flatMap { kind in url.map { DeploymentConfiguration.Storage(name: name, kind: kind, url: $0) } }
                    }
                    entry?.password = password
                    let s3Keys = ["endpoint", "region", "access_key_id", "secret_access_key"]
                    if kind == .database {
                        for key in s3Keys where storage[key] != nil { fail("\(path).\(key)", "applies to file (S3) storages only") }
                    } else {
                        if storage["password"] != nil { fail("\(path).password", "applies to database storages only") }
                        if let endpoint = string(storage, "endpoint", path, required: false) {
                            let components = URLComponents(string: endpoint)
                            if components?.scheme != "http" && components?.scheme != "https" || (components?.host ?? "").isEmpty {
                                fail("\(path).endpoint", "must look like https://host[:port]")
                            } else if components?.password != nil || components?.user != nil {
                                fail("\(path).endpoint", "contains credentials; use access_key_id and secret_access_key")
                            } else {
                                entry?.endpoint = endpoint
                            }
                        }
                        entry?.region = string(storage, "region", path, required: false)
                        for key in ["access_key_id", "secret_access_key"] where storage[key] != nil {
                            let value = secretOrPlain(storage, key, path)
                            if case .plain? = value { fail("\(path).\(key)", "must be a secret reference: {\"secret\": \"ENV_NAME\"}") }
                            if key == "access_key_id" { entry?.accessKeyID = value } else { entry?.secretAccessKey = value }
                        }
                    }
                    if let entry { configuration.storages.append(entry) }
                }
            } else {
                fail("storages", "expected an array, got \(kind(storages))")
            }
        }
        if let tables = object["tables"] {
            if case .object(let entries) = tables {
                let storageNames = configuration.storages.map(\.name)
                for (table, value) in entries {
                    let path = "tables.\(table.prefix(64))"
                    if let problem = Names.problem(with: table, kind: "table") { fail(path, problem) }
                    guard let settings = self.object(value, path, allowed: ["storage", "retention", "backfill"]) else { continue }
                    var entry = DeploymentConfiguration.TableSettings()
                    if let retention = settings["retention"],
                        let limits = self.object(retention, "\(path).retention", allowed: ["max_age", "max_bytes"])
                    {
                        if let text = string(limits, "max_age", "\(path).retention", required: false) {
                            if let age = StreamRetention.duration(text) {
                                entry.retention.maxAge = age
                            } else {
                                fail("\(path).retention.max_age", "'\(text.prefix(40))' is not a duration such as 90s, 15m, 12h, 30d or 2w")
                            }
                        }
                        if let bytes = limits["max_bytes"] {
                            if let value = integer(bytes, "\(path).retention.max_bytes", range: 1_024...Int.max) {
                                entry.retention.maxBytes = Int64(value)
                            }
                        }
                    }
                    if let text = string(settings, "backfill", path, required: false), text != "all" {
                        if let time = ISO8601.parse(text) {
                            entry.backfillFrom = time
                        } else {
                            fail(
                                "\(path).backfill",
                                "'\(text.prefix(40))' is neither \"all\" nor an RFC 3339 time such as 2026-12-01T00:00:00Z"
                            )
                        }
                    }

                    if let storage = string(settings, "storage", path, required: false) {
                        if storageNames.contains(storage) {
                            entry.storage = storage
                        } else {
                            fail(
                                "\(path).storage",
                                "unknown storage '\(storage.prefix(64))'; "
                                    + (storageNames.isEmpty
                                        ? "\"storages\" names none" : "\"storages\" names \(storageNames.joined(separator: ", "))")
                            )
                        }
                    }
                    configuration.tables[table] = entry
                }
            } else {
                fail("tables", "expected an object of table names, got \(kind(tables))")
            }
        }
        if let runtimes = object["runtimes"] {
            if case .array(let items) = runtimes {
                for (i, item) in items.enumerated() {
                    let path = "runtimes[\(i)]"
                    guard let runtime = self.object(item, path, allowed: ["dockerfile", "name"]) else { continue }
                    let name = string(runtime, "name", path, required: true)
                    let dockerfile = string(runtime, "dockerfile", path, required: true)
                    if let name, let dockerfile { configuration.runtimes.append(.init(name: name, dockerfile: dockerfile)) }
                }
            } else {
                fail("runtimes", "expected an array, got \(kind(runtimes))")
            }
        }
        if let deployment = object["deployment"],
            let fields = self.object(
                deployment,
                "deployment",
                allowed: [
                    "engine", "target", "image", "namespace", "tenant", "nats_url", "replicas", "worker_groups", "http_port",
                    "python_app", "python_image",
                ]
            )
        {
            var d = DeploymentConfiguration.Deployment()
            if let engine = string(fields, "engine", "deployment", required: true) {
                if let value = DeploymentConfiguration.Engine(engine) {
                    d.engine = value
                } else {
                    fail("deployment.engine", "unknown engine '\(engine)'; expected kubernetes, helm, nomad or process")
                }
            }
            if let target = string(fields, "target", "deployment", required: false) { d.target = target }
            d.image = string(fields, "image", "deployment", required: false)
            d.pythonImage = string(fields, "python_image", "deployment", required: false)
            if let module = string(fields, "python_app", "deployment", required: false) {
                if module.hasSuffix(".py") {
                    d.pythonApp = module
                } else {
                    fail("deployment.python_app", "must name a Python module file (handlers.py)")
                }
            }
            d.namespace = string(fields, "namespace", "deployment", required: false)
            if let tenant = string(fields, "tenant", "deployment", required: false) {
                if let problem = Names.problem(with: tenant, kind: "tenant") {
                    fail("deployment.tenant", problem)
                } else {
                    d.tenant = tenant
                }
            }
            if let url = string(fields, "nats_url", "deployment", required: false) {
                if let components = URLComponents(string: url), components.password != nil {
                    fail("deployment.nats_url", "contains a password; put credentials in the environment, not in autonomous.json")
                } else {
                    d.natsURL = url
                }
            }
            if let port = fields["http_port"], let value = integer(port, "deployment.http_port", range: 1...65535) { d.httpPort = value }
            if let replicas = fields["replicas"],
                let map = self.object(replicas, "deployment.replicas", allowed: ["ingress", "worker", "coordinator", "python-worker"])
            {
                for (role, value) in map {
                    let range = role == "coordinator" ? 1...5 : 0...1000
                    if let n = integer(value, "deployment.replicas.\(role)", range: range) { d.replicas[role] = n }
                }
            }
            if let groups = fields["worker_groups"] {
                if case .array(let items) = groups {
                    for (i, item) in items.enumerated() {
                        let path = "deployment.worker_groups[\(i)]"
                        guard let group = self.object(item, path, allowed: ["name", "handlers", "replicas"]) else { continue }
                        let name = string(group, "name", path, required: true)
                        if let name, let problem = Names.problem(with: name, kind: "worker group") { fail("\(path).name", problem) }
                        var handlers: [String] = []
                        if case .array(let list)? = group["handlers"], !list.isEmpty {
                            for (j, handler) in list.enumerated() {
                                if let text = handler.stringValue {
                                    handlers.append(text)
                                } else {
                                    fail("\(path).handlers[\(j)]", "expected a handler name (string), got \(kind(handler))")
                                }
                            }
                        } else {
                            fail("\(path).handlers", "expected a non-empty array of handler names")
                        }
                        let replicas = group["replicas"].flatMap { integer($0, "\(path).replicas", range: 0...1000) } ?? 1
                        if let name { d.workerGroups.append(.init(name: name, handlers: handlers, replicas: replicas)) }
                    }
                } else {
                    fail("deployment.worker_groups", "expected an array, got \(kind(groups))")
                }
            }
            if (d.replicas["coordinator"] ?? 1) > 1 {
                let postgres = configuration.storages.contains { storage in
                    guard storage.kind == .database else { return false }
                    if case .plain(let url) = storage.url { return url.hasPrefix("postgres") }
                    return true  // a secret: assumed to hold a Postgres URL
                }
                if !postgres {
                    fail("deployment.replicas.coordinator", "more than one coordinator needs a shared Postgres database storage")
                }
            }
            configuration.deployment = d
        }
        return configuration
    }
}
