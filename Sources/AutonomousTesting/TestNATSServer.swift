import Foundation
package import Logging
package import NATS
import Synchronization

/// A fresh `nats-server -js` on a free loopback port with its data in a temporary directory,
/// for one test. Use ``withTestNATSServer(_:)`` so it is always stopped.
package struct TestNATSServer: Sendable {
    package let process: NATSServerProcess
    package let connection: NATSConnection
    package var url: String { process.url }

    package static let logger: Logger = {
        var logger = Logger(label: "autonomous.tests")
        logger.logLevel = ProcessInfo.processInfo.environment["AUTONOMOUS_TEST_LOG_LEVEL"].flatMap(Logger.Level.init(rawValue:)) ?? .warning
        return logger
    }()
}

/// Runs `body` with a started server and a connection to it; stops both afterwards.
/// `serverArguments` go to nats-server (e.g. TLS options); `tls` is the connection's.
package func withTestNATSServer<T: Sendable>(
    directory: String? = nil,
    serverArguments: [String] = [],
    tls: NATSConnection.Configuration.TLS? = nil,
    _ body: (TestNATSServer) async throws -> T
) async throws -> T {
    let dir = directory ?? FileManager.default.temporaryDirectory.appendingPathComponent("aut-test-\(UUID().uuidString)").path
    let process = try await NATSServerProcess.start(directory: dir, extraArguments: serverArguments, logger: TestNATSServer.logger)
    var configuration = NATSConnection.Configuration(url: process.url)
    configuration.connectTimeout = .seconds(5)
    configuration.tls = tls
    let connection: NATSConnection
    do {
        connection = try await NATSConnection.connect(configuration: configuration, logger: TestNATSServer.logger)
    } catch {
        await process.stop()
        throw error
    }
    let server = TestNATSServer(process: process, connection: connection)
    do {
        let result = try await body(server)
        await connection.close()
        await process.stop()
        if directory == nil { try? FileManager.default.removeItem(atPath: dir) }
        return result
    } catch {
        await connection.close()
        await process.stop()
        if directory == nil { try? FileManager.default.removeItem(atPath: dir) }
        throw error
    }
}

/// A record read back from a stream, with every wire header.
package struct AuditedRecord: Sendable {
    package var subject: String
    package var payload: [UInt8]
    package var headers: [String: String]
    package var deliveryCount: UInt64

    package var id: String? { headers["Nats-Msg-Id"] }
    package var causedBy: String? { headers["Aut-Caused-By"] }
    package var text: String { String(decoding: payload, as: UTF8.self) }
}

package enum StreamAudit {
    static let headerNames = [
        "Nats-Msg-Id", "Aut-Table", "Aut-Tenant", "Aut-Type", "Aut-Caused-By", "traceparent",
        "Aut-Error", "Aut-Attempts", "Aut-Handler", "Aut-Record-Id", "Aut-First-Failure", "Aut-Last-Failure", "Aut-Source-Subject",
    ]

    /// Reads every message on `subject` from the start of `stream`, waiting up to `timeout`
    /// for at least `atLeast` of them, then keeps reading until the subject is drained.
    /// Uses its own durable consumer, deleted afterwards.
    package static func read(
        connection: NATSConnection,
        stream: String,
        subject: String,
        atLeast: Int,
        timeout: Duration = .seconds(30)
    ) async throws -> [AuditedRecord] {
        let messages = try await connection.readAll(
            stream: stream,
            subject: subject,
            headers: headerNames,
            atLeast: atLeast,
            timeout: timeout
        )
        return messages.map { message in
            var headers: [String: String] = [:]
            for (name, value) in zip(headerNames, message.headerValues) { if let value { headers[name] = value } }
            return AuditedRecord(subject: message.subject, payload: message.payload, headers: headers, deliveryCount: message.deliveryCount)
        }
    }
}

/// A clock that moves only when a test says so, for timing logic tested without waiting.
package final class ManualClock: Sendable {
    private let instant = Mutex(ContinuousClock.now)

    package init() {}

    package var now: ContinuousClock.Instant { instant.withLock { $0 } }

    package func advance(_ duration: Duration) { instant.withLock { $0 += duration } }
}
