import ClusterCore
import Foundation
import Logging
import NATS
import ServiceLifecycle
import Storages

/// Which storage keeps which table in this process, from the app (`table(_:of:storage:)`),
/// `autonomous.json` (`storages` and `tables`) and, in `dev`, SQLite for every other table.
struct StoragePlan: Sendable {
    /// Storage name → what `autonomous.json` says of it.
    var storages: [String: DeploymentConfiguration.Storage]
    /// Table name → storage name.
    var bindings: [String: String]
    /// What `dev` chose on its own, for its banner.
    var notes: [String]
    /// Per table: autonomous.json's stream retention, and where a sink starts (`backfill`).
    var retention: [String: StreamRetention] = [:]
    var backfill: [String: Date] = [:]

    /// The name of `dev`'s SQLite storage (not a name `autonomous.json` can give: it has a space).
    static let devSQLite = "dev sqlite"

    /// Checks the bindings against the configured storages. A table bound to a storage that
    /// is not configured stops startup (in `dev`, the table is kept in SQLite instead).
    static func make(graph: AppGraph, configuration: RuntimeConfiguration) throws(ConfigurationError) -> StoragePlan {
        let file = configuration.deploymentFile ?? "autonomous.json"
        var storages: [String: DeploymentConfiguration.Storage] = [:]
        for storage in configuration.storages { storages[storage.name] = storage }
        var bindings = graph.storageBindings
        var notes: [String] = []
        var problems: [String] = []
        var retention: [String: StreamRetention] = [:]
        var backfill: [String: Date] = [:]
        for (table, settings) in configuration.tableSettings.sorted(by: { $0.key < $1.key }) {
            guard graph.table(table) != nil else {
                problems.append(
                    "\(file): tables.\(table): the app has no table '\(table)' (it has \(graph.tables.filter { $0.kind == .table }.map(\.name).sorted().joined(separator: ", ")))"
                )
                continue
            }
            if let storage = settings.storage { bindings[table] = storage }
            retention[table] = settings.retention
            if let time = settings.backfillFrom { backfill[table] = time }
        }
        for (table, storage) in bindings.sorted(by: { $0.key < $1.key }) where storages[storage] == nil {
            if configuration.keepUnboundTablesInSQLite {
                notes.append("table '\(table)' names storage '\(storage)', which \(file) does not configure: kept in SQLite")
                bindings[table] = devSQLite
            } else {
                problems.append(
                    "table '\(table)' is kept in storage '\(storage)', but "
                        + (configuration.deploymentFile == nil
                            ? "no autonomous.json was read (pass --deployment-file or set AUTONOMOUS_DEPLOYMENT_FILE)"
                            : "\(file) names \(storages.isEmpty ? "no storages" : "only " + storages.keys.sorted().joined(separator: ", "))")
                )
            }
        }
        if configuration.keepUnboundTablesInSQLite {
            for table in graph.tables where table.kind == .table && bindings[table.name] == nil {
                bindings[table.name] = devSQLite
            }
        }
        for handler in graph.handlers where !handler.isSink {
            if let table = bindings.keys.first(where: { HandlerDefinition.sinkName(table: $0) == handler.name }) {
                problems.append(
                    "handler '\(handler.name)' has the name of the storage sink of table '\(table)'; rename the handler"
                )
            }
        }
        for table in backfill.keys.sorted() where bindings[table] == nil {
            problems.append("\(file): tables.\(table).backfill: the table is not kept in a storage, so it has no sink to backfill")
        }
        if !problems.isEmpty { throw ConfigurationError(problems.joined(separator: "\n")) }
        return StoragePlan(storages: storages, bindings: bindings, notes: notes, retention: retention, backfill: backfill)
    }

    /// The graph with a sink handler for every kept table; `opened` resolves storages by name.
    func graph(_ graph: AppGraph, opened: OpenedStorages?) -> AppGraph {
        let objectStores = Set(storages.values.filter { $0.kind == .file }.map(\.name))
        return graph.keeping(bindings, inOrder: objectStores) { name in opened?.byName[name] }
            .applying(retention: retention, backfill: backfill)
    }

    /// Opens every storage that keeps a table (`graph`'s tables are what SQL queries can name).
    /// Secrets come from `environment`; a missing one,
    /// an unreachable server or a malformed URL stops startup naming the file and the storage.
    ///
    /// With `connection`, tables no readable storage keeps are read from their streams.
    func open(
        graph: AppGraph,
        configuration: RuntimeConfiguration,
        connection: NATSConnection?,
        logger: Logger
    ) async throws -> OpenedStorages {
        let file = configuration.deploymentFile ?? "autonomous.json"
        var byName: [String: any TableStorage] = [:]
        var services: [any Service] = []
        do {
            for name in Set(bindings.values).sorted() {
                if name == Self.devSQLite {
                    byName[name] = try await SQLiteTableStorage.open(name: name, path: configuration.tablesSQLitePath, logger: logger)
                    continue
                }
                guard let storage = storages[name] else { continue }
                let index = configuration.storages.firstIndex { $0.name == name } ?? 0
                let path = "\(file): storages[\(index)]"
                func resolve(_ value: DeploymentConfiguration.Value, _ key: String) throws -> String {
                    switch value {
                    case .plain(let text): return text
                    case .secret(let variable):
                        guard let text = configuration.environment[variable], !text.isEmpty else {
                            throw ConfigurationError("\(path).\(key): the secret \(variable) is not set in the environment")
                        }
                        return text
                    }
                }
                // A relative path in a sqlite:// or file:// URL is relative to autonomous.json.
                func local(_ path: String) -> String {
                    guard !path.hasPrefix("/"), let deploymentFile = configuration.deploymentFile else { return path }
                    return URL(fileURLWithPath: deploymentFile).deletingLastPathComponent().appendingPathComponent(path).standardizedFileURL
                        .path
                }
                let url = try resolve(storage.url, "url")
                let password = try storage.password.map { try resolve($0, "password") }
                let scheme = URLComponents(string: url)?.scheme ?? ""
                do {
                    switch (storage.kind, scheme) {
                    case (.database, "postgres"), (.database, "postgresql"):
                        let opened = try await PostgresTableStorage.open(name: name, url: url, password: password, logger: logger)
                        byName[name] = opened
                        services.append(opened)
                    case (.database, "sqlite"):
                        let location = String(url.dropFirst("sqlite://".count))
                        guard !location.isEmpty else { throw ConfigurationError("a sqlite URL needs a path: sqlite://data/tables.sqlite") }
                        byName[name] = try await SQLiteTableStorage.open(name: name, path: local(location), logger: logger)
                    case (.file, "s3"):
                        let location = URLComponents(string: url)
                        let bucket = location?.host ?? ""
                        let environment = configuration.environment
                        let accessKey = try storage.accessKeyID.map { try resolve($0, "access_key_id") } ?? environment["AWS_ACCESS_KEY_ID"]
                        let secretKey =
                            try storage.secretAccessKey.map { try resolve($0, "secret_access_key") } ?? environment["AWS_SECRET_ACCESS_KEY"]
                        guard let accessKey, !accessKey.isEmpty, let secretKey, !secretKey.isEmpty else {
                            throw ConfigurationError(
                                "no S3 credentials: give access_key_id and secret_access_key as {\"secret\": \"ENV_NAME\"}, "
                                    + "or set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
                            )
                        }
                        let credentials = AWSCredentials(
                            accessKeyID: accessKey,
                            secretAccessKey: secretKey,
                            sessionToken: storage.accessKeyID == nil ? environment["AWS_SESSION_TOKEN"] : nil
                        )
                        let objects = try S3ObjectStore(
                            bucket: bucket,
                            region: storage.region ?? environment["AWS_REGION"] ?? environment["AWS_DEFAULT_REGION"] ?? "us-east-1",
                            endpoint: storage.endpoint ?? environment["AWS_ENDPOINT_URL_S3"],
                            credentials: credentials
                        )
                        byName[name] = ObjectTableStorage(name: name, store: objects, prefix: location?.path ?? "")
                    case (.file, "file"):
                        let directory = String(url.dropFirst("file://".count))
                        guard !directory.isEmpty else { throw ConfigurationError("a file URL needs a path: file:///var/lib/lake") }
                        byName[name] = ObjectTableStorage(name: name, store: DirectoryObjectStore(root: local(directory)), prefix: "")
                    default:
                        throw ConfigurationError(
                            storage.kind == .database
                                ? "a database URL must start with postgres://, postgresql:// or sqlite://"
                                : "a file URL must start with s3:// or file://"
                        )
                    }
                } catch let error as ConfigurationError {
                    throw ConfigurationError("\(path) (\(name)): \(error.message)")
                }
            }
        } catch {
            for storage in byName.values { try? await storage.close() }
            throw error
        }
        var tables: [String: any TableStorage] = [:]
        for (table, name) in bindings { tables[table] = byName[name] }
        var definitions: [String: TableDefinition] = [:]
        for table in graph.tables where table.kind == .table { definitions[table.name] = table }
        return OpenedStorages(
            byName: byName,
            reader: TableReader(
                storages: tables,
                tables: definitions,
                streams: connection.map { StreamTableStorage(connection: $0) }
            ),
            services: services
        )
    }
}

/// The storages a process opened: by name, as a reader of the tables they keep, and the
/// services (connection pools) to run while the process runs.
struct OpenedStorages: Sendable {
    let byName: [String: any TableStorage]
    let reader: TableReader
    let services: [any Service]

    /// Creates or migrates every kept table; a type change a storage cannot follow stops
    /// startup with the storage's message.
    func prepare(_ graph: AppGraph) async throws {
        for table in graph.tables where table.kind == .table {
            guard let storage = reader.storage(of: table.name) else { continue }
            try await storage.prepare(table)
        }
    }

    func close() async {
        for storage in byName.values { try? await storage.close() }
    }
}
