import ClusterCore
import Testing

@Suite("JSON parsing and writing")
struct JSONParserTests {
    @Test("Parses every kind of value")
    func parsesValues() throws {
        let value = try JSONValue(
            parsing: #" {"a": [1, -2.5e2, true, false, null, "x\n\u00e9\ud83d\ude00"], "b": {"c": 9007199254740993}} "#
        )
        #expect(value["a"][0] == 1)
        #expect(value["a"][1].doubleValue == -250)
        #expect(value["a"][2] == true)
        #expect(value["a"][4].isNull)
        #expect(value["a"][5] == "x\né😀")
        #expect(value["b"]["c"] == .int(9_007_199_254_740_993))
        #expect(value["missing"]["deeper"].isNull)
        #expect(value[path: "b.c"].intValue == 9_007_199_254_740_993)
    }

    @Test(
        "Rejects malformed text with a byte offset",
        arguments: [
            ("{", 1), ("{\"a\" 1}", 5), ("[1,]", 3), ("01", 1), ("\"\u{01}\"", 1), ("[1] x", 4), ("tru", 0),
            ("\"\\x\"", 2), ("{\"a\":1,}", 7), ("\"\\ud800\"", 7), ("", 0), ("-", 0), ("1.", 2),
        ]
    )
    func rejectsMalformed(text: String, offset: Int) {
        #expect(throws: JSONParseError.self) { try JSONValue(parsing: text) }
        do {
            _ = try JSONValue(parsing: text)
        } catch {
            #expect(error.offset == offset, "\(text): \(error)")
        }
    }

    @Test("Rejects invalid UTF-8 and absurd nesting without crashing")
    func rejectsHostileInput() {
        #expect(throws: JSONParseError.self) { try JSONValue(parsing: [0x22, 0xC3, 0x28, 0x22]) }
        #expect(throws: JSONParseError.self) { try JSONValue(parsing: [0x22, 0xED, 0xA0, 0x80, 0x22]) }
        let deep = String(repeating: "[", count: 100_000) + String(repeating: "]", count: 100_000)
        #expect(throws: JSONParseError.self) { try JSONValue(parsing: deep) }
        let bytes = Array(deep.utf8)
        _ = bytes.withUnsafeBufferPointer { buffer in
            #expect(throws: JSONParseError.self) { try JSONParser.validate(buffer) }
        }
    }

    @Test("Validation reports the shape and the byte ranges of array elements")
    func validateShape() throws {
        let text = Array(#" [ {"a":1} , 2, {"b":[{}]} ] "#.utf8)
        let shape = try text.withUnsafeBufferPointer { try JSONParser.validate($0) }
        guard case .array(let elements) = shape else {
            Issue.record("expected an array, got \(shape)")
            return
        }
        #expect(elements.count == 3)
        #expect(elements.map(\.isObject) == [true, false, true])
        #expect(String(decoding: text[elements[0].range], as: UTF8.self) == #"{"a":1}"#)
        #expect(String(decoding: text[elements[2].range], as: UTF8.self) == #"{"b":[{}]}"#)
        let object = Array(#"{"k":"v"}"#.utf8)
        #expect(try object.withUnsafeBufferPointer { try JSONParser.validate($0) } == .object(0..<9))
    }

    @Test("Writer output parses back to the same value")
    func roundTrip() throws {
        let value: JSONValue = [
            "s": "quote\" backslash\\ newline\n tab\t ctrl\u{01}", "n": [1, 2.5, -0.001, 1e300], "o": ["x": nil, "t": true],
        ]
        let text = JSONWriter.encode(value)
        #expect(try JSONParser.parse(text) == value)
        #expect("\(JSONValue.string("plain"))" == "plain")
        #expect(JSONValue.int(3).description == "3")
        for number: Int64 in [0, 7, -7, 10, -10, 1_000_000_007, .max, .min] {
            #expect(JSONWriter.encode(.int(number)) == Array(String(number).utf8))
        }
    }

    @Test("Objects keep their members' order; a repeated key keeps its place and takes the last value")
    func objectOrder() throws {
        let text = #"{"z":1,"a":{"y":true,"b":null},"m":"x","a2":[{"k":2,"c":3}]}"#
        let value = try JSONValue(parsing: text)
        #expect(String(decoding: JSONWriter.encode(value), as: UTF8.self) == text)
        #expect(value.objectValue?.keys == ["z", "a", "m", "a2"])
        // Repeated keys, below and above the point where the parser switches to a set.
        for count in [3, 40] {
            let members = (0..<count).map { #""k\#($0)":\#($0)"# } + [#""k1":"again""#]
            let parsed = try JSONValue(parsing: "{" + members.joined(separator: ",") + "}")
            #expect(parsed.objectValue?.count == count)
            #expect(parsed.objectValue?.keys == (0..<count).map { "k\($0)" })
            #expect(parsed["k1"] == "again" && parsed["k\(count - 1)"] == .int(Int64(count - 1)))
        }
        // Literals keep their order too; a Dictionary's keys are sorted.
        let literal: JSONValue = ["b": 1, "a": 2]
        #expect(literal.jsonText == #"{"b":1,"a":2}"#)
        #expect(JSONValue.object(JSONObject(["b": 1, "a": 2, "c": 3] as [String: JSONValue])).jsonText == #"{"a":2,"b":1,"c":3}"#)
    }

    @Test("Objects compare and hash without regard to order, and read and write like dictionaries")
    func objectSemantics() throws {
        let ab = try JSONValue(parsing: #"{"a":1,"b":[1,2]}"#)
        let ba = try JSONValue(parsing: #"{"b":[1,2],"a":1}"#)
        #expect(ab == ba)
        #expect(ab.hashValue == ba.hashValue)
        #expect(Set([ab, ba]).count == 1)
        #expect(ab != (try JSONValue(parsing: #"{"a":1,"b":[2,1]}"#)))
        #expect(ab != (try JSONValue(parsing: #"{"a":1}"#)))
        var object = try #require(ab.objectValue)
        object["c"] = "new"
        object["a"] = 5
        object["b"] = nil
        #expect(object.keys == ["a", "c"] && object["a"] == 5 && object["b"] == nil)
        #expect(object.removeValue(forKey: "c") == "new" && object.count == 1)
        #expect(object["missing", default: 0] == 0)
        #expect(object.dictionary == ["a": 5])
        var value = JSONValue.object(object)
        value["d"] = ["nested": true]
        #expect(value.jsonText == #"{"a":5,"d":{"nested":true}}"#)
        for (key, member) in object { #expect(key == "a" && member == 5) }
    }

    /// Before the fix `{"n":1,"n":2}` passed validation: typed validation saw one value while
    /// the stored bytes kept both, and readers disagree on which one counts.
    @Test("Validation refuses a key named twice in one object, at any depth and however it is escaped, in linear time")
    func duplicateKeys() throws {
        func check(_ text: String) -> String? {
            let bytes = Array(text.utf8)
            do {
                _ = try bytes.withUnsafeBufferPointer { try JSONParser.validate($0) }
                return nil
            } catch let error as JSONParseError {
                return error.duplicateKey
            } catch {
                return "unexpected \(error)"
            }
        }
        #expect(check(#"{"n":1,"n":2}"#) == "n")
        #expect(check(#"{"a":{"x":1,"y":{"x":2},"x":3}}"#) == "x", "nested objects keep their own keys")
        #expect(check(#"[{"n":1},{"n":2}]"#) == nil, "the same key in two records is fine")
        #expect(check(#"{"a":{"n":1},"b":{"n":1},"n":0}"#) == nil)
        #expect(check(#"{"a":1,"\u0061":2}"#) == "a", "an escaped spelling is the same key")
        #expect(check(#"{"é":1,"\u00e9":2}"#) == "é")
        // Many keys: past the linear scan, through the hash index, including a late repeat.
        let many = (0..<5000).map { "\"k\($0)\":\($0)" }
        #expect(check("{" + many.joined(separator: ",") + "}") == nil)
        #expect(check("{" + (many + [#""k17":0"#]).joined(separator: ",") + "}") == "k17")
        #expect(check("{" + (many + [#""\u006b4999":0"#]).joined(separator: ",") + "}") == "k4999")
        // Parsing (not validating) still takes the last value, as before.
        #expect(try JSONParser.parse(Array(#"{"n":1,"n":2}"#.utf8))["n"] == 2)
    }
}
