import ClusterCore
import Crypto
import Foundation
import Testing

/// Each provider's scheme against its published example (GitHub, Standard Webhooks) or a
/// request in its real format signed here with HMAC-SHA256 directly (Stripe, Shopify, generic):
/// valid, tampered body, wrong secret, stale or future timestamp, and the delivery id a
/// retry repeats.
@Suite("Webhook signatures of providers")
struct WebhookSignatureTests {
    static let now = Date(timeIntervalSince1970: 1_800_000_000)

    static func request(_ body: String, _ headers: [String: String]) -> RouteRequest {
        RouteRequest(
            method: "POST",
            path: "/hooks",
            headers: Dictionary(uniqueKeysWithValues: headers.map { ($0.key.lowercased(), $0.value) }),
            body: Array(body.utf8)
        )
    }

    static func hmac(_ key: [UInt8], _ text: String) -> [UInt8] {
        Array(HMAC<SHA256>.authenticationCode(for: Array(text.utf8), using: SymmetricKey(data: key)))
    }

    static func hex(_ bytes: [UInt8]) -> String { bytes.map { String(format: "%02x", $0) }.joined() }

    /// The refusal's message for `request`, or nil when it is accepted.
    static func refusal(_ verification: WebhookVerification, _ secret: String, _ request: RouteRequest, now: Date = now) -> String? {
        do {
            try verification.verify(request, environment: ["SECRET": secret], now: now)
            return nil
        } catch let error as RouteError {
            #expect(error.status == 401 && error.code == "invalid_signature")
            return error.message
        } catch {
            return "\(error)"
        }
    }

    @Test("GitHub: the documented example verifies; a changed body, another secret or a missing header do not")
    func github() {
        let verification = WebhookVerification.github(secret: .secret("SECRET"))
        let secret = "It's a Secret to Everybody"
        let signed = ["X-Hub-Signature-256": "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"]
        let delivery = ["X-GitHub-Delivery": "72d3162e-cc78-11e3-81ab-4c9367dc0958"]
        let valid = Self.request("Hello, World!", signed.merging(delivery) { a, _ in a })
        #expect(Self.refusal(verification, secret, valid) == nil)
        #expect(Self.refusal(verification, secret, Self.request("Hello, World?", signed)) == "signature does not match")
        #expect(Self.refusal(verification, "another secret", valid) == "signature does not match")
        #expect(Self.refusal(verification, secret, Self.request("Hello, World!", [:]))?.contains("missing X-Hub-Signature-256") == true)
        #expect(verification.deliveryID(of: valid) == "72d3162e-cc78-11e3-81ab-4c9367dc0958")
    }

    @Test(
        "Standard Webhooks: the published vector verifies (and as Svix headers); tampering, another secret and old or future timestamps do not"
    )
    func standardWebhooks() {
        let verification = WebhookVerification.standardWebhooks(secret: .secret("SECRET"))
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
        let body = #"{"test": 2432232314}"#
        let signedAt = Date(timeIntervalSince1970: 1_614_265_330)
        let headers = [
            "webhook-id": "msg_p5jXN8AQM9LWM0D4loKWxJek",
            "webhook-timestamp": "1614265330",
            // A rotated-out signature first: any one that matches is enough.
            "webhook-signature": "v1,bm9wZQ== v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
        ]
        let valid = Self.request(body, headers)
        #expect(Self.refusal(verification, secret, valid, now: signedAt) == nil)
        let svix = Dictionary(uniqueKeysWithValues: headers.map { ("svix-" + $0.key.dropFirst("webhook-".count), $0.value) })
        #expect(Self.refusal(verification, secret, Self.request(body, svix), now: signedAt) == nil)
        #expect(
            Self.refusal(verification, secret, Self.request(#"{"test": 2432232315}"#, headers), now: signedAt) == "signature does not match"
        )
        #expect(Self.refusal(verification, "whsec_" + Data("another".utf8).base64EncodedString(), valid, now: signedAt) != nil)
        #expect(Self.refusal(verification, secret, valid, now: signedAt.addingTimeInterval(301)) == "the signed timestamp is too old")
        #expect(Self.refusal(verification, secret, valid, now: signedAt.addingTimeInterval(-120))?.contains("future") == true)
        #expect(verification.deliveryID(of: valid) == "msg_p5jXN8AQM9LWM0D4loKWxJek")
    }

    @Test("Stripe: t= and any v1= over \"t.body\"; tampering, another secret, old or future timestamps and a header without t= are refused")
    func stripe() {
        let verification = WebhookVerification.stripe(signingSecret: .secret("SECRET"))
        let secret = "whsec_test_3f9c1e07a2b84d5e"
        let body = #"{"id":"evt_1NG8Du2eZvKYlo2CUI79vXWy","object":"event","type":"payment_intent.succeeded"}"#
        let timestamp = Int(Self.now.timeIntervalSince1970) - 10
        let signature = Self.hex(Self.hmac(Array(secret.utf8), "\(timestamp).\(body)"))
        let header = ["Stripe-Signature": "t=\(timestamp),v1=\(String(repeating: "0", count: 64)),v1=\(signature),v0=abc"]
        let valid = Self.request(body, header)
        #expect(Self.refusal(verification, secret, valid) == nil)
        #expect(Self.refusal(verification, secret, Self.request(body.replacingOccurrences(of: "succeeded", with: "failed"), header)) != nil)
        #expect(Self.refusal(verification, "whsec_other", valid) == "signature does not match")
        #expect(Self.refusal(verification, secret, valid, now: Self.now.addingTimeInterval(400)) == "the signed timestamp is too old")
        #expect(Self.refusal(verification, secret, valid, now: Self.now.addingTimeInterval(-200))?.contains("future") == true)
        #expect(Self.refusal(verification, secret, Self.request(body, ["Stripe-Signature": "v1=\(signature)"]))?.contains("t=") == true)
        #expect(verification.deliveryID(of: valid) == "evt_1NG8Du2eZvKYlo2CUI79vXWy")
        #expect(verification.replayWindow == .seconds(360))
    }

    @Test("Shopify and a generic HMAC header: base64 or hex digests of the body; tampering and another secret are refused")
    func shopifyAndGeneric() {
        let secret = "shpss_0123456789abcdef"
        let body = #"{"id":820982911946154508,"email":"jon@example.com"}"#
        let digest = Self.hmac(Array(secret.utf8), body)
        let shopify = WebhookVerification.shopify(secret: .secret("SECRET"))
        let headers = [
            "X-Shopify-Hmac-Sha256": Data(digest).base64EncodedString(), "X-Shopify-Webhook-Id": "b54557e4-bdd9-4b37-8a5f-bf7d70bcd043",
        ]
        let valid = Self.request(body, headers)
        #expect(Self.refusal(shopify, secret, valid) == nil)
        #expect(Self.refusal(shopify, secret, Self.request(body + " ", headers)) == "signature does not match")
        #expect(Self.refusal(shopify, "shpss_other", valid) == "signature does not match")
        #expect(shopify.deliveryID(of: valid) == "b54557e4-bdd9-4b37-8a5f-bf7d70bcd043")

        let generic = WebhookVerification.hmacSHA256(
            secret: .secret("SECRET"),
            header: "X-Signature",
            prefix: "sha256=",
            deliveryIDHeader: "X-Delivery"
        )
        let signed = Self.request(body, ["X-Signature": "sha256=" + Self.hex(digest).uppercased(), "X-Delivery": "d-1"])
        #expect(Self.refusal(generic, secret, signed) == nil, "hex digests compare without regard to case")
        #expect(Self.refusal(generic, secret, Self.request(body, ["X-Signature": Self.hex(digest)])) != nil, "the prefix is required")
        #expect(generic.deliveryID(of: signed) == "d-1")
    }
}
