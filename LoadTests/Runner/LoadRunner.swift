import ArgumentParser
import AsyncHTTPClient
import ClusterCore
import Deploy
import Foundation
import Histogram
import Logging
import NATS
import NIOCore

// Runs the load scenarios against LoadApp started by the `process` deploy engine (nats-server,
// coordinator, ingress and worker processes, as production runs them), measures the raw
// ceilings in the same run (a nats.c pipeline doing the same hop, a static nginx answer under
// the same wrk load), audits every output, and writes a JSON result plus a summary.
// See LoadTests/README.md.

@main
struct LoadRunner: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "load-runner",
        abstract: "Measure Autonomous against raw NATS and nginx on this machine, in one run."
    )

    @Option(help: "Comma-separated: raw, nginx, a, b, c, d, e, f, g, h.")
    var scenarios = "raw,nginx,a,b,c,d,e,f,g,h"

    @Option(help: "Scenario h: the Python interpreter with the autonomous package (scripts/install-python-package.sh).")
    var python = ".build-venv/python/bin/python"

    @Option(help: "Records per run for the publish scenarios (raw, a, d, e).")
    var records = 400_000

    @Option(name: .customLong("http-records"), help: "Records for the NDJSON scenario (b).")
    var httpRecords = 400_000

    @Option(name: .customLong("records-per-request"), help: "Records per NDJSON request in scenario b (100-1000).")
    var recordsPerRequest = 500

    @Option(help: "Seconds of each of the three wrk runs in scenario c and for nginx (the median counts).")
    var seconds = 10

    @Option(help: "Where the JSON result goes.")
    var out = "LoadTests/results/latest.json"

    @Option(help: "The app binary (build it with -c release).")
    var app = ".build/release/LoadApp"

    @Option(name: .customLong("raw-pipeline"), help: "The nats.c pipeline binary (LoadTests/run.sh builds it).")
    var rawPipeline = ".build/loadtests/pipeline"

    @Flag(help: "Tiny counts: checks that every scenario runs and audits, not speed (CI).")
    var smoke = false

    mutating func run() async throws {
        var logger = Logger(label: "load")
        logger.logLevel = .warning
        if smoke {
            records = 2_000
            httpRecords = 2_000
            recordsPerRequest = 100
            seconds = 2
        }
        let selected = Set(scenarios.split(separator: ",").map { String($0).trimmingCharacters(in: .whitespaces) })
        var bench = Bench(
            app: URL(fileURLWithPath: app).standardizedFileURL.path,
            rawPipeline: URL(fileURLWithPath: rawPipeline).standardizedFileURL.path,
            records: records,
            httpRecords: httpRecords,
            recordsPerRequest: recordsPerRequest,
            seconds: seconds,
            smoke: smoke,
            logger: logger
        )
        bench.python = python
        var result = RunResult(date: ISO8601.format(Date()), smoke: smoke, machine: Machine.describe())
        if selected.contains("raw") {
            result.raw = try await bench.raw()
            // What NATS users cost with no framework: the same pipeline on an open nats-server.
            if Bench.natsAuthorization && !smoke { result.rawWithoutUsers = try await bench.raw(authorized: false) }
        }
        if selected.contains("nginx") { result.nginx = try await bench.nginx() }
        let rawRate = result.raw?.eventsPerSecond
        let nginxRate = result.nginx?.requestsPerSecond
        // The raw pipeline runs again after every scenario compared with it, and the scenario
        // is compared with the mean of the runs just before and just after it: the machine's
        // speed drifts by 10 % and more over a run here, and both sides then drift alike.
        var rawBefore = rawRate
        func bracketed(_ scenario: ScenarioResult) async throws -> ScenarioResult {
            var scenario = scenario
            guard let before = rawBefore, scenario.baseline == "raw" else { return scenario }
            let after = try await bench.raw(again: true).eventsPerSecond
            result.rawAgain.append(after)
            rawBefore = after
            scenario.rawBaseline = [before, after]
            return scenario
        }
        func withRatio(_ scenario: ScenarioResult) -> ScenarioResult {
            var scenario = scenario
            func mean(_ rates: [Double]) -> Double { rates.reduce(0, +) / Double(rates.count) }
            let raw = scenario.rawBaseline.map(mean) ?? rawRate
            let nginx = scenario.nginxBaseline.map(mean) ?? nginxRate
            let baseline: Double? = scenario.baseline == "nginx" ? nginx : scenario.baseline == "raw" ? raw : nil
            if let baseline, baseline > 0 {
                scenario.ratio = scenario.rate / baseline
            }
            return scenario
        }
        func add(_ scenario: ScenarioResult) {
            let scenario = withRatio(scenario)
            print(scenario.summary)
            result.scenarios.append(scenario)
        }
        if selected.contains("a") {
            // Three times (once in smoke mode), each between two raw runs; the run with the
            // median ratio counts, as the median of three wrk runs does for nginx and c. A run
            // that lost or doubled a record, or crashed, counts instead of the median.
            var runs: [ScenarioResult] = []
            for _ in 0..<bench.repetitions {
                runs.append(
                    withRatio(
                        try await bracketed(
                            try await bench.publishScenario(
                                name: "a",
                                title: "producer → JetStream → handler → output",
                                workers: 1,
                                chain: false
                            )
                        )
                    )
                )
            }
            let sorted = runs.sorted { ($0.ratio ?? $0.rate) < ($1.ratio ?? $1.rate) }
            var chosen = runs.first { !$0.audit.ok || $0.crashes > 0 } ?? sorted[sorted.count / 2]
            if runs.count > 1 {
                chosen.notes["ratio of each run (median taken)"] = runs.map {
                    $0.ratio.map { String(format: "%.2f", $0) } ?? String(format: "%.0f/s", $0.rate)
                }.joined(separator: ", ")
            }
            add(chosen)
        }
        if selected.contains("b") {
            var full = try await bench.ndjsonScenario(name: "b", paceRecordsPerSecond: nil)
            var half = try await bench.ndjsonScenario(name: "b-half", paceRecordsPerSecond: full.rate / 2)
            // The same pacing through the raw pipeline: the latency floor of this machine and
            // nats-server at that load.
            if let raw = try await bench.rawPaced(rate: full.rate / 2, chunk: recordsPerRequest, events: httpRecords) {
                half.notes["raw nats.c at the same load, PubAck → worker"] = String(
                    format: "p50 %.2f / p90 %.2f / p99 %.2f / p99.9 %.2f ms",
                    raw["p50"] ?? 0,
                    raw["p90"] ?? 0,
                    raw["p99"] ?? 0,
                    raw["p999"] ?? 0
                )
                half.rawPacedP99 = raw["p99"]
            }
            // b's ceiling after it is measured once b-half is done too.
            full = try await bracketed(full)
            half.rawBaseline = full.rawBaseline
            add(full)
            add(half)
        }
        if selected.contains("c") {
            var c = try await bench.singlePostScenario()
            // nginx drifts as the raw pipeline does (120,900-210,700 requests/s at the start of
            // three consecutive runs): c is compared with the mean of its runs before and after.
            if let before = nginxRate {
                let after = try await bench.nginx(again: true).requestsPerSecond
                result.nginxAgain = after
                c.nginxBaseline = [before, after]
            }
            add(c)
        }
        if selected.contains("d") {
            add(try await bracketed(try await bench.publishScenario(name: "d", title: "chain of three handlers", workers: 1, chain: true)))
        }
        if selected.contains("e") {
            for workers in [1, 2, 4] {
                add(
                    try await bracketed(
                        try await bench.publishScenario(
                            name: "e-\(workers)",
                            title: "\(workers) worker process(es)",
                            workers: workers,
                            chain: false
                        )
                    )
                )
            }
        }
        if selected.contains("f") {
            var results = try await bench.tenantsScenario()
            // What nats-server and the machine give a light publisher beside a flood, with no
            // framework: the floor under f's ratio.
            for index in results.indices {
                let floodRate: Int? = results[index].name == "f-limit" ? bench.floodLimit : nil
                guard let raw = try await bench.rawTenants(floodRate: floodRate) else { break }
                results[index].rawTenants = raw
                results[index].notes["raw nats.c, light tenant's PubAck p99"] = raw.text
            }
            for scenario in results { add(scenario) }
        }
        if selected.contains("g") {
            for scenario in try await bench.storageScenario() { add(scenario) }
        }
        if selected.contains("h") {
            // The handler in Python against a hand-written nats-py pipeline doing the same hop,
            // run just before and just after it; the ratio is to their mean.
            let before = try await bench.rawPython()
            var h = try await bench.pythonScenario()
            let after = try await bench.rawPython(again: true)
            h.rawBaseline = [before, after]
            h.ratio = h.rate / ((before + after) / 2)
            print(h.summary)
            result.scenarios.append(h)
        }

        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        let data = try encoder.encode(result)
        try FileManager.default.createDirectory(atPath: (out as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        try data.write(to: URL(fileURLWithPath: out))
        print("")
        print(result.summary)
        print("result: \(out)")
        let failures = result.scenarios.filter { !$0.audit.ok }
        let crashed = result.scenarios.filter { $0.crashes > 0 }
        if !failures.isEmpty {
            print("AUDIT FAILED: \(failures.map(\.name).joined(separator: ", ")) lost or doubled records")
        }
        if !crashed.isEmpty {
            print("CRASHED: a process of \(crashed.map(\.name).joined(separator: ", ")) crashed during the run")
        }
        if !failures.isEmpty || !crashed.isEmpty { throw ExitCode(1) }
    }
}

// MARK: Results

struct RunResult: Codable {
    var date: String
    var smoke: Bool
    var machine: [String: String]
    /// The raw pipeline's first run, before every scenario.
    var raw: RawResult?
    /// Its later runs (events/s), one after each scenario compared with it, in order.
    var rawAgain: [Double] = []
    /// With NATS users (the default), the raw pipeline once more right after its first run on
    /// an open nats-server: what nats-server's permission checks cost with no framework.
    var rawWithoutUsers: RawResult?
    var nginx: NginxResult?
    /// nginx's requests/s measured again after c.
    var nginxAgain: Double?
    var scenarios: [ScenarioResult] = []

    init(date: String, smoke: Bool, machine: [String: String]) {
        self.date = date
        self.smoke = smoke
        self.machine = machine
    }

    var summary: String {
        var lines = ["Autonomous load run \(date)\(smoke ? " (smoke: counts too small for speed)" : "")"]
        if let raw {
            var line = String(format: "  raw nats.c pipeline: %.0f events/s (publish %.0f/s)", raw.eventsPerSecond, raw.publishPerSecond)
            if !rawAgain.isEmpty {
                line += "; again after each scenario: " + rawAgain.map { String(format: "%.0f", $0) }.joined(separator: ", ")
            }
            lines.append(line)
        }
        if let raw, let rawWithoutUsers {
            lines.append(
                String(
                    format: "  raw nats.c pipeline on an open nats-server: %.0f events/s (with users %.2f × that)",
                    rawWithoutUsers.eventsPerSecond,
                    raw.eventsPerSecond / rawWithoutUsers.eventsPerSecond
                )
            )
        }
        if let nginx {
            var line = String(
                format: "  static nginx:        %.0f requests/s (wrk -c64, p99 %.2f ms",
                nginx.requestsPerSecond,
                nginx.p99Milliseconds
            )
            if let runs = nginx.repetitions, runs.count > 1 {
                line += "; median of " + runs.map { String(format: "%.0f", $0) }.joined(separator: ", ")
            }
            if let nginxAgain { line += String(format: "; again after c: %.0f", nginxAgain) }
            lines.append(line + ")")
        }
        for scenario in scenarios { lines.append("  " + scenario.summary) }
        return lines.joined(separator: "\n")
    }
}

struct RawResult: Codable {
    var eventsPerSecond: Double
    var publishPerSecond: Double
    var events: Int
}

/// f with no framework (the nats.c pipeline's tenants mode): the light tenant's p99 from
/// publish to PubAck, in ms, alone and beside the flood, and the flood's records/s.
struct RawTenants: Codable {
    var lightP99Alone: Double
    var lightP99Flood: Double
    var floodPerSecond: Double

    var text: String {
        String(
            format: "%.2f ms alone, %.2f ms beside a flood of %.0f records/s = %.1f ×",
            lightP99Alone,
            lightP99Flood,
            floodPerSecond,
            lightP99Flood / max(0.001, lightP99Alone)
        )
    }
}

struct NginxResult: Codable {
    /// The median of `repetitions`.
    var requestsPerSecond: Double
    var p99Milliseconds: Double
    var repetitions: [Double]?
}

struct Audit: Codable {
    var expected: Int
    var found: Int
    var unique: Int
    var ok: Bool
}

struct Latency: Codable {
    var p50: Double
    var p90: Double
    var p99: Double
    var p999: Double
    var max: Double
    var count: UInt64

    init(_ histogram: Histogram<UInt64>) {
        func ms(_ value: UInt64) -> Double { Double(value) / 1000 }
        p50 = ms(histogram.valueAtPercentile(50))
        p90 = ms(histogram.valueAtPercentile(90))
        p99 = ms(histogram.valueAtPercentile(99))
        p999 = ms(histogram.valueAtPercentile(99.9))
        max = ms(histogram.max)
        count = histogram.totalCount
    }

    var text: String { String(format: "p50 %.2f / p90 %.2f / p99 %.2f / p99.9 %.2f ms", p50, p90, p99, p999) }
}

struct ScenarioResult: Codable {
    var name: String
    var title: String
    /// What `rate` is compared with: "raw" (events/s), "nginx" (requests/s) or "copy" (g: a
    /// raw `COPY FROM STDIN` of the same rows into PostgreSQL, records/s).
    var baseline: String
    var unit: String
    var rate: Double
    var ratio: Double?
    var seconds: Double
    var audit: Audit
    /// From the ingress 2xx (or the publish) to the handler's start, in milliseconds.
    var toHandlerStart: Latency?
    /// From the ingress 2xx (or the publish) to the output's PubAck (stream timestamp).
    var toOutput: Latency?
    var notes: [String: String] = [:]
    /// The raw pipeline's events/s just before and just after the scenario; `ratio` is to
    /// their mean (nil when it was compared with the first raw run alone).
    var rawBaseline: [Double]?
    /// c only: nginx's requests/s just before the run and just after c; `ratio` is to their mean.
    var nginxBaseline: [Double]?
    /// b-half only: the raw pipeline's p99 (ms) from PubAck to worker at the same pacing.
    var rawPacedP99: Double?
    /// f and f-limit: the light tenant's request p99 (ms) alone and beside the flood.
    var lightP99: [Double]?
    /// f and f-limit: the same measured on the nats.c pipeline with no framework (for f-limit,
    /// its flood paced at the tenant limit).
    var rawTenants: RawTenants?
    /// Processes of the cluster that crashed during the scenario (the engine restarted them).
    var crashes = 0

    var summary: String {
        var text = String(format: rate < 100 ? "%@ %@: %.2f %@" : "%@ %@: %.0f %@", name, title, rate, unit)
        if let ratio {
            text += String(format: " = %.2f × %@", ratio, baseline)
            if let around = rawBaseline ?? nginxBaseline, around.count == 2 {
                text += String(format: " (%.0f before, %.0f after)", around[0], around[1])
            }
        }
        if let toHandlerStart { text += "; to handler start " + toHandlerStart.text }
        if let toOutput { text += String(format: "; to output p99 %.2f ms", toOutput.p99) }
        for (key, value) in notes.sorted(by: { $0.key < $1.key }) { text += "; \(key) \(value)" }
        text +=
            audit.ok
            ? "; audit ok (\(audit.unique)/\(audit.expected))"
            : "; AUDIT FAILED (found \(audit.found), unique \(audit.unique), expected \(audit.expected))"
        text += crashes == 0 ? "; no crash" : "; CRASHED: \(crashes) process(es) restarted"
        return text
    }
}

enum Machine {
    static func describe() -> [String: String] {
        var info: [String: String] = ["cores": String(ProcessInfo.processInfo.activeProcessorCount)]
        info["memoryGiB"] = String(ProcessInfo.processInfo.physicalMemory / (1 << 30))
        if let load = try? String(contentsOfFile: "/proc/loadavg", encoding: .utf8) {
            info["loadavgAtStart"] = String(load.split(separator: " ").prefix(3).joined(separator: " "))
        }
        let environment = ProcessInfo.processInfo.environment
        info["natsAuthorization"] = Bench.natsAuthorization ? "users per role (raw pipeline: one user)" : "none"
        info["allocator"] =
            environment["LD_PRELOAD"] ?? (environment["AUTONOMOUS_ALLOCATOR"] == "system" ? nil : ProcessCluster.jemalloc) ?? "glibc malloc"
        return info
    }
}
