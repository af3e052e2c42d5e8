import Foundation
import Storages
import Testing

/// AWS Signature Version 4 against AWS's published examples: the SigV4 test suite
/// (credentials AKIDEXAMPLE, 2015-08-30T12:36:00Z, us-east-1, service "service") and the S3
/// "GET Object" example of the S3 API reference.
@Suite("AWS Signature V4")
struct SigV4Tests {
    static let suite = SigV4Signer(
        credentials: AWSCredentials(accessKeyID: "AKIDEXAMPLE", secretAccessKey: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"),
        region: "us-east-1",
        service: "service"
    )
    static let suiteDate = Date(timeIntervalSince1970: 1_440_938_160)  // 20150830T123600Z

    func suiteSignature(_ method: String, _ path: String, query: [(String, String)] = []) -> SigV4Signer.Signature {
        Self.suite.sign(
            method: method,
            path: path,
            query: query,
            headers: [("Host", "example.amazonaws.com")],
            payloadHash: SigV4Signer.emptyPayloadHash,
            date: Self.suiteDate
        )
    }

    @Test("get-vanilla: the canonical request, the string to sign and the signature")
    func getVanilla() {
        let signed = suiteSignature("GET", "/")
        #expect(
            signed.canonicalRequest == "GET\n/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\n"
                + SigV4Signer.emptyPayloadHash
        )
        #expect(
            signed.stringToSign
                == "AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/service/aws4_request\nbb579772317eb040ac9ed261061d46c1f17a8133879d6129b6e1c25292927e63"
        )
        #expect(
            signed.authorization
                == "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
        )
    }

    @Test(
        "The rest of the suite: sorted query, UTF-8 and spaces in paths, POST",
        arguments: [
            ("GET", "/", [("Param2", "value2"), ("Param1", "value1")], "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500"),
            ("GET", "/ሴ", [], "8318018e0b0f223aa2bbf98705b62bb787dc9c0e678f255a891fd03141be5d85"),
            ("GET", "/example space/", [], "652487583200325589f1fba4c7e578f72c47cb61beeca81406b39ddec1366741"),
            ("POST", "/", [], "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b"),
            ("POST", "/", [("Param1", "value1")], "28038455d6de14eafc1f9222cf5aa6f1a96197d7deb8263271d420d138af7f11"),
        ]
    )
    func vectors(method: String, path: String, query: [(String, String)], expected: String) {
        #expect(suiteSignature(method, path, query: query).signature == expected)
    }

    @Test("S3 GET Object example: signed range and content hash headers")
    func s3GetObject() {
        let signer = SigV4Signer(
            credentials: AWSCredentials(accessKeyID: "AKIAIOSFODNN7EXAMPLE", secretAccessKey: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"),
            region: "us-east-1",
            service: "s3"
        )
        let signed = signer.sign(
            method: "GET",
            path: "/test.txt",
            headers: [
                ("Host", "examplebucket.s3.amazonaws.com"), ("Range", "bytes=0-9"),
                ("x-amz-content-sha256", SigV4Signer.emptyPayloadHash),
            ],
            payloadHash: SigV4Signer.emptyPayloadHash,
            date: Date(timeIntervalSince1970: 1_369_353_600)  // 20130524T000000Z
        )
        #expect(signed.stringToSign.hasSuffix("\n7344ae5b7ee6c3e7e6b0fe0640412a37625d1fbfff95c48bbb2dc43964946972"))
        #expect(signed.signature == "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41")
        #expect(signed.authorization.contains("SignedHeaders=host;range;x-amz-content-sha256;x-amz-date,"))
    }

    @Test("A session token is signed and sent; the secret is never in a description")
    func sessionToken() {
        var credentials = AWSCredentials(accessKeyID: "AKID", secretAccessKey: "very-secret-key", sessionToken: "token-1")
        let signed = SigV4Signer(credentials: credentials, region: "eu-west-1", service: "s3").sign(
            method: "PUT",
            path: "/b/k",
            headers: [("host", "s3.eu-west-1.amazonaws.com")],
            payloadHash: "UNSIGNED-PAYLOAD",
            date: Self.suiteDate
        )
        #expect(signed.headers.contains { $0.0 == "x-amz-security-token" && $0.1 == "token-1" })
        #expect(signed.authorization.contains("x-amz-security-token"))
        #expect(!"\(credentials)".contains("very-secret-key"))
        credentials.sessionToken = nil
        #expect("\(credentials)".contains("AKID"))
    }

    @Test("gzip round trip, and the gzip header")
    func gzip() throws {
        let text = Array(String(repeating: "{\"order_id\":\"o-1\",\"amount\":12}\n", count: 500).utf8)
        let compressed = try Gzip.compress(text)
        #expect(compressed.count < text.count / 5)
        #expect(compressed.prefix(2) == [0x1F, 0x8B])
        #expect(try Gzip.decompress(compressed) == text)
        // Two members back to back read as one stream, as gzip tools read them.
        #expect(try Gzip.decompress(compressed + (try Gzip.compress(Array("x".utf8)))) == text + Array("x".utf8))
    }
}
