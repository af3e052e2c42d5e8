import Synchronization

/// Which input record a handler is working on, so that outputs appended without an explicit
/// source still get a stable lineage and id.
///
/// An output's id is derived from its source record, the handler and its position among that
/// source's outputs. For `records.map { … }` the source travels with each value (``Derived``).
/// For the other natural shapes — `for record in records`, `records.forEach`, an index loop, an
/// `await` inside the loop, appends to several tables per record — the batch's ``Records``
/// report each record they hand out to this cursor, and ``HandlerContext`` reads it when an
/// append names no source. The cursor is kept per task: a record handed out in one task is not
/// the source of an append made in another (a child task started inside the loop), because
/// which record such an append belongs to cannot be known; that append fails with a message
/// that says how to name its source.
package final class LineageCursor: Sendable {
    private struct Position {
        /// Identifies the task that iterates (see ``currentTaskKey()``).
        var task: Int
        var record: RecordMetadata
        /// The position a nested iteration in the same task replaced, restored when it ends.
        var outer: RecordMetadata?
    }

    private let positions = Mutex<[Position]>([])

    package init() {}

    /// An iteration (or a subscript) handed out `record` in the current task.
    package func enter(_ record: RecordMetadata) {
        let task = Self.currentTaskKey()
        positions.withLock { positions in
            if let index = positions.firstIndex(where: { $0.task == task }) {
                positions[index].record = record
            } else {
                positions.append(Position(task: task, record: record, outer: nil))
            }
        }
    }

    /// An iteration starts in the current task: remembers the position it will replace, so an
    /// inner loop over the same batch hands the outer loop's record back when it ends.
    package func beginIteration() -> RecordMetadata? {
        let task = Self.currentTaskKey()
        return positions.withLock { positions in positions.first { $0.task == task }?.record }
    }

    /// An iteration in the current task ran to its end.
    package func endIteration(restoring outer: RecordMetadata?) {
        let task = Self.currentTaskKey()
        positions.withLock { positions in
            guard let index = positions.firstIndex(where: { $0.task == task }) else { return }
            if let outer {
                positions[index].record = outer
            } else {
                positions.remove(at: index)
            }
        }
    }

    /// The record the current task is working on, if it is iterating the batch.
    package func current() -> Lookup {
        let task = Self.currentTaskKey()
        return positions.withLock { positions in
            if let position = positions.first(where: { $0.task == task }) { return .record(position.record) }
            return positions.isEmpty ? .none : .otherTask
        }
    }

    package enum Lookup: Sendable {
        case record(RecordMetadata)
        /// No iteration in this task, but one in another: the append comes from a child task.
        case otherTask
        case none
    }

    /// A key for the current task. Tasks are alive while they iterate or append, so two tasks
    /// running at once never share a key.
    static func currentTaskKey() -> Int {
        withUnsafeCurrentTask { task in task?.hashValue ?? 0 }
    }
}

/// An output was appended in a handler without a source record that can be known.
public struct LineageError: Error, Sendable, CustomStringConvertible {
    /// The handler's name, when known.
    public var handler: String?
    public var table: String
    public var reason: String

    public var description: String {
        "\(handler.map { "handler '\($0)'" } ?? "a handler") appended to '\(table)' \(reason). An output's id comes from the record it was "
            + "made from, so that a redelivered record never produces it twice. Append inside a loop over the "
            + "handler's records (`for record in records`), use `records.map { … }`, or name the source with "
            + "`append(value, causedBy: entry, ctx)` (`records.entries` carries each record's metadata); an "
            + "output that sums up the whole batch says so with `append(value, summarizing: records, ctx)`"
    }
}

/// One iteration over a batch (or values derived from it), reporting each record it hands
/// out to the cursor and restoring the outer loop's record when it ends.
struct LineageWalk: Sendable {
    let cursor: LineageCursor?
    private var started = false
    private var ended = false
    private var outer: RecordMetadata?

    init(cursor: LineageCursor?) { self.cursor = cursor }

    /// The iteration hands out `record`, or ended when it is `nil`.
    mutating func visit(_ record: RecordMetadata?) {
        guard let cursor else { return }
        if !started {
            started = true
            outer = cursor.beginIteration()
        }
        if let record {
            cursor.enter(record)
        } else if !ended {
            ended = true
            cursor.endIteration(restoring: outer)
        }
    }
}

extension RecordMetadata {
    /// The source of an output that sums up `records`: the record itself when there is one,
    /// else a composite whose id depends on the set of ids (not their order).
    package static func summary(of records: [RecordMetadata]) -> RecordMetadata? {
        guard var cause = records.first else { return nil }
        if records.count == 1 { return cause }
        let joined = records.map(\.id).sorted().joined(separator: ",")
        cause.id = "batch-" + Wire.outputID(source: joined, handler: "", index: 0)
        return cause
    }
}
