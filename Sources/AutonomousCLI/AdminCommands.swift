import ArgumentParser
import AsyncHTTPClient
import ClusterCore
import Foundation
import NIOCore
import NIOHTTP1
import NIOSSL

/// Where the coordinator's admin API is and how to authenticate.
struct AdminOptions: ParsableArguments {
    @Option(
        name: .customLong("admin-url"),
        help: "Base URL of a coordinator's admin API. [env: AUTONOMOUS_ADMIN_URL, default: http://127.0.0.1:7070]"
    )
    var adminURL: String?

    @Flag(help: "Print the API's JSON answer instead of a table.")
    var json = false

    var baseURL: String {
        var url = adminURL ?? CLIEnvironment().adminURL ?? "http://127.0.0.1:7070"
        while url.hasSuffix("/") { url.removeLast() }
        // The API's own prefix is added to every call; a URL that already ends with it works too.
        if url.hasSuffix("/v1/admin") { url.removeLast("/v1/admin".count) }
        return url
    }

    /// Calls the admin API; throws a message naming the problem for any non-2xx answer.
    func call(_ method: String, _ path: String, body: JSONValue? = nil) async throws -> JSONValue {
        let environment = CLIEnvironment()
        guard let token = environment.adminToken else {
            throw ValidationError("set AUTONOMOUS_ADMIN_TOKEN to the coordinator's admin token")
        }
        var request = HTTPClientRequest(url: baseURL + path)
        request.method = .init(rawValue: method)
        request.headers.add(name: "Authorization", value: "Bearer \(token)")
        if let body {
            request.headers.add(name: "Content-Type", value: "application/json")
            request.body = .bytes(ByteBuffer(bytes: JSONWriter.encode(body)))
        }
        // An admin API with a certificate of a private CA: AUTONOMOUS_ADMIN_CA names the CA.
        var client = HTTPClient.shared
        var ownClient = false
        if let ca = environment.adminCA {
            guard FileManager.default.isReadableFile(atPath: ca) else { throw ValidationError("AUTONOMOUS_ADMIN_CA: cannot read '\(ca)'") }
            var tls = TLSConfiguration.makeClientConfiguration()
            tls.trustRoots = .file(ca)
            client = HTTPClient(eventLoopGroupProvider: .singleton, configuration: .init(tlsConfiguration: tls))
            ownClient = true
        }
        let response: HTTPClientResponse
        let bytes: ByteBuffer
        do {
            response = try await client.execute(request, timeout: .seconds(30))
            bytes = try await response.body.collect(upTo: 16 * 1024 * 1024)
        } catch {
            if ownClient { try? await client.shutdown() }
            throw CLIError("cannot reach the admin API at \(baseURL): \(error)")
        }
        if ownClient { try? await client.shutdown() }
        let value = (try? JSONParser.parse(Array(bytes.readableBytesView))) ?? .null
        guard (200..<300).contains(Int(response.status.code)) else {
            let message = value["error"]["message"].stringValue ?? "HTTP \(response.status.code)"
            let field = value["error"]["field"].stringValue.map { " (\($0))" } ?? ""
            throw CLIError("\(message)\(field) [HTTP \(response.status.code)]")
        }
        return value
    }

    func output(_ value: JSONValue, columns: [String]) {
        if json {
            print(value.jsonText)
            return
        }
        let rows = value.arrayValue ?? [value]
        var table = [columns]
        for row in rows {
            table.append(
                columns.map { column in
                    // "a.b" reads field b of object a.
                    let value = column.split(separator: ".").reduce(row) { $0[String($1)] }
                    switch value {
                    case .null: return "-"
                    case .string(let text): return text
                    case let other: return other.jsonText
                    }
                }
            )
        }
        let widths = columns.indices.map { index in table.map { $0[index].count }.max() ?? 0 }
        for line in table {
            print(
                line.enumerated().map { index, cell in cell.padding(toLength: widths[index], withPad: " ", startingAt: 0) }.joined(
                    separator: "  "
                )
            )
        }
    }
}

/// A failure to report as `error: …` with exit status 1.
struct CLIError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// Percent-encodes one path segment (names are validated by the server; this keeps the URL well formed).
func segment(_ text: String) -> String {
    text.addingPercentEncoding(withAllowedCharacters: .alphanumerics.union(CharacterSet(charactersIn: "-_."))) ?? text
}

struct TenantsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tenants",
        abstract: "List, create, disable, enable and limit tenants (through a coordinator's admin API).",
        subcommands: [List.self, Create.self, Disable.self, Enable.self, Limit.self]
    )

    static let columns = ["name", "disabled", "limits.recordsPerSecond", "limits.burst", "stream", "createdAt"]

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List tenants.")
        @OptionGroup var admin: AdminOptions
        func run() async throws { admin.output(try await admin.call("GET", "/v1/admin/tenants"), columns: TenantsCommand.columns) }
    }

    struct Create: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Create a tenant with its own stream and consumers.")
        @OptionGroup var admin: AdminOptions
        @Argument(help: "Tenant name: a-z, 0-9, _ and -, at most 64 characters.") var name: String
        func run() async throws {
            admin.output(try await admin.call("POST", "/v1/admin/tenants", body: ["name": .string(name)]), columns: TenantsCommand.columns)
        }
    }

    /// Options of the commands that act on one tenant.
    struct Target: ParsableArguments {
        @OptionGroup var admin: AdminOptions
        @Argument(help: "The tenant's name.") var name: String

        func post(_ action: String) async throws {
            admin.output(try await admin.call("POST", "/v1/admin/tenants/\(segment(name))/\(action)"), columns: TenantsCommand.columns)
        }
    }

    struct Disable: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Disable a tenant: its keys stop working, its handlers and schedules stop; data stays."
        )
        @OptionGroup var target: Target
        func run() async throws { try await target.post("disable") }
    }

    struct Enable: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Enable a disabled tenant.")
        @OptionGroup var target: Target
        func run() async throws { try await target.post("enable") }
    }

    struct Limit: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Limit how fast a tenant may send records through the ingress nodes.",
            discussion: """
                Requests over the limit are held up to the ingress's AUTONOMOUS_RATE_LIMIT_MAX_DELAY_MS, \
                then refused with 429 rate_limited and Retry-After. The limit is the cluster's: each of \
                the N ingress nodes alive enforces 1/N of it (so spread a tenant's requests evenly over \
                them), unless it runs with AUTONOMOUS_RATE_LIMIT_PER_NODE=true. Ingress nodes apply a \
                change within their API key cache lifetime (2 s).
                """
        )
        @OptionGroup var target: Target
        @Option(name: .customLong("records-per-second"), help: "Records per second, 1 to 100000000.") var recordsPerSecond: Int?
        @Option(help: "Records a tenant may send at once after a quiet time (default: one second's worth).") var burst: Int?
        @Flag(help: "Remove the limit.") var none = false

        func validate() throws {
            if none && (recordsPerSecond != nil || burst != nil) {
                throw ValidationError("--none takes no --records-per-second or --burst")
            }
            if !none && recordsPerSecond == nil { throw ValidationError("give --records-per-second, or --none to remove the limit") }
        }

        func run() async throws {
            let body: JSONValue = [
                "recordsPerSecond": recordsPerSecond.map { .int(Int64($0)) } ?? .null,
                "burst": burst.map { .int(Int64($0)) } ?? .null,
            ]
            let answer = try await target.admin.call("PUT", "/v1/admin/tenants/\(segment(target.name))/limits", body: body)
            target.admin.output(answer, columns: TenantsCommand.columns)
        }
    }
}

struct KeysCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "keys",
        abstract: "List, create, rotate and revoke a tenant's API keys. A new key is shown once.",
        subcommands: [List.self, Create.self, Rotate.self, Revoke.self]
    )

    static let columns = ["id", "tenant", "createdAt", "revokedAt"]

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List a tenant's keys (ids only; keys are stored as hashes).")
        @OptionGroup var admin: AdminOptions
        @Option(help: "The tenant.") var tenant: String
        func run() async throws {
            admin.output(try await admin.call("GET", "/v1/admin/tenants/\(segment(tenant))/keys"), columns: KeysCommand.columns)
        }
    }

    struct Create: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Create a key; it is printed once.")
        @OptionGroup var admin: AdminOptions
        @Option(help: "The tenant.") var tenant: String
        func run() async throws {
            admin.output(try await admin.call("POST", "/v1/admin/tenants/\(segment(tenant))/keys"), columns: ["id", "tenant", "key"])
        }
    }

    struct Rotate: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Issue a new key and revoke the given one; the new key is printed once.")
        @OptionGroup var admin: AdminOptions
        @Option(help: "The tenant.") var tenant: String
        @Argument(help: "Id of the key to replace.") var id: String
        func run() async throws {
            admin.output(
                try await admin.call("POST", "/v1/admin/tenants/\(segment(tenant))/keys/\(segment(id))/rotate"),
                columns: ["id", "tenant", "key"]
            )
        }
    }

    struct Revoke: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Revoke a key (ingress nodes stop accepting it within seconds).")
        @OptionGroup var admin: AdminOptions
        @Option(help: "The tenant.") var tenant: String
        @Argument(help: "Id of the key.") var id: String
        func run() async throws {
            admin.output(
                try await admin.call("DELETE", "/v1/admin/tenants/\(segment(tenant))/keys/\(segment(id))"),
                columns: KeysCommand.columns
            )
        }
    }
}

struct StoragesCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "storages",
        abstract: "Show how far each storage sink is behind its table (through a coordinator's admin API).",
        subcommands: [Status.self],
        defaultSubcommand: Status.self
    )

    struct Status: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Each kept table's sink for a tenant: its lag (records not kept yet), what is pending and being written, "
                + "and the stream sequence kept through."
        )
        @OptionGroup var admin: AdminOptions
        @Option(help: "The tenant.") var tenant: String = "default"
        func run() async throws {
            admin.output(
                try await admin.call("GET", "/v1/admin/tenants/\(segment(tenant))/storages"),
                columns: ["table", "storage", "state", "lag", "pending", "unacknowledged", "redelivered", "keptThrough", "lastSequence"]
            )
        }
    }
}

struct SchedulesCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "schedules",
        abstract: "List, pause, resume, retime and trigger a tenant's schedules.",
        subcommands: [List.self, Pause.self, Resume.self, Trigger.self, Set.self, Reset.self]
    )

    static let columns = ["name", "schedule", "timeZone", "paused", "catchUp", "lastFire", "nextFire"]

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List the app's schedules for a tenant.")
        @OptionGroup var admin: AdminOptions
        @Option(help: "The tenant.") var tenant: String = "default"
        func run() async throws {
            admin.output(try await admin.call("GET", "/v1/admin/tenants/\(segment(tenant))/schedules"), columns: SchedulesCommand.columns)
        }
    }

    /// Options of the commands that act on one schedule of one tenant.
    struct Target: ParsableArguments {
        @OptionGroup var admin: AdminOptions
        @Option(help: "The tenant.") var tenant: String = "default"
        @Argument(help: "The schedule's name.") var name: String

        func put(_ body: JSONValue) async throws {
            admin.output(
                try await admin.call("PUT", "/v1/admin/tenants/\(segment(tenant))/schedules/\(segment(name))", body: body),
                columns: SchedulesCommand.columns
            )
        }

        func post(_ action: String, columns: [String] = SchedulesCommand.columns) async throws {
            admin.output(
                try await admin.call("POST", "/v1/admin/tenants/\(segment(tenant))/schedules/\(segment(name))/\(action)"),
                columns: columns
            )
        }
    }

    struct Pause: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Pause a schedule: its ticks are skipped (not caught up later).")
        @OptionGroup var target: Target
        func run() async throws { try await target.post("pause") }
    }

    struct Resume: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Resume a paused schedule.")
        @OptionGroup var target: Target
        func run() async throws { try await target.post("resume") }
    }

    struct Trigger: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Publish a tick now (marked manual), outside the schedule.")
        @OptionGroup var target: Target
        func run() async throws { try await target.post("trigger", columns: ["schedule", "tenant", "fireTime"]) }
    }

    struct Set: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Replace a schedule's timing for one tenant with a cron expression.")
        @OptionGroup var target: Target
        @Option(help: "Cron expression (5 or 6 fields, or @daily and the like).") var cron: String
        @Option(name: .customLong("time-zone"), help: "IANA time zone, e.g. Europe/Berlin (default: the schedule's).") var timeZone: String?
        func run() async throws {
            var body: JSONObject = ["cron": .string(cron)]
            if let timeZone { body["timeZone"] = .string(timeZone) }
            try await target.put(.object(body))
        }
    }

    struct Reset: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Go back to the app's own timing for a schedule.")
        @OptionGroup var target: Target
        func run() async throws { try await target.put(["cron": .null]) }
    }
}
