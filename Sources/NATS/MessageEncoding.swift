import CNATS

#if canImport(Glibc)
import Glibc
#endif

/// Builds the nats.c messages this module publishes, and frees every message it holds.
///
/// nats.c's public API sets headers one by one into a hash map (each name and value copied),
/// encodes that map again when the message is sent, and frees a message on its collector
/// thread (one thread wake-up per message). On the hot path (every output record, every
/// ingress record) that was 10-15 % of a worker's CPU. Here the header block
/// (`NATS/1.0\r\n` + `Name: value\r\n`… + `\r\n`) is written once, straight in front of the
/// payload, and handed to `natsMsg_create`, which is how nats.c builds a received message;
/// nats.c then sends that block as it is. Messages are freed with `natsMsg_free` on the
/// calling thread. Both functions are exported by libnats (3.4.1 here) but not declared in
/// `nats.h`, so they are looked up at run time: ``preEncodedHeaders`` holds only when both are
/// found and a message built this way reads back correctly through the public API; otherwise
/// everything goes through the public API.
enum MessageEncoding {
    /// `true` when libnats builds messages from an encoded header block as expected, and lays
    /// a message out as `subject\0 reply\0 headers\0 payload` (which ``headerValues(_:names:)``
    /// reads without making nats.c build its header map).
    static let preEncodedHeaders: Bool = selfCheck()

    static let preamble: [UInt8] = Array("NATS/1.0\r\n".utf8)

    /// `natsStatus natsMsg_create(natsMsg **, const char *subject, int subjLen,
    /// const char *reply, int replyLen, const char *buf, int bufLen, int hdrLen)`
    private typealias CreateFunction =
        @convention(c) (
            UnsafeMutablePointer<OpaquePointer?>?, UnsafePointer<CChar>?, Int32, UnsafePointer<CChar>?, Int32,
            UnsafePointer<CChar>?, Int32, Int32
        ) -> natsStatus
    /// `void natsMsg_free(void *)`
    private typealias FreeFunction = @convention(c) (UnsafeMutableRawPointer?) -> Void

    /// The two libnats functions, when this libnats exports them.
    ///
    /// `@unchecked Sendable`: two C function pointers, set once and never changed; the
    /// functions themselves are thread safe (they touch only the message they are given).
    private struct Internals: @unchecked Sendable {
        let create: CreateFunction
        let free: FreeFunction
    }

    private static let internals: Internals? = {
        // The running program's global scope, which holds the libnats it was linked with.
        guard let program = dlopen(nil, RTLD_NOW),
            let create = dlsym(program, "natsMsg_create"),
            let free = dlsym(program, "natsMsg_free")
        else { return nil }
        return Internals(create: unsafeBitCast(create, to: CreateFunction.self), free: unsafeBitCast(free, to: FreeFunction.self))
    }()

    /// Creates a message to publish; free it with ``release(_:)`` after publishing.
    ///
    /// - Parameter reply: the reply subject, `nil` for none.
    /// - Throws: ``NATSError/Code-swift.struct/invalidArgument`` naming the header when a
    ///   header name is empty or holds a control character, space or colon, or a value holds
    ///   a line break (either would corrupt the protocol line), and nats.c's errors.
    static func create(
        subject: String,
        reply: UnsafeBufferPointer<CChar>?,
        headers: [(String, String)],
        payload: UnsafeRawBufferPointer
    ) throws(NATSError) -> OpaquePointer {
        var headerLength = 0
        for (name, value) in headers {
            try validate(name: name, value: value)
            headerLength += name.utf8.count + 2 + value.utf8.count + 2
        }
        if !headers.isEmpty { headerLength += preamble.count + 2 }
        guard preEncodedHeaders, let internals else {
            return try createWithPublicAPI(subject: subject, reply: reply, headers: headers, payload: payload)
        }
        let total = headerLength + payload.count
        var msg: OpaquePointer?
        let status = withUnsafeTemporaryAllocation(of: UInt8.self, capacity: max(1, total)) { buffer -> natsStatus in
            var position = 0
            func append(_ bytes: UnsafeRawBufferPointer) {
                guard let source = bytes.baseAddress, bytes.count > 0 else { return }
                UnsafeMutableRawPointer(buffer.baseAddress! + position).copyMemory(from: source, byteCount: bytes.count)
                position += bytes.count
            }
            func append(_ string: String) {
                var string = string
                string.withUTF8 { append(UnsafeRawBufferPointer($0)) }
            }
            func appendCRLF() {
                buffer[position] = 13
                buffer[position + 1] = 10
                position += 2
            }
            if !headers.isEmpty {
                preamble.withUnsafeBytes { append($0) }
                for (name, value) in headers {
                    append(name)
                    buffer[position] = UInt8(ascii: ":")
                    buffer[position + 1] = UInt8(ascii: " ")
                    position += 2
                    append(value)
                    appendCRLF()
                }
                appendCRLF()
            }
            append(payload)
            return buffer.baseAddress!.withMemoryRebound(to: CChar.self, capacity: max(1, total)) { bytes in
                var subject = subject
                return subject.withUTF8 { subjectBytes in
                    subjectBytes.withMemoryRebound(to: CChar.self) { subjectChars in
                        internals.create(
                            &msg,
                            subjectChars.baseAddress,
                            Int32(subjectChars.count),
                            reply?.baseAddress,
                            Int32(reply?.count ?? 0),
                            bytes,
                            Int32(total),
                            Int32(headerLength)
                        )
                    }
                }
            }
        }
        guard status == NATS_OK, let msg else { throw NATSError.from(status: status, context: "creating message") }
        return msg
    }

    /// Frees a message created by ``create(subject:reply:headers:payload:)`` or received in a
    /// subscription callback (after the callback is done with it).
    static func release(_ msg: OpaquePointer) {
        if preEncodedHeaders, let internals {
            internals.free(UnsafeMutableRawPointer(msg))
        } else {
            natsMsg_Destroy(msg)
        }
    }

    /// The values of `names` in a received message's headers (`nil` where absent; the first
    /// value of a repeated header; surrounding spaces trimmed), as `natsMsgHeader_Get` gives
    /// them. Reads the header block in place when ``preEncodedHeaders`` holds and the block
    /// looks as expected, so nats.c never builds (and frees) a header map for the message.
    static func headerValues(_ msg: OpaquePointer, names: [String]) -> [String?] {
        if preEncodedHeaders, let block = headerBlock(msg) {
            return parse(block, names: names)
        }
        return names.map { name in
            var value: UnsafePointer<CChar>?
            guard natsMsgHeader_Get(msg, name, &value) == NATS_OK, let value else { return nil }
            return String(cString: value)
        }
    }

    /// The header block between the reply's terminator and the payload, `[]` for a message
    /// without headers, `nil` when the bytes there do not look like a header block.
    private static func headerBlock(_ msg: OpaquePointer) -> UnsafeBufferPointer<UInt8>? {
        guard let data = natsMsg_GetData(msg) else { return nil }
        let before = natsMsg_GetReply(msg) ?? natsMsg_GetSubject(msg)
        guard let before else { return nil }
        let start = UnsafeRawPointer(before) + strlen(before) + 1
        let end = UnsafeRawPointer(data)
        if start == end { return UnsafeBufferPointer<UInt8>(start: nil, count: 0) }
        // `headers\0` sits between them: at least "NATS/1.0\r\n\r\n" and its terminator.
        let length = end - start - 1
        guard length >= 12, length <= 1 << 20 else { return nil }
        let block = UnsafeBufferPointer(start: start.assumingMemoryBound(to: UInt8.self), count: length)
        guard end.load(fromByteOffset: -1, as: UInt8.self) == 0,
            block.starts(with: "NATS/1.0".utf8),
            block[length - 4] == 13, block[length - 3] == 10, block[length - 2] == 13, block[length - 1] == 10
        else { return nil }
        return block
    }

    /// Parses `Name: value` lines after the status line.
    static func parse(_ block: UnsafeBufferPointer<UInt8>, names: [String]) -> [String?] {
        var values = [String?](repeating: nil, count: names.count)
        guard block.count > 0 else { return values }
        var index = 0
        // Skip the status line.
        while index + 1 < block.count, !(block[index] == 13 && block[index + 1] == 10) { index += 1 }
        index += 2
        var found = 0
        while index < block.count, found < names.count {
            var lineEnd = index
            while lineEnd + 1 < block.count, !(block[lineEnd] == 13 && block[lineEnd + 1] == 10) { lineEnd += 1 }
            if lineEnd + 1 >= block.count { break }
            if let colon = block[index..<lineEnd].firstIndex(of: UInt8(ascii: ":")) {
                let key = UnsafeBufferPointer(rebasing: block[index..<colon])
                for (i, name) in names.enumerated() where values[i] == nil {
                    var name = name
                    let matches = name.withUTF8 { $0.elementsEqual(key) }
                    if matches {
                        var from = colon + 1
                        var to = lineEnd
                        while from < to, block[from] == 32 || block[from] == 9 { from += 1 }
                        while to > from, block[to - 1] == 32 || block[to - 1] == 9 { to -= 1 }
                        values[i] = String(decoding: UnsafeBufferPointer(rebasing: block[from..<to]), as: UTF8.self)
                        found += 1
                        break
                    }
                }
            }
            index = lineEnd + 2
        }
        return values
    }

    static func validate(name: String, value: String) throws(NATSError) {
        if name.isEmpty {
            throw NATSError(code: .invalidArgument, message: "a header name is empty")
        }
        // Over the contiguous UTF-8 bytes: iterating `String.UTF8View` cost more than the copy.
        var name = name
        let nameOK = name.withUTF8 { bytes in
            !bytes.contains { $0 <= 0x20 || $0 == 0x7F || $0 == UInt8(ascii: ":") }
        }
        if !nameOK {
            throw NATSError(code: .invalidArgument, message: "header name '\(name)' holds a space, colon or control character")
        }
        var value = value
        let valueOK = value.withUTF8 { bytes in
            !bytes.contains { $0 == 13 || $0 == 10 }
        }
        if !valueOK {
            throw NATSError(code: .invalidArgument, message: "the value of header '\(name)' holds a line break")
        }
    }

    private static func createWithPublicAPI(
        subject: String,
        reply: UnsafeBufferPointer<CChar>?,
        headers: [(String, String)],
        payload: UnsafeRawBufferPointer
    ) throws(NATSError) -> OpaquePointer {
        var msg: OpaquePointer?
        var status = natsMsg_Create(
            &msg,
            subject,
            reply?.baseAddress,
            payload.baseAddress?.assumingMemoryBound(to: CChar.self),
            Int32(payload.count)
        )
        guard status == NATS_OK, let msg else { throw NATSError.from(status: status, context: "creating message") }
        for (name, value) in headers {
            status = natsMsgHeader_Set(msg, name, value)
            if status != NATS_OK {
                natsMsg_Destroy(msg)
                throw NATSError.from(status: status, context: "setting header \(name)")
            }
        }
        return msg
    }

    /// Builds a message the fast way and reads it back through the public API.
    private static func selfCheck() -> Bool {
        guard let internals else { return false }
        // natsMsg_create, unlike the public functions, does not open the library itself.
        guard nats_Open(-1) == NATS_OK else { return false }
        let block = Array("NATS/1.0\r\nAut-Check: one\r\nAut-Other: two\r\n\r\n".utf8)
        let bytes = block + Array("{}".utf8)
        var msg: OpaquePointer?
        let status = bytes.withUnsafeBufferPointer { buffer in
            buffer.withMemoryRebound(to: CChar.self) { chars in
                internals.create(&msg, "check", 5, "reply", 5, chars.baseAddress, Int32(chars.count), Int32(block.count))
            }
        }
        guard status == NATS_OK, let msg else { return false }
        // The public destroy, not natsMsg_free: nothing is assumed before the check passed.
        defer { natsMsg_Destroy(msg) }
        func header(_ name: String) -> String? {
            var value: UnsafePointer<CChar>?
            guard natsMsgHeader_Get(msg, name, &value) == NATS_OK, let value else { return nil }
            return String(cString: value)
        }
        // The layout the in-place header read relies on, with and without headers.
        guard let located = headerBlock(msg), Array(located) == block,
            parse(located, names: ["Aut-Other", "Missing", "Aut-Check"]) == ["two", nil, "one"],
            layoutWithoutHeaders(internals)
        else { return false }
        guard natsMsg_GetDataLength(msg) == 2, let data = natsMsg_GetData(msg),
            data[0] == CChar(UInt8(ascii: "{")), data[1] == CChar(UInt8(ascii: "}")),
            String(cString: natsMsg_GetSubject(msg)) == "check",
            natsMsg_GetReply(msg).map({ String(cString: $0) }) == "reply",
            header("Aut-Check") == "one", header("Aut-Other") == "two"
        else { return false }
        return true
    }

    private static func layoutWithoutHeaders(_ internals: Internals) -> Bool {
        let bytes = Array("{}".utf8)
        var msg: OpaquePointer?
        let status = bytes.withUnsafeBufferPointer { buffer in
            buffer.withMemoryRebound(to: CChar.self) { chars in
                internals.create(&msg, "check", 5, "reply", 5, chars.baseAddress, Int32(chars.count), 0)
            }
        }
        guard status == NATS_OK, let msg else { return false }
        defer { natsMsg_Destroy(msg) }
        return headerBlock(msg)?.count == 0
    }
}
