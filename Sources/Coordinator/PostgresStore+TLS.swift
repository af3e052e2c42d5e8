import ClusterCore
import Foundation
import NIOSSL
import PostgresNIO

extension PostgresStore {
    /// The TLS mode a PostgreSQL URL asks for with libpq's `sslmode` (and `sslrootcert`, a
    /// PEM file of the CA the server's certificate chains to; the system's CAs without it).
    ///
    /// | `sslmode` | connection |
    /// | --- | --- |
    /// | `disable` | plain |
    /// | `prefer` (the default, as in libpq) | TLS when the server offers it, unverified; plain otherwise |
    /// | `require` | TLS or fail; unverified, unless `sslrootcert` is given (then as `verify-ca`) |
    /// | `verify-ca` | TLS or fail; the certificate must chain to the CA |
    /// | `verify-full` | as `verify-ca`, and the certificate must name the host |
    static func tls(from components: URLComponents) throws -> TLSMode {
        let items = components.queryItems ?? []
        let mode = items.last { $0.name == "sslmode" }?.value ?? "prefer"
        let rootCertificate = items.last { $0.name == "sslrootcert" }?.value
        func configuration(verify: CertificateVerification) throws -> TLSConfiguration {
            var tls = TLSConfiguration.makeClientConfiguration()
            tls.certificateVerification = verify
            if let rootCertificate, verify != .none {
                do {
                    tls.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(rootCertificate))
                } catch {
                    throw ConfigurationError("sslrootcert '\(rootCertificate)' is not a readable PEM certificate file: \(error)")
                }
            }
            return tls
        }
        switch mode {
        case "disable":
            return .disable
        case "prefer", "allow":
            return .prefer(try configuration(verify: .none))
        case "require":
            return .require(try configuration(verify: rootCertificate == nil ? .none : .noHostnameVerification))
        case "verify-ca":
            return .require(try configuration(verify: .noHostnameVerification))
        case "verify-full":
            return .require(try configuration(verify: .fullVerification))
        default:
            throw ConfigurationError(
                "sslmode '\(mode.prefix(40))' in the PostgreSQL URL is not one of disable, prefer, require, verify-ca, verify-full"
            )
        }
    }

    /// TLS as a URL asks for it, for the pooled client and for a single connection.
    enum TLSMode {
        case disable
        case prefer(TLSConfiguration)
        case require(TLSConfiguration)

        var client: PostgresClient.Configuration.TLS {
            switch self {
            case .disable: return .disable
            case .prefer(let tls): return .prefer(tls)
            case .require(let tls): return .require(tls)
            }
        }

        func connection() throws -> PostgresConnection.Configuration.TLS {
            switch self {
            case .disable: return .disable
            case .prefer(let tls): return .prefer(try NIOSSLContext(configuration: tls))
            case .require(let tls): return .require(try NIOSSLContext(configuration: tls))
            }
        }
    }

    /// Whether this store's connections use TLS (asks the server).
    func connectionUsesTLS() async throws -> Bool {
        let rows = try await client.query("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", logger: logger)
        for try await ssl in rows.decode(Bool.self) { return ssl }
        return false
    }
}

extension PostgresStore {
    /// What went wrong with a connection, without the query text or parameters PostgresNIO's
    /// full description may hold: the server's message, or the transport's error.
    package static func describe(_ error: any Error) -> String {
        guard let error = error as? PSQLError else { return "\(error)" }
        if let message = error.serverInfo?[.message] { return message }
        if let underlying = error.underlying { return "\(underlying)" }
        return "\(error.code)"
    }
}
