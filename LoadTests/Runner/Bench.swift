import AsyncHTTPClient
import ClusterCore
import Deploy
import Foundation
import Histogram
import Logging
import NATS
import NIOCore
import NIOHTTP1
import Synchronization

/// The scenarios. Each starts its own cluster (fresh nats-server and processes) and stops it.
struct Bench: Sendable {
    let app: String
    let rawPipeline: String
    /// Scenario h: the Python interpreter (with the `autonomous` package and nats-py), the
    /// hand-written nats-py pipeline, and LoadApp's Python handler module.
    var python = ".build-venv/python/bin/python"
    var pythonPipeline = "LoadTests/raw/pipeline.py"
    var pythonModule = "LoadTests/App/python_handlers.py"
    let records: Int
    let httpRecords: Int
    let recordsPerRequest: Int
    let seconds: Int
    let smoke: Bool
    /// wrk runs per HTTP measurement (nginx, c); the median counts.
    var repetitions: Int { smoke ? 1 : 3 }
    let logger: Logger

    static let adminToken = "load-admin-token-0123456789"

    // MARK: Baselines

    /// Whether the clusters' nats-server runs with its users (`LOAD_NATS_AUTHORIZATION=false`
    /// runs it open). The raw pipeline's nats-server then runs with a user of the same kind, so
    /// both sides of a ratio pay nats-server's permission checks alike.
    static var natsAuthorization: Bool { ProcessInfo.processInfo.environment["LOAD_NATS_AUTHORIZATION"] != "false" }

    /// The nats.c pipeline (LoadTests/raw/pipeline.c) against its own fresh nats-server;
    /// `again` for its runs after the first. `authorized: false` runs its nats-server open
    /// whatever ``natsAuthorization`` says (what NATS users cost the raw pipeline).
    func raw(again: Bool = false, authorized: Bool = Bench.natsAuthorization) async throws -> RawResult {
        let (value, output) = try await runPipeline(name: "raw", [String(records), "2", "1024"], authorized: authorized)
        guard let rate = value["events_per_second"].doubleValue, value["outputs"].intValue == records else {
            throw RunnerError("raw pipeline failed: \(output)")
        }
        let result = RawResult(eventsPerSecond: rate, publishPerSecond: value["publish_per_second"].doubleValue ?? 0, events: records)
        let label =
            again
            ? "  raw nats.c pipeline again"
            : authorized == Self.natsAuthorization ? "raw nats.c pipeline" : "raw nats.c pipeline, NATS open"
        print(String(format: "%@: %.0f events/s", label, rate))
        return result
    }

    /// The nats.c pipeline paced as b-half paces the ingress (`rate` events/s, `chunk` events
    /// at a time, each chunk waiting for its PubAcks as a request waits for its 2xx): the
    /// p50…max from the chunk's last PubAck to the worker, in ms. What the machine and
    /// nats-server give at that load with no framework, beside b-half's 2xx → handler start.
    /// `nil` when the pipeline is not built (the smoke test runs without it).
    func rawPaced(rate: Double, chunk: Int, events: Int) async throws -> [String: Double]? {
        guard FileManager.default.isExecutableFile(atPath: rawPipeline) else { return nil }
        let (value, output) = try await runPipeline(
            name: "raw-paced",
            [String(events), "2", "1024", String(format: "%.0f", rate), String(chunk)]
        )
        var figures: [String: Double] = [:]
        for key in ["p50", "p90", "p99", "p999", "max"] {
            guard let figure = value["\(key)_ms"].doubleValue else { throw RunnerError("raw pipeline (paced) failed: \(output)") }
            figures[key] = figure
        }
        guard value["outputs"].intValue == events else { throw RunnerError("raw pipeline (paced) failed: \(output)") }
        return figures
    }

    /// f with no framework: the nats.c pipeline's tenants mode (two hops, one per tenant), its
    /// light tenant publishing at f's rate, one record at a time, alone and then while the
    /// other publishes f's request size at a time as fast as its PubAcks come back, or (with
    /// `floodRate`, for f-limit) paced at that many records/s in slices every 5 ms, as the
    /// ingress publishes a tenant held to its limit. What nats-server and the machine give a
    /// light tenant's PubAck beside a flood. `nil` when the pipeline is not built (the smoke
    /// test runs without it).
    func rawTenants(floodRate: Int? = nil) async throws -> RawTenants? {
        guard FileManager.default.isExecutableFile(atPath: rawPipeline) else { return nil }
        let arguments =
            [String(Self.lightRate), String(lightRequestsPerPhase), String(recordsPerRequest), "2", "1024"]
            + (floodRate.map { [String($0)] } ?? [])
        let (value, output) = try await runPipeline(name: "raw-tenants", arguments, mode: "tenants")
        guard let alone = value["alone_p99_ms"].doubleValue, let flood = value["flood_p99_ms"].doubleValue,
            let floodRate = value["flood_per_second"].doubleValue, value["failed"].intValue == 0
        else { throw RunnerError("raw pipeline (tenants) failed: \(output)") }
        return RawTenants(lightP99Alone: alone, lightP99Flood: flood, floodPerSecond: floodRate)
    }

    /// Runs the nats.c pipeline with `arguments` (after the URL) against a fresh nats-server of
    /// its own; its JSON answer, parsed, and as printed.
    ///
    /// `authorized` runs that nats-server with one user, `raw`, allowed only the subjects the
    /// pipeline uses, as the cluster's roles are: nats-server then checks every publish against
    /// the user's permissions. Subjects it has seen are cached (128 per connection), but every
    /// ack goes to a subject of its own (`$JS.ACK.<stream>.<consumer>.<sequences>…`), so each
    /// ack costs the check; without this the raw side would skip a cost the cluster pays.
    private func runPipeline(
        name: String,
        _ arguments: [String],
        mode: String? = nil,
        authorized: Bool = Bench.natsAuthorization
    ) async throws -> (JSONValue, String) {
        let output = try await withRawServer(name, authorized: authorized) { url in
            try await Self.run(rawPipeline, (mode.map { [$0] } ?? []) + [url] + arguments)
        }
        return (try JSONParser.parse(Array(output.utf8)), output)
    }

    /// Runs `body` with the URL of a fresh nats-server of its own, with one user, `raw`, allowed
    /// only the subjects a raw pipeline uses when `authorized` (see ``runPipeline``).
    private func withRawServer<T>(_ name: String, authorized: Bool, _ body: (String) async throws -> T) async throws -> T {
        let directory = Self.scratch(name)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        var extraArguments: [String] = []
        let password = "raw-pipeline-password"
        if authorized {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            let user = NATSAuthorization.User(
                name: "raw",
                publish: ["raw.>", "$JS.API.>", "$JS.ACK.>", "_INBOX.>"],
                subscribe: ["_INBOX.>"]
            )
            let file = directory + "/authorization.conf"
            try NATSAuthorization.render(users: [user]) { _ in "\"\(password)\"" }.write(toFile: file, atomically: true, encoding: .utf8)
            extraArguments = ["-c", file]
        }
        let server = try await NATSServerProcess.start(directory: directory, extraArguments: extraArguments, logger: logger)
        let url = authorized ? server.url.replacingOccurrences(of: "nats://", with: "nats://raw:\(password)@") : server.url
        do {
            let result = try await body(url)
            await server.stop()
            return result
        } catch {
            await server.stop()
            throw error
        }
    }

    /// A static answer from nginx under the same wrk load as scenario c; `again` for its run
    /// after c.
    func nginx(again: Bool = false) async throws -> NginxResult {
        let directory = Self.scratch("nginx")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let port = LoopbackPorts.freeBase(spans: [0..<1])
        for sub in ["body", "proxy", "fastcgi", "uwsgi", "scgi"] {
            try FileManager.default.createDirectory(atPath: "\(directory)/\(sub)", withIntermediateDirectories: true)
        }
        let config = """
            worker_processes 2;
            daemon off;
            pid \(directory)/nginx.pid;
            error_log \(directory)/error.log;
            events { worker_connections 1024; }
            http {
                access_log off;
                keepalive_requests 100000000;
                client_body_temp_path \(directory)/body;
                proxy_temp_path \(directory)/proxy;
                fastcgi_temp_path \(directory)/fastcgi;
                uwsgi_temp_path \(directory)/uwsgi;
                scgi_temp_path \(directory)/scgi;
                server {
                    listen 127.0.0.1:\(port);
                    location / { default_type application/json; return 200 '{"ok":true}'; }
                }
            }
            """
        try config.write(toFile: directory + "/nginx.conf", atomically: true, encoding: .utf8)
        let nginx = Process()
        nginx.executableURL = URL(fileURLWithPath: "/usr/sbin/nginx")
        nginx.arguments = ["-c", directory + "/nginx.conf", "-p", directory]
        nginx.standardOutput = FileHandle.nullDevice
        nginx.standardError = FileHandle.nullDevice
        try nginx.run()
        defer {
            nginx.terminate()
            nginx.waitUntilExit()
        }
        try await Self.waitForHTTP("http://127.0.0.1:\(port)/")
        let wrk = try await Self.wrk(url: "http://127.0.0.1:\(port)/", seconds: seconds, repetitions: repetitions, directory: directory)
        print(
            String(
                format: again ? "  static nginx again: %.0f requests/s (median of %@)" : "static nginx: %.0f requests/s (median of %@)",
                wrk.requestsPerSecond,
                wrk.repetitionsText
            )
        )
        return NginxResult(requestsPerSecond: wrk.requestsPerSecond, p99Milliseconds: wrk.p99Milliseconds, repetitions: wrk.repetitions)
    }

    // MARK: Scenarios a, d, e: records published straight to JetStream

    func publishScenario(name: String, title: String, workers: Int, chain: Bool) async throws -> ScenarioResult {
        try await withCluster(name, workers: workers, ingress: 0) { cluster, connection in
            let input = chain ? "chain_in" : "events"
            let output = chain ? "chain_out" : "events_out"
            let start = ContinuousClock.now
            let producer = try await produce(records, table: input, tenant: "default", natsURL: cluster.operatorURL, connection: connection)
            let elapsed = try await Self.waitForMessages(
                records,
                stream: Self.stream("default", output),
                connection: connection,
                since: start
            )
            let (audit, toHandler, toOutput) = try await Self.audit(
                output,
                tenant: "default",
                expected: records,
                connection: connection,
                sentTimes: nil
            )
            return ScenarioResult(
                name: name,
                title: title,
                baseline: "raw",
                unit: chain ? "records/s through 3 handlers" : "records/s",
                rate: Double(records) / elapsed.inSeconds,
                seconds: elapsed.inSeconds,
                audit: audit,
                toHandlerStart: chain ? nil : toHandler,
                toOutput: toOutput,
                notes: ["producer": producer]
            )
        }
    }

    /// Publishes the events of a publish scenario with the raw pipeline's producer (the same
    /// program feeds the raw pipeline, so the producer costs the same in both), or from this
    /// process when that binary is not built (smoke runs). Returns which one ran.
    func produce(_ count: Int, table: String, tenant: String, natsURL: String, connection: NATSConnection) async throws -> String {
        guard FileManager.default.isExecutableFile(atPath: rawPipeline) else {
            try await Self.publish(count, table: table, tenant: tenant, connection: connection)
            return "swift"
        }
        let subject = Wire.tableSubject(tenant: tenant, table: table)
        let output = try await Self.run(rawPipeline, ["publish", natsURL, subject, String(count), table, tenant])
        let value = try JSONParser.parse(Array(output.utf8))
        guard value["published"].intValue == count, value["failed"].intValue == 0 else {
            throw RunnerError("the producer failed: \(output)")
        }
        return "nats.c"
    }

    // MARK: Scenario h: the handler in Python

    /// Records of scenario h and its baseline: a quarter of the publish scenarios' (Python
    /// moves 10,000–16,000 events/s here).
    var pythonRecords: Int { smoke ? records : records / 4 }

    /// The nats-py pipeline (LoadTests/raw/pipeline.py) against a fresh nats-server of its own,
    /// fed by the nats.c producer as h is; its events/s. The nats-server runs with one user
    /// allowed only its subjects, as for the nats.c pipeline.
    func rawPython(again: Bool = false) async throws -> Double {
        let output = try await withRawServer("raw-python", authorized: Self.natsAuthorization) { url in
            try await Self.run(python, [pythonPipeline, url, String(pythonRecords), "2", "1024", rawPipeline])
        }
        let value = try JSONParser.parse(Array(output.utf8))
        guard let rate = value["events_per_second"].doubleValue, value["outputs"].intValue == pythonRecords else {
            throw RunnerError("raw nats-py pipeline failed: \(output)")
        }
        print(String(format: "%@: %.0f events/s", again ? "  raw nats-py pipeline again" : "raw nats-py pipeline", rate))
        return rate
    }

    /// h: LoadApp's `py-transform`, a handler written in Python (python_handlers.py), run by one
    /// Python worker process (role python-worker) with LoadApp's batch size and concurrency;
    /// the events come from the nats.c producer, as in a. From the producer's start to the last
    /// output, every output audited.
    func pythonScenario() async throws -> ScenarioResult {
        let graph = Self.scratch("h-graph") + ".json"
        defer { try? FileManager.default.removeItem(atPath: graph) }
        let described = try await Self.run(app, ["describe"])
        try described.write(toFile: graph, atomically: true, encoding: .utf8)
        let count = pythonRecords
        return try await withCluster(
            "h",
            workers: 0,
            ingress: 0,
            configure: { specification in
                specification.pythonApp = URL(fileURLWithPath: pythonModule).standardizedFileURL.path
                specification.python = URL(fileURLWithPath: python).standardizedFileURL.path
                specification.pythonGraph = graph
                specification.replicas[ProcessCluster.pythonRole] = 1
            }
        ) { cluster, connection in
            let start = ContinuousClock.now
            let producer = try await produce(
                count,
                table: "py_events",
                tenant: "default",
                natsURL: cluster.operatorURL,
                connection: connection
            )
            let elapsed = try await Self.waitForMessages(
                count,
                stream: Self.stream("default", "py_events_out"),
                connection: connection,
                since: start
            )
            let (audit, toHandler, toOutput) = try await Self.audit(
                "py_events_out",
                tenant: "default",
                expected: count,
                connection: connection,
                sentTimes: nil
            )
            return ScenarioResult(
                name: "h",
                title: "producer → JetStream → Python handler → output",
                baseline: "raw-py",
                unit: "records/s",
                rate: Double(count) / elapsed.inSeconds,
                seconds: elapsed.inSeconds,
                audit: audit,
                toHandlerStart: toHandler,
                toOutput: toOutput,
                notes: ["producer": producer]
            )
        }
    }

    // MARK: Scenario g: tables kept in PostgreSQL

    /// Two tables that autonomous.json keeps in the cluster's PostgreSQL, each fed `count`
    /// records by the raw pipeline's producer:
    ///
    /// - **g-drain**: the records are in `kept_events`' stream before any worker runs (a
    ///   storage bound to a table that has records, or a sink catching up after an outage);
    ///   then one worker starts, and the time runs from the sink's first delivery until it
    ///   has acknowledged the last record (it acknowledges a batch only after its transaction
    ///   committed). This is the sink's own rate: JetStream to the table.
    /// - **g**: records published to `kept_live` while the worker runs, from the first
    ///   publish to the last acknowledgement: producer, JetStream and sink sharing the cores.
    ///
    /// Both are compared with a raw `COPY FROM STDIN` (psql's `\copy`) of the very rows
    /// g-drain kept, into a table of the same shape (`LIKE … INCLUDING ALL`: the same key and
    /// columns) in the same server, twice right after; the ratio is to their mean. Every
    /// record must be kept exactly once.
    func storageScenario() async throws -> [ScenarioResult] {
        let count = smoke ? records : records / 2
        let port = LoopbackPorts.freeBase(spans: [0..<1])
        return try await withCluster(
            "g",
            workers: 0,
            ingress: 0,
            configure: { specification in
                specification.postgres = .init(port: port, database: "kept")
                try FileManager.default.createDirectory(atPath: specification.directory, withIntermediateDirectories: true)
                let file = specification.directory + "/autonomous.json"
                let json = """
                    {"storages": [{"name": "load-db", "type": "database", "url": "postgres://postgres@127.0.0.1:\(port)/kept"}],
                     "tables": {"kept_events": {"storage": "load-db"}, "kept_live": {"storage": "load-db"}}}
                    """
                try Data(json.utf8).write(to: URL(fileURLWithPath: file))
                specification.environment["AUTONOMOUS_DEPLOYMENT_FILE"] = file
            }
        ) { cluster, connection in
            let url = "postgresql://postgres@127.0.0.1:\(port)/kept"
            /// Waits until the sink of `table` has acknowledged `count` records; returns when
            /// it first delivered one (as seen by polling) and when it acknowledged the last.
            @Sendable func kept(_ table: String) async throws -> (first: ContinuousClock.Instant, last: ContinuousClock.Instant) {
                let stream = Self.stream("default", table)
                let consumer = Wire.consumerName(handler: "store-\(table)")
                let deadline = ContinuousClock.now + .seconds(600)
                var first: ContinuousClock.Instant?
                while true {
                    if let state = try await connection.consumerState(stream: stream, consumer: consumer) {
                        if first == nil && state.deliveredStreamSequence > 0 { first = .now }
                        if state.ackFloorStreamSequence >= UInt64(count) { return (first ?? .now, .now) }
                    }
                    guard ContinuousClock.now < deadline else {
                        throw RunnerError("the sink of \(table) did not keep \(count) records in 600 s")
                    }
                    try await Task.sleep(for: .milliseconds(2))
                }
            }
            @Sendable func audit(_ table: String) async throws -> Audit {
                let counts = try await Self.psql(
                    url,
                    "SELECT count(*), count(DISTINCT _id), count(DISTINCT (_record->>'seq')::int), "
                        + "count(*) FILTER (WHERE (_record->>'seq')::int BETWEEN 0 AND \(count - 1)) FROM \(table)"
                ).split(separator: "|").compactMap { Int($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
                guard counts.count == 4 else { throw RunnerError("cannot read the kept rows of \(table) back") }
                return Audit(
                    expected: count,
                    found: counts[0],
                    unique: min(counts[1], counts[2]),
                    ok: counts.allSatisfy { $0 == count }
                )
            }

            // g-drain: everything in the stream first, then the worker.
            let producer = try await produce(
                count,
                table: "kept_events",
                tenant: "default",
                natsURL: cluster.operatorURL,
                connection: connection
            )
            try await cluster.scale("worker", to: 1)
            let drain = try await kept("kept_events")
            let drainSeconds = (drain.last - drain.first).inSeconds
            let drainAudit = try await audit("kept_events")

            // g: published while the worker runs.
            let start = ContinuousClock.now
            _ = try await produce(count, table: "kept_live", tenant: "default", natsURL: cluster.operatorURL, connection: connection)
            let published = ContinuousClock.now - start
            let live = try await kept("kept_live")
            let liveSeconds = (live.last - start).inSeconds
            let liveAudit = try await audit("kept_live")

            // The raw side: the same rows, out of the kept table into a file, then COPY'd in.
            let rows = Self.scratch("g-rows") + ".tsv"
            defer { try? FileManager.default.removeItem(atPath: rows) }
            let columns = "_tenant, _id, _ingested_at, _caused_by, _type, _record"
            _ = try await Self.psql(url, "\\copy (SELECT \(columns) FROM kept_events) TO '\(rows)'")
            _ = try await Self.psql(url, "CREATE TABLE raw_copy (LIKE kept_events INCLUDING ALL)")
            var copyRates: [Double] = []
            for _ in 0..<2 {
                _ = try await Self.psql(url, "TRUNCATE raw_copy")
                let copyStart = ContinuousClock.now
                _ = try await Self.psql(url, "\\copy raw_copy (\(columns)) FROM '\(rows)'")
                copyRates.append(Double(count) / (ContinuousClock.now - copyStart).inSeconds)
            }
            let copyRate = copyRates.reduce(0, +) / Double(copyRates.count)
            let copyNote = copyRates.map { String(format: "%.0f", $0) }.joined(separator: ", ")
            var drained = ScenarioResult(
                name: "g-drain",
                title: "JetStream → sink → PostgreSQL table (records already in the stream)",
                baseline: "copy",
                unit: "records/s",
                rate: Double(count) / drainSeconds,
                seconds: drainSeconds,
                audit: drainAudit,
                toHandlerStart: nil,
                toOutput: nil,
                notes: ["producer": producer, "raw COPY FROM STDIN of the same rows (records/s)": copyNote]
            )
            drained.ratio = drained.rate / copyRate
            var livePipeline = ScenarioResult(
                name: "g",
                title: "producer → JetStream → sink → PostgreSQL table, all at once",
                baseline: "copy",
                unit: "records/s",
                rate: Double(count) / liveSeconds,
                seconds: liveSeconds,
                audit: liveAudit,
                toHandlerStart: nil,
                toOutput: nil,
                notes: [
                    "all published after (s)": String(format: "%.2f", published.inSeconds),
                    "raw COPY FROM STDIN of the same rows (records/s)": copyNote,
                ]
            )
            livePipeline.ratio = livePipeline.rate / copyRate
            return [drained, livePipeline]
        }
    }

    /// Runs one SQL command with psql and returns its unaligned, tuples-only output.
    static func psql(_ url: String, _ command: String) async throws -> String {
        let psql = ["/usr/bin/psql", "/usr/lib/postgresql/15/bin/psql"].first { FileManager.default.isExecutableFile(atPath: $0) }
        guard let psql else { throw RunnerError("psql is not installed (apt-get install postgresql-client)") }
        return try await run(psql, [url, "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", command])
    }

    // MARK: Scenario b: NDJSON batches through the ingress

    func ndjsonScenario(name: String, paceRecordsPerSecond: Double?) async throws -> ScenarioResult {
        try await withCluster(name, workers: 1, ingress: 1) { cluster, connection in
            let ingress = await cluster.ingressURLs()[0]
            let perRequest = recordsPerRequest
            let requests = max(1, httpRecords / perRequest)
            let total = requests * perRequest
            let concurrency = 4
            let completions = RequestTimes(count: requests)
            // Bodies are built before the clock starts (as the raw pipeline builds its events):
            // the load generator shares the two cores and should not charge its own work to
            // the system under test.
            let bodies = (0..<requests).map { request in
                (0..<perRequest).map { i in Self.event(seq: request * perRequest + i, request: request) }.joined(separator: "\n")
            }
            let start = ContinuousClock.now
            let interval: Duration? = paceRecordsPerSecond.map { .nanoseconds(Int64(1e9 * Double(perRequest) / max(1, $0))) }
            try await withThrowingTaskGroup(of: Void.self) { group in
                for lane in 0..<concurrency {
                    group.addTask {
                        var request = lane
                        while request < requests {
                            if let interval {
                                // Paced: request r is due at start + r × interval.
                                let due = start + interval * request
                                if due > ContinuousClock.now { try await Task.sleep(until: due, clock: .continuous) }
                            }
                            try await Self.post(
                                ingress + "/v1/tables/events/records",
                                body: bodies[request],
                                contentType: "application/x-ndjson",
                                key: "req-\(request)"
                            )
                            completions.record(request)
                            request += concurrency
                        }
                    }
                }
                try await group.waitForAll()
            }
            let elapsed = try await Self.waitForMessages(
                total,
                stream: Self.stream("default", "events_out"),
                connection: connection,
                since: start
            )
            let (audit, toHandler, toOutput) = try await Self.audit(
                "events_out",
                tenant: "default",
                expected: total,
                connection: connection,
                sentTimes: completions
            )
            return ScenarioResult(
                name: name,
                title: paceRecordsPerSecond == nil
                    ? "NDJSON \(perRequest)/request through the ingress (max load)"
                    : String(format: "NDJSON paced at half the max (%.0f records/s)", paceRecordsPerSecond!),
                baseline: "raw",
                unit: "records/s",
                rate: Double(total) / elapsed.inSeconds,
                seconds: elapsed.inSeconds,
                audit: audit,
                toHandlerStart: toHandler,
                toOutput: toOutput
            )
        }
    }

    // MARK: Scenario c: single-record POSTs at 64 connections (wrk)

    /// The ingress alone under wrk, as the issue's reference prototype was measured: on two
    /// cores a worker handling the records at the same time would take its CPU from the
    /// ingress (in production they run on other machines). The worker starts after the load
    /// and the audit follows every stored record through the handler.
    func singlePostScenario() async throws -> ScenarioResult {
        try await withCluster("c", workers: 0, ingress: 1) { cluster, connection in
            let ingress = await cluster.ingressURLs()[0]
            let directory = Self.scratch("wrk")
            defer { try? FileManager.default.removeItem(atPath: directory) }
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            let wrk = try await Self.wrk(
                url: ingress + "/v1/tables/events/records",
                seconds: seconds,
                repetitions: repetitions,
                directory: directory
            )
            try await cluster.scale("worker", to: 1)
            // Every 2xx is a stored record; requests cut off when wrk stopped may be stored too.
            let stored = try await connection.readAll(
                stream: Self.stream("default", "events"),
                subject: "aut.default.tbl.events",
                headers: [],
                atLeast: wrk.completed,
                timeout: .seconds(60)
            ).count
            _ = try await Self.waitForMessages(stored, stream: Self.stream("default", "events_out"), connection: connection, since: .now)
            var (audit, _, _) = try await Self.audit(
                "events_out",
                tenant: "default",
                expected: stored,
                connection: connection,
                sentTimes: nil,
                byCause: true
            )
            audit.ok = audit.ok && stored >= wrk.completed && wrk.errors == 0
            return ScenarioResult(
                name: "c",
                title: "single-record POSTs, wrk -c64, 2xx after PubAck (ingress alone; handled after)",
                baseline: "nginx",
                unit: "requests/s",
                rate: wrk.requestsPerSecond,
                seconds: Double(seconds),
                audit: audit,
                notes: [
                    "http p99": String(format: "%.2f ms", wrk.p99Milliseconds),
                    "non-2xx": String(wrk.errors),
                    "requests/s of each wrk run (median taken)": wrk.repetitionsText,
                ]
            )
        }
    }

    // MARK: Scenario f: a flooding tenant and a light one

    /// f's light tenant: requests per second, and requests per phase (500: enough for a p99
    /// that does not hang on two samples).
    static let lightRate = 50
    var lightRequestsPerPhase: Int { Self.lightRate * (smoke ? 2 : 10) }
    /// f-limit's tenant limit for the flood, in records/s (LOAD_FLOOD_LIMIT; 0: no f-limit).
    var floodLimit: Int { ProcessInfo.processInfo.environment["LOAD_FLOOD_LIMIT"].flatMap(Int.init) ?? 10_000 }

    /// f: the flood unlimited, and (unless LOAD_FLOOD_LIMIT=0) f-limit: the flood held to its
    /// tenant limit.
    func tenantsScenario() async throws -> [ScenarioResult] {
        try await withCluster("f", workers: 1, ingress: 1) { cluster, connection -> [ScenarioResult] in
            let ingress = await cluster.ingressURLs()[0]
            let admin = "http://127.0.0.1:\(cluster.specification.healthPort)"
            var keys: [String: String] = [:]
            for tenant in ["flood", "light"] {
                _ = try await Self.adminCall("POST", admin + "/v1/admin/tenants", body: #"{"name":"\#(tenant)"}"#)
                let key = try await Self.adminCall("POST", admin + "/v1/admin/tenants/\(tenant)/keys", body: nil)
                keys[tenant] = key["key"].stringValue
            }
            let lightKey = keys["light"]
            let floodKey = keys["flood"]
            let perRequest = recordsPerRequest
            let lightRate = Self.lightRate
            let perPhase = lightRequestsPerPhase
            let lightSeconds = perPhase / lightRate
            // The third phase floods again with the flooding tenant held to this many records/s
            // by its tenant limit (0: no such phase).
            let floodLimit = self.floodLimit
            let phases = floodLimit > 0 ? 3 : 2
            // Workers pick new tenants up within their refresh interval: one record of each
            // tenant goes through its handler before anything is timed (the light one is
            // audited with the others; it is in no phase's timings).
            let warmUp = phases * perPhase
            try await Self.post(
                ingress + "/v1/tables/events/records",
                body: Self.event(seq: warmUp, request: warmUp),
                contentType: "application/json",
                key: nil,
                apiKey: lightKey
            )
            try await Self.post(
                ingress + "/v1/tables/events/records",
                body: Self.event(seq: 0, request: 0),
                contentType: "application/json",
                key: "warm-up",
                apiKey: floodKey
            )
            _ = try await Self.waitForMessages(1, stream: Self.stream("light", "events_out"), connection: connection, since: .now)
            _ = try await Self.waitForMessages(1, stream: Self.stream("flood", "events_out"), connection: connection, since: .now)
            // When each light request got its 2xx, by phase, for the time to handler start.
            let times = (0..<phases).map { _ in RequestTimes(count: phases * perPhase) }
            func light(phase: Int) async throws -> Histogram<UInt64> {
                var histogram = Histogram<UInt64>(highestTrackableValue: 60_000_000, numberOfSignificantValueDigits: .three)
                let start = ContinuousClock.now
                for i in 0..<perPhase {
                    try await Task.sleep(until: start + .milliseconds(1000 / lightRate) * i, clock: .continuous)
                    let sent = ContinuousClock.now
                    let request = phase * perPhase + i
                    try await Self.post(
                        ingress + "/v1/tables/events/records",
                        body: Self.event(seq: request, request: request),
                        contentType: "application/json",
                        key: nil,
                        apiKey: lightKey
                    )
                    times[phase].record(request)
                    _ = histogram.record(UInt64((ContinuousClock.now - sent).inSeconds * 1_000_000))
                }
                return histogram
            }
            // One body, built once: the flood costs this process (which also times the light
            // tenant's requests) nothing but the HTTP exchange. The idempotency key still makes
            // every record distinct.
            let floodBody = (0..<perRequest).map { i in Self.event(seq: i, request: 0) }.joined(separator: "\n")
            let floodRate = ProcessInfo.processInfo.environment["LOAD_FLOOD_RATE"].flatMap(Int.init)
            let floodRequests = Sequence64()
            /// Floods until `stop`, one request after the other (as fast as the ingress answers,
            /// or paced by LOAD_FLOOD_RATE); returns the records it got accepted. Not cancelled:
            /// a request cut off mid-way could be stored without being counted.
            func flood(until stop: StopFlag) -> Task<Int, Never> {
                Task {
                    var sent = 0
                    let floodStart = ContinuousClock.now
                    while !stop.isSet {
                        if let floodRate {
                            try? await Task.sleep(until: floodStart + .seconds(Double(sent) / Double(floodRate)), clock: .continuous)
                        }
                        let request = floodRequests.next()
                        if (try? await Self.post(
                            ingress + "/v1/tables/events/records",
                            body: floodBody,
                            contentType: "application/x-ndjson",
                            key: "flood-\(request)",
                            apiKey: floodKey
                        )) != nil {
                            sent += perRequest
                        }
                    }
                    return sent
                }
            }

            let alone = try await light(phase: 0)
            // Phase 1: the flood as fast as it goes.
            let stopFlood = StopFlag()
            let flooding = flood(until: stopFlood)
            try await Task.sleep(for: .seconds(1))
            let phaseStart = ContinuousClock.now
            let loaded = try await light(phase: 1)
            let loadedSeconds = (ContinuousClock.now - phaseStart).inSeconds + 1
            stopFlood.set()
            let flooded = await flooding.value
            // Phase 2: the flooding tenant held to its limit. Its backlog goes first, and the
            // ingress learns the limit with the key's next lookup (within 2 s).
            var limited: Histogram<UInt64>?
            var limitedFlooded = 0
            var limitedSeconds = 0.0
            if phases == 3 {
                _ = try await Self.adminCall("PUT", admin + "/v1/admin/tenants/flood/limits", body: #"{"recordsPerSecond":\#(floodLimit)}"#)
                _ = try await Self.waitForMessages(
                    flooded + 1,
                    stream: Self.stream("flood", "events_out"),
                    connection: connection,
                    since: .now
                )
                try await Task.sleep(for: .milliseconds(2500))
                let stopLimited = StopFlag()
                let limitedFlooding = flood(until: stopLimited)
                try await Task.sleep(for: .seconds(1))
                let limitedStart = ContinuousClock.now
                limited = try await light(phase: 2)
                limitedSeconds = (ContinuousClock.now - limitedStart).inSeconds + 1
                stopLimited.set()
                limitedFlooded = await limitedFlooding.value
            }
            let lightTotal = phases * perPhase + 1
            _ = try await Self.waitForMessages(lightTotal, stream: Self.stream("light", "events_out"), connection: connection, since: .now)
            var handler: [Latency?] = []
            var audit: Audit?
            for phase in 0..<phases {
                let (phaseAudit, toHandler, _) = try await Self.audit(
                    "events_out",
                    tenant: "light",
                    expected: lightTotal,
                    connection: connection,
                    sentTimes: times[phase]
                )
                if audit == nil { audit = phaseAudit }
                handler.append(toHandler)
            }
            _ = try await Self.waitForMessages(
                flooded + limitedFlooded + 1,
                stream: Self.stream("flood", "events_out"),
                connection: connection,
                since: .now
            )
            // Every flood request has its own idempotency key over the same body: one output per
            // input record id.
            let floodAudit = try await Self.audit(
                "events_out",
                tenant: "flood",
                expected: flooded + limitedFlooded + 1,
                connection: connection,
                sentTimes: nil,
                byCause: true
            ).0
            let aloneP99 = Latency(alone).p99
            let handlerAloneP99 = handler[0]?.p99 ?? 0
            var combined = audit!
            if !floodAudit.ok { combined = floodAudit }
            /// The light tenant's figures of one flood phase against its phase alone.
            func result(name: String, title: String, phase: Int, histogram: Histogram<UInt64>, flood: [String: String]) -> ScenarioResult {
                let p99 = Latency(histogram).p99
                let toHandler = handler[phase]?.p99 ?? 0
                var scenario = ScenarioResult(
                    name: name,
                    title: title,
                    baseline: "none",
                    unit: "× its p99 alone",
                    rate: p99 / max(0.001, aloneP99),
                    seconds: Double(lightSeconds * 2),
                    audit: combined,
                    toHandlerStart: nil,
                    toOutput: nil,
                    notes: flood.merging([
                        "light p99 alone": String(format: "%.2f ms", aloneP99),
                        "light p99 with flood": String(format: "%.2f ms", p99),
                        // The light tenant's records from 2xx to handler start: what per-tenant
                        // streams and consumers protect from the flood's backlog.
                        "light 2xx to handler p99 alone": String(format: "%.2f ms", handlerAloneP99),
                        "light 2xx to handler p99 with flood": String(
                            format: "%.2f ms (%.1f ×)",
                            toHandler,
                            toHandler / max(0.001, handlerAloneP99)
                        ),
                        "flood audit": floodAudit.ok
                            ? "ok (\(floodAudit.unique)/\(floodAudit.expected))"
                            : "FAILED (found \(floodAudit.found), unique \(floodAudit.unique), expected \(floodAudit.expected))",
                    ]) { first, _ in first }
                )
                scenario.lightP99 = [aloneP99, p99]
                return scenario
            }
            var results = [
                result(
                    name: "f",
                    title: "light tenant (50 req/s) while another floods without a limit",
                    phase: 1,
                    histogram: loaded,
                    flood: ["flood records accepted": String(format: "%d (%.0f/s)", flooded, Double(flooded) / loadedSeconds)]
                )
            ]
            if let limited {
                results.append(
                    result(
                        name: "f-limit",
                        title: "light tenant (50 req/s) while another floods, held to its tenant limit of \(floodLimit) records/s",
                        phase: 2,
                        histogram: limited,
                        flood: [
                            "flood records accepted": String(format: "%d (%.0f/s)", limitedFlooded, Double(limitedFlooded) / limitedSeconds)
                        ]
                    )
                )
            }
            return results
        }
    }

    // MARK: Cluster

    /// Runs `body` against a fresh cluster; a process that crashed (and was restarted by the
    /// engine) is counted into the result, and fails the run.
    func withCluster(
        _ name: String,
        workers: Int,
        ingress: Int,
        configure: (inout ProcessCluster.Specification) throws -> Void = { _ in },
        _ body: @Sendable (ProcessCluster, NATSConnection) async throws -> ScenarioResult
    ) async throws -> ScenarioResult {
        try await withCluster(name, workers: workers, ingress: ingress, configure: configure) { cluster, connection in
            [try await body(cluster, connection)]
        }[0]
    }

    /// The same, for a scenario that reports several results from one cluster.
    func withCluster(
        _ name: String,
        workers: Int,
        ingress: Int,
        configure: (inout ProcessCluster.Specification) throws -> Void = { _ in },
        _ body: @Sendable (ProcessCluster, NATSConnection) async throws -> [ScenarioResult]
    ) async throws -> [ScenarioResult] {
        let directory = Self.scratch("cluster-\(name)")
        var specification = ProcessCluster.Specification(app: app, directory: directory)
        specification.useFreePorts()
        specification.logLevel = "warning"
        specification.replicas = ["ingress": ingress, "worker": workers]
        specification.environment = ["AUTONOMOUS_ADMIN_TOKEN": Self.adminToken]
        // LOAD_NATS_AUTHORIZATION=false runs NATS without users, to measure what they cost.
        specification.natsAuthorization = Self.natsAuthorization
        // Knobs of the app under load, passed through from the runner's environment.
        for (name, value) in ProcessInfo.processInfo.environment
        where name.hasPrefix("LOAD_") || name.hasPrefix("AUTONOMOUS_") || name == "SWIFT_BACKTRACE" {
            specification.environment[name] = value
        }
        try configure(&specification)
        let cluster = try await ProcessCluster.up(specification, logger: logger)
        var configuration = NATSConnection.Configuration(url: cluster.operatorURL)
        configuration.publishTimeout = .seconds(30)
        let connection: NATSConnection
        do {
            connection = try await NATSConnection.connect(configuration: configuration, logger: logger)
        } catch {
            await cluster.down()
            throw error
        }
        do {
            var results = try await body(cluster, connection)
            let crashes = await cluster.restarts
            for index in results.indices { results[index].crashes = crashes }
            if crashes > 0 {
                print("scenario \(name): \(crashes) process(es) crashed and were restarted; logs in \(directory)/logs")
            }
            await connection.close()
            await cluster.down()
            if ProcessInfo.processInfo.environment["LOAD_KEEP_LOGS"] == nil && crashes == 0 {
                try? FileManager.default.removeItem(atPath: directory)
            } else {
                print("scenario \(name): logs in \(directory)/logs")
            }
            return results
        } catch {
            await connection.close()
            await cluster.down()
            print("scenario \(name) failed; logs kept in \(directory)/logs")
            throw error
        }
    }

    // MARK: Helpers

    static func scratch(_ name: String) -> String {
        FileManager.default.temporaryDirectory.appendingPathComponent("aut-load-\(name)-\(UUID().uuidString.prefix(8))").path
    }

    static func nanoseconds() -> Int64 {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        return Int64(now.tv_sec) * 1_000_000_000 + Int64(now.tv_nsec)
    }

    /// A ~200-byte event like the raw pipeline's.
    static func event(seq: Int, request: Int, sent: Int64? = nil) -> String {
        var text =
            #"{"order_id":"o-\#(seq)","customer":"c\#(seq % 100)","items":[{"sku":"s-\#(seq % 1000)","quantity":\#(1 + seq % 7),"unit_price":\#(seq % 500).5}],"currency":"EUR","seq":\#(seq),"req":\#(request)"#
        if let sent { text += #","sent_ns":\#(sent)"# }
        return text + "}"
    }

    /// Publishes `count` events to a table, as any NATS producer would (docs/wire.md).
    static func publish(_ count: Int, table: String, tenant: String, connection: NATSConnection) async throws {
        let chunk = 4096
        let subject = Wire.tableSubject(tenant: tenant, table: table)
        try await withThrowingTaskGroup(of: Void.self) { group in
            var inFlight = 0
            for first in stride(from: 0, to: count, by: chunk) {
                if inFlight == 2 {
                    try await group.next()
                    inFlight -= 1
                }
                let sent = nanoseconds()
                let messages = (first..<min(count, first + chunk)).map { seq in
                    OutgoingMessage(
                        subject: subject,
                        payload: ByteBuffer(string: event(seq: seq, request: 0, sent: sent)),
                        headers: [
                            ("Nats-Msg-Id", "ld-\(table)-\(seq)"), ("Aut-Table", table), ("Aut-Tenant", tenant), ("Aut-Type", "json@1"),
                        ]
                    )
                }
                group.addTask { _ = try await connection.publish(messages) }
                inFlight += 1
            }
            try await group.waitForAll()
        }
    }

    /// The stream of `table` of `tenant`.
    static func stream(_ tenant: String, _ table: String) -> String { Wire.tableStreamName(tenant: tenant, table: table) }

    /// Waits until `stream` holds `count` messages; returns the time since `since`.
    static func waitForMessages(
        _ count: Int,
        stream: String,
        connection: NATSConnection,
        since: ContinuousClock.Instant,
        timeout: Duration = .seconds(300)
    ) async throws -> Duration {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if let state = try await connection.streamState(stream), state.messages >= UInt64(count) {
                return ContinuousClock.now - since
            }
            try await Task.sleep(for: .milliseconds(5))
        }
        throw RunnerError("\(stream) did not reach \(count) messages within \(timeout)")
    }

    /// Reads every output: exactly one per input (by `seq`), and the latencies they carry.
    static func audit(
        _ table: String,
        tenant: String,
        expected: Int,
        connection: NATSConnection,
        sentTimes: RequestTimes?,
        byCause: Bool = false
    ) async throws -> (Audit, Latency?, Latency?) {
        let outputs = try await connection.readAll(
            stream: Wire.tableStreamName(tenant: tenant, table: table),
            subject: Wire.tableSubject(tenant: tenant, table: table),
            headers: ["Aut-Caused-By"],
            atLeast: expected,
            timeout: .seconds(120)
        )
        if byCause {
            // Inputs that all look alike (wrk sends one body): one output per input record id.
            let causes = Set(outputs.compactMap { $0.headerValues[0] })
            let audit = Audit(
                expected: expected,
                found: outputs.count,
                unique: causes.count,
                ok: outputs.count == expected && causes.count == expected
            )
            return (audit, nil, nil)
        }
        var seen = Set<Int64>()
        var toHandler = Histogram<UInt64>(highestTrackableValue: 600_000_000, numberOfSignificantValueDigits: .three)
        var toOutput = Histogram<UInt64>(highestTrackableValue: 600_000_000, numberOfSignificantValueDigits: .three)
        var timed = false
        for output in outputs {
            guard let value = try? JSONParser.parse(output.payload) else { continue }
            var event = value["event"]
            // Chains nest the event once per step.
            while case .object = event["event"] { event = event["event"] }
            guard let seq = event["seq"].intValue else { continue }
            seen.insert(Int64(seq))
            let reference: Int64?
            if let sentTimes, let request = event["req"].intValue {
                reference = sentTimes.time(of: request)
            } else {
                reference = event["sent_ns"].intValue.map(Int64.init)
            }
            if let reference, let start = value["handler_start_ns"].intValue {
                timed = true
                _ = toHandler.record(UInt64(max(0, (Int64(start) - reference) / 1000)))
                _ = toOutput.record(UInt64(max(0, (output.timestamp - reference) / 1000)))
            }
        }
        let audit = Audit(
            expected: expected,
            found: outputs.count,
            unique: seen.count,
            ok: outputs.count == expected && seen.count == expected
        )
        return (audit, timed ? Latency(toHandler) : nil, timed ? Latency(toOutput) : nil)
    }

    static func post(_ url: String, body: String, contentType: String, key: String?, apiKey: String? = nil) async throws {
        var request = HTTPClientRequest(url: url)
        request.method = .POST
        request.headers.add(name: "Content-Type", value: contentType)
        if let key { request.headers.add(name: "Idempotency-Key", value: key) }
        if let apiKey { request.headers.add(name: "Authorization", value: "Bearer \(apiKey)") }
        request.body = .bytes(ByteBuffer(string: body))
        for attempt in 1...50 {
            let response = try await HTTPClient.shared.execute(request, timeout: .seconds(60))
            _ = try await response.body.collect(upTo: 1 << 20)
            if (200..<300).contains(response.status.code) { return }
            if attempt == 50 || ![429, 503].contains(response.status.code) {
                throw RunnerError("POST \(url) answered \(response.status.code)")
            }
            try await Task.sleep(for: .milliseconds(100))
        }
    }

    static func adminCall(_ method: String, _ url: String, body: String?) async throws -> JSONValue {
        var request = HTTPClientRequest(url: url)
        request.method = .init(rawValue: method)
        request.headers.add(name: "Authorization", value: "Bearer \(adminToken)")
        if let body {
            request.headers.add(name: "Content-Type", value: "application/json")
            request.body = .bytes(ByteBuffer(string: body))
        }
        let response = try await HTTPClient.shared.execute(request, timeout: .seconds(30))
        let bytes = try await response.body.collect(upTo: 1 << 20)
        guard (200..<300).contains(response.status.code) else { throw RunnerError("\(method) \(url) answered \(response.status.code)") }
        return try JSONParser.parse(Array(bytes.readableBytesView))
    }

    static func waitForHTTP(_ url: String) async throws {
        for _ in 0..<100 {
            if let response = try? await HTTPClient.shared.execute(HTTPClientRequest(url: url), timeout: .seconds(1)),
                response.status.code == 200
            {
                return
            }
            try await Task.sleep(for: .milliseconds(50))
        }
        throw RunnerError("\(url) did not answer")
    }

    struct WrkResult {
        var requestsPerSecond: Double
        var p99Milliseconds: Double
        var completed: Int
        var errors: Int
        /// Requests/s of each run when several were taken.
        var repetitions: [Double] = []

        var repetitionsText: String { repetitions.map { String(format: "%.0f", $0) }.joined(separator: ", ") }
    }

    /// Runs `wrk` `repetitions` times back to back: the run with the median rate (its rate and
    /// p99), and the completed requests and errors of all of them. One 10-second wrk run moves
    /// by up to ±25 % here (nginx measured 129,000-216,000 requests/s in three consecutive runs).
    static func wrk(url: String, seconds: Int, repetitions: Int, directory: String) async throws -> WrkResult {
        var runs: [WrkResult] = []
        for _ in 0..<max(1, repetitions) {
            runs.append(try await wrk(url: url, seconds: seconds, directory: directory))
        }
        var median = runs.sorted { $0.requestsPerSecond < $1.requestsPerSecond }[runs.count / 2]
        median.completed = runs.reduce(0) { $0 + $1.completed }
        median.errors = runs.reduce(0) { $0 + $1.errors }
        median.repetitions = runs.map(\.requestsPerSecond)
        return median
    }

    /// wrk -t2 -c64 POSTing one ~200-byte JSON record per request.
    static func wrk(url: String, seconds: Int, directory: String) async throws -> WrkResult {
        let script = directory + "/post.lua"
        try """
        wrk.method = "POST"
        wrk.body = '\(event(seq: 1, request: 0))'
        wrk.headers["Content-Type"] = "application/json"
        """.write(toFile: script, atomically: true, encoding: .utf8)
        let output = try await run("/usr/bin/wrk", ["-t2", "-c64", "-d\(seconds)s", "--latency", "-s", script, url])
        func number(after label: String) -> Double? {
            guard let line = output.split(separator: "\n").first(where: { $0.contains(label) }) else { return nil }
            return line.split(separator: " ").compactMap { Double($0.trimmingCharacters(in: CharacterSet.letters.union(.whitespaces))) }
                .first
        }
        guard let rate = number(after: "Requests/sec:") else { throw RunnerError("cannot read wrk's output:\n\(output)") }
        var p99 = 0.0
        if let line = output.split(separator: "\n").first(where: { $0.trimmingCharacters(in: .whitespaces).hasPrefix("99%") }) {
            let text = String(line.split(separator: " ").last ?? "")
            if text.hasSuffix("us") {
                p99 = (Double(text.dropLast(2)) ?? 0) / 1000
            } else if text.hasSuffix("ms") {
                p99 = Double(text.dropLast(2)) ?? 0
            } else if text.hasSuffix("s") {
                p99 = (Double(text.dropLast(1)) ?? 0) * 1000
            }
        }
        let completedLine = output.split(separator: "\n").first { $0.contains("requests in") }
        let completed = completedLine.flatMap { Int($0.trimmingCharacters(in: .whitespaces).split(separator: " ").first ?? "") } ?? 0
        let errorsLine = output.split(separator: "\n").first { $0.contains("Non-2xx") }
        let errors = errorsLine.flatMap { Int($0.split(separator: ":").last?.trimmingCharacters(in: .whitespaces) ?? "") } ?? 0
        return WrkResult(requestsPerSecond: rate, p99Milliseconds: p99, completed: completed, errors: errors)
    }

    /// Runs a program to completion on a thread of its own and returns its standard output.
    static func run(_ executable: String, _ arguments: [String]) async throws -> String {
        try await withCheckedThrowingContinuation { continuation in
            Thread.detachNewThread {
                let process = Process()
                process.executableURL = URL(fileURLWithPath: executable)
                process.arguments = arguments
                // The raw pipeline and the producer get the allocator the app gets from the
                // process engine, so both sides of every ratio run on the same malloc.
                var environment = ProcessInfo.processInfo.environment
                if environment["LD_PRELOAD"] == nil, environment["AUTONOMOUS_ALLOCATOR"] != "system", let jemalloc = ProcessCluster.jemalloc
                {
                    environment["LD_PRELOAD"] = jemalloc
                }
                process.environment = environment
                let pipe = Pipe()
                process.standardOutput = pipe
                process.standardError = FileHandle.standardError
                do {
                    try process.run()
                } catch {
                    continuation.resume(throwing: RunnerError("cannot run \(executable): \(error)"))
                    return
                }
                let data = pipe.fileHandleForReading.readDataToEndOfFile()
                process.waitUntilExit()
                let text = String(decoding: data, as: UTF8.self)
                if process.terminationStatus == 0 {
                    continuation.resume(returning: text)
                } else {
                    continuation.resume(throwing: RunnerError("\(executable) exited with \(process.terminationStatus): \(text)"))
                }
            }
        }
    }
}

/// When each request of scenario b got its 2xx (nanoseconds since 1970).
final class RequestTimes: Sendable {
    private let times: [Atomic64]

    init(count: Int) {
        times = (0..<count).map { _ in Atomic64() }
    }

    func record(_ request: Int) { times[request].store(Bench.nanoseconds()) }

    func time(of request: Int) -> Int64? {
        guard request >= 0 && request < times.count else { return nil }
        let value = times[request].load()
        return value == 0 ? nil : value
    }
}

/// A flag one task sets and others poll.
final class StopFlag: Sendable {
    private let value = Atomic<Bool>(false)
    func set() { value.store(true, ordering: .relaxed) }
    var isSet: Bool { value.load(ordering: .relaxed) }
}

/// Numbers 0, 1, 2, … to concurrent callers.
final class Sequence64: Sendable {
    private let value = Atomic<Int>(0)
    func next() -> Int { value.add(1, ordering: .relaxed).oldValue }
}

/// An Int64 that lanes write and the audit reads (one writer per slot, read after all finished).
final class Atomic64: Sendable {
    private let value = Atomic<Int64>(0)
    func store(_ new: Int64) { value.store(new, ordering: .relaxed) }
    func load() -> Int64 { value.load(ordering: .relaxed) }
}

struct RunnerError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}
