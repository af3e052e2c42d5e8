import AutonomousTesting
import ClusterCore
import Deploy
import Foundation
import NATS
import NIOCore
import Storages
import Testing

/// The NATS users the deploy engines render, against a real nats-server run with them.
@Suite("NATS least privilege")
struct NATSAuthorizationTests {
    /// A nats-server with the rendered users for tenants acme and globex, and the tenants'
    /// table streams made by the operator.
    func withServer(_ body: (_ url: String, _ passwords: [String: String], _ log: String) async throws -> Void) async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("aut-natsauth-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let users = NATSAuthorization.users(producerTenants: ["acme", "globex"])
        let passwords = try NATSAuthorization.passwords(for: users, in: directory + "/auth")
        let file = directory + "/auth/authorization.conf"
        try NATSAuthorization.render(users: users) { "\"\(passwords[$0]!)\"" }.write(toFile: file, atomically: true, encoding: .utf8)
        let server = try await NATSServerProcess.start(
            directory: directory + "/nats",
            extraArguments: ["-c", file],
            logger: TestNATSServer.logger
        )
        do {
            let admin = try await connect(server.url, user: "operator", password: passwords["operator"]!)
            for tenant in ["acme", "globex"] {
                try await admin.createOrUpdateStream(
                    StreamConfiguration(name: Wire.tableStreamName(tenant: tenant, table: "orders"), subjects: ["aut.\(tenant).tbl.orders"])
                )
            }
            await admin.close()
            try await body(server.url, passwords, server.logFile)
        } catch {
            await server.stop()
            throw error
        }
        await server.stop()
    }

    func connect(_ url: String, user: String, password: String, inboxPrefix: String = "_INBOX") async throws -> NATSConnection {
        var configuration = NATSConnection.Configuration(url: url)
        configuration.user = user
        configuration.password = password
        configuration.inboxPrefix = inboxPrefix
        configuration.publishTimeout = .seconds(2)
        configuration.apiTimeout = .seconds(2)
        configuration.connectTimeout = .seconds(5)
        return try await NATSConnection.connect(configuration: configuration, logger: TestNATSServer.logger)
    }

    func order(_ subject: String) -> OutgoingMessage {
        OutgoingMessage(subject: subject, payload: ByteBuffer(string: #"{"order_id":"o-1","quantity":1}"#))
    }

    /// Waits until the server's log has a line containing `text` (it logs each violation).
    func logged(_ text: String, in log: String) async throws -> Bool {
        for _ in 0..<50 {
            if let contents = try? String(contentsOfFile: log, encoding: .utf8), contents.contains(text) { return true }
            try await Task.sleep(for: .milliseconds(100))
        }
        return false
    }

    @Test(
        "A tenant's producer publishes its own records, and is refused on another tenant's subjects, on aut._coord.rpc and on other inboxes"
    )
    func producerIsolation() async throws {
        try await withServer { url, passwords, log in
            let acme = try await connect(
                url,
                user: "producer-acme",
                password: passwords["producer-acme"]!,
                inboxPrefix: NATSAuthorization.producerInboxPrefix(tenant: "acme")
            )
            let coordinator = try await connect(url, user: "coordinator", password: passwords["coordinator"]!)
            let rpc = try coordinator.subscribeCore(subject: "aut._coord.rpc", queue: "coordinators")
            let heard = Task { () -> Int in
                var count = 0
                for await _ in rpc { count += 1 }
                return count
            }
            do {
                // Its own table: stored, acknowledged.
                let ack = try await acme.publish(order("aut.acme.tbl.orders"))
                #expect(ack.sequence == 1 && !ack.duplicate)

                // Another tenant's table: refused by the server, nothing stored.
                await #expect(throws: (any Error).self) { _ = try await acme.publish(order("aut.globex.tbl.orders")) }
                #expect(try await logged(#"User "producer-acme", Subject "aut.globex.tbl.orders""#, in: log))

                // The coordinator's RPC subject: refused; the coordinator hears nothing.
                await #expect(throws: (any Error).self) {
                    _ = try await acme.request(CoreMessage(subject: "aut._coord.rpc", payload: Array("{}".utf8)), timeout: .seconds(1))
                }
                #expect(try await logged(#"User "producer-acme", Subject "aut._coord.rpc""#, in: log))

                // Reading every reply on the shared inbox (other processes' RPC answers): refused.
                _ = try? acme.subscribeCore(subject: "_INBOX.>")
                #expect(try await logged(#"Subscription Violation - User "producer-acme", Subject "_INBOX.>""#, in: log))
                // Nor may it administer JetStream (delete the other tenant's stream).
                await #expect(throws: (any Error).self) { try await acme.deleteStream("AUT_GLOBEX_tbl_orders") }

                let admin = try await connect(url, user: "operator", password: passwords["operator"]!)
                #expect(try await admin.streamState("AUT_ACME_tbl_orders")?.messages == 1)
                #expect(try await admin.streamState("AUT_GLOBEX_tbl_orders")?.messages == 0)
                await admin.close()
            } catch {
                await acme.close()
                await coordinator.close()
                throw error
            }
            await acme.close()
            await coordinator.close()
            heard.cancel()
            #expect(await heard.value == 0, "the producer's request never reached the coordinator")
        }
    }

    @Test("Role users reach what their role needs and nothing of the control plane beyond it; a wrong password is refused")
    func roles() async throws {
        try await withServer { url, passwords, log in
            let ingress = try await connect(url, user: "ingress", password: passwords["ingress"]!)
            let worker = try await connect(url, user: "worker", password: passwords["worker"]!)
            do {
                // Both publish records of any tenant (the ingress checks keys, workers write outputs).
                _ = try await ingress.publish(order("aut.globex.tbl.orders"))
                _ = try await worker.publish(order("aut.acme.tbl.orders"))
                // Neither may delete a stream.
                await #expect(throws: (any Error).self) { try await ingress.deleteStream("AUT_ACME_tbl_orders") }
                await #expect(throws: (any Error).self) { try await worker.deleteStream("AUT_ACME_tbl_orders") }
                #expect(try await logged(#"User "worker", Subject "$JS.API.STREAM.DELETE.AUT_ACME_tbl_orders""#, in: log))
                // The ingress may not make a durable consumer.
                await #expect(throws: (any Error).self) {
                    try await ingress.createOrUpdateConsumer(stream: "AUT_ACME_tbl_orders", ConsumerConfiguration(durableName: "snoop"))
                }
                // It reads a table no storage keeps from its stream, through an ephemeral reader
                // (GET /v1/tables/{table}/records, and Python handlers' reads).
                var app = AppBuilder(name: "Reads")
                _ = app.table("orders")
                let table = try #require(try app.build().table("orders"))
                let page = try await StreamTableStorage(connection: ingress).read(RecordQuery(), table: table, tenant: "acme")
                #expect(page.records.count == 1)
            } catch {
                await ingress.close()
                await worker.close()
                throw error
            }
            await ingress.close()
            await worker.close()
            await #expect(throws: NATSError.self) { _ = try await connect(url, user: "worker", password: "wrong-password-0000000000") }
        }
    }
}
