import Foundation
import Training
import XCTest

/// The TCP rendezvous of launcher-started ranks: rank 0 serves NCCL's 128-byte id, every other rank gets it.
final class TCPRendezvousTests: XCTestCase {
    func testEveryRankGetsTheId() throws {
        let port = 29_500 + Int(getpid() % 500)
        let id = (0..<128).map { UInt8(truncatingIfNeeded: $0 &* 37 &+ 11) }
        let listener = try TCPRendezvous.listen(port: port)
        let served = expectation(description: "served")
        let server = Thread {
            do { try listener.serve(payload: id, clients: 3, timeout: 20) } catch { XCTFail("\(error)") }
            served.fulfill()
        }
        server.start()
        let results = UnsafeMutableBufferPointer<[UInt8]>.allocate(capacity: 3)
        results.initialize(repeating: [])
        defer { results.deallocate() }
        DispatchQueue.concurrentPerform(iterations: 3) { i in
            results[i] = (try? TCPRendezvous.fetch(host: "127.0.0.1", port: port, count: 128, timeout: 20)) ?? []
        }
        wait(for: [served], timeout: 30)
        for r in results { XCTAssertEqual(r, id) }
        // A port already taken is an error at once, naming it.
        XCTAssertThrowsError(try TCPRendezvous.listen(port: port).serve(payload: id, clients: 1, timeout: 0.1))
    }

    func testNoServerIsATimeoutNamingTheAddress() {
        XCTAssertThrowsError(try TCPRendezvous.fetch(host: "127.0.0.1", port: 1, count: 128, timeout: 0.5)) { error in
            XCTAssertTrue("\(error)".contains("127.0.0.1:1"), "\(error)")
        }
    }
}
