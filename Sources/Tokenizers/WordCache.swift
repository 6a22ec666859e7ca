import Foundation

/// The ids each word has encoded to, so a word seen again skips BPE. Natural text repeats its words constantly, so
/// nearly every lookup hits after the first few thousand words.
///
/// Shared by all calls on one tokenizer, so it is guarded by a lock (calls may come from several threads), and
/// bounded: when it grows past `capacity` words it starts over rather than grow without limit.
final class WordCache: @unchecked Sendable {
    private var entries: [String: [Int32]] = [:]
    private let lock = NSLock()
    private let capacity: Int

    /// Words longer than this many bytes are not kept: they rarely repeat, and SentencePiece-style input arrives
    /// as whole stretches of text.
    static let longestWord = 64

    init(capacity: Int = 100_000) { self.capacity = capacity }

    /// The ids stored for `word`, if any.
    func ids(for word: String) -> [Int32]? {
        lock.lock()
        defer { lock.unlock() }
        return entries[word]
    }

    /// Stores the ids of `word`.
    func store(_ ids: [Int32], for word: String) {
        lock.lock()
        defer { lock.unlock() }
        if entries.count >= capacity { entries.removeAll(keepingCapacity: true) }
        entries[word] = ids
    }
}
