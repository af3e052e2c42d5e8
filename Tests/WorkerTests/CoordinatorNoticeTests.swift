import Testing

@testable import Worker

@Suite("When a worker warns that the coordinator does not answer")
struct CoordinatorNoticeTests {
    @Test("Quiet while the process starts, then once per outage")
    func onceAfterGrace() {
        let start = ContinuousClock.now
        var notice = CoordinatorNotice(startedAt: start)
        var warnings: [Bool] = []
        // A coordinator started beside the worker may not answer yet.
        warnings.append(notice.failed(at: start))
        warnings.append(notice.failed(at: start + .seconds(9)))
        warnings.append(notice.failed(at: start + CoordinatorNotice.startupGrace))
        // One warning per outage; after a success, a new outage is warned about.
        warnings.append(notice.failed(at: start + .seconds(20)))
        notice.succeeded()
        warnings.append(notice.failed(at: start + .seconds(30)))
        #expect(warnings == [false, false, true, false, true])
    }
}
