import Dispatch

/// Runs `body` over `0..<count` in contiguous chunks of at least `grain` items, spread over the cores.
@inlinable
public func parallelChunks(count: Int, grain: Int, _ body: (Range<Int>) -> Void) {
    let chunks = max(1, min((count + grain - 1) / max(grain, 1), 256))
    if chunks == 1 { body(0..<count); return }
    let per = (count + chunks - 1) / chunks
    DispatchQueue.concurrentPerform(iterations: chunks) { c in
        let start = c * per
        let end = min(count, start + per)
        if start < end { body(start..<end) }
    }
}
