/// A secret taken from the environment at startup, never from code, and never logged.
public struct Secret: Sendable, Hashable, CustomStringConvertible {
    /// The environment variable that holds the secret.
    public let name: String

    public static func secret(_ name: String) -> Secret { Secret(name: name) }

    /// Reads the secret, or throws an error that names the missing variable.
    package func resolve(in environment: [String: String]) throws -> String {
        guard let value = environment[name], !value.isEmpty else {
            throw ConfigurationError("missing secret: set the environment variable \(name)")
        }
        return value
    }

    public var description: String { "secret(\(name))" }
}

/// A configuration problem found at startup. The message names what to fix.
public struct ConfigurationError: Error, Sendable, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}
