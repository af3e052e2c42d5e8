import Autonomous
import AutonomousTesting
import Deploy
import Foundation
import Testing

@testable import Coordinator

/// The coordinator's PostgreSQL connection over TLS, as libpq's `sslmode` asks, against a real
/// PostgreSQL with TLS on and certificates `openssl` makes for the test.
@Suite("PostgreSQL over TLS", .serialized)
struct PostgresTLSTests {
    @Test("sslmode require, verify-ca and verify-full connect over TLS; a wrong CA or host is refused; a bad sslmode is named")
    func sslModes() async throws {
        // The server's certificate names localhost only, not 127.0.0.1.
        let certificates = try await NATSTLSTests.Certificates.make(serverNames: "DNS:localhost")
        defer { try? FileManager.default.removeItem(atPath: certificates.directory) }
        let server = try await LocalPostgres.start(
            directory: certificates.directory + "/pg",
            port: LoopbackPorts.freeBase(spans: [0..<1]),
            database: "tlscheck",
            tls: (certificates.serverCertificate, certificates.serverKey),
            logger: TestNATSServer.logger
        )
        defer { try? FileManager.default.removeItem(atPath: server.dataDirectory) }
        do {
            /// Opens the store with `query` after the URL, migrates (a real round trip) and says
            /// whether the connection used TLS.
            func usesTLS(_ query: String, host: String = "127.0.0.1") async throws -> Bool {
                let url = server.url.replacingOccurrences(of: "127.0.0.1", with: host) + query
                return try await PostgresStore.withStore(url: url, logger: TestNATSServer.logger) { store in
                    try await store.migrate()
                    return try await store.connectionUsesTLS()
                }
            }
            #expect(try await usesTLS("?sslmode=disable") == false)
            #expect(try await usesTLS("") == true, "prefer, the default, takes TLS when the server offers it")
            #expect(try await usesTLS("?sslmode=require") == true)
            #expect(try await usesTLS("?sslmode=verify-ca&sslrootcert=\(certificates.ca)") == true)
            #expect(try await usesTLS("?sslmode=verify-full&sslrootcert=\(certificates.ca)", host: "localhost") == true)
            // Refused: a CA that did not sign the server's certificate, or a host it does not name.
            // The store says so when it opens, naming the server, rather than leaving every query
            // to wait on a pool that keeps retrying.
            for query in ["?sslmode=verify-ca&sslrootcert=\(certificates.otherCA)", "?sslmode=verify-full&sslrootcert=\(certificates.ca)"] {
                do {
                    _ = try await usesTLS(query)
                    Issue.record("connected with \(query)")
                } catch {
                    #expect("\(error)".contains("cannot connect to PostgreSQL at 127.0.0.1"), "\(error)")
                    #expect("\(error)".lowercased().contains("certificate"), "\(error)")
                }
            }
            await #expect(throws: ConfigurationError.self) { try await usesTLS("?sslmode=sometimes") }
            await #expect(throws: ConfigurationError.self) { try await usesTLS("?sslmode=verify-full&sslrootcert=/nonexistent.pem") }
        } catch {
            await server.stop()
            throw error
        }
        await server.stop()
    }
}
