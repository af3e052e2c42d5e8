import CZlib
package import ClusterCore

/// gzip (RFC 1952) through zlib: the objects an S3 storage writes.
package enum Gzip {
    /// `bytes` compressed into one gzip member.
    package static func compress(_ bytes: [UInt8], level: Int32 = 6) throws(StorageError) -> [UInt8] {
        var stream = z_stream()
        // 15 window bits, +16 for a gzip header and trailer instead of zlib's.
        let status = deflateInit2_(
            &stream,
            level,
            Z_DEFLATED,
            15 + 16,
            8,
            Z_DEFAULT_STRATEGY,
            zlibVersion(),
            Int32(MemoryLayout<z_stream>.size)
        )
        guard status == Z_OK else { throw StorageError("zlib could not start compressing (\(status))") }
        defer { deflateEnd(&stream) }
        var output = [UInt8](repeating: 0, count: Int(deflateBound(&stream, UInt(bytes.count))) + 32)
        let result: Int32 = bytes.withUnsafeBufferPointer { input in
            output.withUnsafeMutableBufferPointer { out in
                stream.next_in = UnsafeMutablePointer(mutating: input.baseAddress)
                stream.avail_in = UInt32(input.count)
                stream.next_out = out.baseAddress
                stream.avail_out = UInt32(out.count)
                return deflate(&stream, Z_FINISH)
            }
        }
        guard result == Z_STREAM_END else { throw StorageError("zlib could not compress (\(result))") }
        output.removeSubrange(Int(stream.total_out)...)
        return output
    }

    /// The bytes of a gzip stream (several members allowed), for tests and tools.
    package static func decompress(_ bytes: [UInt8]) throws(StorageError) -> [UInt8] {
        var stream = z_stream()
        guard inflateInit2_(&stream, 15 + 32, zlibVersion(), Int32(MemoryLayout<z_stream>.size)) == Z_OK else {
            throw StorageError("zlib could not start decompressing")
        }
        defer { inflateEnd(&stream) }
        var output: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 64 * 1024)
        var status: Int32 = Z_OK
        bytes.withUnsafeBufferPointer { input in
            stream.next_in = UnsafeMutablePointer(mutating: input.baseAddress)
            stream.avail_in = UInt32(input.count)
            while true {
                let produced: Int = chunk.withUnsafeMutableBufferPointer { out in
                    stream.next_out = out.baseAddress
                    stream.avail_out = UInt32(out.count)
                    status = inflate(&stream, Z_NO_FLUSH)
                    return out.count - Int(stream.avail_out)
                }
                output += chunk[0..<produced]
                if status == Z_STREAM_END, stream.avail_in > 0 {
                    inflateReset(&stream)  // the next member
                    continue
                }
                if status != Z_OK { break }
            }
        }
        guard status == Z_STREAM_END else { throw StorageError("not a complete gzip stream (\(status))") }
        return output
    }
}
