import ChildProcess
import Foundation
import Testing

@Suite("Long-lived children owned by a task (swift-subprocess)")
struct OwnedProcessTests {
    @Test("stop sends SIGTERM and returns once the child is reaped")
    func stop() async throws {
        let child = try await OwnedProcess.start("/bin/sleep", arguments: ["30"])
        #expect(child.isRunning)
        await child.stop(timeout: .seconds(10))
        #expect(!child.isRunning)
        #expect(child.terminationStatus == 128 + SIGTERM)
        #expect(kill(child.processIdentifier, 0) != 0 || errno == EPERM, "reaped, not left a zombie")
    }

    @Test("A child that ignores SIGTERM is killed after the timeout")
    func escalation() async throws {
        let ready = FileManager.default.temporaryDirectory.appendingPathComponent("owned-\(UUID().uuidString).ready").path
        defer { try? FileManager.default.removeItem(atPath: ready) }
        // SIGTERM stays ignored across exec, so `sleep` ignores it too.
        let child = try await OwnedProcess.start("/bin/sh", arguments: ["-c", "trap '' TERM; touch '\(ready)'; exec sleep 30"])
        while !FileManager.default.fileExists(atPath: ready) { try await Task.sleep(for: .milliseconds(10)) }
        await child.stop(timeout: .milliseconds(300))
        #expect(child.terminationStatus == 128 + SIGKILL)
    }

    @Test("A child that exits by itself is seen exited with its status; signals reach it")
    func exits() async throws {
        let quick = try await OwnedProcess.start("/bin/sh", arguments: ["-c", "exit 3"])
        #expect(await quick.waitForExit() == 3)
        #expect(!quick.isRunning)
        let killed = try await OwnedProcess.start("/bin/sleep", arguments: ["30"])
        killed.send(SIGKILL)
        #expect(await killed.waitForExit() == 128 + SIGKILL)
        killed.send(SIGTERM)  // after the exit: no effect, no crash
    }

    @Test("Output and error are appended to a file; the environment is the one given")
    func outputAndEnvironment() async throws {
        let log = FileManager.default.temporaryDirectory.appendingPathComponent("owned-\(UUID().uuidString).log").path
        defer { try? FileManager.default.removeItem(atPath: log) }
        try "before\n".write(toFile: log, atomically: true, encoding: .utf8)
        let child = try await OwnedProcess.start(
            "/bin/sh",
            arguments: ["-c", "echo out $GREETING; echo err >&2"],
            environment: ["GREETING": "hello", "PATH": "/usr/bin:/bin"],
            output: .file(log)
        )
        #expect(await child.waitForExit() == 0)
        #expect(try String(contentsOfFile: log, encoding: .utf8) == "before\nout hello\nerr\n")
    }

    @Test("A missing executable throws at start")
    func missing() async {
        await #expect(throws: (any Error).self) {
            _ = try await OwnedProcess.start("/nonexistent/program", arguments: [])
        }
    }
}
