import Tensors

/// Named tensors of a model, whatever the file format: a safetensors folder, or a GGUF file seen through Hugging
/// Face names.
public protocol TensorSource: AnyObject {
    /// Where the tensors come from (a folder or file path), for error messages.
    var location: String { get }
    /// Every tensor name.
    var names: [String] { get }
    /// The tensor `name`.
    func tensor(named name: String) throws -> Tensor
    /// True when there is a tensor called `name`.
    func contains(_ name: String) -> Bool
    /// Drops the mapped files' pages from resident memory (tensors read earlier stay valid; they are read again
    /// from the file when touched).
    func evictPages()
}

extension SafeTensorsArchive: TensorSource {
    public var location: String { directory }
}
