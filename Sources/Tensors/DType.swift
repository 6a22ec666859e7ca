/// Element types a tensor can hold, named as safetensors names them.
public enum DType: String, Sendable, CaseIterable {
    case f32 = "F32"
    case f16 = "F16"
    case bf16 = "BF16"
    case u8 = "U8"
    case i32 = "I32"
    case i64 = "I64"

    /// Bytes per element.
    public var byteSize: Int {
        switch self {
        case .u8: return 1
        case .f16, .bf16: return 2
        case .f32, .i32: return 4
        case .i64: return 8
        }
    }

    /// True for the floating-point types.
    public var isFloatingPoint: Bool { self == .f32 || self == .f16 || self == .bf16 }

    /// The name torch gives this type (`bfloat16`, `float32`, ...), as bitsandbytes and transformers write it in JSON.
    public var torchName: String {
        switch self {
        case .f32: return "float32"
        case .f16: return "float16"
        case .bf16: return "bfloat16"
        case .u8: return "uint8"
        case .i32: return "int32"
        case .i64: return "int64"
        }
    }

    /// The type torch calls `name` (with or without a `torch.` prefix), or nil.
    public init?(torchName name: String) {
        let bare = name.hasPrefix("torch.") ? String(name.dropFirst(6)) : name
        switch bare {
        case "float32", "float": self = .f32
        case "float16", "half": self = .f16
        case "bfloat16": self = .bf16
        case "uint8": self = .u8
        case "int32": self = .i32
        case "int64", "long": self = .i64
        default: return nil
        }
    }
}
