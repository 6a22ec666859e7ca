import Foundation

/// The ids each word has encoded to, so a word seen again skips BPE. Natural text repeats its words constantly, so
/// nearly every lookup hits after the first few thousand words. Words are keyed by their exact bytes (`TokenKey`):
/// "K" and the Kelvin sign U+212A are equal as `String`s but are different words with different tokens.
///
/// Shared by all calls on one tokenizer, so it is guarded by a lock (calls may come from several threads), and
/// bounded: when it grows past `capacity` words it starts over rather than grow without limit.
final class WordCache: @unchecked Sendable {
    private var entries: [TokenKey: [Int32]] = [:]
    private let lock = NSLock()
    private let capacity: Int

    /// Words longer than this many bytes are not kept: they rarely repeat, and SentencePiece-style input arrives
    /// as whole stretches of text.
    static let longestWord = 64

    init(capacity: Int = 100_000) { self.capacity = capacity }

    /// The ids stored for `word`, if any.
    func ids(for word: TokenKey) -> [Int32]? {
        lock.lock()
        defer { lock.unlock() }
        return entries[word]
    }

    /// Stores the ids of `word`.
    func store(_ ids: [Int32], for word: TokenKey) {
        lock.lock()
        defer { lock.unlock() }
        if entries.count >= capacity { entries.removeAll(keepingCapacity: true) }
        entries[word] = ids
    }
}
