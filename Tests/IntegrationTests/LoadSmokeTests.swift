import Foundation
import Testing

/// The load runner's smoke mode: every scenario that needs no extra tools (nginx, wrk) runs
/// with tiny counts and must audit clean. Speed is not checked here (LoadTests/README.md).
@Suite("Load scenarios, smoke")
struct LoadSmokeTests {
    @Test("Scenarios a, b, d, e, f and f-limit run and find every record exactly once")
    func smoke() async throws {
        let build = FaultTests.root.appendingPathComponent(".build/debug").path
        let out = FileManager.default.temporaryDirectory.appendingPathComponent("aut-load-smoke-\(UUID().uuidString).json").path
        defer { try? FileManager.default.removeItem(atPath: out) }
        let (status, output) = try await runProgram(
            build + "/LoadRunner",
            ["--smoke", "--scenarios", "a,b,d,e,f", "--app", build + "/LoadApp", "--out", out]
        )
        #expect(status == 0, "\(output)")
        let result = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: out))) as? [String: Any]
        let scenarios = result?["scenarios"] as? [[String: Any]] ?? []
        #expect(Set(scenarios.compactMap { $0["name"] as? String }) == ["a", "b", "b-half", "d", "e-1", "e-2", "e-4", "f", "f-limit"])
        for scenario in scenarios {
            let audit = scenario["audit"] as? [String: Any]
            #expect(audit?["ok"] as? Bool == true, "\(scenario["name"] ?? "?"): \(audit ?? [:])")
        }
    }
}
