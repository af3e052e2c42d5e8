#if canImport(Glibc)
import Glibc
#endif

/// Free ports on 127.0.0.1 for servers started on the same machine (tests, load runs, the
/// `process` engine's JetStream cluster routes).
///
/// Ports are picked below Linux's ephemeral range (32768 up): there, the kernel hands ports to
/// outgoing connections and to servers that ask for port 0, so a port that was free a moment
/// ago is taken by another program's connection.
package enum LoopbackPorts {
    /// A random base `p` (a multiple of 10 from 10,000 to 29,990) with `p + offset` free for
    /// every offset in `spans`. Another program may still take one before it is bound, but not
    /// one that is listening now.
    package static func freeBase(spans: [Range<Int>]) -> Int {
        var base = 0
        for _ in 0..<200 {
            base = Int.random(in: 1_000..<3_000) * 10
            if spans.allSatisfy({ span in span.allSatisfy { isFree(base + $0) } }) { return base }
        }
        return base
    }

    /// Whether a server could listen on `port` of 127.0.0.1 now (bound with `SO_REUSEADDR`,
    /// as NIO and nats-server bind, so sockets in TIME_WAIT do not count).
    package static func isFree(_ port: Int) -> Bool {
        guard (1...65_535).contains(port) else { return false }
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var yes: Int32 = 1
        _ = setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &yes, socklen_t(MemoryLayout<Int32>.size))
        return bindLoopback(fd, port: port) == 0
    }

    /// `bind(2)` of socket `fd` to 127.0.0.1:`port`; returns what `bind` returns.
    package static func bindLoopback(_ fd: Int32, port: Int) -> Int32 {
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = in_addr_t(UInt32(0x7F00_0001).bigEndian)
        return withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
    }
}

extension ProcessCluster.Specification {
    /// Sets `httpPort` and `healthPort` (100 above it) to ports free now: ingress slots from
    /// `httpPort`, health and admin ports of coordinators, workers and the first worker
    /// group from `healthPort`.
    package mutating func useFreePorts() {
        httpPort = LoopbackPorts.freeBase(spans: [0..<10, 100..<300])
        healthPort = httpPort + 100
    }
}
