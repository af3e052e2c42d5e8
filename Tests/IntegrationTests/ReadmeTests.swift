import Foundation
import Testing

@testable import AutonomousCLI

/// The code the README shows is code that compiles or that the tools write.
@Suite("README code")
struct ReadmeTests {
    static let readme = (try? String(contentsOf: FaultTests.root.appendingPathComponent("README.md"), encoding: .utf8)) ?? ""

    /// The first ```swift block after `heading`.
    static func block(after heading: String) throws -> String {
        let start = try #require(readme.range(of: heading)).upperBound
        let open = try #require(readme.range(of: "```swift\n", range: start..<readme.endIndex)).upperBound
        let close = try #require(readme.range(of: "```", range: open..<readme.endIndex)).lowerBound
        return String(readme[open..<close])
    }

    @Test("'An app' is Examples/QuickStart, which the package builds")
    func quickStart() throws {
        let compiled = try String(
            contentsOf: FaultTests.root.appendingPathComponent("Examples/QuickStart/QuickStart.swift"),
            encoding: .utf8
        )
        #expect(try Self.block(after: "## An app") == compiled)
    }

    @Test("'Your own app' shows the manifest autonomous init writes")
    func manifest() throws {
        let written = InitCommand.manifest(name: "MyApp", checkout: URL(fileURLWithPath: "/path/to/autonomous"))
        #expect(try Self.block(after: "## Your own app") == written)
    }
}
