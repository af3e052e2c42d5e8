import AsyncHTTPClient
import Autonomous
import AutonomousTesting
import Foundation
import NIOCore
import NIOPosix
import Testing

@testable import NATS

/// NATS connections over TLS, against a real nats-server that requires TLS and verifies its
/// clients, with certificates made by `openssl` for each test.
@Suite("NATS over TLS and connection security settings")
struct NATSTLSTests {
    /// A CA, a server certificate for 127.0.0.1 and a client certificate signed by it, and a
    /// second CA that signed neither.
    struct Certificates {
        var directory: String
        var ca: String { directory + "/ca.pem" }
        var otherCA: String { directory + "/other-ca.pem" }
        var serverCertificate: String { directory + "/server.pem" }
        var serverKey: String { directory + "/server.key" }
        var clientCertificate: String { directory + "/client.pem" }
        var clientKey: String { directory + "/client.key" }
        /// The client's side of mutual TLS: the CA, and the client certificate and key.
        var mutual: NATSConnection.Configuration.TLS { .init(caFile: ca, certificateFile: clientCertificate, keyFile: clientKey) }

        /// `serverNames`: the server certificate's subject alternative names.
        static func make(serverNames: String = "IP:127.0.0.1,DNS:localhost") async throws -> Certificates {
            let directory = FileManager.default.temporaryDirectory.appendingPathComponent("aut-tls-\(UUID().uuidString)").path
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            let certificates = Certificates(directory: directory)
            func openssl(_ arguments: [String]) async throws {
                let (status, output) = try await runProgram("/usr/bin/openssl", arguments)
                guard status == 0 else { throw OpenSSLFailure(description: "openssl \(arguments.joined(separator: " ")): \(output)") }
            }
            let key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
            for name in ["ca", "other-ca"] {
                try await openssl(
                    ["req", "-x509"] + key + [
                        "-keyout", "\(directory)/\(name).key", "-out", "\(directory)/\(name).pem", "-days", "2", "-subj",
                        "/CN=autonomous test \(name)",
                    ]
                )
            }
            for (name, extensions) in [
                ("server", "subjectAltName=\(serverNames)\nextendedKeyUsage=serverAuth\n"), ("client", "extendedKeyUsage=clientAuth\n"),
            ] {
                try extensions.write(toFile: "\(directory)/\(name).ext", atomically: true, encoding: .utf8)
                try await openssl(
                    ["req"] + key + [
                        "-keyout", "\(directory)/\(name).key", "-out", "\(directory)/\(name).csr", "-subj", "/CN=autonomous test \(name)",
                    ]
                )
                try await openssl([
                    "x509", "-req", "-in", "\(directory)/\(name).csr", "-CA", certificates.ca, "-CAkey", "\(directory)/ca.key",
                    "-CAcreateserial", "-out", "\(directory)/\(name).pem", "-days", "2", "-extfile", "\(directory)/\(name).ext",
                ])
            }
            return certificates
        }
    }

    struct OpenSSLFailure: Error, CustomStringConvertible {
        var description: String
    }

    /// nats-server's options: TLS required, clients verified against the CA.
    static func serverArguments(_ certificates: Certificates) -> [String] {
        [
            "--tls", "--tlscert", certificates.serverCertificate, "--tlskey", certificates.serverKey,
            "--tlscacert", certificates.ca, "--tlsverify",
        ]
    }

    /// Runs `body` with a nats-server that requires TLS and a client certificate from the CA.
    func withTLSServer(
        serverNames: String = "IP:127.0.0.1,DNS:localhost",
        _ body: (Certificates, NATSServerProcess) async throws -> Void
    ) async throws {
        let certificates = try await Certificates.make(serverNames: serverNames)
        defer { try? FileManager.default.removeItem(atPath: certificates.directory) }
        let server = try await NATSServerProcess.start(
            directory: certificates.directory + "/nats",
            extraArguments: Self.serverArguments(certificates),
            logger: TestNATSServer.logger
        )
        do {
            try await body(certificates, server)
        } catch {
            await server.stop()
            throw error
        }
        await server.stop()
    }

    func configuration(_ server: NATSServerProcess, _ tls: NATSConnection.Configuration.TLS?) -> NATSConnection.Configuration {
        var configuration = NATSConnection.Configuration(url: server.url)
        configuration.tls = tls
        configuration.connectTimeout = .seconds(10)
        return configuration
    }

    /// An event-loop publisher for `server` with `tls`.
    static func publisherSettings(_ server: NATSServerProcess, _ tls: NATSConnection.Configuration.TLS?) -> EventLoopPublisher.Configuration
    {
        var settings = EventLoopPublisher.Configuration(servers: [server.url], name: "el-tls-test")
        settings.tls = tls
        settings.connectTimeout = .seconds(5)
        return settings
    }

    @Test(
        "With the CA and a client certificate, nats.c and the event-loop publisher both publish over TLS to a server that verifies clients"
    )
    func mutualTLS() async throws {
        try await withTLSServer { certificates, server in
            let connection = try await NATSConnection.connect(
                configuration: configuration(server, certificates.mutual),
                logger: TestNATSServer.logger
            )
            try await connection.createOrUpdateStream(StreamConfiguration(name: "TLS", subjects: ["tls.>"]))
            let acks = try await connection.publish(
                (0..<100).map { OutgoingMessage(subject: "tls.records", payload: ByteBuffer(string: #"{"n":\#($0)}"#)) }
            )
            #expect(acks.map(\.sequence) == Array(1...100))
            await connection.close()

            let eventLoop = MultiThreadedEventLoopGroup.singleton.next()
            let publisher = try await EventLoopPublisher.connect(
                configuration: Self.publisherSettings(server, certificates.mutual),
                eventLoop: eventLoop,
                logger: TestNATSServer.logger
            )
            let messages = (100..<200).map { EventLoopPublisherTests.message("tls.records", #"{"n":\#($0)}"#, id: "el-\($0)") }
            let loopAcks = try await EventLoopPublisherTests.publish(publisher, messages).get()
            #expect(loopAcks.map(\.sequence) == Array(101...200))
            await publisher.close()
        }
    }

    /// Before the fix the event-loop publisher checked only that the CA signed the server's
    /// certificate, not that the certificate names the server: any certificate from that CA
    /// could pose as NATS.
    @Test("A server certificate that names another host is refused by nats.c and the event-loop publisher alike")
    func hostNameVerified() async throws {
        try await withTLSServer(serverNames: "DNS:other.example") { certificates, server in
            await #expect(throws: NATSError.self) {
                let connection = try await NATSConnection.connect(
                    configuration: configuration(server, certificates.mutual),
                    logger: TestNATSServer.logger
                )
                await connection.close()
            }
            let eventLoop = MultiThreadedEventLoopGroup.singleton.next()
            do {
                let publisher = try await EventLoopPublisher.connect(
                    configuration: Self.publisherSettings(server, certificates.mutual),
                    eventLoop: eventLoop,
                    logger: TestNATSServer.logger
                )
                await publisher.close()
                Issue.record("the event-loop publisher accepted a certificate for another host")
            } catch let error as NATSError {
                #expect(error.code != .timeout, "\(error)")
            }
        }
        // A certificate naming the host by DNS name is taken when the URL names it so.
        try await withTLSServer(serverNames: "DNS:localhost") { certificates, server in
            var settings = Self.publisherSettings(server, certificates.mutual)
            settings.servers = [server.url.replacingOccurrences(of: "127.0.0.1", with: "localhost")]
            let publisher = try await EventLoopPublisher.connect(
                configuration: settings,
                eventLoop: MultiThreadedEventLoopGroup.singleton.next(),
                logger: TestNATSServer.logger
            )
            await publisher.close()
        }
    }

    @Test("Without a client certificate, or trusting another CA, nats.c and the event-loop publisher fail at once with a TLS error")
    func refused() async throws {
        try await withTLSServer { certificates, server in
            let eventLoop = MultiThreadedEventLoopGroup.singleton.next()
            for tls in [
                NATSConnection.Configuration.TLS(caFile: certificates.ca),
                NATSConnection.Configuration.TLS(
                    caFile: certificates.otherCA,
                    certificateFile: certificates.clientCertificate,
                    keyFile: certificates.clientKey
                ),
                nil,
            ] {
                do {
                    let connection = try await NATSConnection.connect(
                        configuration: configuration(server, tls),
                        logger: TestNATSServer.logger
                    )
                    await connection.close()
                    Issue.record("connected with \(String(describing: tls))")
                } catch let error as NATSError {
                    // Not retried until the connect timeout: only `.connectionFailed` is retried,
                    // and a certificate does not fix itself.
                    #expect(error.code != .connectionFailed && error.code != .timeout, "\(error)")
                }
                do {
                    let publisher = try await EventLoopPublisher.connect(
                        configuration: Self.publisherSettings(server, tls),
                        eventLoop: eventLoop,
                        logger: TestNATSServer.logger
                    )
                    await publisher.close()
                    Issue.record("the event-loop publisher connected with \(String(describing: tls))")
                } catch let error as NATSError {
                    // Refused, not left waiting for its connect timeout.
                    #expect(error.code != .timeout, "\(error)")
                }
            }
            // Given no TLS and a nats:// URL, the event-loop publisher says the server requires it
            // (and the ingress publishes through nats.c).
            var plain = Self.publisherSettings(server, nil)
            plain.servers = [server.url.replacingOccurrences(of: "tls://", with: "nats://")]
            do {
                let publisher = try await EventLoopPublisher.connect(
                    configuration: plain,
                    eventLoop: eventLoop,
                    logger: TestNATSServer.logger
                )
                await publisher.close()
                Issue.record("connected without TLS")
            } catch let error as NATSError {
                #expect(error.message.contains("requires TLS"), "\(error)")
            }
        }
    }

    @Test("An app's ingress, worker and coordinator run over mutual TLS: records posted are handled")
    func appOverTLS() async throws {
        let certificates = try await Certificates.make()
        defer { try? FileManager.default.removeItem(atPath: certificates.directory) }
        let tls = certificates.mutual
        // The monitoring port (-m -1: a free one) shows which connections the app opened.
        let serverArguments = Self.serverArguments(certificates) + ["-m", "-1"]
        try await withRunningApp(try PipelineTests.pipelineGraph(), natsServerArguments: serverArguments, natsTLS: tls) { app in
            // The ingress's event-loop publishers connected over TLS (a server that requires TLS
            // has no other kind of connection) instead of leaving the record API to nats.c.
            let names = try await Self.connectionNames(serverDirectory: app.server.process.directory)
            #expect(names.contains { $0.contains("-loop") }, "\(names)")
            // A route (Hummingbird's responder), the record API's small-request path (published
            // from the event loop) and an NDJSON batch.
            #expect(try await app.post("/readings", body: #"{"sensor":"s1","value":1}"#).status == 202)
            #expect(try await app.post("/v1/tables/readings/records", body: #"{"sensor":"s2","value":2}"#).status == 202)
            #expect(
                try await app.post(
                    "/v1/tables/readings/records",
                    body: "{\"sensor\":\"s3\",\"value\":3}\n{\"sensor\":\"s4\",\"value\":4}",
                    contentType: "application/x-ndjson"
                ).status == 202
            )
            let outputs = try await app.records(in: "doubled", atLeast: 4)
            #expect(Set(outputs.compactMap { try? JSONParser.parse($0.payload)["doubled"].doubleValue }) == [2, 4, 6, 8])
        }
    }

    /// The names of the connections nats-server (started with `-m`) lists in `/connz`.
    static func connectionNames(serverDirectory: String) async throws -> [String] {
        let files = try FileManager.default.contentsOfDirectory(atPath: serverDirectory).filter { $0.hasSuffix(".ports") }
        let file = try #require(files.first)
        let data = try #require(FileManager.default.contents(atPath: serverDirectory + "/" + file))
        let ports = try JSONParser.parse(Array(data))
        let monitoring = try #require(ports["monitoring"][0].stringValue)
        let response = try await HTTPClient.shared.execute(HTTPClientRequest(url: monitoring + "/connz?limit=1000"), timeout: .seconds(10))
        let body = try await response.body.collect(upTo: 4 * 1024 * 1024)
        let connz = try JSONParser.parse(Array(body.readableBytesView))
        return (connz["connections"].arrayValue ?? []).compactMap { $0["name"].stringValue }
    }

    @Test("A credentials file with no JWT or seed in it fails the connection at once, naming the file")
    func badCredentials() async throws {
        try await withTestNATSServer { server in
            let file = FileManager.default.temporaryDirectory.appendingPathComponent("aut-creds-\(UUID().uuidString).creds").path
            try "not a credentials file\n".write(toFile: file, atomically: true, encoding: .utf8)
            defer { try? FileManager.default.removeItem(atPath: file) }
            var configuration = NATSConnection.Configuration(url: server.url)
            configuration.credentialsFile = file
            do {
                let connection = try await NATSConnection.connect(configuration: configuration, logger: TestNATSServer.logger)
                await connection.close()
                Issue.record("connected with a credentials file holding no JWT or seed")
            } catch let error as NATSError {
                #expect(error.code != .connectionFailed && error.code != .timeout, "not retried: \(error)")
                #expect(error.message.contains(file), "\(error)")
            }
        }
    }

    @Test("The environment names the files; a missing file or a certificate without its key is refused by name")
    func environment() throws {
        let certificates = FileManager.default.temporaryDirectory.appendingPathComponent("aut-tls-env-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: certificates, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: certificates) }
        for name in ["ca.pem", "client.pem", "client.key", "user.creds"] {
            try "x".write(toFile: "\(certificates)/\(name)", atomically: true, encoding: .utf8)
        }
        var configuration = NATSConnection.Configuration(url: "nats://127.0.0.1:4222")
        try configuration.readSecurity(from: [:])
        #expect(configuration.tls == nil && configuration.credentialsFile == nil)
        try configuration.readSecurity(from: [
            "AUTONOMOUS_NATS_CA": "\(certificates)/ca.pem",
            "AUTONOMOUS_NATS_CERT": "\(certificates)/client.pem",
            "AUTONOMOUS_NATS_KEY": "\(certificates)/client.key",
            "AUTONOMOUS_NATS_CREDS": "\(certificates)/user.creds",
        ])
        #expect(
            configuration.tls
                == .init(
                    caFile: "\(certificates)/ca.pem",
                    certificateFile: "\(certificates)/client.pem",
                    keyFile: "\(certificates)/client.key"
                )
        )
        #expect(configuration.credentialsFile == "\(certificates)/user.creds")

        func refusal(_ environment: [String: String]) -> String? {
            var configuration = NATSConnection.Configuration(url: "nats://127.0.0.1:4222")
            do {
                try configuration.readSecurity(from: environment)
                return nil
            } catch {
                return error.message
            }
        }
        #expect(
            refusal(["AUTONOMOUS_NATS_CA": "\(certificates)/missing.pem"])
                == "AUTONOMOUS_NATS_CA: cannot read '\(certificates)/missing.pem'"
        )
        #expect(
            refusal(["AUTONOMOUS_NATS_CREDS": "/nonexistent/user.creds"]) == "AUTONOMOUS_NATS_CREDS: cannot read '/nonexistent/user.creds'"
        )
        #expect(refusal(["AUTONOMOUS_NATS_CERT": "\(certificates)/client.pem"])?.contains("AUTONOMOUS_NATS_KEY") == true)
        #expect(refusal(["AUTONOMOUS_NATS_KEY": "\(certificates)/client.key"])?.contains("AUTONOMOUS_NATS_CERT") == true)
        #expect(refusal(["AUTONOMOUS_NATS_CA": ""]) == nil)
    }
}
