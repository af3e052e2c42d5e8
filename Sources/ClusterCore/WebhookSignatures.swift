import Crypto
package import Foundation

/// How a digest is written in a header.
public enum SignatureEncoding: Sendable, Hashable {
    case hex
    case base64
}

/// The HMAC-SHA256 schemes of webhook providers (see ``WebhookVerification``). Each follows
/// the provider's documentation: what is signed, where the signature and the delivery id are,
/// and, where a timestamp is signed, how old it may be. Comparisons are constant-time.
struct ProviderSignature: Sendable {
    enum Scheme: Sendable {
        case github
        case stripe
        case standard
        case shopify
        case hmac(header: String, encoding: SignatureEncoding, prefix: String, deliveryIDHeader: String?)
    }

    let scheme: Scheme
    let secret: Secret
    /// How old a signed timestamp may be; `nil` for schemes that sign none.
    let tolerance: Duration?

    var label: String {
        switch scheme {
        case .github: return "github"
        case .stripe: return "stripe"
        case .standard: return "standard-webhooks"
        case .shopify: return "shopify"
        case .hmac: return "hmac-sha256"
        }
    }

    func deliveryID(of request: RouteRequest) -> String? {
        switch scheme {
        case .github: return request.header("X-GitHub-Delivery")
        case .stripe: return (try? JSONParser.parse(request.body))?["id"].stringValue
        case .standard: return request.header("webhook-id") ?? request.header("svix-id")
        case .shopify: return request.header("X-Shopify-Webhook-Id") ?? request.header("X-Shopify-Event-Id")
        case .hmac(_, _, _, let header): return header.flatMap { request.header($0) }
        }
    }

    func verify(_ request: RouteRequest, key: String, now: Date) throws(RouteError) {
        switch scheme {
        case .github:
            let header = "X-Hub-Signature-256"
            let given = try Self.required(request, header, prefix: "sha256=")
            try Self.match(Self.hex(Self.hmac(Array(key.utf8), request.body)), [given.lowercased()], header: header)
        case .stripe:
            let header = "Stripe-Signature"
            let value = try Self.required(request, header, prefix: "")
            var timestamp: String?
            var signatures: [String] = []
            for part in value.split(separator: ",") {
                let pair = part.split(separator: "=", maxSplits: 1).map { $0.trimmingCharacters(in: .whitespaces) }
                guard pair.count == 2 else { continue }
                if pair[0] == "t" { timestamp = pair[1] }
                if pair[0] == "v1" { signatures.append(pair[1].lowercased()) }
            }
            guard let timestamp, !signatures.isEmpty else { throw Self.refusal("\(header) needs t= and v1=", header) }
            try checkAge(timestamp, header: header, now: now)
            let expected = Self.hex(Self.hmac(Array(key.utf8), Array("\(timestamp).".utf8) + request.body))
            try Self.match(expected, signatures, header: header)
        case .standard:
            let svix = request.header("webhook-id") == nil && request.header("svix-id") != nil
            let prefix = svix ? "svix-" : "webhook-"
            let id = try Self.required(request, prefix + "id", prefix: "")
            let timestamp = try Self.required(request, prefix + "timestamp", prefix: "")
            let value = try Self.required(request, prefix + "signature", prefix: "")
            try checkAge(timestamp, header: prefix + "timestamp", now: now)
            let secret = key.hasPrefix("whsec_") ? String(key.dropFirst(6)) : key
            guard let keyBytes = Data(base64Encoded: secret) else {
                throw RouteError(status: 500, code: "internal_error", message: "the webhook's signing secret is not base64 (whsec_…)")
            }
            let expected = Data(Self.hmac(Array(keyBytes), Array("\(id).\(timestamp).".utf8) + request.body)).base64EncodedString()
            let given = value.split(separator: " ").compactMap { entry -> String? in
                let parts = entry.split(separator: ",", maxSplits: 1)
                return parts.count == 2 && parts[0] == "v1" ? String(parts[1]) : nil
            }
            try Self.match(expected, given, header: prefix + "signature")
        case .shopify:
            let header = "X-Shopify-Hmac-Sha256"
            let given = try Self.required(request, header, prefix: "")
            try Self.match(Data(Self.hmac(Array(key.utf8), request.body)).base64EncodedString(), [given], header: header)
        case .hmac(let header, let encoding, let prefix, _):
            let given = try Self.required(request, header, prefix: prefix)
            let digest = Self.hmac(Array(key.utf8), request.body)
            switch encoding {
            case .hex: try Self.match(Self.hex(digest), [given.lowercased()], header: header)
            case .base64: try Self.match(Data(digest).base64EncodedString(), [given], header: header)
            }
        }
    }

    /// Refuses a timestamp older than the tolerance, or ahead of this clock by more than the
    /// allowed skew.
    private func checkAge(_ timestamp: String, header: String, now: Date) throws(RouteError) {
        guard let seconds = Double(timestamp) else { throw Self.refusal("\(header) is not a Unix timestamp", header) }
        let age = now.timeIntervalSince1970 - seconds
        if let tolerance, age > tolerance.inSeconds { throw Self.refusal("the signed timestamp is too old", header) }
        if age < -WebhookVerification.allowedClockSkew {
            throw Self.refusal(
                "the signed timestamp is too far in the future (more than \(Int(WebhookVerification.allowedClockSkew)) s ahead)",
                header
            )
        }
    }

    private static func required(_ request: RouteRequest, _ header: String, prefix: String) throws(RouteError) -> String {
        guard let value = request.header(header), value.hasPrefix(prefix), value.count > prefix.count else {
            throw refusal("missing \(header) header" + (prefix.isEmpty ? "" : " (\(prefix)…)"), header)
        }
        return String(value.dropFirst(prefix.count))
    }

    /// Passes when any of `given` is `expected`, compared in constant time.
    private static func match(_ expected: String, _ given: [String], header: String) throws(RouteError) {
        let wanted = Array(expected.utf8)
        var matched = false
        for candidate in given where constantTimeEqual(wanted, Array(candidate.utf8)) { matched = true }
        guard matched else { throw refusal("signature does not match", header) }
    }

    private static func refusal(_ message: String, _ header: String) -> RouteError {
        RouteError(status: 401, code: "invalid_signature", message: message, field: header)
    }

    static func hmac(_ key: [UInt8], _ data: [UInt8]) -> [UInt8] {
        Array(HMAC<SHA256>.authenticationCode(for: data, using: SymmetricKey(data: key)))
    }

    static func hex(_ bytes: [UInt8]) -> String { Wire.hex(bytes) }
}
