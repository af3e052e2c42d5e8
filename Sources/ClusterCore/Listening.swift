import NIOCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Runs a server's `body`, turning a failure to bind its address into an error that names the
/// address and the setting that chooses it (`what` says which server, e.g. "the ingress").
package func listening<T>(
    _ what: String,
    host: String,
    port: Int,
    setting: String,
    _ body: () async throws -> T
) async throws -> T {
    do {
        return try await body()
    } catch let error as IOError {
        let reason: String
        switch error.errnoCode {
        case EADDRINUSE: reason = "port \(port) is in use by another process"
        case EACCES: reason = "binding port \(port) needs privileges this process lacks"
        case EADDRNOTAVAIL: reason = "\(host) is not an address of this machine"
        default: throw error
        }
        throw ConfigurationError("\(what) cannot listen on \(host):\(port): \(reason); choose another with \(setting)")
    }
}
