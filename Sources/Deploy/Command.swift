import Foundation
import Subprocess
import SystemPackage

/// Runs short commands to completion through swift-subprocess: every command the tools run
/// and wait for (`pg_ctl`, `initdb`, `<app> describe`, `kubectl`, `nomad`) starts here.
///
/// Long-lived children are not commands: nats-server and the process engine's cluster members
/// are each owned by a task of their own (`ChildProcess.OwnedProcess`), and the process
/// engine's supervisor is started detached (``detach(_:_:log:)``).
package enum Command {
    package struct Failure: Error, CustomStringConvertible {
        package var description: String
    }

    /// The exit status as a shell reports it: the code, or 128 + the signal.
    static func status(_ termination: TerminationStatus) -> Int32 {
        switch termination {
        case .exited(let code): return code
        case .signaled(let signal): return 128 + signal
        }
    }

    static func executable(_ name: String) -> Executable {
        name.contains("/") ? .path(FilePath(name)) : .name(name)
    }

    /// Runs `executable` from `/` (which every user may enter, as `runuser` needs) with its
    /// standard output and error together in a file, and returns its status and that output.
    ///
    /// A file, not a pipe: a command that starts a daemon (`pg_ctl start`) leaves the daemon
    /// holding what it inherited, and a pipe would not end while the daemon runs.
    package static func run(_ executable: String, _ arguments: [String]) async throws -> (status: Int32, output: String) {
        let outputPath = FileManager.default.temporaryDirectory.appendingPathComponent("aut-cmd-\(UUID().uuidString).out").path
        defer { try? FileManager.default.removeItem(atPath: outputPath) }
        let file = try FileDescriptor.open(
            FilePath(outputPath),
            .writeOnly,
            options: [.create, .truncate],
            permissions: [.ownerReadWrite, .groupRead, .otherRead]
        )
        let result: ExecutionResult<Void, FileDescriptorOutput, CombinedErrorOutput>
        do {
            result = try await Subprocess.run(
                self.executable(executable),
                arguments: Arguments(arguments),
                workingDirectory: "/",
                input: .none,
                output: .fileDescriptor(file, closeAfterSpawningProcess: true),
                error: .combinedWithOutput
            )
        } catch {
            throw Failure(description: "cannot start \(executable): \(error)")
        }
        let output = (try? String(contentsOfFile: outputPath, encoding: .utf8)) ?? ""
        return (status(result.terminationStatus), output)
    }

    /// Runs `executable` and returns its status and standard output (at most `limit` bytes);
    /// its standard error passes through to this process's.
    package static func output(
        _ executable: String,
        _ arguments: [String],
        limit: Int = 64 << 20
    ) async throws -> (
        status: Int32, output: [UInt8]
    ) {
        let result = try await Subprocess.run(
            self.executable(executable),
            arguments: Arguments(arguments),
            input: .none,
            output: .bytes(limit: limit),
            error: .currentStandardError
        )
        return (status(result.terminationStatus), result.standardOutput)
    }

    /// Runs `executable` with its output and error on this process's, and returns its status.
    package static func passthrough(_ executable: String, _ arguments: [String]) async throws -> Int32 {
        let result = try await Subprocess.run(
            self.executable(executable),
            arguments: Arguments(arguments),
            input: .none,
            output: .currentStandardOutput,
            error: .currentStandardError
        )
        return status(result.terminationStatus)
    }

    /// Runs `executable` and returns its status and its output and error together, as text
    /// (at most `limit` bytes).
    package static func captured(
        _ executable: String,
        _ arguments: [String],
        limit: Int = 64 << 20
    ) async throws -> (
        status: Int32, output: String
    ) {
        let result = try await Subprocess.run(
            self.executable(executable),
            arguments: Arguments(arguments),
            input: .none,
            output: .string(limit: limit),
            error: .combinedWithOutput
        )
        return (status(result.terminationStatus), result.standardOutput)
    }

    /// Starts `executable` in a session of its own (`setsid --fork`), detached from this
    /// process, in this process's working directory, with its output and error appended to
    /// `log`; returns once it is started. The
    /// child is not this process's: it outlives it and is found again through its own pid file.
    package static func detach(_ executable: String, _ arguments: [String], log: String) async throws {
        let file = try FileDescriptor.open(
            FilePath(log),
            .writeOnly,
            options: [.create, .append],
            permissions: [.ownerReadWrite, .groupRead, .otherRead]
        )
        let result = try await Subprocess.run(
            .path("/usr/bin/setsid"),
            arguments: Arguments(["--fork", executable] + arguments),
            input: .none,
            output: .fileDescriptor(file, closeAfterSpawningProcess: true),
            error: .combinedWithOutput
        )
        guard status(result.terminationStatus) == 0 else {
            throw Failure(
                description: "cannot start \(executable) detached (setsid exited \(status(result.terminationStatus))); see \(log)"
            )
        }
    }
}
