public import ClusterCore

/// `{field}` placeholders filled from a record; dotted paths (`{payload.event.text}`) reach
/// nested fields. A missing field is an error that names it.
public struct Template: Sendable, ExpressibleByStringLiteral, CustomStringConvertible {
    public let text: String

    public init(_ text: String) { self.text = text }
    public init(stringLiteral value: String) { self.text = value }

    public var description: String { text }

    /// The top-level fields the template reads.
    public var fields: [String] {
        placeholders.map { String($0.split(separator: ".").first ?? Substring($0)) }
    }

    var placeholders: [String] {
        var result: [String] = []
        var current: String?
        for character in text {
            if character == "{" {
                current = ""
            } else if character == "}", let name = current {
                if !name.isEmpty { result.append(name) }
                current = nil
            } else if current != nil {
                current!.append(character)
            }
        }
        return result
    }

    public func render(_ record: JSONValue) throws -> String {
        var output = ""
        var current: String?
        for character in text {
            if character == "{" {
                if let pending = current { output += "{" + pending }
                current = ""
            } else if character == "}", let name = current {
                let value = record[path: name]
                if value.isNull {
                    throw ConfigurationError("template field '\(name)' is missing from the record")
                }
                output += value.description
                current = nil
            } else if current != nil {
                current!.append(character)
            } else {
                output.append(character)
            }
        }
        if let pending = current { output += "{" + pending }
        return output
    }
}
