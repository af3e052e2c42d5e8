import Foundation
package import NIOSSL

/// TLS for an HTTP server of the cluster (the ingress, the admin API): a certificate chain and
/// its private key, as PEM files. TLS 1.2 or newer; HTTP/1.1 only.
package struct ServerTLS: Sendable, Equatable {
    package var certificateFile: String
    package var keyFile: String

    package init(certificateFile: String, keyFile: String) {
        self.certificateFile = certificateFile
        self.keyFile = keyFile
    }

    /// Reads `<prefix>_CERT` and `<prefix>_KEY` (e.g. `AUTONOMOUS_TLS_CERT`): both or neither,
    /// each a readable file, so a wrong path stops the process at startup naming the variable.
    package static func fromEnvironment(_ environment: [String: String], prefix: String) throws(ServerTLSError) -> ServerTLS? {
        let certificate = environment[prefix + "_CERT"].flatMap { $0.isEmpty ? nil : $0 }
        let key = environment[prefix + "_KEY"].flatMap { $0.isEmpty ? nil : $0 }
        switch (certificate, key) {
        case (nil, nil):
            return nil
        case (.some, nil):
            throw ServerTLSError("\(prefix)_CERT is set but \(prefix)_KEY (its private key) is not")
        case (nil, .some):
            throw ServerTLSError("\(prefix)_KEY is set but \(prefix)_CERT (its certificate) is not")
        case (let certificate?, let key?):
            for (name, path) in [(prefix + "_CERT", certificate), (prefix + "_KEY", key)]
            where !FileManager.default.isReadableFile(atPath: path) {
                throw ServerTLSError("\(name): cannot read '\(path)'")
            }
            let tls = ServerTLS(certificateFile: certificate, keyFile: key)
            _ = try tls.configuration()  // a bad PEM fails now, not at the first connection
            return tls
        }
    }

    /// The server's TLS configuration.
    package func configuration() throws(ServerTLSError) -> TLSConfiguration {
        do {
            let chain = try NIOSSLCertificate.fromPEMFile(certificateFile)
            guard !chain.isEmpty else { throw ServerTLSError("\(certificateFile) holds no PEM certificate") }
            let key = try NIOSSLPrivateKey(file: keyFile, format: .pem)
            var configuration = TLSConfiguration.makeServerConfiguration(
                certificateChain: chain.map { .certificate($0) },
                privateKey: .privateKey(key)
            )
            configuration.minimumTLSVersion = .tlsv12
            configuration.applicationProtocols = ["http/1.1"]
            return configuration
        } catch let error as ServerTLSError {
            throw error
        } catch {
            throw ServerTLSError("cannot load the certificate \(certificateFile) and key \(keyFile): \(error)")
        }
    }

    /// A context for `NIOSSLServerHandler`.
    package func makeContext() throws(ServerTLSError) -> NIOSSLContext {
        let configuration = try configuration()
        do {
            return try NIOSSLContext(configuration: configuration)
        } catch {
            throw ServerTLSError("cannot use the certificate \(certificateFile) and key \(keyFile): \(error)")
        }
    }
}

package struct ServerTLSError: Error, Sendable, CustomStringConvertible {
    package var message: String
    package init(_ message: String) { self.message = message }
    package var description: String { message }
}
