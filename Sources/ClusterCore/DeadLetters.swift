package import Foundation
package import NATS
import NIOCore

/// A record a handler gave up on, as stored on `aut.<tenant>.dlq.<handler>`.
package struct DeadLetter: Sendable {
    /// Its sequence in the tenant's stream (what replay and purge remove).
    package var sequence: UInt64
    package var handler: String
    package var recordID: String
    package var table: String
    package var error: String
    package var attempts: Int
    package var firstFailure: Date?
    package var lastFailure: Date?
    package var sourceSubject: String
    package var payload: [UInt8]
    package var headers: [String: String]
}

/// Operator actions on dead letters: list, replay (after fixing the handler), purge.
package enum DeadLetters {
    static let headerNames = [
        Wire.Header.recordID, Wire.Header.handler, Wire.Header.table, Wire.Header.error, Wire.Header.attempts,
        Wire.Header.firstFailure, Wire.Header.lastFailure, Wire.Header.sourceSubject, Wire.Header.type, Wire.Header.causedBy,
        Wire.Header.traceparent,
    ]

    static func subject(tenant: String, handler: String?) -> String {
        Wire.deadLetterSubject(tenant: tenant, handler: handler ?? "*")
    }

    /// Dead letters of `tenant` (of one handler, or all), oldest first, failed within [since, until].
    package static func list(
        connection: NATSConnection,
        tenant: String,
        handler: String? = nil,
        since: Date? = nil,
        until: Date? = nil
    ) async throws -> [DeadLetter] {
        try validate(tenant: tenant, handler: handler)
        let messages = try await connection.readAll(
            stream: Wire.streamName(tenant: tenant),
            subject: subject(tenant: tenant, handler: handler),
            headers: headerNames
        )
        return messages.compactMap { message -> DeadLetter? in
            var headers: [String: String] = [:]
            for (name, value) in zip(headerNames, message.headerValues) { if let value { headers[name] = value } }
            let letter = DeadLetter(
                sequence: message.streamSequence,
                handler: headers[Wire.Header.handler] ?? String(message.subject.split(separator: ".").last ?? ""),
                recordID: headers[Wire.Header.recordID] ?? "seq-\(message.streamSequence)",
                table: headers[Wire.Header.table] ?? "",
                error: headers[Wire.Header.error] ?? "",
                attempts: Int(headers[Wire.Header.attempts] ?? "") ?? 0,
                firstFailure: headers[Wire.Header.firstFailure].flatMap(ISO8601.parse),
                lastFailure: headers[Wire.Header.lastFailure].flatMap(ISO8601.parse),
                sourceSubject: headers[Wire.Header.sourceSubject] ?? "",
                payload: message.payload,
                headers: headers
            )
            if let since, let time = letter.lastFailure, time < since { return nil }
            if let until, let time = letter.lastFailure, time > until { return nil }
            return letter
        }
    }

    /// Puts dead letters back in front of the handler that failed them, then removes them from
    /// the dead-letter subject. Only that handler processes a replayed record (header
    /// `Aut-Replay-For`). Each replay gets the id `<record id>.replay-<dead-letter sequence>`,
    /// so running replay twice, or a crash between publish and delete, does not process a
    /// record twice inside the duplicate window. Returns how many were replayed.
    package static func replay(
        connection: NATSConnection,
        tenant: String,
        handler: String? = nil,
        since: Date? = nil,
        until: Date? = nil
    ) async throws -> Int {
        let letters = try await list(connection: connection, tenant: tenant, handler: handler, since: since, until: until)
        let prefix = "aut.\(tenant).tbl."
        var replayed = 0
        for letter in letters {
            guard letter.sourceSubject.hasPrefix(prefix) || letter.sourceSubject.hasPrefix("aut.\(tenant).sched."),
                Names.isValid(letter.handler)
            else { continue }
            var headers: [(String, String)] = [
                (Wire.Header.messageID, "\(letter.recordID).replay-\(letter.sequence)"),
                (Wire.Header.table, letter.table),
                (Wire.Header.tenant, tenant),
                (Wire.Header.replayFor, letter.handler),
            ]
            if let type = letter.headers[Wire.Header.type] { headers.append((Wire.Header.type, type)) }
            if let cause = letter.headers[Wire.Header.causedBy] { headers.append((Wire.Header.causedBy, cause)) }
            if let trace = letter.headers[Wire.Header.traceparent] { headers.append((Wire.Header.traceparent, trace)) }
            _ = try await connection.publish(
                OutgoingMessage(subject: letter.sourceSubject, payload: ByteBuffer(bytes: letter.payload), headers: headers)
            )
            try await connection.deleteMessage(stream: Wire.streamName(tenant: tenant), sequence: letter.sequence)
            replayed += 1
        }
        return replayed
    }

    /// Deletes dead letters (of one handler, or all) for good. Returns how many.
    package static func purge(connection: NATSConnection, tenant: String, handler: String? = nil) async throws -> Int {
        let letters = try await list(connection: connection, tenant: tenant, handler: handler)
        if !letters.isEmpty {
            try await connection.purge(stream: Wire.streamName(tenant: tenant), subject: subject(tenant: tenant, handler: handler))
        }
        return letters.count
    }

    private static func validate(tenant: String, handler: String?) throws {
        if let problem = Names.problem(with: tenant, kind: "tenant") { throw ConfigurationError(problem) }
        if let handler, let problem = Names.problem(with: handler, kind: "handler") { throw ConfigurationError(problem) }
    }
}
