package import ClusterCore
import Foundation
package import HTTPEndpoints
import Hummingbird
import HummingbirdCore
package import Logging
package import NATS
import NIOCore
import NIOPosix
import NIOSSL
import ServiceLifecycle
import Synchronization

/// The HTTP entry point: user routes, webhooks and the record API, on Hummingbird 2.
///
/// Every 2xx that carries records is sent only after JetStream acknowledged all of them.
/// When JetStream is unreachable or slow the ingress answers 503, and 429 when more records
/// are in flight than configured, both with `Retry-After`.
package struct Ingress: Service {
    package struct Configuration: Sendable {
        package var host: String = "127.0.0.1"
        /// 0 picks a free port (see `onListening`).
        package var port: Int = 3000
        /// Tenant of requests without an API key, and of webhooks.
        package var tenant: String
        /// Resolves an API key's hash (``APIKeys/hash(_:)``) to its tenant and the tenant's
        /// limits, `nil` when the key is unknown, revoked or its tenant disabled. Without it,
        /// API keys are refused.
        package var accessForKeyHash: (@Sendable (String) async throws -> TenantAccess?)?
        /// A tenant's limits (from a coordinator), asked for ``tenant`` every `keyCacheTTL`:
        /// requests without an API key and webhooks count against them. `nil`: not limited.
        package var limitsForTenant: (@Sendable (String) async throws -> TenantLimits?)?
        /// Refuse record API calls and routes without an API key (401).
        package var requireAPIKey = false
        /// Request ids on every answer and one `notice` line per answered request
        /// (``AccessLog``; `AUTONOMOUS_ACCESS_LOG`).
        package var accessLog = false
        /// Serve HTTPS only (`AUTONOMOUS_TLS_CERT` / `AUTONOMOUS_TLS_KEY`); `nil`: plain HTTP.
        package var tls: ServerTLS?
        /// How long a key's tenant (or its absence) is remembered: revocation takes effect
        /// within this time.
        package var keyCacheTTL: Duration = .seconds(2)
        /// Largest accepted request body.
        package var maxBodyBytes: Int = 16 * 1024 * 1024
        /// Request bodies held in memory at once, across all connections (being received or
        /// waiting for their PubAcks); a request that would pass it gets 503 `overloaded`.
        package var maxBufferedBodyBytes: Int = 256 * 1024 * 1024
        /// Open connections at once; more are answered 503 and closed.
        package var maxConnections: Int = 10_000
        /// How long a connection may wait for a request head to arrive in full: after it opens,
        /// and after each answer on a kept-alive connection. Then it is closed (idle and
        /// slowly-sent headers alike).
        package var idleTimeout: Duration = .seconds(30)
        /// How long a request's body may take to arrive once its head has; then 408 and close.
        package var bodyTimeout: Duration = .seconds(60)
        /// Requests per second one client address may make that carry no valid credentials:
        /// refused API keys, and routes or webhooks declared `.unauthenticated` (429 beyond,
        /// with a burst of twice as many).
        package var unauthenticatedRequestsPerAddress: Int = 20
        /// Records waiting for their PubAck across all requests before new requests get 429.
        package var maxInFlightRecords: Int = 200_000
        /// Most records one request may carry (413 beyond); never more than
        /// `maxInFlightRecords`, so no request can pass the in-flight limit.
        package var maxRecordsPerRequest: Int = 10_000

        /// The cap that applies: the smaller of the two limits.
        var recordsPerRequestCap: Int { max(1, min(maxRecordsPerRequest, maxInFlightRecords)) }
        /// NATS connections the ingress publishes through. Each tenant is given one (spread
        /// evenly, in order of first request), so one tenant's burst waiting in the server's
        /// per-connection queue does not delay another tenant's PubAcks. 1 publishes all
        /// tenants through the process's main connection.
        package var publishLanes: Int = 4
        /// Record-API requests answered on an event loop publish through NATS connections of
        /// that loop (one per lane; see `EventLoopPublisher`) instead of through nats.c. Turned
        /// off, with a credentials file, or when the server cannot be reached that way (TLS
        /// required but not configured), they use the lanes.
        package var eventLoopPublishing = true
        /// Seconds clients are told to wait in `Retry-After` (an over-limit tenant is told
        /// when its limit lets the request in).
        package var retryAfterSeconds: Int = 1
        /// How long a request of a tenant over its records/s limit may be held until the limit
        /// lets it in; a request that would wait longer gets 429 `rate_limited`. 0 refuses
        /// at once.
        package var rateLimitMaxDelay: Duration = .seconds(1)
        /// The time tenant limits refill by (a clock a test moves by hand).
        package var rateLimitClock: @Sendable () -> ContinuousClock.Instant = { .now }
        /// Tenant limits are the cluster's: each ingress node enforces the limit divided by the
        /// ingress nodes alive, which hear each other on `aut._ingress.alive` every
        /// `peerInterval`. `false` enforces each whole limit on this node alone.
        package var shareLimitsAcrossNodes = true
        package var peerInterval: Duration = .seconds(1)
        /// Process environment, for webhook secrets.
        package var environment: [String: String]
        /// How long a route implemented in another runtime may take to answer before the
        /// ingress gives up with 504 (AUTONOMOUS_ROUTE_TIMEOUT).
        package var routeTimeout: Duration = .seconds(30)
        /// Answers `GET /v1/tables/{table}/records` from the storages that keep tables
        /// (`nil`: no storage in this process; such reads get 409).
        package var tableReader: TableReader?
        /// Called with the bound port once the server listens.
        package var onListening: (@Sendable (Int) async -> Void)?

        package init(tenant: String, environment: [String: String]) {
            self.tenant = tenant
            self.environment = environment
        }
    }

    let graph: AppGraph
    let configuration: Configuration
    /// Made once from ``Configuration/tls``; every connection's TLS handler shares it.
    let sslContext: NIOSSLContext?
    let connection: NATSConnection
    let logger: Logger

    package init(graph: AppGraph, configuration: Configuration, connection: NATSConnection, logger: Logger) throws {
        for webhook in graph.webhooks {
            for secret in webhook.verification.secrets {
                do {
                    _ = try secret.resolve(in: configuration.environment)
                } catch {
                    throw ConfigurationError("webhook \(webhook.path): \(error)")
                }
            }
        }
        self.graph = graph
        self.configuration = configuration
        self.connection = connection
        self.logger = logger
        do {
            self.sslContext = try configuration.tls?.makeContext()
        } catch {
            throw ConfigurationError("AUTONOMOUS_TLS_CERT/AUTONOMOUS_TLS_KEY: \(error)")
        }
    }

    package func run() async throws {
        // Lane 0 is the process's connection; the others are opened here and drained last.
        var lanes = [connection]
        do {
            for lane in 1..<max(1, configuration.publishLanes) {
                var laneConfiguration = connection.configuration
                laneConfiguration.name += "-lane\(lane)"
                laneConfiguration.blockingThreads = 2
                lanes.append(try await NATSConnection.connect(configuration: laneConfiguration, logger: logger))
            }
        } catch {
            for lane in lanes.dropFirst() { await lane.close() }
            throw error
        }
        let publishers = await eventLoopPublishers(lanes: lanes.count)
        let state = IngressState(
            graph: graph,
            configuration: configuration,
            connection: connection,
            lanes: lanes,
            eventLoopPublishers: publishers,
            logger: logger
        )
        for route in graph.routes where route.verification.isUnauthenticated {
            logger.warning(
                "Route accepts requests from anyone (verify: .unauthenticated)",
                metadata: ["ingress.route": "\(route.method) \(route.path)"]
            )
        }
        for webhook in graph.webhooks where webhook.verification.isUnauthenticated {
            logger.warning(
                "Webhook accepts requests from anyone (verify: .unauthenticated)",
                metadata: ["ingress.route": "POST \(webhook.path)"]
            )
        }
        let responder = IngressResponder(state: state)
        let onListening = configuration.onListening
        let app = Application(
            responder: responder,
            server: HTTPServerBuilder { [sslContext] responder in IngressChannel(responder: responder, state: state, sslContext: sslContext)
            },
            configuration: ApplicationConfiguration(
                address: .hostname(configuration.host, port: configuration.port),
                serverName: "autonomous"
            ),
            onServerRunning: { channel in
                if let onListening, let port = channel.localAddress?.port { await onListening(port) }
            },
            logger: logger
        )
        // Learning who else serves (to share tenant limits) and following the ingress tenant's
        // limits run as child tasks for as long as the server does.
        let served: Result<Void, any Error> = await withTaskGroup(of: Void.self) { background in
            if configuration.shareLimitsAcrossNodes {
                background.addTask { [connection, logger] in
                    await IngressPeers(interval: configuration.peerInterval).run(connection: connection, logger: logger) { nodes in
                        state.limiter.setShare(nodes: nodes)
                        logger.info(
                            "Ingress nodes alive changed; tenant limits shared among them",
                            metadata: ["ingress.nodes": "\(nodes)"]
                        )
                    }
                }
            }
            // Python handlers and routes read kept tables through the ingress nodes.
            let servesOtherRuntimes = graph.handlers.contains { $0.runtime != nil } || graph.routes.contains { $0.runtime != nil }
            if servesOtherRuntimes, let reader = configuration.tableReader {
                background.addTask { [connection, graph, logger] in
                    await TableReadService.run(connection: connection, graph: graph, reader: reader, logger: logger)
                }
            }
            if let resolve = configuration.limitsForTenant {
                background.addTask { [tenant = configuration.tenant, interval = configuration.keyCacheTTL, logger] in
                    await Self.followLimits(of: tenant, every: interval, resolve: resolve, state: state, logger: logger)
                }
            }
            let result: Result<Void, any Error>
            do {
                try await listening(
                    "the ingress",
                    host: configuration.host,
                    port: configuration.port,
                    setting: "--port or AUTONOMOUS_HTTP_PORT"
                ) {
                    try await app.run()
                }
                result = .success(())
            } catch {
                result = .failure(error)
            }
            // The peers' task says this node is leaving before the connection goes.
            background.cancelAll()
            await background.waitForAll()
            return result
        }
        // Every request has been answered; what was published has its PubAck.
        for publisher in publishers.values.joined() { await publisher.close() }
        for lane in lanes.dropFirst() { await lane.drain() }
        try served.get()
    }

    /// Keeps the ingress tenant's limits, and whether it is enabled, current until cancelled
    /// (a key's lookup does the same for the tenants of API keys). While no coordinator
    /// answers, the last known stay.
    static func followLimits(
        of tenant: String,
        every interval: Duration,
        resolve: @Sendable (String) async throws -> TenantLimits?,
        state: IngressState,
        logger: Logger
    ) async {
        var failing = false
        while !Task.isCancelled {
            do {
                let limits = try await resolve(tenant)
                let active = limits != nil
                if state.ownTenantActive.exchange(active, ordering: .relaxed) != active {
                    if active {
                        logger.notice(
                            "The ingress tenant is enabled; requests without an API key are taken again",
                            metadata: ["tenant": "\(tenant)"]
                        )
                    } else {
                        logger.warning(
                            "The ingress tenant is disabled or unknown; requests without an API key get 403",
                            metadata: ["tenant": "\(tenant)"]
                        )
                    }
                }
                state.limiter.update(tenant, limits: limits ?? TenantLimits())
                if failing { logger.info("Learned the ingress tenant's limits again", metadata: ["tenant": "\(tenant)"]) }
                failing = false
            } catch {
                if !failing {
                    logger.notice(
                        "Cannot learn the ingress tenant's limits; keeping the last known",
                        metadata: ["tenant": "\(tenant)", "error": "\(error)"]
                    )
                }
                failing = true
            }
            try? await Task.sleep(for: interval)
        }
    }

    /// One `EventLoopPublisher` per lane on each event loop the HTTP server runs on (the
    /// process-wide group Hummingbird uses); none when turned off or when one cannot connect.
    private func eventLoopPublishers(lanes: Int) async -> [ObjectIdentifier: [EventLoopPublisher]] {
        guard configuration.eventLoopPublishing else { return [:] }
        // The event-loop publisher has no credentials files (JWT and NKey): those stay with nats.c.
        guard connection.configuration.credentialsFile == nil else {
            logger.notice("Record-API requests publish through nats.c", metadata: ["reason": "the NATS connection uses a credentials file"])
            return [:]
        }
        var publishers: [ObjectIdentifier: [EventLoopPublisher]] = [:]
        do {
            for (loop, eventLoop) in MultiThreadedEventLoopGroup.singleton.makeIterator().enumerated() {
                var onLoop: [EventLoopPublisher] = []
                for lane in 0..<max(1, lanes) {
                    var settings = EventLoopPublisher.Configuration(
                        servers: connection.configuration.servers,
                        name: connection.configuration.name + "-loop\(loop)-lane\(lane)"
                    )
                    settings.reconnectWait = connection.configuration.reconnectWait
                    settings.publishTimeout = connection.configuration.publishTimeout
                    settings.connectTimeout = connection.configuration.connectTimeout
                    settings.maxPendingPublishes = connection.configuration.maxPendingPublishes
                    settings.pingInterval = connection.configuration.pingInterval
                    settings.tls = connection.configuration.tls
                    settings.user = connection.configuration.user
                    settings.password = connection.configuration.password
                    onLoop.append(try await EventLoopPublisher.connect(configuration: settings, eventLoop: eventLoop, logger: logger))
                }
                publishers[ObjectIdentifier(eventLoop)] = onLoop
            }
        } catch {
            logger.notice("Record-API requests publish through nats.c", metadata: ["reason": "\(error)"])
            for publisher in publishers.values.joined() { await publisher.close() }
            return [:]
        }
        return publishers
    }
}

// What a service group logs for the ingress: short, and without the configuration's
// environment, which holds the process's secrets.
extension Ingress: CustomStringConvertible {
    package var description: String {
        "Ingress(app: \(graph.name), tenant: \(configuration.tenant), address: \(configuration.host):\(configuration.port))"
    }
}

extension Ingress.Configuration: CustomStringConvertible {
    /// Never the environment: it holds the process's secrets.
    package var description: String {
        "Ingress.Configuration(tenant: \(tenant), address: \(host):\(port), requireAPIKey: \(requireAPIKey), environment: \(environment.count) variables, not shown)"
    }
}
