import Foundation

extension NATSConnection.Configuration {
    /// Reads the TLS files and credentials file named in `environment` into ``tls`` and
    /// ``credentialsFile``: `AUTONOMOUS_NATS_CA` (PEM, the CA(s) the servers' certificates
    /// chain to), `AUTONOMOUS_NATS_CERT` and `AUTONOMOUS_NATS_KEY` (PEM, a client certificate
    /// and its key), any of which turns TLS on, and `AUTONOMOUS_NATS_CREDS` (a credentials file
    /// as `nsc` writes it), and `AUTONOMOUS_NATS_USER` with `AUTONOMOUS_NATS_PASSWORD` (a user of
    /// the server's `authorization` block; see docs/deploy.md). Each file must exist and be
    /// readable now, so a wrong path fails at startup with the variable's name, not at the first
    /// reconnect. Empty values count as unset.
    package mutating func readSecurity(from environment: [String: String]) throws(NATSError) {
        func file(_ name: String) throws(NATSError) -> String? {
            guard let path = environment[name], !path.isEmpty else { return nil }
            guard FileManager.default.isReadableFile(atPath: path) else {
                throw NATSError(code: .invalidArgument, message: "\(name): cannot read '\(path)'")
            }
            return path
        }
        let ca = try file("AUTONOMOUS_NATS_CA")
        let certificate = try file("AUTONOMOUS_NATS_CERT")
        let key = try file("AUTONOMOUS_NATS_KEY")
        switch (certificate, key) {
        case (.some, nil):
            throw NATSError(code: .invalidArgument, message: "AUTONOMOUS_NATS_CERT is set but AUTONOMOUS_NATS_KEY (its private key) is not")
        case (nil, .some):
            throw NATSError(code: .invalidArgument, message: "AUTONOMOUS_NATS_KEY is set but AUTONOMOUS_NATS_CERT (its certificate) is not")
        default: break
        }
        if ca != nil || certificate != nil {
            tls = TLS(caFile: ca, certificateFile: certificate, keyFile: key)
        }
        if let credentials = try file("AUTONOMOUS_NATS_CREDS") { credentialsFile = credentials }
        let user = environment["AUTONOMOUS_NATS_USER"].flatMap { $0.isEmpty ? nil : $0 }
        let password = environment["AUTONOMOUS_NATS_PASSWORD"].flatMap { $0.isEmpty ? nil : $0 }
        switch (user, password) {
        case (.some, nil):
            throw NATSError(code: .invalidArgument, message: "AUTONOMOUS_NATS_USER is set but AUTONOMOUS_NATS_PASSWORD is not")
        case (nil, .some):
            throw NATSError(code: .invalidArgument, message: "AUTONOMOUS_NATS_PASSWORD is set but AUTONOMOUS_NATS_USER is not")
        case (let user?, let password?):
            guard credentialsFile == nil else {
                throw NATSError(
                    code: .invalidArgument,
                    message: "AUTONOMOUS_NATS_USER and AUTONOMOUS_NATS_CREDS are both set; authenticate with one of them"
                )
            }
            self.user = user
            self.password = password
        default: break
        }
    }
}
