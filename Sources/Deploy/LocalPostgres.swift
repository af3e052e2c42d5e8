import Foundation
package import Logging

/// A PostgreSQL server for the `process` engine, with its data under the cluster's directory
/// (or under `/var/tmp` when running as root, where the `postgres` user must own it).
package struct LocalPostgres: Sendable {
    package let dataDirectory: String
    package let port: Int
    package let database: String
    let binaries: String
    let asPostgresUser: Bool

    package var url: String { "postgres://postgres@127.0.0.1:\(port)/\(database)" }

    /// The newest installed server's binaries (Debian keeps them in /usr/lib/postgresql/<v>/bin).
    static func findBinaries() -> String? {
        let root = "/usr/lib/postgresql"
        let versions = ((try? FileManager.default.contentsOfDirectory(atPath: root)) ?? []).compactMap(Int.init).sorted()
        for version in versions.reversed() where FileManager.default.isExecutableFile(atPath: "\(root)/\(version)/bin/pg_ctl") {
            return "\(root)/\(version)/bin"
        }
        return nil
    }

    /// Initialises (first time) and starts the server; creates `database` if missing.
    /// `tls` (PEM files of the server's certificate and key) turns TLS on.
    package static func start(
        directory: String,
        port: Int,
        database: String,
        tls: (certificateFile: String, keyFile: String)? = nil,
        logger: Logger
    ) async throws -> LocalPostgres {
        guard let binaries = findBinaries() else {
            throw DeployError("PostgreSQL is configured but not installed (apt-get install postgresql)")
        }
        guard database.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "_" }), !database.isEmpty else {
            throw DeployError("database name '\(database)' must be letters, digits and '_'")
        }
        let root = getuid() == 0
        var dataDirectory = directory
        if root {
            // The server refuses to run as root, and the `postgres` user cannot enter /root.
            let key = directory.utf8.reduce(UInt64(14_695_981_039_346_656_037)) { ($0 ^ UInt64($1)) &* 1_099_511_628_211 }
            dataDirectory = "/var/tmp/autonomous-postgres-\(String(key, radix: 36))"
        }
        let postgres = LocalPostgres(dataDirectory: dataDirectory, port: port, database: database, binaries: binaries, asPostgresUser: root)
        let fm = FileManager.default
        if !fm.fileExists(atPath: dataDirectory + "/PG_VERSION") {
            try fm.createDirectory(atPath: dataDirectory, withIntermediateDirectories: true)
            if root { try await postgres.run("/bin/chown", ["-R", "postgres:postgres", dataDirectory], asPostgres: false) }
            try await postgres.run("\(binaries)/initdb", ["-D", dataDirectory, "-A", "trust", "-U", "postgres", "--no-sync"])
        }
        var options = "-p \(port) -k \(dataDirectory) -c listen_addresses=127.0.0.1"
        if let tls {
            // The server reads them as its own user and wants the key private.
            for (source, name) in [(tls.certificateFile, "server.crt"), (tls.keyFile, "server.key")] {
                let target = dataDirectory + "/" + name
                try? fm.removeItem(atPath: target)
                try fm.copyItem(atPath: source, toPath: target)
                try fm.setAttributes([.posixPermissions: 0o600], ofItemAtPath: target)
                if root { try await postgres.run("/bin/chown", ["postgres:postgres", target], asPostgres: false) }
            }
            options += " -c ssl=on -c ssl_cert_file=server.crt -c ssl_key_file=server.key"
        }
        try await postgres.run(
            "\(binaries)/pg_ctl",
            ["-D", dataDirectory, "-w", "-t", "60", "-l", dataDirectory + "/server.log", "-o", options, "start"]
        )
        let exists = try await postgres.output(
            "\(binaries)/psql",
            ["-h", "127.0.0.1", "-p", String(port), "-U", "postgres", "-tAc", "SELECT 1 FROM pg_database WHERE datname = '\(database)'"]
        )
        if !exists.contains("1") {
            try await postgres.run(
                "\(binaries)/psql",
                ["-h", "127.0.0.1", "-p", String(port), "-U", "postgres", "-c", "CREATE DATABASE \(database)"]
            )
        }
        logger.info("PostgreSQL started", metadata: ["deploy.postgres.port": "\(port)", "deploy.postgres.data": "\(dataDirectory)"])
        return postgres
    }

    /// Stops the server (fast shutdown), waiting for it to exit.
    package func stop() async {
        try? await run("\(binaries)/pg_ctl", ["-D", dataDirectory, "-w", "-t", "60", "-m", "fast", "stop"])
    }

    /// The postmaster's process id, if it runs.
    package var processIdentifier: Int32? {
        guard let text = try? String(contentsOfFile: dataDirectory + "/postmaster.pid", encoding: .utf8),
            let first = text.split(separator: "\n").first, let pid = Int32(first), kill(pid, 0) == 0
        else { return nil }
        return pid
    }

    private func command(_ executable: String, _ arguments: [String], asPostgres: Bool) -> (String, [String]) {
        asPostgres && asPostgresUser ? ("/usr/sbin/runuser", ["-u", "postgres", "--", executable] + arguments) : (executable, arguments)
    }

    func run(_ executable: String, _ arguments: [String], asPostgres: Bool = true) async throws {
        _ = try await output(executable, arguments, asPostgres: asPostgres)
    }

    @discardableResult
    func output(_ executable: String, _ arguments: [String], asPostgres: Bool = true) async throws -> String {
        let (path, args) = command(executable, arguments, asPostgres: asPostgres)
        let (status, text) = try await Command.run(path, args)
        guard status == 0 else {
            throw DeployError("\((executable as NSString).lastPathComponent) failed: \(text.suffix(500))")
        }
        return text
    }
}
