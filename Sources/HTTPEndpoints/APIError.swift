package import ClusterCore
import Foundation
package import HTTPTypes
package import Hummingbird
import NIOCore

/// An error as every HTTP server of Autonomous answers it: the status, a JSON body
/// `{"error": {"code", "message", "field"?}}`, and `Retry-After` on 429 and 503. Hummingbird's
/// router answers it as it is (`HTTPResponseError`); the ingress's own responder and its
/// event-loop path write ``response`` and ``encoded`` for the same bytes.
package struct APIError: HTTPResponseError, CustomStringConvertible {
    package var error: RouteError
    /// Seconds for `Retry-After` when the error names none (429 and 503 only).
    package var defaultRetryAfter: Int?

    package init(_ error: RouteError, defaultRetryAfter: Int? = nil) {
        self.error = error
        self.defaultRetryAfter = defaultRetryAfter
    }

    /// A failed cluster call as an admin answer: the remote side's code as the HTTP status;
    /// a "field: problem" message of a refused argument names the field.
    package init(_ error: ClusterCallError) {
        let status: Int
        switch error.code {
        case .notFound: status = 404
        case .duplicate: status = 409
        case .invalidArgument: status = 422
        case .unauthorized: status = 401
        case .forbidden: status = 403
        case .unavailable, .timeout: status = 503
        case .versionMismatch, .internal: status = 500
        }
        var code = error.code.rawValue
        var message = error.message
        var field: String?
        if status == 422, let colon = message.firstIndex(of: ":"), !message[..<colon].contains(" ") {
            field = String(message[..<colon])
            message = String(message[message.index(after: colon)...]).trimmingCharacters(in: .whitespaces)
            code = "invalid_field"
        }
        self.init(RouteError(status: status, code: code, message: message, field: field))
    }

    package var status: HTTPResponse.Status { .init(code: error.status) }

    package var description: String { error.description }

    /// The `Retry-After` value, for 429 and 503.
    package var retryAfter: String? {
        guard error.status == 429 || error.status == 503 else { return nil }
        return (error.retryAfterSeconds ?? defaultRetryAfter).map(String.init)
    }

    /// The body's bytes.
    package var encoded: ByteBuffer { ByteBuffer(bytes: JSONWriter.encode(error.body)) }

    package var response: Response {
        var response = JSONResponse.make(error.status, error.body)
        if let retryAfter { response.headers[.retryAfter] = retryAfter }
        return response
    }

    package func response(from request: Request, context: some RequestContext) throws -> Response { response }
}

/// JSON answers.
package enum JSONResponse {
    package static func make(_ status: Int, _ value: JSONValue) -> Response {
        Response(
            status: .init(code: status),
            headers: [.contentType: "application/json"],
            body: .init(byteBuffer: ByteBuffer(bytes: JSONWriter.encode(value)))
        )
    }
}
