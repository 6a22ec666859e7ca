import ModelFiles

/// One training example: token ids and the labels to predict (−100 where no loss is taken).
public struct TokenizedExample: Equatable, Sendable {
    public var inputIds: [Int]
    public var labels: [Int]
    public init(inputIds: [Int], labels: [Int]) { self.inputIds = inputIds; self.labels = labels }
}

/// Why a data file could not be read.
public struct DatasetError: Error, CustomStringConvertible {
    public let description: String
}

/// Batching of tokenized examples.
public enum TokenizedDataset {
    /// Right-pads a batch to its longest sequence (pad id `padId`, label −100): causal attention means real tokens
    /// never see the padding, and padded positions take no loss.
    public static func collate(_ batch: [TokenizedExample], padId: Int = 0) -> (ids: [Int], labels: [Int], tokens: Int) {
        let t = batch.map(\.inputIds.count).max()!
        var ids: [Int] = [], labels: [Int] = []
        for e in batch {
            ids += e.inputIds + [Int](repeating: padId, count: t - e.inputIds.count)
            labels += e.labels + [Int](repeating: -100, count: t - e.labels.count)
        }
        return (ids, labels, t)
    }
}
