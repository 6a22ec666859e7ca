/// What is wrong with a model file, named precisely enough to act on: the file, the tensor, what was expected and
/// what was found.
public enum ModelFileError: Error, CustomStringConvertible, Equatable {
    case cannotOpen(path: String, reason: String)
    case truncated(path: String, detail: String)
    case headerTooLarge(path: String, claimed: UInt64, available: Int)
    case invalidHeader(path: String, detail: String)
    case unknownDType(path: String, tensor: String, dtype: String)
    case offsetsOutOfRange(path: String, tensor: String, start: Int, end: Int, dataSize: Int)
    case sizeMismatch(path: String, tensor: String, expectedBytes: Int, foundBytes: Int)
    case overlappingTensors(path: String, first: String, second: String)
    case missingTensor(name: String, location: String)
    case invalidConfig(path: String, detail: String)
    case invalidCheckpoint(path: String, tensor: String, detail: String)
    case writeFailed(path: String, reason: String)

    public var description: String {
        switch self {
        case .cannotOpen(path: "", _):
            // It read ": cannot open: No such file or directory", naming nothing (tokenize --input "", info "").
            return "\"\": cannot open: an empty path names no file or folder"
        case let .cannotOpen(path, reason):
            return "\(path): cannot open: \(reason)"
        case let .truncated(path, detail):
            return "\(path): file is truncated: \(detail)"
        case let .headerTooLarge(path, claimed, available):
            return "\(path): header claims \(claimed) bytes but only \(available) bytes follow the length field"
        case let .invalidHeader(path, detail):
            return "\(path): invalid header: \(detail)"
        case let .unknownDType(path, tensor, dtype):
            return "\(path): tensor '\(tensor)' has an unknown or unsupported type '\(dtype)'"
        case let .offsetsOutOfRange(path, tensor, start, end, dataSize):
            return "\(path): tensor '\(tensor)' has data_offsets [\(start), \(end)] outside the \(dataSize)-byte data section"
        case let .sizeMismatch(path, tensor, expected, found):
            return "\(path): tensor '\(tensor)' needs \(expected) bytes for its shape and dtype but its offsets span \(found)"
        case let .overlappingTensors(path, first, second):
            return "\(path): tensors '\(first)' and '\(second)' overlap in the data section"
        case let .missingTensor(name, location):
            return "\(location): no tensor named '\(name)'"
        case let .invalidConfig(path, detail):
            return "\(path): \(detail)"
        case let .invalidCheckpoint(path, tensor, detail) where tensor.hasSuffix(".json"):
            // A file of the checkpoint folder (trainer_state.json, adapter_config.json), named as the file it is
            // (it was called "tensor 'trainer_state.json'").
            return "\(path)/\(tensor): \(detail)"
        case let .invalidCheckpoint(path, tensor, detail):
            return "\(path): tensor '\(tensor)': \(detail)"
        case let .writeFailed(path, reason):
            return "\(path): cannot write: \(reason)"
        }
    }
}

extension ModelFileError {
    /// `error`'s description without a leading "`path`: ", for an error that a message naming `path` wraps (the
    /// file's reader names it already: it was said twice).
    public static func detail(of error: Error, droppingPath path: String) -> String {
        let text = "\(error)", prefix = path + ": "
        return text.hasPrefix(prefix) ? String(text.dropFirst(prefix.count)) : text
    }
}
