package import Foundation
import Synchronization

/// A language runtime outside the Swift processes that implements some of an app's handlers
/// and routes: Python today (`python/`, docs/python.md).
///
/// The cluster stays Swift: the coordinator provisions an external handler's durable consumer
/// like any other, and the worker processes of that runtime consume it under the same rules
/// (docs/wire.md). The ingress forwards an external route's requests over NATS request/reply
/// to the runtime's processes (subject `aut._route.<runtime>`).
public struct ExternalRuntime: Sendable, Hashable, CustomStringConvertible {
    /// `[a-z0-9_-]`, as names on the wire are.
    public let name: String

    /// Handlers and routes written with the Python package `autonomous`.
    public static let python = ExternalRuntime("python")

    public init(_ name: String) { self.name = name }

    public var description: String { name }
}

extension Wire {
    /// Where the ingress sends the requests of routes that run in `runtime` (core NATS
    /// request/reply; the runtime's processes subscribe in the queue group ``routeQueue``).
    package static func routeSubject(runtime: String) -> String { "aut._route.\(runtime)" }
    package static let routeQueue = "routes"
    /// Where processes of another runtime read kept tables (queue group `readers` of the ingress nodes).
    package static let tableReadSubject = "aut._tables.read"
    /// Where workers of another runtime lease the partitions of their ordered handlers (queue
    /// group `coordinators`).
    package static let partitionSubject = "aut._coord.partitions"
}

/// A handler or route that runs in another runtime was asked to run in this process.
struct ExternalRuntimeError: Error, CustomStringConvertible {
    var what: String
    var runtime: String
    var description: String { "\(what) runs in \(runtime), not in this Swift process" }
}

extension Table {
    /// Declares that the handler `name` of this table's new records is implemented in another
    /// runtime (a Python function, see docs/python.md). The coordinator provisions its
    /// consumer and the graph check knows its edges; that runtime's workers run it.
    public func onNewRecords(
        _ name: String,
        runsIn runtime: ExternalRuntime,
        options: HandlerOptions = HandlerOptions(),
        writes: [any TableReference] = []
    ) {
        var handler = HandlerDefinition(
            name: name,
            source: self.name,
            sourceKind: .table,
            options: options,
            component: nil,
            requiredFields: [],
            outputs: Set(writes.map(\.name)).sorted(),
            producedFields: [:],
            secrets: [],
            prepare: { _ in throw ExternalRuntimeError(what: "handler '\(name)'", runtime: runtime.name) }
        )
        handler.runtime = runtime.name
        registry.addHandler(handler)
    }
}

extension AppBuilder {
    /// Declares that `method path` is implemented in another runtime (a Python function, see
    /// docs/python.md): the ingress checks the caller as for any route, then forwards the
    /// request to that runtime's processes and answers with their response (503 when none
    /// runs, 504 when none answers in time).
    public mutating func route(_ method: String, _ path: String, verify: WebhookVerification = .apiKey, runsIn runtime: ExternalRuntime) {
        var route = RouteDefinition(
            method: method.uppercased(),
            path: path,
            verification: verify,
            handler: { _, _ in throw ExternalRuntimeError(what: "route \(method.uppercased()) \(path)", runtime: runtime.name) }
        )
        route.runtime = runtime.name
        registry.state.withLock { $0.routes.append(route) }
    }
}
