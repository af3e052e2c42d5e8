package import ClusterCore
import Foundation
package import Logging
package import NATS
import ServiceLifecycle

/// Runs every handler of the app: one ``HandlerRunner`` per handler and tenant.
///
/// Handlers are prepared when the worker is created, so a missing secret or setting fails at
/// startup with a message that names it, before any record is fetched.
package struct Worker: Service {
    package struct Configuration: Sendable {
        /// Tenants whose records this worker processes.
        package var tenants: [String]
        /// Must match the consumers' ack wait; long handlers send progress at a third of it.
        package var ackWait: Duration = .seconds(30)
        /// Process environment, for component secrets and settings.
        package var environment: [String: String]
        /// Only run these handlers (`nil`: all).
        package var handlers: Set<String>?
        /// Lists the active tenants (the coordinator); new ones are served, disabled ones
        /// stopped. `nil`: only `tenants`.
        package var tenantDirectory: (@Sendable () async throws -> [String])?
        /// How often `tenantDirectory` is asked.
        package var tenantRefresh: Duration = .seconds(2)
        /// Grants partition leases for ordered handlers (the coordinator). Ordered handlers
        /// do not run without it.
        package var partitionAssigner: (@Sendable (PartitionRequest) async throws -> PartitionAssignment)?
        /// Reads kept tables for handlers and schedules (`nil`: no storage in this process).
        package var tableReader: TableReader?
        /// This process's name in partition leases (unique per process start).
        package var workerID: String = {
            let host = ProcessInfo.processInfo.hostName.split(separator: ".").first.map(String.init) ?? "host"
            return "\(host)-\(ProcessInfo.processInfo.processIdentifier)-\(UUID().uuidString.prefix(8).lowercased())"
        }()

        package init(tenants: [String], environment: [String: String]) {
            self.tenants = tenants
            self.environment = environment
        }
    }

    struct Prepared: Sendable {
        let handler: HandlerDefinition
        let invoker: HandlerInvoker
    }

    let prepared: [Prepared]
    let tables: [String: TableDefinition]
    let configuration: Configuration
    let connection: NATSConnection
    let logger: Logger

    package init(graph: AppGraph, configuration: Configuration, connection: NATSConnection, logger: Logger) throws {
        var prepared: [Prepared] = []
        var tables: [String: TableDefinition] = [:]
        for table in graph.tables where table.kind == .table { tables[table.name] = table }
        let environment = ComponentEnvironment(environment: configuration.environment, logger: logger)
        // Handlers of another runtime (Python) are that runtime's workers' to run.
        for handler in graph.handlers where handler.runtime == nil && configuration.handlers?.contains(handler.name) ?? true {
            do {
                prepared.append(Prepared(handler: handler, invoker: try handler.prepare(environment)))
            } catch {
                throw ConfigurationError("handler '\(handler.name)': \(error)")
            }
        }
        self.prepared = prepared
        self.tables = tables
        self.configuration = configuration
        self.connection = connection
        self.logger = logger
    }

    /// A handler's runner for one tenant.
    enum Runner: Sendable {
        case unordered(HandlerRunner)
        case ordered(OrderedHandlerRunner)

        func run() async throws {
            switch self {
            case .unordered(let runner): try await runner.run()
            case .ordered(let runner): await runner.run()
            }
        }

        func stop() {
            switch self {
            case .unordered(let runner): runner.stop()
            case .ordered(let runner): runner.stop()
            }
        }
    }

    func makeRunners(tenant: String) -> [Runner] {
        prepared.compactMap { entry in
            if let ordering = entry.handler.options.ordering {
                guard let assign = configuration.partitionAssigner, let source = tables[entry.handler.source] else {
                    logger.error(
                        "Ordered handler needs a coordinator to lease partitions; not running it",
                        metadata: ["worker.handler": "\(entry.handler.name)"]
                    )
                    return nil
                }
                return .ordered(
                    OrderedHandlerRunner(
                        handler: entry.handler,
                        ordering: ordering,
                        source: source,
                        invoker: entry.invoker,
                        tenant: tenant,
                        tables: tables,
                        workerID: configuration.workerID,
                        ackWait: configuration.ackWait,
                        connection: connection,
                        logger: logger,
                        tableReader: configuration.tableReader,
                        assign: assign
                    )
                )
            }
            return .unordered(
                HandlerRunner(
                    handler: entry.handler,
                    invoker: entry.invoker,
                    tenant: tenant,
                    tables: tables,
                    ackWait: configuration.ackWait,
                    connection: connection,
                    logger: logger,
                    tableReader: configuration.tableReader
                )
            )
        }
    }

    package func run() async throws {
        if prepared.isEmpty {
            // Nothing to consume; stay up until shutdown like every other role.
            try? await gracefulShutdown()
            return
        }
        try await withThrowingDiscardingTaskGroup { group in
            var running: [String: [Runner]] = [:]
            func start(_ tenant: String) {
                let runners = makeRunners(tenant: tenant)
                running[tenant] = runners
                for runner in runners {
                    group.addTask { try await runner.run() }
                }
            }
            for tenant in configuration.tenants { start(tenant) }
            guard let directory = configuration.tenantDirectory else { return }
            var notice = CoordinatorNotice(startedAt: .now)
            while !Task.isShuttingDownGracefully && !Task.isCancelled {
                do {
                    // Once the coordinator answers, its list is authoritative: a disabled
                    // tenant's handlers stop, a new tenant's start.
                    let active = Set(try await directory().filter(Names.isValid))
                    notice.succeeded()
                    for tenant in active.sorted() where running[tenant] == nil {
                        logger.info("Serving tenant", metadata: ["worker.tenant": "\(tenant)"])
                        start(tenant)
                    }
                    for (tenant, runners) in running where !active.contains(tenant) {
                        logger.info("Tenant no longer active; stopping its handlers", metadata: ["worker.tenant": "\(tenant)"])
                        runners.forEach { $0.stop() }
                        running[tenant] = nil
                    }
                } catch {
                    if notice.failed(at: .now) {
                        logger.warning("Cannot list tenants; serving the ones known", metadata: ["error": "\(error)"])
                    } else {
                        logger.debug("Cannot list tenants yet", metadata: ["error": "\(error)"])
                    }
                }
                try? await cancelWhenGracefulShutdown { try await Task.sleep(for: configuration.tenantRefresh) }
            }
        }
    }
}

// What a service group logs for the worker (at debug, when it starts and stops). Short, and
// without the configuration's environment, which holds the process's secrets.
extension Worker: CustomStringConvertible {
    package var description: String {
        "Worker(tenants: \(configuration.tenants), handlers: \(prepared.map(\.handler.name)))"
    }
}

extension Worker.Configuration: CustomStringConvertible {
    /// Never the environment: it holds the process's secrets.
    package var description: String {
        "Worker.Configuration(tenants: \(tenants), handlers: \(handlers.map { $0.sorted().description } ?? "all"), ackWait: \(ackWait), environment: \(environment.count) variables, not shown)"
    }
}
