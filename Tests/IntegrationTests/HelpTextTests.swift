import Foundation
import Testing

/// `--help` as a person reads it: paragraphs wrapped to the terminal, not at the source's
/// line ends (which left single words on lines of their own).
@Suite("Help texts")
struct HelpTextTests {
    static let orderFlow = FaultTests.root.appendingPathComponent(".build/debug/OrderFlow").path
    static let cli = FaultTests.root.appendingPathComponent(".build/debug/autonomous").path

    /// Lines of the text before `USAGE:` that end a line early although their paragraph goes on.
    static func orphans(in help: String, columns: Int) -> [String] {
        let lines = help.components(separatedBy: "\n")
        let head = Array(lines.prefix { !$0.hasPrefix("USAGE:") })
        var found: [String] = []
        for (index, line) in head.enumerated().dropLast() where !line.isEmpty && !line.hasPrefix("OVERVIEW:") {
            let next = head[index + 1]
            // A wrapped line is full enough that the next word did not fit (within the two
            // columns the wrapper keeps free; it counts bytes).
            let nextWord = next.split(separator: " ").first.map(\.utf8.count) ?? 0
            if !next.isEmpty && line.utf8.count + 1 + nextWord < columns - 2 { found.append(line) }
        }
        return found
    }

    @Test(
        "Every command's discussion is wrapped by the terminal's width only",
        arguments: [
            [orderFlow, "--help"], [orderFlow, "dev", "--help"], [cli, "deploy", "--help"], [cli, "dlq", "--help"],
            [cli, "tenants", "limit", "--help"], [cli, "dev", "--help"], [cli, "serve", "--help"],
        ]
    )
    func wrapped(_ command: [String]) async throws {
        for columns in [80, 120] {
            let (status, output) = try await runProgram(command[0], Array(command.dropFirst()), environment: ["COLUMNS": String(columns)])
            #expect(status == 0, "\(output)")
            let orphans = Self.orphans(in: output, columns: columns)
            #expect(orphans.isEmpty, "\(command.dropFirst().joined(separator: " ")) at \(columns) columns: \(orphans)")
        }
    }
}
