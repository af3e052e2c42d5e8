import AsyncHTTPClient
package import ClusterCore
package import Foundation
import NIOCore
import NIOFoundationCompat
import NIOHTTP1

/// Where objects go: S3 and any S3-compatible store, or a local directory.
package protocol ObjectStore: Sendable {
    /// `s3://bucket/prefix` or `file:///path`, without credentials.
    var displayName: String { get }
    /// Checks that objects can be written (the bucket exists and answers), naming the problem.
    func check() async throws
    /// Writes (or replaces) the object `key`.
    func put(key: String, body: [UInt8], contentType: String, contentEncoding: String?) async throws
    /// The object's bytes.
    func get(key: String) async throws -> [UInt8]
    /// The keys under `prefix`, in key order.
    func list(prefix: String) async throws -> [String]
    /// Removes the object `key` (no error when there is none).
    func delete(key: String) async throws
    func close() async throws
}

/// An S3 bucket (or an S3-compatible server: MinIO, Ceph, moto…) through its REST API, each
/// request signed with AWS Signature V4 over AsyncHTTPClient.
package final class S3ObjectStore: ObjectStore {
    package let bucket: String
    /// Scheme, host and port of the endpoint.
    let endpoint: URLComponents
    /// Path-style addressing (`endpoint/bucket/key`), for custom endpoints; AWS's own
    /// endpoints take virtual-hosted style (`bucket.endpoint/key`).
    let pathStyle: Bool
    let signer: SigV4Signer
    let http: HTTPClient
    package let displayName: String
    /// What a test sets to sign with a fixed time.
    let now: @Sendable () -> Date

    /// `endpoint`: `https://s3.<region>.amazonaws.com` when `nil` (virtual-hosted style);
    /// any other endpoint is addressed path-style.
    package init(
        bucket: String,
        region: String,
        endpoint: String?,
        credentials: AWSCredentials,
        now: @escaping @Sendable () -> Date = { Date() }
    ) throws(ConfigurationError) {
        guard Self.isValidBucket(bucket) else {
            throw ConfigurationError("'\(bucket.prefix(70))' is not an S3 bucket name (3-63 lowercase letters, digits, '.' and '-')")
        }
        if let endpoint {
            guard let components = URLComponents(string: endpoint), components.scheme == "http" || components.scheme == "https",
                let host = components.host, !host.isEmpty, components.path.isEmpty || components.path == "/"
            else {
                throw ConfigurationError("endpoint '\(endpoint.prefix(100))' must look like https://host[:port]")
            }
            self.endpoint = components
            self.pathStyle = true
        } else {
            var components = URLComponents()
            components.scheme = "https"
            components.host = "s3.\(region).amazonaws.com"
            self.endpoint = components
            self.pathStyle = bucket.contains(".")  // a dotted bucket does not match the wildcard certificate
        }
        self.bucket = bucket
        self.signer = SigV4Signer(credentials: credentials, region: region, service: "s3")
        self.http = HTTPClient(eventLoopGroupProvider: .singleton)
        self.displayName = "s3://\(bucket) at \(self.endpoint.host ?? "")"
        self.now = now
    }

    static func isValidBucket(_ name: String) -> Bool {
        (3...63).contains(name.utf8.count)
            && name.utf8.allSatisfy { ($0 >= 0x61 && $0 <= 0x7A) || ($0 >= 0x30 && $0 <= 0x39) || $0 == 0x2E || $0 == 0x2D }
    }

    package func close() async throws {
        try await http.shutdown()
    }

    /// Host header and path of a request for `key` (`nil`: the bucket itself).
    private func address(_ key: String?) -> (host: String, path: String, url: String) {
        var host = endpoint.host ?? ""
        var path: String
        if pathStyle {
            path = "/" + bucket + (key.map { "/" + $0 } ?? "/")
        } else {
            host = bucket + "." + host
            path = "/" + (key ?? "")
        }
        if let port = endpoint.port { host += ":\(port)" }
        return (host, path, "\(endpoint.scheme ?? "https")://\(host)\(SigV4Signer.encode(path, keepSlash: true))")
    }

    private func send(
        _ method: HTTPMethod,
        key: String?,
        query: [(String, String)] = [],
        body: [UInt8]? = nil,
        headers extra: [(String, String)] = []
    ) async throws -> (status: UInt, body: ByteBuffer) {
        let (host, path, url) = address(key)
        let payloadHash = body.map { SigV4Signer.payloadHash($0) } ?? SigV4Signer.emptyPayloadHash
        let signed = signer.sign(
            method: method.rawValue,
            path: path,
            query: query,
            headers: [("host", host), ("x-amz-content-sha256", payloadHash)] + extra,
            payloadHash: payloadHash,
            date: now()
        )
        let queryText = query.map { SigV4Signer.encode($0.0, keepSlash: false) + "=" + SigV4Signer.encode($0.1, keepSlash: false) }
            .joined(separator: "&")
        var request = HTTPClientRequest(url: url + (queryText.isEmpty ? "" : "?" + queryText))
        request.method = method
        for (name, value) in signed.headers where name != "host" { request.headers.add(name: name, value: value) }
        if let body { request.body = .bytes(ByteBuffer(bytes: body)) }
        let response: HTTPClientResponse
        do {
            response = try await http.execute(request, timeout: .seconds(60))
        } catch {
            throw StorageError("\(displayName): \(method.rawValue) did not get an answer: \(error)", transient: true)
        }
        let bytes = try await response.body.collect(upTo: 256 * 1024 * 1024)
        return (response.status.code, bytes)
    }

    /// A 4xx or 5xx answer as an error that names S3's code and message; 5xx, 429 and
    /// S3's `SlowDown` are transient.
    private func failure(_ what: String, status: UInt, body: ByteBuffer) -> StorageError {
        let text = String(buffer: body)
        let code = Self.element("Code", in: text)
        let message = Self.element("Message", in: text)
        var description = "\(displayName): \(what) failed with HTTP \(status)"
        if let code { description += " \(code)" }
        if let message { description += ": \(message)" }
        return StorageError(description, transient: status >= 500 || status == 429 || code == "SlowDown")
    }

    package func check() async throws {
        let (status, body) = try await send(.HEAD, key: nil)
        guard (200..<300).contains(status) else {
            switch status {
            case 404: throw StorageError("\(displayName): the bucket does not exist")
            case 403: throw StorageError("\(displayName): access denied (check the credentials and the bucket's policy)")
            case 301, 400: throw StorageError("\(displayName): the bucket is in another region than the one configured")
            default: throw failure("checking the bucket", status: status, body: body)
            }
        }
    }

    package func put(key: String, body: [UInt8], contentType: String, contentEncoding: String?) async throws {
        var headers = [("content-type", contentType)]
        if let contentEncoding { headers.append(("content-encoding", contentEncoding)) }
        let (status, answer) = try await send(.PUT, key: key, body: body, headers: headers)
        guard (200..<300).contains(status) else { throw failure("writing \(key)", status: status, body: answer) }
    }

    package func delete(key: String) async throws {
        let (status, answer) = try await send(.DELETE, key: key)
        guard (200..<300).contains(status) || status == 404 else { throw failure("removing \(key)", status: status, body: answer) }
    }

    package func get(key: String) async throws -> [UInt8] {
        let (status, body) = try await send(.GET, key: key)
        guard (200..<300).contains(status) else { throw failure("reading \(key)", status: status, body: body) }
        return Array(body.readableBytesView)
    }

    package func list(prefix: String) async throws -> [String] {
        var keys: [String] = []
        var token: String?
        repeat {
            var query = [("list-type", "2"), ("prefix", prefix)]
            if let token { query.append(("continuation-token", token)) }
            let (status, body) = try await send(.GET, key: nil, query: query)
            guard (200..<300).contains(status) else { throw failure("listing \(prefix)", status: status, body: body) }
            let text = String(buffer: body)
            keys += Self.elements("Key", in: text).map(Self.unescapeXML)
            token = Self.element("IsTruncated", in: text) == "true" ? Self.element("NextContinuationToken", in: text) : nil
        } while token != nil
        return keys
    }

    static func element(_ name: String, in text: String) -> String? { elements(name, in: text).first }

    /// The texts of `<name>…</name>` in an S3 XML answer (flat elements only, as S3's are).
    static func elements(_ name: String, in text: String) -> [String] {
        var found: [String] = []
        var rest = text[...]
        while let open = rest.range(of: "<\(name)>"), let close = rest.range(of: "</\(name)>", range: open.upperBound..<rest.endIndex) {
            found.append(String(rest[open.upperBound..<close.lowerBound]))
            rest = rest[close.upperBound...]
        }
        return found
    }

    static func unescapeXML(_ text: String) -> String {
        text.replacingOccurrences(of: "&lt;", with: "<").replacingOccurrences(of: "&gt;", with: ">")
            .replacingOccurrences(of: "&quot;", with: "\"").replacingOccurrences(of: "&apos;", with: "'")
            .replacingOccurrences(of: "&amp;", with: "&")
    }
}

/// Objects as files under a local directory (`file:///path`): the same layout as S3, for
/// one machine and for tools that read a data lake from disk.
package struct DirectoryObjectStore: ObjectStore {
    let root: String
    package var displayName: String { "file://\(root)" }

    package init(root: String) {
        self.root = root.hasSuffix("/") && root.count > 1 ? String(root.dropLast()) : root
    }

    package func check() async throws {
        do {
            try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        } catch {
            throw StorageError("\(displayName): cannot create the directory: \(error)")
        }
        guard FileManager.default.isWritableFile(atPath: root) else { throw StorageError("\(displayName): the directory is not writable") }
    }

    /// Written to a temporary file and renamed, so a reader never sees half an object.
    package func put(key: String, body: [UInt8], contentType: String, contentEncoding: String?) async throws {
        let path = root + "/" + key
        let directory = (path as NSString).deletingLastPathComponent
        do {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            let temporary = directory + "/.tmp-\(UUID().uuidString)"
            try Data(body).write(to: URL(fileURLWithPath: temporary))
            if rename(temporary, path) != 0 { throw StorageError("rename failed (errno \(errno))") }
        } catch {
            throw StorageError("\(displayName): cannot write \(key): \(error)", transient: true)
        }
    }

    package func delete(key: String) async throws {
        if unlink(root + "/" + key) != 0 && errno != ENOENT {
            throw StorageError("\(displayName): cannot remove \(key) (errno \(errno))", transient: true)
        }
    }

    package func get(key: String) async throws -> [UInt8] {
        guard let data = FileManager.default.contents(atPath: root + "/" + key) else {
            throw StorageError("\(displayName): no object \(key)")
        }
        return Array(data)
    }

    package func list(prefix: String) async throws -> [String] {
        guard let enumerator = FileManager.default.enumerator(atPath: root) else { return [] }
        var keys: [String] = []
        while let item = enumerator.nextObject() as? String {
            let name = (item as NSString).lastPathComponent
            guard item.hasPrefix(prefix), !name.hasPrefix(".tmp-") else { continue }
            var isDirectory: ObjCBool = false
            if FileManager.default.fileExists(atPath: root + "/" + item, isDirectory: &isDirectory), !isDirectory.boolValue {
                keys.append(item)
            }
        }
        return keys.sorted()
    }

    package func close() async throws {}
}
