package import Crypto
package import Foundation

/// Credentials for AWS Signature Version 4. The secret never reaches a description.
package struct AWSCredentials: Sendable, CustomStringConvertible {
    package var accessKeyID: String
    package var secretAccessKey: String
    /// For temporary credentials (`x-amz-security-token`).
    package var sessionToken: String?

    package init(accessKeyID: String, secretAccessKey: String, sessionToken: String? = nil) {
        self.accessKeyID = accessKeyID
        self.secretAccessKey = secretAccessKey
        self.sessionToken = sessionToken
    }

    package var description: String { "AWSCredentials(\(accessKeyID), secret not shown)" }
}

/// AWS Signature Version 4 (`AWS4-HMAC-SHA256`) for requests signed in headers, as S3 and
/// every other AWS API take them. Checked against AWS's published test vectors.
package struct SigV4Signer: Sendable {
    package var credentials: AWSCredentials
    package var region: String
    package var service: String

    package init(credentials: AWSCredentials, region: String, service: String) {
        self.credentials = credentials
        self.region = region
        self.service = service
    }

    /// What signing produced: the intermediate forms (for tests) and the headers to send.
    package struct Signature: Sendable {
        package var canonicalRequest: String
        package var stringToSign: String
        package var signature: String
        /// Every header to send: the request's own, `x-amz-date`, the session token if any,
        /// and `Authorization`.
        package var headers: [(String, String)]
        package var authorization: String
    }

    /// SHA-256 of an empty payload, in hex.
    package static let emptyPayloadHash = hex(SHA256.hash(data: [UInt8]()))

    package static func payloadHash(_ bytes: some DataProtocol) -> String { hex(SHA256.hash(data: bytes)) }

    /// Signs a request. `path` is the raw path (each segment is percent-encoded here); `query`
    /// the raw parameters; `headers` must include `host`. `payloadHash` is the hex SHA-256 of
    /// the body (S3 also takes `UNSIGNED-PAYLOAD`).
    package func sign(
        method: String,
        path: String,
        query: [(String, String)] = [],
        headers: [(String, String)],
        payloadHash: String,
        date: Date
    ) -> Signature {
        let (amzDate, day) = Self.timestamps(date)
        var all = headers
        all.append(("x-amz-date", amzDate))
        if let token = credentials.sessionToken { all.append(("x-amz-security-token", token)) }
        // Canonical headers: lower-case names, trimmed values with inner runs of spaces made
        // one, sorted by name; a name given twice joins its values with commas.
        var byName: [String: [String]] = [:]
        for (name, value) in all {
            let words = value.split(separator: " ", omittingEmptySubsequences: true)
            let trimmed = words.joined(separator: " ")
            byName[name.lowercased(), default: []].append(trimmed)
        }
        let names = byName.keys.sorted()
        let canonicalHeaders = names.map { "\($0):\(byName[$0]!.joined(separator: ","))\n" }.joined()
        let signedHeaders = names.joined(separator: ";")
        let encoded: [(name: String, value: String)] = query.map {
            (Self.encode($0.0, keepSlash: false), Self.encode($0.1, keepSlash: false))
        }
        let sortedQuery = encoded.sorted { left, right in left.name == right.name ? left.value < right.value : left.name < right.name }
        let canonicalQuery = sortedQuery.map { $0.name + "=" + $0.value }.joined(separator: "&")
        let canonicalRequest = [
            method, Self.encode(path.isEmpty ? "/" : path, keepSlash: true), canonicalQuery, canonicalHeaders, signedHeaders, payloadHash,
        ].joined(separator: "\n")
        let scope = "\(day)/\(region)/\(service)/aws4_request"
        let stringToSign = [
            "AWS4-HMAC-SHA256", amzDate, scope, Self.hex(SHA256.hash(data: Array(canonicalRequest.utf8))),
        ].joined(separator: "\n")
        let signature = Self.hex(HMAC<SHA256>.authenticationCode(for: Array(stringToSign.utf8), using: signingKey(day: day)))
        let authorization =
            "AWS4-HMAC-SHA256 Credential=\(credentials.accessKeyID)/\(scope), SignedHeaders=\(signedHeaders), Signature=\(signature)"
        return Signature(
            canonicalRequest: canonicalRequest,
            stringToSign: stringToSign,
            signature: signature,
            headers: all + [("authorization", authorization)],
            authorization: authorization
        )
    }

    /// kSigning = HMAC(HMAC(HMAC(HMAC("AWS4" + secret, day), region), service), "aws4_request").
    package func signingKey(day: String) -> SymmetricKey {
        func step(_ key: SymmetricKey, _ text: String) -> SymmetricKey {
            SymmetricKey(data: HMAC<SHA256>.authenticationCode(for: Array(text.utf8), using: key))
        }
        let start = SymmetricKey(data: Array(("AWS4" + credentials.secretAccessKey).utf8))
        return step(step(step(step(start, day), region), service), "aws4_request")
    }

    /// `20150830T123600Z` and `20150830`, in UTC.
    static func timestamps(_ date: Date) -> (String, String) {
        let utc = UTCParts(date)
        let day = utc.year + utc.month + utc.day
        return (day + "T" + utc.hour + utc.minute + utc.second + "Z", day)
    }

    /// RFC 3986 percent-encoding of everything but the unreserved characters (and `/` in paths).
    package static func encode(_ text: String, keepSlash: Bool) -> String {
        var out = ""
        out.reserveCapacity(text.utf8.count)
        for byte in text.utf8 {
            switch byte {
            case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
                UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "_"), UInt8(ascii: "~"):
                out.unicodeScalars.append(Unicode.Scalar(byte))
            case UInt8(ascii: "/") where keepSlash:
                out.append("/")
            default:
                let digits = Array("0123456789ABCDEF")
                out.append("%")
                out.append(digits[Int(byte >> 4)])
                out.append(digits[Int(byte & 0xF)])
            }
        }
        return out
    }

    static func hex(_ digest: some Sequence<UInt8>) -> String {
        let digits = Array("0123456789abcdef")
        var out = ""
        for byte in digest {
            out.append(digits[Int(byte >> 4)])
            out.append(digits[Int(byte & 0xF)])
        }
        return out
    }
}
