import Foundation
import Testing

/// `autonomous init`: a new app package a user builds against this checkout.
@Suite("autonomous init")
struct InitCommandTests {
    @Test("Writes a manifest that names the path dependency by its folder, and the starter app under the new name")
    func createsPackage() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("aut-init-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: directory) }
        let root = FaultTests.root.standardizedFileURL
        let created = try runAutonomousCLI(["init", "Ledger", "--directory", directory.path, "--autonomous-path", root.path])
        #expect(created.status == 0, "\(created.output)")
        #expect(created.output.contains("swift run Ledger dev"))

        // The app is Examples/Starter (built and tested with this package) under the new name.
        let app = try String(contentsOf: directory.appendingPathComponent("Sources/Ledger/Ledger.swift"), encoding: .utf8)
        let starter = try String(contentsOf: root.appendingPathComponent("Examples/Starter/Starter.swift"), encoding: .utf8)
        #expect(app.contains("struct LedgerApp: AutonomousApp") && app.contains(#"var name: String { "Ledger" }"#))
        #expect(app.contains(#""ledger.note@1""#) && !app.contains("Starter") && app.contains("`autonomous init`"))
        #expect(app.replacingOccurrences(of: "Ledger", with: "Starter").replacingOccurrences(of: "ledger.", with: "starter.") == starter)

        // The manifest is valid and depends on this checkout by path, under its folder's name.
        let dump = try await runProgram("/usr/bin/env", ["swift", "package", "--package-path", directory.path, "dump-package"])
        #expect(dump.status == 0, "\(dump.output)")
        let manifest = try #require(try JSONSerialization.jsonObject(with: Data(dump.output.utf8)) as? [String: Any])
        let dependencies = try #require(manifest["dependencies"] as? [[String: Any]])
        let description = String(describing: dependencies)
        #expect(description.contains(root.path), "\(description)")
        let targets = String(describing: manifest["targets"] ?? "")
        #expect(targets.contains(root.lastPathComponent) && targets.contains("Autonomous"), "\(targets)")
        // An app resolves what the library needs and nothing the load tests alone use
        // (SwiftPM resolves by target: LoadRunner's hdrhistogram stays out).
        let resolved = try await runProgram("/usr/bin/env", ["swift", "package", "--package-path", directory.path, "resolve"])
        #expect(resolved.status == 0, "\(resolved.output)")
        let pins = try String(contentsOf: directory.appendingPathComponent("Package.resolved"), encoding: .utf8)
        #expect(pins.contains("swift-nio") && !pins.contains("hdrhistogram"), "\(pins)")
        let ignored = try String(contentsOf: directory.appendingPathComponent(".gitignore"), encoding: .utf8)
        #expect(ignored.contains(".build/") && ignored.contains("Package.resolved"))

        // Not over an existing package, and not with a name that is no Swift type name.
        let again = try runAutonomousCLI(["init", "Ledger", "--directory", directory.path, "--autonomous-path", root.path])
        #expect(again.status != 0 && again.output.contains("already holds a Package.swift"), "\(again.output)")
        let bad = try runAutonomousCLI(["init", "my-app", "--directory", directory.path + "-bad"])
        #expect(bad.status != 0 && bad.output.contains("'my-app' is not a valid app name"), "\(bad.output)")
    }
}
