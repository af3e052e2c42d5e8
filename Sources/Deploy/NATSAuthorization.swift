import ClusterCore
import Foundation

/// Least privilege on NATS: one user per role, allowed only the subjects that role uses, and
/// one user per tenant for external producers, allowed only to publish that tenant's records.
///
/// ``render(passwords:)`` writes the `authorization` block of a nats-server configuration.
/// The process engine runs its nats-server with it; `deploy/k8s/overlays/local/nats-auth.conf`
/// is the same block for Kubernetes, with the passwords taken from the NATS pod's environment.
///
/// What each role needs (docs/wire.md has the subjects):
/// - **ingress** publishes records (`aut.*.tbl.>`), asks the coordinator (`aut._coord.rpc`),
///   announces itself to the other ingress nodes (`aut._ingress.alive`), forwards routes of
///   other runtimes (`aut._route.>`) and answers their table reads (`aut._tables.read`), and
///   reads tables from their streams through ephemeral consumers (``ephemeralReaders``).
/// - **worker** reads its consumers (`$JS.API.CONSUMER.MSG.NEXT`, acks on `$JS.ACK`), makes and
///   removes the per-partition consumers of ordered handlers (`$JS.API.CONSUMER.>`), publishes
///   outputs, dead letters and run notes, and reads and purges run notes; a Python worker also
///   answers forwarded routes (`aut._route.>`) and reads tables (`aut._tables.read`).
/// - **coordinator** provisions streams and consumers (the whole `$JS.API`), publishes
///   schedule ticks, and answers `aut._coord.rpc`.
/// - **operator** is for people and tools (`autonomous dlq`): everything.
/// - **producer-&lt;tenant&gt;** publishes only `aut.<tenant>.tbl.>` and reads only its own
///   inbox, `_INBOX_<tenant>.>` (set `inboxPrefix` in the client), so it can neither
///   write another tenant's records nor read anyone else's replies.
package enum NATSAuthorization {
    package struct User: Sendable, Equatable {
        package var name: String
        package var publish: [String]
        package var subscribe: [String]

        package init(name: String, publish: [String], subscribe: [String]) {
            self.name = name
            self.publish = publish
            self.subscribe = subscribe
        }
    }

    /// Reading a table from its stream (a table no storage keeps, `since_sequence`): an
    /// ephemeral consumer without acks, created (`CREATE.<stream>`, one token: never a durable
    /// one), pulled from and removed after the read. NATS subjects cannot tell an ephemeral
    /// consumer's name from a durable one's, so pulling and removing reach any consumer of the
    /// stream; without `$JS.ACK` nothing pulled is acknowledged (it comes back after the ack wait).
    static let ephemeralReaders = [
        "$JS.API.CONSUMER.CREATE.*", "$JS.API.CONSUMER.INFO.*.*", "$JS.API.CONSUMER.MSG.NEXT.*.*", "$JS.API.CONSUMER.DELETE.*.*",
    ]

    /// The roles' users and one producer per tenant.
    package static func users(producerTenants: [String]) -> [User] {
        let inbox = "_INBOX.>"
        var users = [
            User(
                name: "coordinator",
                publish: ["$JS.API.>", "$JS.ACK.>", "aut.>", inbox],
                // Replies to RPCs go to the callers' `_INBOX.` subjects, which it may publish
                // to. Not `allow_responses`: the server would track the reply subject of every
                // message the user receives.
                subscribe: [inbox, "aut._coord.rpc", "aut._coord.partitions", "aut._actor.>", "aut._ingress.alive"]
            ),
            User(
                name: "ingress",
                publish: [
                    "aut.*.tbl.>", "aut._coord.rpc", "aut._ingress.alive", "aut._route.>", inbox,
                    "$JS.API.INFO", "$JS.API.STREAM.INFO.*", "$JS.API.STREAM.MSG.GET.*", "$JS.API.DIRECT.GET.>",
                ] + ephemeralReaders,
                subscribe: [inbox, "aut._ingress.alive", "aut._actor.>", "aut._tables.read"]
            ),
            User(
                name: "worker",
                publish: [
                    "aut.*.tbl.>", "aut.*.dlq.>", "aut.*.run.>", "aut._coord.rpc",
                    "$JS.API.INFO", "$JS.API.STREAM.INFO.*", "$JS.API.STREAM.MSG.GET.*", "$JS.API.DIRECT.GET.>",
                    "$JS.API.STREAM.PURGE.*", "$JS.API.CONSUMER.>", "$JS.ACK.>", "aut._tables.read", "aut._coord.partitions", inbox,
                ],
                subscribe: [inbox, "aut._actor.>", "aut._route.>"]
            ),
            // Not `allow_responses` (it may publish anywhere anyway): with it the server tracks
            // the reply subject of every message delivered to the user, which made reading a
            // stream of 400,000 records too slow for the load tests' audit.
            User(name: "operator", publish: [">"], subscribe: [">"]),
        ]
        for tenant in producerTenants where Names.isValid(tenant) {
            users.append(User(name: producerName(tenant: tenant), publish: ["aut.\(tenant).tbl.>"], subscribe: ["_INBOX_\(tenant).>"]))
        }
        return users
    }

    /// The NATS user of `tenant`'s external producers.
    package static func producerName(tenant: String) -> String { "producer-\(tenant)" }

    /// The inbox prefix a producer of `tenant` must use (its user may read nothing else).
    package static func producerInboxPrefix(tenant: String) -> String { "_INBOX_\(tenant)" }

    /// The `authorization { users = [...] }` block. `password(user)` is the password as it goes
    /// into the file: a quoted literal, or `$NAME` to take it from the server's environment.
    package static func render(users: [User], password: (String) -> String) -> String {
        func list(_ subjects: [String]) -> String { "[" + subjects.map { "\"\($0)\"" }.joined(separator: ", ") + "]" }
        var lines = [
            "# Generated by Autonomous: one NATS user per role with only the subjects it needs,",
            "# and one publish-only user per tenant for external producers.",
            "authorization {",
            "  users = [",
        ]
        for user in users {
            lines.append("    {")
            lines.append("      user: \"\(user.name)\"")
            lines.append("      password: \(password(user.name))")
            lines.append("      permissions: {")
            lines.append("        publish: {allow: \(list(user.publish))}")
            lines.append("        subscribe: {allow: \(list(user.subscribe))}")
            lines.append("      }")
            lines.append("    }")
        }
        lines += ["  ]", "}"]
        return lines.joined(separator: "\n") + "\n"
    }

    /// The environment variable a nats-server reads `user`'s password from in the rendered
    /// Kubernetes and Nomad files: `NATS_PASSWORD_<USER>`, upper case, `-` as `_`.
    package static func passwordVariable(of user: String) -> String {
        "NATS_PASSWORD_" + user.uppercased().replacingOccurrences(of: "-", with: "_")
    }

    /// A random password: 32 hex digits (no character a URL or the config file must escape).
    package static func makePassword() -> String {
        var generator = SystemRandomNumberGenerator()
        return (0..<16).map { _ in String(format: "%02x", UInt8.random(in: 0...255, using: &generator)) }.joined()
    }

    /// The passwords of a process cluster, kept in `directory/passwords.json` (mode 0600) so a
    /// restarted cluster keeps its producers' credentials; missing users get new ones.
    package static func passwords(for users: [User], in directory: String) throws -> [String: String] {
        let path = directory + "/passwords.json"
        var passwords: [String: String] = [:]
        if let data = FileManager.default.contents(atPath: path),
            let stored = try? JSONDecoder().decode([String: String].self, from: data)
        {
            passwords = stored
        }
        var changed = false
        for user in users where passwords[user.name] == nil {
            passwords[user.name] = makePassword()
            changed = true
        }
        if changed || !FileManager.default.fileExists(atPath: path) {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            try writePrivate(try encoder.encode(passwords), to: path)
        }
        return passwords
    }

    /// Writes `data` to `path` readable by its owner only (created that way, never widened).
    static func writePrivate(_ data: Data, to path: String) throws {
        let temporary = path + ".tmp"
        try? FileManager.default.removeItem(atPath: temporary)
        guard FileManager.default.createFile(atPath: temporary, contents: data, attributes: [.posixPermissions: 0o600]) else {
            throw DeployError("cannot write \(temporary)")
        }
        guard rename(temporary, path) == 0 else { throw DeployError("cannot write \(path): \(String(cString: strerror(errno)))") }
    }
}
