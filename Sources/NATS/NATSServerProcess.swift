import ChildProcess
import Foundation
package import Logging

/// A `nats-server -js` child process on a free loopback port: the embedded server of `dev`
/// mode and of the test harness.
///
/// The server writes its data under `directory` (reused by the next start), a pid file, a log,
/// and a ports file from which the client URL is read, so no port is ever guessed.
package final class NATSServerProcess: Sendable {
    package let url: String
    package let directory: String
    package let logFile: String
    private let process: OwnedProcess

    /// Finds `nats-server` in `PATH` or the Debian location.
    package static func executablePath() -> String? {
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/local/bin:/usr/bin:/bin"
        for directory in path.split(separator: ":") + ["/usr/sbin", "/usr/local/sbin"] {
            let candidate = "\(directory)/nats-server"
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
        }
        return nil
    }

    private init(url: String, directory: String, logFile: String, process: OwnedProcess) {
        self.url = url
        self.directory = directory
        self.logFile = logFile
        self.process = process
    }

    /// Starts the server and returns once it accepts connections.
    ///
    /// - Parameters:
    ///   - directory: data, pid, ports and log files live here.
    ///   - port: 0 picks a free port.
    ///   - extraArguments: e.g. cluster options.
    package static func start(
        directory: String,
        port: Int = 0,
        extraArguments: [String] = [],
        logger: Logger,
        timeout: Duration = .seconds(15)
    ) async throws -> NATSServerProcess {
        guard let executable = executablePath() else {
            throw NATSError(code: .connectionFailed, message: "nats-server not found; install it (apt-get install nats-server)")
        }
        let fm = FileManager.default
        try fm.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let pidFile = directory + "/nats-server.pid"
        await stopStale(pidFile: pidFile, logger: logger)
        // Old ports files would be mistaken for this run's.
        for file in (try? fm.contentsOfDirectory(atPath: directory)) ?? [] where file.hasSuffix(".ports") {
            try? fm.removeItem(atPath: directory + "/" + file)
        }
        let logFile = directory + "/nats-server.log"
        let process = try await OwnedProcess.start(
            executable,
            arguments: [
                "-js", "-sd", directory + "/jetstream",
                "-a", "127.0.0.1",
                "-p", port == 0 ? "-1" : String(port),
                "--ports_file_dir", directory,
                "-P", pidFile,
                "-l", logFile,
            ] + extraArguments
        )
        let portsFile = "\(directory)/nats-server_\(process.processIdentifier).ports"
        let clock = ContinuousClock()
        let deadline = clock.now.advanced(by: timeout)
        while clock.now < deadline {
            if !process.isRunning {
                let tail =
                    (try? String(contentsOfFile: logFile, encoding: .utf8))?.split(separator: "\n").suffix(5).joined(separator: "\n") ?? ""
                throw NATSError(code: .connectionFailed, message: "nats-server exited at startup; see \(logFile)\n\(tail)")
            }
            if let data = fm.contents(atPath: portsFile),
                let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
                let urls = object["nats"] as? [String], let url = urls.first
            {
                return NATSServerProcess(url: url, directory: directory, logFile: logFile, process: process)
            }
            try await Task.sleep(for: .milliseconds(20))
        }
        await process.stop()
        throw NATSError(code: .timeout, message: "nats-server did not start within \(timeout); see \(logFile)")
    }

    /// Stops a server left running by an earlier process that died without stopping it.
    private static func stopStale(pidFile: String, logger: Logger) async {
        guard let text = try? String(contentsOfFile: pidFile, encoding: .utf8),
            let pid = Int32(text.trimmingCharacters(in: .whitespacesAndNewlines)), pid > 1
        else { return }
        let cmdline = (try? String(contentsOfFile: "/proc/\(pid)/cmdline", encoding: .utf8)) ?? ""
        guard cmdline.contains("nats-server") else { return }
        logger.info("Stopping a nats-server left running by an earlier run", metadata: ["nats.pid": "\(pid)"])
        kill(pid, SIGTERM)
        for _ in 0..<100 where kill(pid, 0) == 0 { try? await Task.sleep(for: .milliseconds(50)) }
        if kill(pid, 0) == 0 { kill(pid, SIGKILL) }
    }

    package var processIdentifier: Int32 { process.processIdentifier }
    package var isRunning: Bool { process.isRunning }

    /// Stops the server (SIGTERM, then SIGKILL after `timeout`) and waits for it to exit.
    package func stop(timeout: Duration = .seconds(10)) async {
        await process.stop(timeout: timeout)
    }

    /// Kills the server at once (fault tests) and waits until it is gone.
    package func kill9() async {
        process.send(SIGKILL)
        await process.waitForExit()
    }
}
