import ArgumentParser
import Foundation

/// `autonomous init MyApp`: a new package with one app that depends on this checkout of
/// Autonomous, copied from `Examples/Starter` (which the checkout builds and tests).
struct InitCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "init",
        abstract: "Create a new app package that depends on Autonomous.",
        discussion: """
            Writes <directory>/Package.swift, <directory>/Sources/<name>/<name>.swift (a small \
            app: a route, a handler, a schedule) and a .gitignore. The package depends on the \
            Autonomous checkout this command was built from, by path (a path dependency's \
            package name is its folder's name, which the manifest uses). Then: cd <directory> \
            && swift run <name> dev
            """
    )

    @Argument(help: "The app's name, a Swift type name such as MyApp.")
    var name: String

    @Option(name: .customLong("directory"), help: "Where to create the package. [default: ./<name>]")
    var directory: String?

    @Option(
        name: .customLong("autonomous-path"),
        help: "The Autonomous checkout to depend on. [default: the one this command was built from]"
    )
    var autonomousPath: String?

    func validate() throws {
        guard let first = name.unicodeScalars.first, CharacterSet.letters.contains(first),
            name.unicodeScalars.allSatisfy({ CharacterSet.alphanumerics.contains($0) && $0.isASCII }), name.count <= 64
        else {
            throw ValidationError("'\(name)' is not a valid app name: use letters and digits, starting with a letter (e.g. MyApp)")
        }
    }

    func run() throws {
        let checkout = try Self.checkout(autonomousPath)
        let template = checkout.appendingPathComponent("Examples/Starter/Starter.swift")
        guard let source = try? String(contentsOf: template, encoding: .utf8) else {
            throw CLIError("cannot read \(template.path); is \(checkout.path) an Autonomous checkout?")
        }
        let target = URL(fileURLWithPath: directory ?? name).standardizedFileURL
        let manager = FileManager.default
        if manager.fileExists(atPath: target.appendingPathComponent("Package.swift").path) {
            throw CLIError("\(target.path) already holds a Package.swift; choose another --directory")
        }
        let sources = target.appendingPathComponent("Sources/\(name)")
        try manager.createDirectory(at: sources, withIntermediateDirectories: true)
        try Self.manifest(name: name, checkout: checkout).write(
            to: target.appendingPathComponent("Package.swift"),
            atomically: true,
            encoding: .utf8
        )
        try Self.app(from: source, name: name).write(to: sources.appendingPathComponent("\(name).swift"), atomically: true, encoding: .utf8)
        try ".build/\n.autonomous/\nPackage.resolved\n".write(
            to: target.appendingPathComponent(".gitignore"),
            atomically: true,
            encoding: .utf8
        )
        print(
            """
            Created \(name) in \(target.path), depending on Autonomous at \(checkout.path).
            Run it:   cd \(target.path) && swift run \(name) dev
            Describe: swift run \(name) describe
            """
        )
    }

    /// The Autonomous checkout: the one given, or the one whose `.build` holds this binary.
    static func checkout(_ given: String?) throws -> URL {
        if let given {
            let url = URL(fileURLWithPath: given).standardizedFileURL
            guard FileManager.default.fileExists(atPath: url.appendingPathComponent("Package.swift").path) else {
                throw CLIError("\(url.path) has no Package.swift; --autonomous-path takes an Autonomous checkout")
            }
            return url
        }
        var directory = URL(fileURLWithPath: Bundle.main.executablePath ?? CommandLine.arguments[0]).resolvingSymlinksInPath()
            .deletingLastPathComponent()
        while directory.path != "/" {
            if FileManager.default.fileExists(atPath: directory.appendingPathComponent("Examples/Starter/Starter.swift").path) {
                return directory
            }
            directory.deleteLastPathComponent()
        }
        throw CLIError("cannot tell which Autonomous checkout this command comes from; pass --autonomous-path")
    }

    /// The new package's manifest. A path dependency's identity is its folder's name.
    static func manifest(name: String, checkout: URL) -> String {
        let identity = checkout.lastPathComponent
        return """
            // swift-tools-version:6.0
            import PackageDescription

            let package = Package(
                name: "\(name)",
                platforms: [.macOS(.v15)],
                dependencies: [
                    // A path dependency is named after its folder ("\(identity)").
                    .package(path: "\(checkout.path)")
                ],
                targets: [
                    .executableTarget(
                        name: "\(name)",
                        dependencies: [.product(name: "Autonomous", package: "\(identity)")]
                    )
                ]
            )

            """
    }

    /// The starter app with its names changed to `name`'s.
    static func app(from source: String, name: String) -> String {
        source
            .replacingOccurrences(of: "autonomous init", with: "\u{0}")
            .replacingOccurrences(of: "Starter", with: name)
            .replacingOccurrences(of: "starter.", with: name.lowercased() + ".")
            .replacingOccurrences(of: "\u{0}", with: "autonomous init")
    }
}
