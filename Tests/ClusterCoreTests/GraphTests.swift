import ClusterCore
import Foundation
import NIOCore
import Testing

struct Prompt: Record {
    static let semanticType: SemanticType = "llm.prompt@1"
    var prompt: String
    var channel: String?
}

struct Note: Record {
    static let semanticType: SemanticType = "test.note@1"
    var text: String
}

struct Summary: Record {
    static let semanticType: SemanticType = "test.summary@1"
    var summary: String
    var words: Int
}

/// A component that reads `prompt` and writes `completion` to `output`.
struct NeedsPrompt: Component {
    let kind = "needs-prompt"
    var output: String
    var requiredFields: [String] { ["prompt"] }
    var produces: [String: [String]] { [output: ["completion"]] }
    var secrets: [Secret] { [] }
    func makeHandler(_ environment: ComponentEnvironment) throws -> @Sendable (Records<JSONValue>, HandlerContext) async throws -> Void {
        { _, _ in }
    }
}

@Suite("App graph checks")
struct GraphTests {
    @Test("A correct graph builds and describes itself")
    func valid() throws {
        var app = AppBuilder(name: "Ok")
        let prompts = app.table("prompts", of: Prompt.self)
        _ = app.table("completions")
        prompts.onNewRecords(NeedsPrompt(output: "completions"))
        app.post("/in") { _, _ in .ok }
        app.schedule("nightly", .daily(at: "03:00")) { _, _ in }
        let graph = try app.build()
        let described = graph.description(tenant: "acme")
        #expect(described.stream == "AUT_ACME")
        #expect(described.handlers[0].consumer == "h_needs-prompt-prompts")
        #expect(described.tables[0].subject == "aut.acme.tbl.prompts")
        #expect(described.tables[0].stream == "AUT_ACME_tbl_prompts")
        #expect(described.tables[0].fields == ["prompt", "channel"])
        #expect(described.schedules[0].subject == "aut.acme.sched.nightly")
        // What `describe` prints reads back as the same graph, in snake_case JSON.
        let json = try JSONParser.parse(Array(described.encoded()))
        #expect(json["format_version"] == .int(Int64(AppDescription.currentFormatVersion)))
        #expect(json["tables"][0]["semantic_type"] == "llm.prompt@1")
        #expect(json["handlers"][0]["dead_letter_subject"] == "aut.acme.dlq.needs-prompt-prompts")
        #expect(try AppDescription.decode(described.encoded()) == described)
    }

    func problems(_ build: (inout AppBuilder) -> Void) -> [String] {
        var app = AppBuilder(name: "Broken")
        build(&app)
        do {
            _ = try app.build()
            return []
        } catch {
            return error.problems
        }
    }

    @Test("A handler bound to a missing table is named")
    func missingTable() {
        let found = problems { app in app.onNewRecords(in: "ghosts", "haunt") { _, _ in } }
        #expect(found == ["handler 'haunt' is bound to table 'ghosts', which is not declared"])
    }

    @Test("Ordered handlers: conflicting orderings, unknown key fields and bad partition counts are named")
    func orderedProblems() {
        let conflicting = problems { app in
            let t = app.table("t")
            t.onNewRecords("a", options: HandlerOptions().ordered(by: "customer")) { _, _ in }
            t.onNewRecords("b", options: HandlerOptions().ordered(by: "region")) { _, _ in }
        }
        #expect(conflicting.count == 1)
        #expect(conflicting.first?.contains("table 't': its ordered handlers must use the same key and partition count") == true)
        let typed = problems { app in
            let prompts = app.table("prompts", of: Prompt.self)
            prompts.onNewRecords("p", options: HandlerOptions().ordered(by: "nope")) { _, _ in }
        }
        #expect(typed == ["handler 'p' is ordered by 'nope', but records of table 'prompts' (Prompt) have no such field"])
        let partitions = problems { app in
            app.table("t").onNewRecords("z", options: HandlerOptions().ordered(by: "k", partitions: 0)) { _, _ in }
        }
        #expect(partitions == ["handler 'z': partitions must be between 1 and 1024"])
    }

    @Test("A partitioned table publishes each record to its key's partition subject")
    func partitionSubjects() throws {
        var app = AppBuilder(name: "P")
        let t = app.table("t")
        t.onNewRecords("o", options: HandlerOptions().ordered(by: "k", partitions: 8)) { _, _ in }
        let graph = try app.build()
        let table = try #require(graph.table("t"))
        #expect(table.filterSubject(tenant: "acme") == "aut.acme.tbl.t.>")
        let a = table.subject(tenant: "acme", payload: ByteBuffer(string: #"{"k":"alice","n":1}"#))
        let b = table.subject(tenant: "acme", payload: ByteBuffer(string: #"{"n":2, "k":"alice"}"#))
        #expect(a == b && a.hasPrefix("aut.acme.tbl.t."), "one key, one partition")
        let partitions = Set((0..<200).map { table.subject(tenant: "acme", payload: ByteBuffer(string: #"{"k":"user-\#($0)"}"#)) })
        #expect(partitions.count == 8, "keys spread over every partition")
        // Documented hash (docs/wire.md): FNV-1a 32 of the key's UTF-8, modulo the partition count.
        #expect(Wire.partition(Array("alice".utf8), of: 8) == 7, "FNV-1a 32 of 'alice' is 0x872213e7")
        #expect(a == "aut.acme.tbl.t.7")
        #expect(Wire.partition([], of: 8) == Int(UInt32(0x811c_9dc5) % 8), "a missing key hashes as empty")
    }

    @Test("Two handlers with one name are named")
    func duplicateHandler() {
        let found = problems { app in
            let t = app.table("t")
            t.onNewRecords("same") { _, _ in }
            t.onNewRecords("same") { _, _ in }
        }
        #expect(found.count == 1)
        #expect(found.first?.contains("two handlers are named 'same'") == true)
    }

    @Test("A route registered twice, or on a reserved path, is named")
    func duplicateRoute() {
        let found = problems { app in
            let t = app.table("t")
            app.post("/hook") { _, _ in .ok }
            app.webhook("/hook", into: t)
            app.post("/healthz") { _, _ in .ok }
            app.post("/v1/tables/t/records") { _, _ in .ok }
        }
        #expect(found.contains("route POST /hook is registered twice"))
        #expect(found.contains("route path '/healthz' is reserved by the ingress"))
        #expect(found.contains("route path '/v1/tables/t/records' is reserved by the ingress"))
    }

    @Test("A component needing a field the table's type lacks is named")
    func missingField() {
        let found = problems { app in
            let notes = app.table("notes", of: Note.self)
            _ = app.table("out")
            notes.onNewRecords(NeedsPrompt(output: "out"))
        }
        #expect(
            found == [
                "handler 'needs-prompt-notes' (needs-prompt) needs field 'prompt', but records of table 'notes' (Note) have no such field"
            ]
        )
    }

    @Test("A component writing records without a field the output type requires is named")
    func outputMismatch() {
        let found = problems { app in
            let prompts = app.table("prompts", of: Prompt.self)
            _ = app.table("summaries", of: Summary.self)
            prompts.onNewRecords(NeedsPrompt(output: "summaries"))
        }
        #expect(found.contains { $0.contains("without field 'summary'") && $0.contains("'summaries'") })
        #expect(found.contains { $0.contains("without field 'words'") })
    }

    @Test("Invalid names and schedules are named")
    func invalidNames() {
        let found = problems { app in
            _ = app.table("Bad.Table")
            app.schedule("bad cron", .cron("nope")) { _, _ in }
        }
        #expect(found.contains("table name 'Bad.Table' may contain only lowercase letters, digits, '_' and '-'"))
        #expect(found.contains { $0.contains("schedule 'bad cron': invalid cron expression") })
        #expect(found.contains { $0.hasPrefix("schedule name 'bad cron'") })
    }

    @Test("A table declared twice with different types is named")
    func conflictingTypes() {
        let found = problems { app in
            _ = app.table("notes", of: Note.self)
            _ = app.table("notes")
        }
        #expect(found == ["table 'notes' is declared twice with different types (Note and JSON)"])
    }
}

@Suite("Schema probe and names")
struct SchemaTests {
    @Test("Typed records report their fields; optional ones are not required")
    func probe() throws {
        let fields = try #require(SchemaProbe.fields(of: Prompt.self))
        #expect(fields.required == ["prompt"])
        #expect(fields.all == ["prompt", "channel"])
    }

    @Test("Record ids and names are validated before they reach a subject")
    func names() {
        #expect(Names.isValid("orders_2024-eu"))
        #expect(!Names.isValid("orders.eu"))
        #expect(!Names.isValid("aut.>"))
        #expect(!Names.isValid("-leading"))
        #expect(!Names.isValid(String(repeating: "a", count: 65)))
        #expect(!Names.isValid("Upper"))
        #expect(Names.isValidRecordID("order-77:v2"))
        #expect(!Names.isValidRecordID("with space"))
        #expect(!Names.isValidRecordID(""))
    }

    @Test("Output ids are deterministic and distinct")
    func outputIDs() {
        let a = Wire.outputID(source: "r1", handler: "h", index: 0)
        #expect(a == Wire.outputID(source: "r1", handler: "h", index: 0))
        #expect(a != Wire.outputID(source: "r1", handler: "h", index: 1))
        #expect(a != Wire.outputID(source: "r1", handler: "g", index: 0))
        #expect(a.count == 31)
        // The wire contract (docs/wire.md): "o" + hex of the first 15 bytes of
        // SHA-256(source 0x00 handler 0x00 decimal index); versions must agree for dedupe.
        #expect(a == "o0e9330d3d3f0f472cfb231fe1dcf66")
        #expect(Wire.outputID(source: "rec-é", handler: "transform", index: 12) == "ofbd7a16ce704853fabdb77ebb4945f")
        let ids = RecordIDGenerator()
        #expect(ids.next() != ids.next())
    }
}

struct Measured: Record {
    struct Line: Codable, Sendable { var quantity: Int }
    static let semanticType: SemanticType = "test.measured@1"
    var lines: [Line]
    var price: Double
}

@Suite("Typed validation of numbers")
struct NumberValidationTests {
    static func problem(_ body: String) throws -> (field: String?, problem: String)? {
        var app = AppBuilder(name: "Numbers")
        let table = app.table("measured", of: Measured.self)
        _ = try app.build()
        return table.definition.validate(Array(body.utf8))
    }

    @Test("A valid number too large for its field is named as such, with its field, not as invalid JSON")
    func outOfRange() throws {
        let big = try #require(try Self.problem(#"{"lines":[{"quantity": 123456789012345678901234567890}],"price":1}"#))
        #expect(big.field == "lines[0].quantity" && big.problem.contains("out of range"), "\(big)")
        let infinite = try #require(try Self.problem(#"{"lines":[],"price":1e400}"#))
        #expect(infinite.field == "price" && infinite.problem.contains("out of range"), "\(infinite)")
        let fraction = try #require(try Self.problem(#"{"lines":[{"quantity": 1.5}],"price":2}"#))
        #expect(!fraction.problem.contains("not valid JSON"), "\(fraction)")
        #expect(try Self.problem(#"{"lines":[{"quantity": 3}],"price":2.5}"#) == nil)
    }
}

@Suite("Slack signature timestamps")
struct SlackTimestampTests {
    static func request(timestamp: Double, secret: String = "s3cr3t") -> RouteRequest {
        let body = Array(#"{"type":"event_callback"}"#.utf8)
        let stamp = String(Int(timestamp))
        return RouteRequest(
            method: "POST",
            path: "/slack",
            headers: [
                "x-slack-request-timestamp": stamp,
                "x-slack-signature": WebhookVerification.slackSignature(secret: secret, timestamp: stamp, body: body),
            ],
            body: body
        )
    }

    @Test("A signed request is taken within the past tolerance and a minute of clock skew ahead, not further ahead")
    func window() throws {
        let verification = WebhookVerification.slack(signingSecret: .secret("SIGNING"))
        let environment = ["SIGNING": "s3cr3t"]
        let now = Date(timeIntervalSince1970: 1_800_000_000)
        let check = { (offset: Double) throws in
            try verification.verify(Self.request(timestamp: now.timeIntervalSince1970 + offset), environment: environment, now: now)
        }
        try check(0)
        try check(-299)
        try check(59)
        #expect(throws: RouteError.self) { try check(-301) }
        // A timestamp minutes ahead would let a captured request be replayed for that much longer.
        let ahead = #expect(throws: RouteError.self) { try check(240) }
        #expect(ahead?.message.contains("future") == true, "\(ahead?.message ?? "")")
    }
}
