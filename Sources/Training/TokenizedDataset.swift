import ModelFiles

/// One training example: token ids and the labels to predict (−100 where no loss is taken).
public struct TokenizedExample: Equatable, Sendable {
    public var inputIds: [Int]
    public var labels: [Int]
    /// Each token's position in its own document, for a packed example (nil: 0, 1, 2, …): attention stays within a
    /// document (a token sees the earlier tokens back to its document's start) and RoPE restarts with it.
    public var positions: [Int]?
    public init(inputIds: [Int], labels: [Int], positions: [Int]? = nil) {
        self.inputIds = inputIds; self.labels = labels; self.positions = positions
    }
}

/// Why a data file could not be read.
public struct DatasetError: Error, CustomStringConvertible {
    /// The data file.
    public let path: String
    /// The line of a JSONL file (or the record of a JSON array), when the error is in one.
    public let line: Int?
    /// What is wrong, in words.
    public let reason: String
    public init(path: String, line: Int? = nil, _ reason: String) {
        self.path = path; self.line = line; self.reason = reason
    }
    public var description: String { line.map { "\(path):\($0): \(reason)" } ?? "\(path): \(reason)" }
}

/// Batching of tokenized examples.
public enum TokenizedDataset {
    /// Right-pads a batch to its longest sequence (pad id `padId`, label −100): causal attention means real tokens
    /// never see the padding, and padded positions take no loss. Returns the rows (the batch size) and the tokens a
    /// row. `paddingFree` (TRL's padding_free) instead puts the examples one after the other in a single row, each
    /// a document of its own (its positions from 0, attention inside it, its first token no target of the one
    /// before): the same loss and gradients as the padded batch, with no padding computed. Examples packed already
    /// (with positions) are padded, since their rows are full.
    public static func collate(_ batch: [TokenizedExample], padId: Int = 0, paddingFree: Bool = false)
        -> (ids: [Int], labels: [Int], rows: Int, tokens: Int, positions: [Int]?) {
        let packed = batch.contains { $0.positions != nil }
        if paddingFree && !packed {
            var ids: [Int] = [], labels: [Int] = [], positions: [Int] = []
            for e in batch {
                ids += e.inputIds
                // A label at a document's first token would be the previous document's last target: never read in
                // a padded row, ignored here.
                labels += [-100] + e.labels.dropFirst()
                positions += 0..<e.inputIds.count
            }
            return (ids, labels, 1, ids.count, positions)
        }
        let t = batch.map(\.inputIds.count).max()!
        var ids: [Int] = [], labels: [Int] = [], positions: [Int] = []
        for e in batch {
            ids += e.inputIds + [Int](repeating: padId, count: t - e.inputIds.count)
            labels += e.labels + [Int](repeating: -100, count: t - e.labels.count)
            if packed {
                // Padding continues the last document's positions (it is attended by nothing real).
                let own = e.positions ?? Array(0..<e.inputIds.count)
                positions += own + (0..<(t - own.count)).map { (own.last ?? -1) + 1 + $0 }
            }
        }
        return (ids, labels, batch.count, t, packed ? positions : nil)
    }
}
