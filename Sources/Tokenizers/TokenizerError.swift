/// Why a tokenizer could not be built: the file (or vocabulary) it came from and what in it is wrong, in words a
/// user can act on.
public struct TokenizerError: Error, CustomStringConvertible, Equatable {
    /// The file the tokenizer was read from, or a name for the vocabulary when there is no file (a GGUF's
    /// `tokenizer.ggml.*` metadata).
    public let source: String
    /// What is wrong, including what was expected and what was found.
    public let message: String

    /// An error about `source`.
    public init(source: String, message: String) {
        self.source = source
        self.message = message
    }

    /// The source, then the problem.
    public var description: String { "\(source): \(message)" }
}
