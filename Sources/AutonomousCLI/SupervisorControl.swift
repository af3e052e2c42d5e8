import ArgumentParser
import ClusterCore
import Deploy
import Foundation
import Logging
import UnixSignals

/// The process engine's daemon and how the CLI talks to it: a desired-state file
/// (`spec.json`, with a generation number), a status file the daemon writes after applying
/// each generation, a pid file, and signals (SIGHUP: apply the spec again, SIGTERM: down).
struct SupervisorControl {
    let directory: String

    struct DesiredState: Codable {
        var generation: Int
        var specification: ProcessCluster.Specification
    }

    struct Status: Codable {
        var generation: Int
        var state: String
        var error: String?
        var supervisorPID: Int32
        var natsURL: String?
        var postgresURL: String?
        var postgresData: String?
        var ingress: [String]
        var processes: [String: [Int32]]
        var allPIDs: [Int32]
    }

    var specPath: String { directory + "/spec.json" }
    var statusPath: String { directory + "/status.json" }
    var pidPath: String { directory + "/supervisor.pid" }

    func runningPID() -> Int32? {
        guard let text = try? String(contentsOfFile: pidPath, encoding: .utf8),
            let pid = Int32(text.trimmingCharacters(in: .whitespacesAndNewlines)), kill(pid, 0) == 0
        else { return nil }
        return pid
    }

    func readStatus() -> Status? {
        guard let data = FileManager.default.contents(atPath: statusPath) else { return nil }
        return try? JSONDecoder().decode(Status.self, from: data)
    }

    /// Writes the desired state and starts or signals the daemon; waits until it is applied.
    func apply(_ specification: ProcessCluster.Specification) async throws {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let previous =
            (try? JSONDecoder().decode(DesiredState.self, from: FileManager.default.contents(atPath: specPath) ?? Data()))?.generation ?? 0
        let generation = previous + 1
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        try encoder.encode(DesiredState(generation: generation, specification: specification)).write(to: URL(fileURLWithPath: specPath))
        var spawnedAt: Date?
        if let pid = runningPID() {
            kill(pid, SIGHUP)
        } else {
            try await Command.detach(try selfPath(), ["supervise", "--state", directory], log: directory + "/supervisor.log")
            spawnedAt = Date()
        }
        let deadline = Date().addingTimeInterval(180)
        while Date() < deadline {
            if let status = readStatus(), status.generation == generation {
                if status.state == "failed" {
                    throw ValidationError("the cluster failed: \(status.error ?? "see \(directory)/supervisor.log")")
                }
                for url in status.ingress { print("ingress \(url)") }
                return
            }
            // A supervisor just started may not have written its pid file yet.
            let alive = runningPID() != nil || spawnedAt.map { Date().timeIntervalSince($0) < 15 } ?? false
            guard alive || readStatus()?.generation == generation else {
                throw ValidationError("the supervisor exited; see \(directory)/supervisor.log")
            }
            try await Task.sleep(for: .milliseconds(100))
        }
        throw ValidationError("the cluster did not come up within 180 s; see \(directory)/supervisor.log")
    }

    /// Stops the daemon and everything it runs. Returns false when nothing was running.
    func stop() async throws -> Bool {
        guard let pid = runningPID() else { return false }
        let pids = readStatus()?.allPIDs ?? []
        kill(pid, SIGTERM)
        let deadline = Date().addingTimeInterval(180)
        while kill(pid, 0) == 0 && Date() < deadline { try await Task.sleep(for: .milliseconds(100)) }
        if kill(pid, 0) == 0 { throw ValidationError("the supervisor (pid \(pid)) did not stop within 180 s") }
        let left = pids.filter { kill($0, 0) == 0 }
        if !left.isEmpty {
            left.forEach { kill($0, SIGKILL) }
            throw ValidationError("processes \(left) outlived the supervisor and were killed")
        }
        return true
    }

    private func selfPath() throws -> String {
        try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")
    }

    private func write(_ status: Status) {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        let temporary = statusPath + ".tmp"
        if (try? encoder.encode(status).write(to: URL(fileURLWithPath: temporary))) != nil {
            _ = rename(temporary, statusPath)
        }
    }

    private func status(_ cluster: ProcessCluster, generation: Int, state: String, error: String? = nil) async -> Status {
        Status(
            generation: generation,
            state: state,
            error: error,
            supervisorPID: getpid(),
            natsURL: cluster.natsURL,
            postgresURL: cluster.postgresURL,
            postgresData: cluster.postgresDataDirectory,
            ingress: await cluster.ingressURLs(),
            processes: await cluster.processIDs(),
            allPIDs: await cluster.allProcessIDs()
        )
    }

    /// The daemon: brings the cluster up, re-applies the spec on SIGHUP, stops on SIGTERM/SIGINT.
    func runSupervisor(logger: Logger) async throws {
        try "\(getpid())\n".write(toFile: pidPath, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: pidPath) }
        let signals = await UnixSignalsSequence(trapping: .sighup, .sigterm, .sigint)
        func desired() throws -> DesiredState {
            try JSONDecoder().decode(DesiredState.self, from: FileManager.default.contents(atPath: specPath) ?? Data())
        }
        var current = try desired()
        let cluster: ProcessCluster
        do {
            cluster = try await ProcessCluster.up(current.specification, logger: logger)
        } catch {
            write(
                Status(
                    generation: current.generation,
                    state: "failed",
                    error: "\(error)",
                    supervisorPID: getpid(),
                    natsURL: nil,
                    postgresURL: nil,
                    postgresData: nil,
                    ingress: [],
                    processes: [:],
                    allPIDs: []
                )
            )
            throw error
        }
        write(await status(cluster, generation: current.generation, state: "running"))
        for await signal in signals {
            if signal == .sighup {
                do {
                    current = try desired()
                    for (role, count) in current.specification.replicas.sorted(by: { $0.key < $1.key }) {
                        try await cluster.scale(role, to: count)
                    }
                    write(await status(cluster, generation: current.generation, state: "running"))
                } catch {
                    logger.error("Applying the new spec failed", metadata: ["error": "\(error)"])
                    write(await status(cluster, generation: current.generation, state: "failed", error: "\(error)"))
                }
            } else {
                await cluster.down()
                write(await status(cluster, generation: current.generation, state: "stopped"))
                return
            }
        }
    }
}
