import ChildProcess
import Foundation
import Logging
import Synchronization

/// The interpreter: `flag`, else AUTONOMOUS_PYTHON, else `python3`.
package func pythonInterpreter(_ flag: String?) -> String {
    flag ?? ProcessInfo.processInfo.environment["AUTONOMOUS_PYTHON"].flatMap { $0.isEmpty ? nil : $0 } ?? "python3"
}

/// Python worker processes a `dev` run keeps running: restarted after an unexpected exit
/// (with a growing pause), stopped with SIGTERM (they drain: finish their batches, ack, exit).
package final class PythonWorkers: Sendable {
    package init() {}

    private struct State {
        var stopping = false
        var processes: [Int: OwnedProcess] = [:]
    }

    // Guarded by the mutex: whether a stop began, and the children alive.
    private let state = Mutex(State())
    private let supervisors = Mutex<[Task<Void, Never>]>([])

    /// Starts `count` workers of the Python app `app` (`python -m autonomous worker app`, with
    /// `--graph graph` for a Swift app that names Python handlers).
    package func start(count: Int, python: String, app: String, graph: String? = nil, environment: [String: String], logger: Logger) {
        let arguments = ["-m", "autonomous", "worker", app] + (graph.map { ["--graph", $0] } ?? [])
        // dev's own health port is not theirs.
        let environment = environment.filter { $0.key != "AUTONOMOUS_HEALTH_PORT" }
        let tasks = (0..<count).map { index in
            Task {
                var pause = Duration.seconds(1)
                while !state.withLock({ $0.stopping }) {
                    let child: OwnedProcess
                    do {
                        child = try await OwnedProcess.start(
                            python,
                            arguments: arguments,
                            environment: environment,
                            output: .inherited
                        )
                    } catch {
                        logger.error("Cannot start the Python worker", metadata: ["python": "\(python)", "error": "\(error)"])
                        return
                    }
                    let stopNow = state.withLock { state -> Bool in
                        state.processes[index] = child
                        return state.stopping
                    }
                    if stopNow { await child.stop(timeout: .seconds(30)) }
                    let started = ContinuousClock.now
                    let status = await child.waitForExit()
                    state.withLock { _ = $0.processes.removeValue(forKey: index) }
                    if state.withLock({ $0.stopping }) { return }
                    // A worker that ran a while made progress: start it again after a second;
                    // one that stops right after starting backs off, up to 15 s.
                    if ContinuousClock.now - started > .seconds(3) { pause = .seconds(1) }
                    logger.warning(
                        "The Python worker stopped; starting it again",
                        metadata: ["worker.index": "\(index)", "status": "\(status)", "pause": "\(pause)"]
                    )
                    try? await Task.sleep(for: pause)
                    pause = min(pause * 2, .seconds(15))
                }
            }
        }
        supervisors.withLock { $0 += tasks }
    }

    /// SIGTERM to every worker; returns once each has drained and exited (SIGKILL after 30 s).
    package func stop() async {
        let children = state.withLock { state -> [OwnedProcess] in
            state.stopping = true
            return Array(state.processes.values)
        }
        await withTaskGroup(of: Void.self) { group in
            for child in children { group.addTask { await child.stop(timeout: .seconds(30)) } }
        }
        for task in supervisors.withLock({ $0 }) { await task.value }
    }
}
