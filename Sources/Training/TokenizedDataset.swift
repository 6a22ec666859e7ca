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

/// Pre-tokenized JSONL data: one JSON object a line with `input_ids` (labels = input_ids) and optionally `labels`
/// (same length, −100 masked). Text formats need a tokenizer and come with the dataset pipeline.
public enum TokenizedDataset {
    /// Reads `path`; ids must lie in [0, vocabSize); sequences are cut to `maxLength` if given.
    public static func load(path: String, vocabSize: Int, maxLength: Int? = nil) throws -> [TokenizedExample] {
        let bytes: [UInt8]
        do { bytes = try FileSystem.readBytes(path) } catch { throw DatasetError(description: "\(error)") }
        var examples: [TokenizedExample] = []
        var lineNumber = 0
        for line in bytes.split(separator: 0x0A, omittingEmptySubsequences: false) {
            lineNumber += 1
            if line.allSatisfy({ $0 == 0x20 || $0 == 0x0D || $0 == 0x09 }) { continue }
            func fail(_ why: String) -> DatasetError { DatasetError(description: "\(path):\(lineNumber): \(why)") }
            let json: JSONValue
            do { json = try JSONValue(parsing: line) } catch { throw fail("\(error)") }
            guard let idsJSON = json["input_ids"]?.arrayValue else {
                throw fail("no \"input_ids\" array (text records need a tokenizer, not available yet)")
            }
            let ids = try idsJSON.map { v -> Int in
                guard let i = v.intValue, i >= 0, i < vocabSize else {
                    throw fail("token id \(v.compactText()) is not in the vocabulary [0, \(vocabSize))")
                }
                return i
            }
            var labels = ids
            if let labelJSON = json["labels"]?.arrayValue {
                guard labelJSON.count == ids.count else { throw fail("\"labels\" has \(labelJSON.count) entries, \"input_ids\" \(ids.count)") }
                labels = try labelJSON.map { v -> Int in
                    guard let i = v.intValue, i == -100 || (i >= 0 && i < vocabSize) else {
                        throw fail("label \(v.compactText()) is neither -100 nor a token id")
                    }
                    return i
                }
            }
            guard ids.count >= 2 else { throw fail("a sequence needs at least 2 tokens to predict one") }
            let keep = min(ids.count, maxLength ?? ids.count)
            examples.append(TokenizedExample(inputIds: Array(ids.prefix(keep)), labels: Array(labels.prefix(keep))))
        }
        guard !examples.isEmpty else { throw DatasetError(description: "\(path): no examples") }
        return examples
    }

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
