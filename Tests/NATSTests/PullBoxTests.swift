import AutonomousTesting
import Synchronization
import Testing

@testable import NATS

/// The pull subscription's bookkeeping and header reading, without a server.
@Suite("Pull requests and header blocks, without a server")
struct PullBoxTests {
    @Test("Header blocks are read in place as nats.c reads them: first value, trimmed, exact names")
    func headerBlockParsing() {
        let block = Array(
            "NATS/1.0 100 Idle\r\nX-Value:  spaced\t \r\nno colon here\r\nX-Val: short\r\nX-Value: second\r\nEmpty:\r\nx-value: lower\r\n\r\n"
                .utf8
        )
        let values = block.withUnsafeBufferPointer {
            MessageEncoding.parse($0, names: ["X-Value", "X-Val", "Empty", "Missing", "x-value"])
        }
        #expect(values == ["spaced", "short", "", nil, "lower"])
        #expect(MessageEncoding.parse(UnsafeBufferPointer(start: nil, count: 0), names: ["A"]) == [nil])
    }

    @Test("A request whose 408 never comes is given up shortly after it expired, and a new one is asked for")
    func lostRequestRecovered() async throws {
        // The box alone, on a clock the test moves: nats-server cannot be made to drop a 408.
        let clock = ManualClock()
        let box = PullBox(headerNames: [], clock: { clock.now })
        let started = clock.now
        let (taken, first) = box.takeOrRequest(limit: 10, timeoutMs: 200)
        #expect(taken == nil && first?.batch == 10)
        let (token, expiry) = box.newWaitToken()
        // Expiry (200 ms) plus the grace (50 ms at least, a tenth of expires).
        #expect(expiry == started + .milliseconds(250))
        // Asking again while the request is open sends nothing.
        #expect(box.takeOrRequest(limit: 10, timeoutMs: 200).1 == nil)
        // The fetch parks; its deadline timer fires (as the fetch loop's does) and frees it.
        async let woken: Bool = withCheckedContinuation { box.wait(token, $0) }
        while box.waitingFetches == 0 { await Task.yield() }
        clock.advance(.milliseconds(250))
        box.expire(token)
        #expect(await woken == true, "the fetch goes on to ask again")
        let (after, second) = box.takeOrRequest(limit: 10, timeoutMs: 200, requestIfEmpty: false)
        #expect(after?.isEmpty == true)
        #expect(second.map { $0.id > first!.id } == true, "no new request after the lost one")
        // A wait that starts after the deadline passed returns at once.
        let (late, _) = box.newWaitToken()
        clock.advance(.milliseconds(260))
        let lateWoken: Bool = await withCheckedContinuation { box.wait(late, $0) }
        #expect(lateWoken)
        #expect(box.takeOrRequest(limit: 10, timeoutMs: 200).1 != nil)
        #expect(box.lostRequests == 2)
    }

    @Test("A request served in full is followed by the next at once, for what the loops took meanwhile")
    func nextRequestOnceServed() {
        let box = PullBox(headerNames: [])
        let sent = Mutex<[PullRequest]>([])
        box.setRequester { request in sent.withLock { $0.append(request) } }
        func message(_ sequence: UInt64) -> DeliveredMessage {
            DeliveredMessage(
                message: JetStreamMessage(
                    subject: "s",
                    payload: [],
                    headerValues: [],
                    deliveryCount: 1,
                    streamSequence: sequence,
                    timestamp: 0
                ),
                reply: "r"
            )
        }
        let (_, first) = box.takeOrRequest(limit: 3, timeoutMs: 500)
        #expect(first?.batch == 3)
        box.deliver(message(1))
        box.deliver(message(2))
        // A loop takes two while the request is still open: nothing is sent.
        #expect(box.takeOrRequest(limit: 3, timeoutMs: 500, requestIfEmpty: false).0?.count == 2)
        #expect(sent.withLock { $0.isEmpty })
        // The last record the request asked for: the next request asks for what the buffer lacks.
        box.deliver(message(3))
        let next = sent.withLock { $0 }
        #expect(next.count == 1 && next.first?.batch == 2 && next.first.map { $0.id > first!.id } == true, "\(next)")
        // Served in full again with nothing taken: the buffer holds a whole batch, nothing is sent.
        box.deliver(message(4))
        box.deliver(message(5))
        #expect(sent.withLock { $0.count } == 1)
        #expect(box.takeOrRequest(limit: 3, timeoutMs: 500).0?.count == 3)
    }
}
