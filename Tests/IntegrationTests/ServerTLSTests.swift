import AsyncHTTPClient
import Autonomous
import AutonomousTesting
import Foundation
import HTTPEndpoints
import NIOCore
import NIOHTTP1
import NIOSSL
import Testing

/// The ingress and the admin API over HTTPS, with certificates `openssl` makes for each test.
@Suite("HTTPS on the ingress and the admin API")
struct ServerTLSTests {
    static func graph() throws -> AppGraph {
        var app = AppBuilder(name: "TLSApp")
        _ = app.table("orders")
        return try app.build()
    }

    /// A client trusting `ca` (nil: the system's CAs only).
    static func client(trusting ca: String?) -> HTTPClient {
        var tls = TLSConfiguration.makeClientConfiguration()
        if let ca { tls.trustRoots = .file(ca) }
        return HTTPClient(eventLoopGroupProvider: .singleton, configuration: .init(tlsConfiguration: tls))
    }

    static func send(
        _ client: HTTPClient,
        _ method: HTTPMethod,
        _ url: String,
        body: String? = nil,
        token: String? = nil,
        timeout: TimeAmount = .seconds(10)
    ) async throws -> Int {
        var request = HTTPClientRequest(url: url)
        request.method = method
        if let body {
            request.headers.add(name: "Content-Type", value: "application/json")
            request.body = .bytes(ByteBuffer(string: body))
        }
        if let token { request.headers.add(name: "Authorization", value: "Bearer \(token)") }
        let response = try await client.execute(request, timeout: timeout)
        _ = try await response.body.collect(upTo: 1 << 20)
        return Int(response.status.code)
    }

    @Test("With a certificate the ingress and the admin API answer HTTPS only; a client that does not trust the CA is refused")
    func https() async throws {
        let certificates = try await NATSTLSTests.Certificates.make()
        defer { try? FileManager.default.removeItem(atPath: certificates.directory) }
        let token = "adm-" + String(repeating: "0123456789abcdef", count: 2)
        try await withRunningApp(
            try Self.graph(),
            configure: {
                $0.httpTLS = ServerTLS(certificateFile: certificates.serverCertificate, keyFile: certificates.serverKey)
                $0.adminTLS = ServerTLS(certificateFile: certificates.serverCertificate, keyFile: certificates.serverKey)
                $0.adminPort = 0
                $0.adminToken = token
            }
        ) { app in
            let trusting = Self.client(trusting: certificates.ca)
            let untrusting = Self.client(trusting: certificates.otherCA)
            do {
                let https = "https://127.0.0.1:\(app.port)"
                #expect(try await Self.send(trusting, .POST, https + "/v1/tables/orders/records", body: #"{"id":1}"#) == 202)
                #expect(try await Self.send(trusting, .GET, https + "/healthz") == 200)
                let admin = "https://127.0.0.1:\(app.adminPort ?? 0)"
                #expect(try await Self.send(trusting, .GET, admin + "/v1/admin/tenants", token: token) == 200)
                #expect(try await Self.send(trusting, .GET, admin + "/v1/admin/tenants") == 401)

                // A certificate from a CA the client does not trust: no answer at all (the client
                // retries its handshake until its deadline).
                await #expect(throws: (any Error).self) {
                    _ = try await Self.send(untrusting, .GET, https + "/healthz", timeout: .seconds(2))
                }
                await #expect(throws: (any Error).self) {
                    _ = try await Self.send(untrusting, .GET, admin + "/healthz", timeout: .seconds(2))
                }
                // Plain HTTP to an HTTPS port: refused, never served.
                await #expect(throws: (any Error).self) {
                    _ = try await Self.send(HTTPClient.shared, .POST, "http://127.0.0.1:\(app.port)/v1/tables/orders/records", body: "{}")
                }
                await #expect(throws: (any Error).self) {
                    _ = try await Self.send(
                        HTTPClient.shared,
                        .GET,
                        "http://127.0.0.1:\(app.adminPort ?? 0)/v1/admin/tenants",
                        token: token
                    )
                }
                // The one record sent over HTTPS is stored; nothing from the refused attempts.
                let stored = try await app.records(in: "orders", atLeast: 1)
                #expect(stored.count == 1)
            } catch {
                try? await trusting.shutdown()
                try? await untrusting.shutdown()
                throw error
            }
            try await trusting.shutdown()
            try await untrusting.shutdown()
        }
    }

    @Test("Certificate settings are checked at startup: one file without the other, an unreadable file, or a file that is not PEM")
    func settings() throws {
        #expect(throws: ServerTLSError.self) {
            _ = try ServerTLS.fromEnvironment(["AUTONOMOUS_TLS_CERT": "/etc/hostname"], prefix: "AUTONOMOUS_TLS")
        }
        do {
            _ = try ServerTLS.fromEnvironment(
                ["AUTONOMOUS_TLS_CERT": "/nonexistent.pem", "AUTONOMOUS_TLS_KEY": "/nonexistent.key"],
                prefix: "AUTONOMOUS_TLS"
            )
            Issue.record("an unreadable file was accepted")
        } catch {
            #expect(error.message == "AUTONOMOUS_TLS_CERT: cannot read '/nonexistent.pem'")
        }
        #expect(throws: ServerTLSError.self) {
            _ = try ServerTLS.fromEnvironment(
                ["AUTONOMOUS_TLS_CERT": "/etc/hostname", "AUTONOMOUS_TLS_KEY": "/etc/hostname"],
                prefix: "AUTONOMOUS_TLS"
            )
        }
        #expect(try ServerTLS.fromEnvironment([:], prefix: "AUTONOMOUS_TLS") == nil)
    }
}
