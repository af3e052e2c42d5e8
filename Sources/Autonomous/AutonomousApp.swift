import ArgumentParser
import ClusterCore
import Foundation
import Logging

/// An Autonomous app: declare its graph in `build`, and `@main` gives it a command line with
/// the roles `dev`, `ingress`, `worker`, `coordinator`, `all` and `describe`.
///
/// ```swift
/// @main struct OrderFlow: AutonomousApp {
///     func build(_ app: inout AppBuilder) { … }
/// }
/// ```
public protocol AutonomousApp {
    init()
    /// The app's name (defaults to the type name).
    var name: String { get }
    func build(_ app: inout AppBuilder)
}

extension AutonomousApp {
    public var name: String { String(describing: Self.self) }

    /// Builds and checks the graph.
    public static func graph() throws(AppGraphError) -> AppGraph {
        let app = Self()
        var builder = AppBuilder(name: app.name)
        app.build(&builder)
        return try builder.build()
    }

    public static func main() async {
        await AppCommand<Self>.main()
    }
}
