import CNATS

/// An error from the NATS/JetStream client.
///
/// `description` is safe to show to users; it never contains payloads or credentials.
/// Equality compares only the ``code``.
package struct NATSError: Error, Sendable, Equatable, CustomStringConvertible, CustomDebugStringConvertible {
    package struct Code: Hashable, Sendable, CustomStringConvertible {
        private enum Base: String, Hashable, Sendable {
            case connectionFailed
            case connectionClosed
            case timeout
            case notFound
            case publishFailed
            case jetStream
            case invalidArgument
            case noResponders
            case other
        }

        private let base: Base
        private init(_ base: Base) { self.base = base }

        /// No server could be reached (at connect time).
        package static let connectionFailed = Code(.connectionFailed)
        /// The connection is closed or was closed while the operation was in flight.
        package static let connectionClosed = Code(.connectionClosed)
        /// The operation did not complete in time (also: no PubAck within the publish timeout).
        package static let timeout = Code(.timeout)
        /// A stream, consumer or message does not exist.
        package static let notFound = Code(.notFound)
        /// JetStream refused or did not acknowledge a publish.
        package static let publishFailed = Code(.publishFailed)
        /// JetStream answered an API request with an error.
        package static let jetStream = Code(.jetStream)
        /// A caller passed a value nats.c refused.
        package static let invalidArgument = Code(.invalidArgument)
        /// A request found no subscriber on its subject (nobody is serving it).
        package static let noResponders = Code(.noResponders)
        /// Any other nats.c failure.
        package static let other = Code(.other)

        package var description: String { base.rawValue }
    }

    package var code: Code
    /// A short, user-safe explanation.
    package var message: String
    /// The nats.c status code, when the error came from nats.c.
    package var status: Int32
    /// The JetStream API error code (`err_code`), or 0.
    package var jetStreamErrorCode: Int

    package init(code: Code, message: String, status: Int32 = 0, jetStreamErrorCode: Int = 0) {
        self.code = code
        self.message = message
        self.status = status
        self.jetStreamErrorCode = jetStreamErrorCode
    }

    package static func == (lhs: NATSError, rhs: NATSError) -> Bool { lhs.code == rhs.code }

    package var description: String { "NATSError(\(code)): \(message)" }

    package var debugDescription: String {
        "NATSError(code: \(code), message: \(message), status: \(status), jsErrorCode: \(jetStreamErrorCode))"
    }

    /// `true` for failures that may go away by themselves (server restarting, reconnecting).
    package var isTransient: Bool {
        code == .timeout || code == .connectionClosed || code == .connectionFailed || code == .publishFailed
            || code == .noResponders
    }
}

extension NATSError {
    /// The one place that maps a nats.c status (and JetStream error code) to a ``NATSError``.
    static func from(status: natsStatus, jsError: jsErrCode = jsErrCode(rawValue: 0), context: String, detail: String? = nil) -> NATSError {
        var text = String(cString: natsStatus_GetText(status))
        if let detail, !detail.isEmpty, detail != text { text += " (\(detail))" }
        let jsCode = Int(jsError.rawValue)
        let code: Code
        switch status {
        case NATS_TIMEOUT: code = .timeout
        case NATS_NOT_FOUND: code = .notFound
        case NATS_CONNECTION_CLOSED, NATS_CONNECTION_DISCONNECTED, NATS_STALE_CONNECTION, NATS_DRAINING:
            code = .connectionClosed
        case NATS_NO_SERVER, NATS_NOT_YET_CONNECTED, NATS_CONNECTION_AUTH_FAILED: code = .connectionFailed
        case NATS_INVALID_ARG, NATS_INVALID_SUBJECT, NATS_INVALID_TIMEOUT: code = .invalidArgument
        case NATS_NO_RESPONDERS: code = .noResponders
        default:
            if jsCode == Int(JSStreamNotFoundErr.rawValue) || jsCode == Int(JSConsumerNotFoundErr.rawValue) {
                code = .notFound
            } else if jsCode != 0 {
                code = .jetStream
            } else {
                code = .other
            }
        }
        if code == .other || code == .jetStream,
            jsCode == Int(JSStreamNotFoundErr.rawValue) || jsCode == Int(JSConsumerNotFoundErr.rawValue)
        {
            return NATSError(code: .notFound, message: "\(context): \(text)", status: Int32(status.rawValue), jetStreamErrorCode: jsCode)
        }
        var message = "\(context): \(text)"
        if jsCode != 0 { message += " (JetStream error \(jsCode))" }
        return NATSError(code: code, message: message, status: Int32(status.rawValue), jetStreamErrorCode: jsCode)
    }
}

/// nats.c's text for the last error of the calling thread (which file it could not read,
/// what the TLS handshake said), or `nil`. nats.c clears it when a call starts, so read it
/// right after the call that failed, on the same thread.
func lastErrorText() -> String? {
    var status = NATS_OK
    guard let text = nats_GetLastError(&status), status != NATS_OK else { return nil }
    return String(cString: text)
}

/// ``check(_:_:)`` with nats.c's detailed text of the failure.
func checkDetailed(_ status: natsStatus, _ context: @autoclosure () -> String) throws(NATSError) {
    if status != NATS_OK { throw NATSError.from(status: status, context: context(), detail: lastErrorText()) }
}

@inline(__always)
func check(_ status: natsStatus, _ context: @autoclosure () -> String) throws(NATSError) {
    if status != NATS_OK { throw NATSError.from(status: status, context: context()) }
}
