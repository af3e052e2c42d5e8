import Foundation
import Subprocess
import SystemPackage

/// Runs short commands to completion through swift-subprocess: every command the tools run
/// and wait for (`pg_ctl`, `initdb`, `<app> describe`, `kubectl`, `nomad`) starts here.
///
/// Long-lived children are not commands: nats-server, the process engine's cluster members
/// and its detached supervisor outlive any one call (they are started, watched and stopped by
/// their owners), which swift-subprocess's scoped `run` does not model.
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
        return (status(result.terminationStatus), result.standardOutput ?? "")
    }
}
