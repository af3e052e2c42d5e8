import CoreMetrics
import Synchronization

/// Ended spans waiting for the exporter: bounded, so a collector that is down or slow costs
/// spans (counted in `autonomous_tracing_spans_dropped_total{reason="queue_full"}`), never
/// memory or a handler's time.
package final class SpanQueue: Sendable {
    private struct State {
        var spans: [FinishedSpan] = []
        var waiter: CheckedContinuation<Void, Never>?
        var flushRequested = false
    }

    /// Most spans held; appends past it are dropped.
    package let capacity: Int
    /// Spans that make the exporter send at once instead of at its next scheduled export.
    package let batchSize: Int
    // Guarded by the mutex; the waiter is resumed exactly once, outside the lock.
    private let state = Mutex(State())
    private let dropped: CoreMetrics.Counter

    package init(capacity: Int = 2048, batchSize: Int = 512) {
        self.capacity = max(1, capacity)
        self.batchSize = max(1, min(batchSize, capacity))
        self.dropped = CoreMetrics.Counter(label: "autonomous_tracing_spans_dropped_total", dimensions: [("reason", "queue_full")])
    }

    package func append(_ span: FinishedSpan) {
        let (accepted, wake) = state.withLock { state -> (Bool, CheckedContinuation<Void, Never>?) in
            guard state.spans.count < capacity else { return (false, nil) }
            state.spans.append(span)
            guard state.spans.count >= batchSize, let waiter = state.waiter else { return (true, nil) }
            state.waiter = nil
            return (true, waiter)
        }
        if !accepted { dropped.increment() }
        wake?.resume()
    }

    /// Wakes the exporter now.
    package func requestFlush() {
        let wake = state.withLock { state -> CheckedContinuation<Void, Never>? in
            state.flushRequested = true
            defer { state.waiter = nil }
            return state.waiter
        }
        wake?.resume()
    }

    /// Returns when a batch is full or a flush was asked for, or when the task is cancelled.
    package func waitForWork() async {
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let ready = state.withLock { state -> Bool in
                    if state.flushRequested || state.spans.count >= batchSize || Task.isCancelled { return true }
                    state.waiter = continuation
                    return false
                }
                if ready { continuation.resume() }
            }
        } onCancel: {
            let wake = state.withLock { state -> CheckedContinuation<Void, Never>? in
                defer { state.waiter = nil }
                return state.waiter
            }
            wake?.resume()
        }
    }

    /// Takes up to `batchSize` spans, oldest first.
    package func take() -> [FinishedSpan] {
        state.withLock { state in
            state.flushRequested = false
            let count = min(batchSize, state.spans.count)
            let batch = Array(state.spans.prefix(count))
            state.spans.removeFirst(count)
            return batch
        }
    }

    package var count: Int { state.withLock { $0.spans.count } }
}
