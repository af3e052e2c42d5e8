// swift-tools-version:6.0
import PackageDescription

// One settings array for every target: Swift 6 language mode (complete strict concurrency),
// `any` spelled out for existentials, imports internal unless a file says `public import` or
// `package import` (so a module's dependencies do not leak to its importers), and members of a
// module usable only in files that import it.
let swiftSettings: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
    .enableUpcomingFeature("InternalImportsByDefault"),
    .enableUpcomingFeature("MemberImportVisibility"),
]

let package = Package(
    name: "Autonomous",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "Autonomous", targets: ["Autonomous"]),
        .library(name: "Components", targets: ["Components"]),
        .executable(name: "autonomous", targets: ["AutonomousCLI"]),
        .executable(name: "OrderFlow", targets: ["OrderFlow"]),
        .executable(name: "SlackBot", targets: ["SlackBot"]),
        .executable(name: "Starter", targets: ["Starter"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.81.0"),
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.27.0"),
        .package(url: "https://github.com/apple/swift-nio-extras.git", from: "1.24.0"),
        .package(url: "https://github.com/apple/swift-http-types.git", from: "1.0.0"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.6.0"),
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.5.0"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-crypto.git", "3.0.0"..<"5.0.0"),
        .package(url: "https://github.com/apple/swift-collections.git", from: "1.1.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.6.0"),
        .package(url: "https://github.com/swift-server/async-http-client.git", from: "1.24.0"),
        .package(url: "https://github.com/hummingbird-project/hummingbird.git", from: "2.5.0"),
        .package(url: "https://github.com/vapor/sqlite-nio.git", from: "1.10.0"),
        .package(url: "https://github.com/vapor/postgres-nio.git", from: "1.21.0"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift.git", from: "0.1.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.0.0"),
        .package(url: "https://github.com/swiftlang/swift-subprocess.git", from: "1.0.0"),
        .package(url: "https://github.com/apple/swift-system.git", from: "1.4.0"),
        .package(url: "https://github.com/apple/swift-configuration.git", from: "1.0.0"),
        .package(url: "https://github.com/apple/swift-distributed-tracing.git", from: "1.1.0"),
    ],
    targets: [
        // nats.c (Debian's libnats-dev) as a system library.
        .systemLibrary(
            name: "CNATS",
            pkgConfig: "libnats",
            providers: [.apt(["libnats-dev"])]
        ),
        // zlib (Debian's zlib1g-dev) for the gzip objects of S3 storages.
        .systemLibrary(
            name: "CZlib",
            pkgConfig: "zlib",
            providers: [.apt(["zlib1g-dev"])]
        ),
        // Long-lived child processes through swift-subprocess, each owned by one task.
        .target(
            name: "ChildProcess",
            dependencies: [
                .product(name: "Subprocess", package: "swift-subprocess"),
                .product(name: "SystemPackage", package: "swift-system"),
            ],
            swiftSettings: swiftSettings
        ),
        // The only Swift target that imports CNATS: connection, JetStream publish/pull, admin.
        .target(
            name: "NATS",
            dependencies: [
                "CNATS",
                "ChildProcess",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "ClusterCore",
            dependencies: [
                "NATS",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        // What every HTTP server of the cluster shares: errors as Hummingbird answers them,
        // and /healthz, /readyz and /metrics.
        .target(
            name: "HTTPEndpoints",
            dependencies: [
                "ClusterCore",
                "NATS",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "Coordinator",
            dependencies: [
                "HTTPEndpoints",
                "ClusterCore",
                "NATS",
                .product(name: "SQLiteNIO", package: "sqlite-nio"),
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdCore", package: "hummingbird"),
                .product(name: "HummingbirdTLS", package: "hummingbird"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        // Storages that keep tables: PostgreSQL (COPY), SQLite (dev's default), S3.
        .target(
            name: "Storages",
            dependencies: [
                "ClusterCore",
                "CZlib",
                "Coordinator",
                .product(name: "SQLiteNIO", package: "sqlite-nio"),
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOFoundationCompat", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        // Spans: W3C trace context, samplers, and an OTLP/HTTP (JSON) exporter as a Service.
        .target(
            name: "Telemetry",
            dependencies: [
                .product(name: "Tracing", package: "swift-distributed-tracing"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "Worker",
            dependencies: [
                .product(name: "Tracing", package: "swift-distributed-tracing"),
                .product(name: "NIOCore", package: "swift-nio"),
                "ClusterCore",
                "NATS",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "Ingress",
            dependencies: [
                "HTTPEndpoints",
                .product(name: "CoreMetrics", package: "swift-metrics"),
                "ClusterCore",
                "NATS",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdCore", package: "hummingbird"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTPTypes", package: "swift-nio-extras"),
                .product(name: "NIOHTTPTypesHTTP1", package: "swift-nio-extras"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "Components",
            dependencies: [
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                "ClusterCore",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "Autonomous",
            dependencies: [
                "ChildProcess",
                .product(name: "Configuration", package: "swift-configuration"),
                .product(name: "SystemPackage", package: "swift-system"),
                "HTTPEndpoints",
                "ClusterCore",
                "NATS",
                "Coordinator",
                "Worker",
                "Ingress",
                "Storages",
                "Telemetry",
                .product(name: "Tracing", package: "swift-distributed-tracing"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        // `autonomous deploy`: autonomous.json, manifest rendering, the process engine.
        .target(
            name: "Deploy",
            dependencies: [
                "ChildProcess",
                .product(name: "SystemPackage", package: "swift-system"),
                .product(name: "Subprocess", package: "swift-subprocess"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                "ClusterCore",
                "NATS",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "LoadApp",
            dependencies: ["Autonomous"],
            path: "LoadTests/App",
            // Scenario h's Python handler, run by the Python worker.
            exclude: ["python_handlers.py"],
            packageAccess: false,
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "LoadRunner",
            dependencies: [
                .product(name: "NIOHTTP1", package: "swift-nio"),
                "ClusterCore",
                "Deploy",
                "NATS",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "Histogram", package: "hdrhistogram-swift"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
            ],
            path: "LoadTests/Runner",
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "ClusterFixture",
            dependencies: ["Autonomous"],
            path: "Tests/Fixtures/ClusterFixture",
            packageAccess: false,
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "AutonomousCLI",
            dependencies: [
                "Autonomous",
                "Components",
                "ChildProcess",
                .product(name: "Configuration", package: "swift-configuration"),
                .product(name: "Subprocess", package: "swift-subprocess"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                "ClusterCore",
                "Deploy",
                "NATS",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        // The examples, the load app and the test fixture are apps: `packageAccess: false`
        // compiles them as another package would be, against the public API only.
        .executableTarget(
            name: "OrderFlow",
            dependencies: ["Autonomous"],
            path: "Examples/OrderFlow",
            packageAccess: false,
            swiftSettings: swiftSettings
        ),
        // The README's "An app", compiled as it stands there (ReadmeTests keeps them equal).
        .executableTarget(
            name: "QuickStart",
            dependencies: ["Autonomous", "Components"],
            path: "Examples/QuickStart",
            packageAccess: false,
            swiftSettings: swiftSettings
        ),
        // What `autonomous init` copies into a new app.
        .executableTarget(
            name: "Starter",
            dependencies: ["Autonomous"],
            path: "Examples/Starter",
            packageAccess: false,
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "SlackBot",
            dependencies: ["Autonomous", "Components"],
            path: "Examples/SlackBot",
            packageAccess: false,
            swiftSettings: swiftSettings
        ),
        // Test support: starts real nats-server processes on free loopback ports.
        .target(
            name: "AutonomousTesting",
            dependencies: [
                "NATS",
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "ClusterCoreTests",
            dependencies: [
                "ClusterCore", "NATS", .product(name: "Logging", package: "swift-log"), .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "NATSTests",
            dependencies: ["NATS", "AutonomousTesting", .product(name: "NIOCore", package: "swift-nio")],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "IngressTests",
            dependencies: [
                "Ingress", "ClusterCore", "AutonomousTesting", .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"), .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "CoordinatorTests",
            dependencies: ["Coordinator", "ClusterCore"],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "WorkerTests",
            dependencies: ["Worker", "ClusterCore"],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "StoragesTests",
            dependencies: ["Storages", "ClusterCore", .product(name: "Crypto", package: "swift-crypto")],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "ChildProcessTests",
            dependencies: ["ChildProcess"],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "TelemetryTests",
            dependencies: ["Telemetry", .product(name: "Tracing", package: "swift-distributed-tracing")],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "DeployTests",
            dependencies: ["Deploy", "ClusterCore"],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "IntegrationTests",
            dependencies: [
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                "Autonomous",
                "Components",
                "AutonomousTesting",
                "HTTPEndpoints",
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                "Coordinator",
                "Deploy",
                "NATS",
                "Ingress",
                "Storages",
                "OrderFlow",
                "Worker",
                "SlackBot",
                "AutonomousCLI",
                "Telemetry",
                .product(name: "Tracing", package: "swift-distributed-tracing"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
    ]
)
