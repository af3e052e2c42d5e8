import Foundation
import Subprocess
import Synchronization
import SystemPackage

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A long-lived child process (nats-server, a member of the process engine's cluster) run
/// through swift-subprocess by one task that owns it from spawn to reaping.
///
/// swift-subprocess ties a child to one `run` call. A long-lived child is started by one call
/// and stopped by another, so that call runs in the child's owner task: ``start(_:arguments:environment:workingDirectory:output:)``
/// returns once the child is spawned, ``stop(timeout:)`` asks the owner to tear it down
/// (SIGTERM, then SIGKILL after the timeout) and waits until the child is reaped, and
/// ``waitForExit()`` waits for a child that ends by itself. Signals for fault tests go
/// through ``send(_:)``. Nothing is left to `Foundation.Process` or a SIGCHLD handler.
package final class OwnedProcess: Sendable {
    /// How a stop is asked for.
    private enum Request: Sendable {
        case stop(timeout: Duration)
    }

    private struct State {
        var request: Request?
        var waiter: CheckedContinuation<Void, Never>?
        var status: Int32?
    }

    /// What the caller's side and the owner task share.
    private final class Shared: Sendable {
        // Guarded by the mutex; the waiter is resumed exactly once, outside the lock.
        let state = Mutex(State())
    }

    package let processIdentifier: Int32
    private let shared: Shared
    // Guarded by the mutex: set once, right after the spawn.
    private let owner = Mutex<Task<Void, Never>?>(nil)

    private init(processIdentifier: Int32, shared: Shared) {
        self.processIdentifier = processIdentifier
        self.shared = shared
    }

    /// Where a child's standard output and error go.
    package enum Output: Sendable {
        case discarded
        /// Appended to this file (created 0644 if missing).
        case file(String)
        /// This process's own standard output and error (a dev command's children).
        case inherited
    }

    /// Spawns `executable` and returns once it runs; throws when it cannot be started.
    package static func start(
        _ executable: String,
        arguments: [String],
        environment: [String: String]? = nil,
        workingDirectory: String? = nil,
        output: Output = .discarded
    ) async throws -> OwnedProcess {
        let descriptor: FileDescriptor?
        switch output {
        case .discarded, .inherited:
            descriptor = nil
        case .file(let path):
            descriptor = try FileDescriptor.open(
                FilePath(path),
                .writeOnly,
                options: [.create, .append],
                permissions: [.ownerReadWrite, .groupRead, .otherRead]
            )
        }
        var environmentSetting = Environment.inherit
        if let environment {
            // `Environment.Key(rawValue:)` is failable; a name it refused would be left out.
            var values: [Environment.Key: String] = [:]
            for (name, value) in environment {
                if let key = Environment.Key(rawValue: name) { values[key] = value }
            }
            environmentSetting = .custom(values)
        }
        let configuration = Configuration(
            executable: executable.contains("/") ? .path(FilePath(executable)) : .name(executable),
            arguments: Arguments(arguments),
            environment: environmentSetting,
            workingDirectory: workingDirectory.map { FilePath($0) }
        )
        let (spawned, spawnedContinuation) = AsyncStream.makeStream(of: Result<OwnedProcess, any Error>.self)
        let task = Task {
            let shared = Shared()
            let child = Mutex<OwnedProcess?>(nil)
            do {
                let onSpawn: @Sendable (OwnedProcess) -> Void = { owned in
                    child.withLock { $0 = owned }
                    spawnedContinuation.yield(.success(owned))
                }
                let status: TerminationStatus
                if let descriptor {
                    status = try await run(
                        configuration,
                        output: FileDescriptorOutput.fileDescriptor(descriptor, closeAfterSpawningProcess: true),
                        error: CombinedErrorOutput.combinedWithOutput,
                        shared: shared,
                        onSpawn: onSpawn
                    )
                } else if case .inherited = output {
                    status = try await run(
                        configuration,
                        output: FileDescriptorOutput.fileDescriptor(.standardOutput, closeAfterSpawningProcess: false),
                        error: FileDescriptorOutput.fileDescriptor(.standardError, closeAfterSpawningProcess: false),
                        shared: shared,
                        onSpawn: onSpawn
                    )
                } else {
                    status = try await run(
                        configuration,
                        output: DiscardedOutput.discarded,
                        error: DiscardedOutput.discarded,
                        shared: shared,
                        onSpawn: onSpawn
                    )
                }
                switch status {
                case .exited(let code): child.withLock { $0 }?.finished(status: code)
                case .signaled(let signal): child.withLock { $0 }?.finished(status: 128 + signal)
                }
            } catch {
                if let owned = child.withLock({ $0 }) {
                    owned.finished(status: -1)
                } else {
                    try? descriptor?.close()
                    spawnedContinuation.yield(.failure(error))
                }
            }
            spawnedContinuation.finish()
        }
        for await outcome in spawned {
            let child = try outcome.get()
            child.owner.withLock { $0 = task }
            return child
        }
        throw SpawnError(description: "\(executable) did not start")
    }

    /// The owner task's one `run` call: spawns, serves stop requests, and is reaped.
    private static func run(
        _ configuration: Configuration,
        output: some OutputProtocol,
        error: some ErrorOutputProtocol,
        shared: Shared,
        onSpawn: @Sendable (OwnedProcess) -> Void
    ) async throws -> TerminationStatus {
        try await Subprocess.run(configuration, input: .none, output: output, error: error) { execution in
            let owned = OwnedProcess(processIdentifier: execution.processIdentifier.value, shared: shared)
            onSpawn(owned)
            await owned.serve(execution)
        }.terminationStatus
    }

    /// The owner's side while the child runs: waits for a stop request or for the child's exit.
    private func serve<Input, Output, Failure>(_ execution: Execution<Input, Output, Failure>) async {
        while true {
            if case .stop(let timeout) = shared.state.withLock({ $0.request }) {
                await execution.teardown(using: [.send(signal: .terminate, allowedDurationToNextStep: timeout)])
                return
            }
            if hasExited { return }
            await waitForRequest(upTo: .milliseconds(50))
        }
    }

    /// Whether the child has exited (it may not be reaped yet): `waitid` with `WNOWAIT` looks
    /// without consuming the status, which swift-subprocess reaps when the owner returns.
    private var hasExited: Bool {
        var info = siginfo_t()
        let rc = waitid(P_PID, id_t(processIdentifier), &info, WEXITED | WNOHANG | WNOWAIT)
        if rc != 0 { return errno == ECHILD }
        // With WNOHANG and no child exited, waitid leaves the zeroed siginfo as it was.
        return info.si_signo != 0
    }

    /// Returns after `limit`, or at once when a stop is asked for.
    private func waitForRequest(upTo limit: Duration) async {
        await withTaskGroup(of: Void.self) { group in
            group.addTask { try? await Task.sleep(for: limit) }
            group.addTask {
                // Cancelled (the sleeper ended first), it returns whether or not it had stored
                // its continuation yet: the check and the store are under the same lock as
                // the cancellation handler's resume.
                await withTaskCancellationHandler {
                    await withCheckedContinuation { continuation in
                        let ready = self.shared.state.withLock { state -> Bool in
                            if state.request != nil || Task.isCancelled { return true }
                            state.waiter = continuation
                            return false
                        }
                        if ready { continuation.resume() }
                    }
                } onCancel: {
                    self.takeWaiter()?.resume()
                }
            }
            await group.next()
            group.cancelAll()
        }
    }

    private func takeWaiter() -> CheckedContinuation<Void, Never>? {
        shared.state.withLock { state in
            defer { state.waiter = nil }
            return state.waiter
        }
    }

    private func finished(status: Int32) {
        shared.state.withLock { $0.status = status }
    }

    /// Whether the child still runs.
    package var isRunning: Bool { shared.state.withLock { $0.status == nil } && !hasExitedOrReaped }

    private var hasExitedOrReaped: Bool { shared.state.withLock { $0.status != nil } || hasExited }

    /// The exit status once the child is reaped (the code, or 128 + the signal).
    package var terminationStatus: Int32? { shared.state.withLock { $0.status } }

    /// Sends `signal` to the child (no effect once it has exited).
    package func send(_ signal: Int32) {
        guard shared.state.withLock({ $0.status == nil }) else { return }
        kill(processIdentifier, signal)
    }

    /// Stops the child (SIGTERM, then SIGKILL after `timeout`) and returns once it is reaped.
    package func stop(timeout: Duration = .seconds(10)) async {
        shared.state.withLock { state in
            if state.request == nil { state.request = .stop(timeout: timeout) }
        }
        takeWaiter()?.resume()
        await waitForExit()
    }

    /// Returns once the child has exited and been reaped; its status.
    @discardableResult
    package func waitForExit() async -> Int32 {
        let task = owner.withLock { $0 }
        await task?.value
        return shared.state.withLock { $0.status } ?? -1
    }

    package struct SpawnError: Error, CustomStringConvertible {
        package var description: String
    }
}
