public import ClusterCore
import Foundation
public import Logging
public import NATS
public import ServiceLifecycle

/// Runs every handler of the app: one ``HandlerRunner`` per handler and tenant.
///
/// Handlers are prepared when the worker is created, so a missing secret or setting fails at
/// startup with a message that names it, before any record is fetched.
public struct Worker: Service {
    public struct Configuration: Sendable {
        /// Tenants whose records this worker processes.
        public var tenants: [String]
        /// Must match the consumers' ack wait; long handlers send progress at a third of it.
        public var ackWait: Duration = .seconds(30)
        /// Process environment, for component secrets and settings.
        public var environment: [String: String]
        /// Only run these handlers (`nil`: all).
        public var handlers: Set<String>?

        public init(tenants: [String], environment: [String: String]) {
            self.tenants = tenants
            self.environment = environment
        }
    }

    public let runners: [HandlerRunner]

    public init(graph: AppGraph, configuration: Configuration, connection: NATSConnection, logger: Logger) throws {
        var runners: [HandlerRunner] = []
        var tables: [String: TableDefinition] = [:]
        for table in graph.tables where table.kind == .table { tables[table.name] = table }
        let environment = ComponentEnvironment(environment: configuration.environment, logger: logger)
        for handler in graph.handlers where configuration.handlers?.contains(handler.name) ?? true {
            let invoker: HandlerInvoker
            do {
                invoker = try handler.prepare(environment)
            } catch {
                throw ConfigurationError("handler '\(handler.name)': \(error)")
            }
            for tenant in configuration.tenants {
                runners.append(
                    HandlerRunner(
                        handler: handler,
                        invoker: invoker,
                        tenant: tenant,
                        tables: tables,
                        ackWait: configuration.ackWait,
                        connection: connection,
                        logger: logger
                    )
                )
            }
        }
        self.runners = runners
    }

    public func run() async throws {
        if runners.isEmpty {
            // Nothing to consume; stay up until shutdown like every other role.
            try? await gracefulShutdown()
            return
        }
        try await withThrowingDiscardingTaskGroup { group in
            for runner in runners {
                group.addTask { try await runner.run() }
            }
        }
    }
}
