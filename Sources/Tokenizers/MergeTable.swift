/// BPE merge rules keyed by the pair of token ids they join, and the merging itself.
///
/// A word starts as a sequence of token ids (one per byte, or per character); the merge with the lowest rank among
/// adjacent pairs is applied, the leftmost one when several share that rank, and this repeats until no adjacent pair
/// has a rule. That is Hugging Face's BPE; with ranks taken from SentencePiece scores (several pairs may share a
/// rank) it is also llama.cpp's SentencePiece tokenizer.
struct MergeTable {
    /// What one rule does: its priority (lower merges first) and the id of the joined token.
    struct Merge: Equatable {
        var rank: Int32
        var result: Int32
    }

    private var rules: [UInt64: Merge] = [:]

    /// Words longer than this merge through the heap, shorter ones by scanning (less bookkeeping for the short
    /// words that are nearly all of a byte-level tokenizer's input).
    static let heapThreshold = 48

    /// The number of rules.
    var count: Int { rules.count }

    /// Adds a rule unless the pair already has one: files list merges by priority, so the first one seen stands.
    mutating func add(left: Int32, right: Int32, rank: Int32, result: Int32) {
        let key = Self.key(left, right)
        if rules[key] == nil { rules[key] = Merge(rank: rank, result: result) }
    }

    /// The rule joining `left` and `right`, if any.
    @inline(__always)
    func merge(_ left: Int32, _ right: Int32) -> Merge? { rules[Self.key(left, right)] }

    /// Merges `symbols` in place until no rule applies.
    func apply(to symbols: inout [Int32]) {
        if symbols.count < 2 { return }
        if symbols.count > Self.heapThreshold { applyWithHeap(to: &symbols) } else { applyByScanning(to: &symbols) }
    }

    /// The reference: keep the rank of every adjacent pair, and repeatedly apply the leftmost lowest one. Quadratic
    /// in the word length.
    func applyByScanning(to symbols: inout [Int32]) {
        guard symbols.count >= 2 else { return }
        // ranks[i] is the rank of the pair (symbols[i], symbols[i + 1]); Int32.max when there is no rule.
        var ranks = (0..<(symbols.count - 1)).map { merge(symbols[$0], symbols[$0 + 1])?.rank ?? Int32.max }
        while true {
            var best = -1
            var bestRank = Int32.max
            for (index, rank) in ranks.enumerated() where rank < bestRank {
                best = index
                bestRank = rank
            }
            guard best >= 0, let rule = merge(symbols[best], symbols[best + 1]) else { return }
            symbols[best] = rule.result
            symbols.remove(at: best + 1)
            ranks.remove(at: best)
            if best < ranks.count { ranks[best] = merge(symbols[best], symbols[best + 1])?.rank ?? Int32.max }
            if best > 0 { ranks[best - 1] = merge(symbols[best - 1], symbols[best])?.rank ?? Int32.max }
        }
    }

    /// The same merges in O(n log n), for long words (a SentencePiece-style input is one word per stretch of text):
    /// symbols form a linked list over their original positions and candidate pairs wait in a min-heap keyed by
    /// (rank, position of the left symbol), so the heap's order is exactly "lowest rank, then leftmost". Entries
    /// made stale by an earlier merge are dropped when they surface.
    func applyWithHeap(to symbols: inout [Int32]) {
        let count = symbols.count
        guard count >= 2 else { return }
        var ids = symbols  // -1 once merged into its left neighbour
        var previous = (0..<count).map { Int32($0) - 1 }
        var next = (0..<count).map { $0 + 1 < count ? Int32($0 + 1) : -1 }
        var heap = MinHeap()
        heap.reserve(count)
        for index in 0..<(count - 1) {
            if let rule = merge(ids[index], ids[index + 1]) { heap.push(Self.entry(rank: rule.rank, position: index)) }
        }
        while let top = heap.pop() {
            let rank = Int32(truncatingIfNeeded: top >> 32)
            let position = Int(top & 0xFFFF_FFFF)
            let right = Int(next[position])
            guard ids[position] >= 0, right >= 0, let rule = merge(ids[position], ids[right]), rule.rank == rank
            else { continue }
            ids[position] = rule.result
            ids[right] = -1
            let afterRight = next[right]
            next[position] = afterRight
            if afterRight >= 0 { previous[Int(afterRight)] = Int32(position) }
            let before = Int(previous[position])
            if before >= 0, let left = merge(ids[before], ids[position]) {
                heap.push(Self.entry(rank: left.rank, position: before))
            }
            if afterRight >= 0, let following = merge(ids[position], ids[Int(afterRight)]) {
                heap.push(Self.entry(rank: following.rank, position: position))
            }
        }
        // The first symbol is never merged away (only right-hand symbols are), so the list starts at 0.
        symbols.removeAll(keepingCapacity: true)
        var index = 0
        while index >= 0 {
            symbols.append(ids[index])
            index = Int(next[index])
        }
    }

    @inline(__always)
    private static func key(_ left: Int32, _ right: Int32) -> UInt64 {
        UInt64(UInt32(bitPattern: left)) << 32 | UInt64(UInt32(bitPattern: right))
    }

    @inline(__always)
    private static func entry(rank: Int32, position: Int) -> UInt64 {
        UInt64(UInt32(bitPattern: rank)) << 32 | UInt64(position)
    }
}

/// A binary min-heap of packed (rank, position) keys.
private struct MinHeap {
    private var items: [UInt64] = []

    mutating func reserve(_ capacity: Int) { items.reserveCapacity(capacity) }

    mutating func push(_ item: UInt64) {
        items.append(item)
        var child = items.count - 1
        while child > 0 {
            let parent = (child - 1) / 2
            if items[parent] <= items[child] { break }
            items.swapAt(parent, child)
            child = parent
        }
    }

    mutating func pop() -> UInt64? {
        guard let top = items.first else { return nil }
        let last = items.removeLast()
        if !items.isEmpty {
            items[0] = last
            var parent = 0
            while true {
                let left = 2 * parent + 1
                if left >= items.count { break }
                var smallest = left
                if left + 1 < items.count && items[left + 1] < items[left] { smallest = left + 1 }
                if items[parent] <= items[smallest] { break }
                items.swapAt(parent, smallest)
                parent = smallest
            }
        }
        return top
    }
}
