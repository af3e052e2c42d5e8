import Autonomous

// The app `autonomous init` starts you with. Notes arrive at POST /notes, a handler sums each
// one up, and a schedule says hello every minute. `swift run Starter dev` serves it on port
// 3000; then: curl -s localhost:3000/notes -H 'Content-Type: application/json' -d '{"text":"hi"}'

struct Note: Record {
    static let semanticType: SemanticType = "starter.note@1"
    var text: String
}

struct Summary: Record {
    static let semanticType: SemanticType = "starter.summary@1"
    var text: String
    var words: Int
}

@main
struct StarterApp: AutonomousApp {
    var name: String { "Starter" }

    func build(_ app: inout AppBuilder) {
        let notes = app.table("notes", of: Note.self)
        let summaries = app.table("summaries", of: Summary.self)

        // A 202 means the note is stored in JetStream.
        app.post("/notes") { request, ctx in
            try await notes.append(try request.decode(Note.self), ctx)
            return .accepted
        }

        // Handlers get records in batches. Each summary's id comes from its note, so a note
        // handled again after a crash does not store its summary twice. Log with ctx.logger:
        // print() output is buffered and shows up late.
        notes.onNewRecords("summarize", writes: [summaries]) { records, ctx in
            for note in records {
                let words = note.text.split(separator: " ").count
                ctx.logger.debug("Summing up a note", metadata: ["starter.words": "\(words)"])
                try await summaries.append(Summary(text: String(note.text.prefix(80)), words: words), ctx)
            }
        }

        app.schedule("hello", .every(.seconds(60))) { tick, ctx in
            ctx.logger.info("Hello from the schedule", metadata: ["starter.fire_time": "\(tick.fireTime)"])
        }
    }
}
