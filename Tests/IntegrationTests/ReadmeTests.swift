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

/// The DocC article's code is the compiled snippet's, slice by slice.
@Suite("Getting started article")
struct GettingStartedArticleTests {
    /// The ```swift blocks of a Markdown text, in order.
    static func swiftBlocks(_ text: String) -> [String] {
        var blocks: [String] = []
        var rest = text[...]
        while let open = rest.range(of: "```swift\n"), let close = rest.range(of: "\n```", range: open.upperBound..<rest.endIndex) {
            blocks.append(String(rest[open.upperBound..<close.lowerBound]))
            rest = rest[close.upperBound...]
        }
        return blocks
    }

    /// The slices between `// snippet.<name>` and `// snippet.end`, unindented by the marker's indentation.
    static func slices(_ source: String) -> [String] {
        var slices: [String] = []
        var current: (indent: Int, lines: [String])?
        for line in source.split(separator: "\n", omittingEmptySubsequences: false) {
            let trimmed = line.drop { $0 == " " }
            if trimmed.hasPrefix("// snippet.") {
                let indent = line.count - trimmed.count
                if trimmed == "// snippet.end", let slice = current {
                    slices.append(slice.lines.joined(separator: "\n"))
                    current = nil
                } else {
                    current = (indent, [])
                }
            } else if let slice = current {
                current?.lines.append(String(line.dropFirst(min(slice.indent, line.prefix { $0 == " " }.count))))
            }
        }
        return slices
    }

    @Test("Every swift block of GettingStarted.md is a slice of Snippets/GettingStarted.swift, in order")
    func articleMatchesSnippet() throws {
        let article = try String(
            contentsOf: FaultTests.root.appendingPathComponent("Sources/Autonomous/Autonomous.docc/GettingStarted.md"),
            encoding: .utf8
        )
        let snippet = try String(contentsOf: FaultTests.root.appendingPathComponent("Snippets/GettingStarted.swift"), encoding: .utf8)
        let blocks = Self.swiftBlocks(article)
        let slices = Self.slices(snippet)
        #expect(blocks.count == 5)
        #expect(blocks == slices)
    }
}
