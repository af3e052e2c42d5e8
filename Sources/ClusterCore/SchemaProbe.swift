/// Finds the top-level fields of a `Decodable` type by decoding it once with a decoder that
/// records which keys are asked for and answers with placeholder values.
///
/// This works for synthesized `Codable` conformances, which is what typed records use. A type
/// whose `init(from:)` rejects the placeholders (for example a `URL` field) gives `nil`; its
/// fields are then unknown and only the runtime decode checks them.
package enum SchemaProbe {
    package static func fields<T: Decodable>(of type: T.Type) -> (required: [String], all: [String])? {
        columns(of: type).map { ($0.required, $0.all) }
    }

    /// The top-level fields with the kind of value each holds, for the typed columns of a
    /// storage (``FieldKind``).
    package static func columns<T: Decodable>(of type: T.Type) -> (required: [String], all: [String], kinds: [String: FieldKind])? {
        let recorder = KeyRecorder()
        do {
            _ = try T(from: ProbeDecoder(recorder: recorder, codingPath: []))
        } catch {
            return nil
        }
        return (recorder.required, recorder.required + recorder.optional.filter { !recorder.required.contains($0) }, recorder.kinds)
    }

    /// The field path and a user-facing sentence for a decoding failure.
    package static func describe(_ error: DecodingError) -> (field: String?, problem: String) {
        func path(_ codingPath: [any CodingKey]) -> String? {
            let parts = codingPath.map { $0.intValue.map { "[\($0)]" } ?? $0.stringValue }
            guard !parts.isEmpty else { return nil }
            return parts.enumerated().map { i, part in i == 0 || part.hasPrefix("[") ? part : "." + part }.joined()
        }
        switch error {
        case .keyNotFound(let key, let context):
            let full = path(context.codingPath + [key])
            return (full, "missing required field '\(full ?? key.stringValue)'")
        case .typeMismatch(let type, let context):
            return (path(context.codingPath), "field '\(path(context.codingPath) ?? "record")' must be \(typeName(type))")
        case .valueNotFound(let type, let context):
            return (path(context.codingPath), "field '\(path(context.codingPath) ?? "record")' must be \(typeName(type)), not null")
        case .dataCorrupted(let context):
            return (path(context.codingPath), context.debugDescription)
        @unknown default:
            return (nil, "record does not match the table's type")
        }
    }

    /// The first number (depth first, by field path) that no Swift number field can hold:
    /// infinite after parsing (`1e400`), or a whole number beyond Int64.
    package static func outOfRangeNumber(in value: JSONValue, path: String = "") -> (path: String, number: String)? {
        switch value {
        case .double(let number):
            if !number.isFinite { return (path, "a number beyond ±1.8e308") }
            if number == number.rounded(), abs(number) >= 9.223_372_036_854_775_807e18 { return (path, "\(number)") }
            return nil
        case .object(let object):
            for (key, member) in object {
                if let found = outOfRangeNumber(in: member, path: path.isEmpty ? key : path + "." + key) { return found }
            }
            return nil
        case .array(let elements):
            for (index, element) in elements.enumerated() {
                if let found = outOfRangeNumber(in: element, path: path + "[\(index)]") { return found }
            }
            return nil
        default:
            return nil
        }
    }

    private static func typeName(_ type: Any.Type) -> String {
        switch type {
        case is String.Type: return "a string"
        case is Bool.Type: return "a boolean"
        case is Int.Type, is Int64.Type, is Int32.Type, is UInt.Type, is UInt64.Type: return "an integer"
        case is Double.Type, is Float.Type: return "a number"
        default:
            let name = String(describing: type)
            if name.hasPrefix("Array") { return "an array" }
            if name.hasPrefix("Dictionary") { return "an object" }
            return "of type \(name)"
        }
    }
}

private final class KeyRecorder {
    var required: [String] = []
    var optional: [String] = []
    var kinds: [String: FieldKind] = [:]

    func note<T>(_ key: String, _ type: T.Type) {
        if kinds[key] == nil { kinds[key] = FieldKind(type) }
    }
}

/// What a typed field holds, as a storage keeps it in a column of its own.
package enum FieldKind: String, Sendable, Hashable, Codable {
    case text, integer, unsignedInteger, number, boolean
    /// Anything else (nested objects, arrays, dates): kept as JSON.
    case json

    init<T>(_ type: T.Type) {
        switch type {
        case is String.Type: self = .text
        case is Bool.Type: self = .boolean
        case is Int.Type, is Int64.Type, is Int32.Type, is Int16.Type, is Int8.Type, is UInt32.Type, is UInt16.Type, is UInt8.Type:
            self = .integer
        case is UInt.Type, is UInt64.Type: self = .unsignedInteger
        case is Double.Type, is Float.Type: self = .number
        default: self = .json
        }
    }
}

private struct ProbeDecoder: Decoder {
    let recorder: KeyRecorder?
    var codingPath: [any CodingKey]
    var userInfo: [CodingUserInfoKey: Any] { [:] }

    func container<Key: CodingKey>(keyedBy type: Key.Type) throws -> KeyedDecodingContainer<Key> {
        KeyedDecodingContainer(ProbeKeyed<Key>(recorder: recorder, codingPath: codingPath))
    }

    func unkeyedContainer() throws -> any UnkeyedDecodingContainer {
        ProbeUnkeyed(codingPath: codingPath)
    }

    func singleValueContainer() throws -> any SingleValueDecodingContainer {
        ProbeSingle(codingPath: codingPath)
    }
}

private func placeholder<T: Decodable>(_ type: T.Type, codingPath: [any CodingKey]) throws -> T {
    switch type {
    case is String.Type: return "" as! T
    case is Bool.Type: return false as! T
    case is Int.Type: return 0 as! T
    case is Int64.Type: return Int64(0) as! T
    case is Int32.Type: return Int32(0) as! T
    case is UInt.Type: return UInt(0) as! T
    case is UInt64.Type: return UInt64(0) as! T
    case is Double.Type: return 0.0 as! T
    case is Float.Type: return Float(0) as! T
    default:
        guard codingPath.count < 16 else {
            throw DecodingError.dataCorrupted(.init(codingPath: codingPath, debugDescription: "too deep"))
        }
        return try T(from: ProbeDecoder(recorder: nil, codingPath: codingPath))
    }
}

private struct ProbeKeyed<Key: CodingKey>: KeyedDecodingContainerProtocol {
    let recorder: KeyRecorder?
    var codingPath: [any CodingKey]
    var allKeys: [Key] { [] }

    func contains(_ key: Key) -> Bool { true }

    func decodeNil(forKey key: Key) throws -> Bool {
        recorder?.optional.append(key.stringValue)
        return true
    }

    func decode<T: Decodable>(_ type: T.Type, forKey key: Key) throws -> T {
        recorder?.required.append(key.stringValue)
        recorder?.note(key.stringValue, T.self)
        return try placeholder(T.self, codingPath: codingPath + [key])
    }

    func decodeIfPresent<T: Decodable>(_ type: T.Type, forKey key: Key) throws -> T? {
        recorder?.optional.append(key.stringValue)
        recorder?.note(key.stringValue, T.self)
        return nil
    }

    func nestedContainer<NestedKey: CodingKey>(
        keyedBy type: NestedKey.Type,
        forKey key: Key
    ) throws
        -> KeyedDecodingContainer<NestedKey>
    {
        recorder?.required.append(key.stringValue)
        return KeyedDecodingContainer(ProbeKeyed<NestedKey>(recorder: nil, codingPath: codingPath + [key]))
    }

    func nestedUnkeyedContainer(forKey key: Key) throws -> any UnkeyedDecodingContainer {
        recorder?.required.append(key.stringValue)
        return ProbeUnkeyed(codingPath: codingPath + [key])
    }

    func superDecoder() throws -> any Decoder { ProbeDecoder(recorder: nil, codingPath: codingPath) }
    func superDecoder(forKey key: Key) throws -> any Decoder { ProbeDecoder(recorder: nil, codingPath: codingPath + [key]) }
}

private struct ProbeUnkeyed: UnkeyedDecodingContainer {
    var codingPath: [any CodingKey]
    var count: Int? { 0 }
    var isAtEnd: Bool { true }
    var currentIndex: Int { 0 }

    mutating func decodeNil() throws -> Bool { true }

    mutating func decode<T: Decodable>(_ type: T.Type) throws -> T {
        throw DecodingError.valueNotFound(T.self, .init(codingPath: codingPath, debugDescription: "empty"))
    }

    mutating func nestedContainer<NestedKey: CodingKey>(keyedBy type: NestedKey.Type) throws -> KeyedDecodingContainer<NestedKey> {
        KeyedDecodingContainer(ProbeKeyed<NestedKey>(recorder: nil, codingPath: codingPath))
    }

    mutating func nestedUnkeyedContainer() throws -> any UnkeyedDecodingContainer { self }
    mutating func superDecoder() throws -> any Decoder { ProbeDecoder(recorder: nil, codingPath: codingPath) }
}

private struct ProbeSingle: SingleValueDecodingContainer {
    var codingPath: [any CodingKey]
    func decodeNil() -> Bool { false }
    func decode<T: Decodable>(_ type: T.Type) throws -> T { try placeholder(T.self, codingPath: codingPath) }
}
