import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// How the ranks of a data-parallel job that cluster launchers start (torchrun, Slurm, Kubernetes operators: each
/// process gets `MASTER_ADDR`, `MASTER_PORT`, `RANK`, `WORLD_SIZE`, `LOCAL_RANK`) agree on NCCL's unique id without
/// a shared file system: rank 0 listens on the port and hands the id to each of the others as they connect.
public enum TCPRendezvous {
    /// Why the exchange failed.
    public struct Failure: Error, CustomStringConvertible {
        public let description: String
    }

    /// Rank 0's listening socket, bound at once (so a port in use is an error here, before NCCL is joined).
    public final class Listener: @unchecked Sendable {
        let fd: Int32
        public let port: Int
        init(fd: Int32, port: Int) { self.fd = fd; self.port = port }
        deinit { close(fd) }

        /// Sends `payload` to `clients` connections, one after another; gives up after `timeout` seconds.
        public func serve(payload: [UInt8], clients: Int, timeout: TimeInterval = 300) throws {
            let deadline = Date().addingTimeInterval(timeout)
            var served = 0
            while served < clients {
                var poll = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
                let left = Int32(max(0, deadline.timeIntervalSinceNow) * 1000)
                guard left > 0, Glibc.poll(&poll, 1, left) > 0 else {
                    throw Failure(description: "rendezvous: \(served) of \(clients) ranks connected to port \(port) "
                                  + "within \(Int(timeout)) s")
                }
                let client = accept(fd, nil, nil)
                guard client >= 0 else { continue }
                defer { close(client) }
                var sent = 0
                while sent < payload.count {
                    let n = payload.withUnsafeBytes {
                        send(client, $0.baseAddress! + sent, payload.count - sent, Int32(MSG_NOSIGNAL))
                    }
                    guard n > 0 else { break }
                    sent += n
                }
                if sent == payload.count { served += 1 }
            }
        }
    }

    /// Rank 0: a socket listening on `port` on every interface.
    public static func listen(port: Int, backlog: Int = 64) throws -> Listener {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw Failure(description: "rendezvous: socket(): \(String(cString: strerror(errno)))") }
        var yes: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &yes, socklen_t(MemoryLayout<Int32>.size))
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr = in_addr(s_addr: INADDR_ANY)
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        guard bound == 0, Glibc.listen(fd, Int32(backlog)) == 0 else {
            let why = String(cString: strerror(errno))
            close(fd)
            throw Failure(description: "rendezvous: cannot listen on port \(port): \(why)")
        }
        return Listener(fd: fd, port: port)
    }

    /// The other ranks: connects to `host`:`port` (retrying until rank 0 listens) and reads `count` bytes.
    public static func fetch(host: String, port: Int, count: Int, timeout: TimeInterval = 300) throws -> [UInt8] {
        let deadline = Date().addingTimeInterval(timeout)
        var lastError = "no answer"
        while Date() < deadline {
            var hints = addrinfo()
            hints.ai_family = AF_INET
            hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
            var list: UnsafeMutablePointer<addrinfo>? = nil
            if getaddrinfo(host, String(port), &hints, &list) == 0, let info = list {
                defer { freeaddrinfo(list) }
                let fd = socket(info.pointee.ai_family, info.pointee.ai_socktype, info.pointee.ai_protocol)
                if fd >= 0 {
                    defer { close(fd) }
                    if connect(fd, info.pointee.ai_addr, info.pointee.ai_addrlen) == 0 {
                        var out = [UInt8](repeating: 0, count: count)
                        var got = 0
                        while got < count {
                            let n = out.withUnsafeMutableBytes { recv(fd, $0.baseAddress! + got, count - got, 0) }
                            guard n > 0 else { break }
                            got += n
                        }
                        if got == count { return out }
                        lastError = "the connection closed after \(got) of \(count) bytes"
                    } else {
                        lastError = String(cString: strerror(errno))
                    }
                }
            } else {
                lastError = "cannot resolve \(host)"
            }
            usleep(200_000)
        }
        throw Failure(description: "rendezvous: no id from \(host):\(port) within \(Int(timeout)) s (\(lastError))")
    }
}
