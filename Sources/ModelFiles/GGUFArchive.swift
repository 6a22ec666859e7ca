import Tensors

/// A Llama-family GGUF file seen as its Hugging Face twin: tensors under Hugging Face names (`model.layers.0.
/// self_attn.q_proj.weight`), with Hugging Face shapes (`[out, in]`), dequantized to float32, and q/k projections
/// returned to Hugging Face's row order.
///
/// llama.cpp's converter (`convert_hf_to_gguf.py`, `LlamaModel.permute`) reorders the rows of q_proj and k_proj
/// for the `llama` architecture, whose rotary embedding in ggml rotates adjacent pairs (x0, x1), (x2, x3), ...
/// while Hugging Face's rotates the two halves of each head (x_i, x_{i+D/2}). Per head it views the D rows as
/// (2, D/2) and transposes them to (D/2, 2), so GGUF row `2i + s` of a head is Hugging Face row `s·D/2 + i`.
/// This archive applies the inverse, with the query head count for q and the key/value head count for k.
/// `qwen2` files are stored unpermuted (ggml uses the half-split "NEOX" rotation for them).
public final class GGUFArchive: TensorSource, @unchecked Sendable {
    /// The underlying file.
    public let file: GGUFFile
    /// Hugging Face names of the mapped tensors, in file order.
    public let names: [String]
    /// GGUF names of tensors that have no Hugging Face counterpart (`rope_freqs.weight`, ...), in file order.
    public let unmappedNames: [String]
    /// Architectures whose tensors this archive knows how to name.
    public static let supportedArchitectures: Set<String> = ["llama", "qwen2"]
    private let ggufName: [String: String]
    private let headCount: Int?
    private let kvHeadCount: Int?
    private let permutesQueryKey: Bool

    /// Where the tensors come from.
    public var location: String { file.path }

    /// Opens `path` as a GGUF file.
    public convenience init(path: String) throws {
        try self.init(file: GGUFFile(path: path))
    }

    /// Wraps an open GGUF file; fails unless its architecture is one of `supportedArchitectures`.
    public init(file: GGUFFile) throws {
        self.file = file
        guard let architecture = file.architecture else {
            throw ModelFileError.invalidConfig(path: file.path, detail: "GGUF metadata has no general.architecture")
        }
        guard Self.supportedArchitectures.contains(architecture) else {
            throw ModelFileError.invalidConfig(
                path: file.path,
                detail: "GGUF architecture '\(architecture)' is not supported (supported: \(Self.supportedArchitectures.sorted().joined(separator: ", ")))")
        }
        permutesQueryKey = architecture == "llama"
        headCount = file.metadata["\(architecture).attention.head_count"]?.int
        kvHeadCount = file.metadata["\(architecture).attention.head_count_kv"]?.int ?? headCount
        var names: [String] = [], unmapped: [String] = [], ggufName: [String: String] = [:]
        for info in file.tensors {
            if let hf = Self.huggingFaceName(info.name) {
                names.append(hf)
                ggufName[hf] = info.name
            } else {
                unmapped.append(info.name)
            }
        }
        self.names = names
        unmappedNames = unmapped
        self.ggufName = ggufName
    }

    /// True when there is a tensor called `name` (a Hugging Face name).
    public func contains(_ name: String) -> Bool { ggufName[name] != nil }

    /// Drops the file's pages from resident memory.
    public func evictPages() { file.evictPages() }

    /// The GGUF name behind the Hugging Face name `name`, or nil.
    public func ggufName(for name: String) -> String? { ggufName[name] }

    /// The tensor `name` (a Hugging Face name) as float32 in Hugging Face's shape and row order.
    public func tensor(named name: String) throws -> Tensor {
        guard let source = ggufName[name] else { throw ModelFileError.missingTensor(name: name, location: file.path) }
        let tensor = try file.tensor(named: source)
        guard permutesQueryKey else { return tensor }
        if source.hasSuffix(".attn_q.weight") || source.hasSuffix(".attn_q.bias") {
            return try unpermuted(tensor, heads: headCount, source: source, key: "head_count")
        }
        if source.hasSuffix(".attn_k.weight") || source.hasSuffix(".attn_k.bias") {
            return try unpermuted(tensor, heads: kvHeadCount, source: source, key: "head_count_kv")
        }
        return tensor
    }

    /// Undoes the converter's rotary row permutation of a q or k weight `(H·D, C)` or bias `(H·D)`.
    private func unpermuted(_ tensor: Tensor, heads: Int?, source: String, key: String) throws -> Tensor {
        let rows = tensor.shape.first ?? 0
        guard let heads, heads > 0, heads <= Int.max / 2, rows % (2 * heads) == 0 else {
            throw ModelFileError.invalidCheckpoint(
                path: file.path, tensor: source,
                detail: "cannot undo the rotary row permutation: \(rows) rows for \(heads.map(String.init) ?? "no") "
                    + "heads (llama.attention.\(key)); each head needs an even number of rows")
        }
        let headDim = rows / heads, half = headDim / 2
        let rowLength = rows == 0 ? 0 : tensor.elementCount / rows
        let out = Tensor(zeros: tensor.shape, dtype: .f32)
        let rowBytes = rowLength * MemoryLayout<Float>.size
        let output = out.storage.bytes.baseAddress!
        tensor.withUnsafeBytes { raw in
            guard rowBytes > 0, let input = raw.baseAddress else { return }
            for h in 0..<heads {
                for i in 0..<half {
                    for s in 0..<2 {
                        let from = h * headDim + 2 * i + s, to = h * headDim + s * half + i
                        (output + to * rowBytes).copyMemory(from: input + from * rowBytes, byteCount: rowBytes)
                    }
                }
            }
        }
        return out
    }

    /// The Hugging Face name of a llama.cpp tensor name, or nil when it has none.
    public static func huggingFaceName(_ gguf: String) -> String? {
        switch gguf {
        case "token_embd.weight": return "model.embed_tokens.weight"
        case "output_norm.weight": return "model.norm.weight"
        case "output.weight": return "lm_head.weight"
        default: break
        }
        let parts = gguf.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 4, parts[0] == "blk", let layer = Int(parts[1]), layer >= 0, String(layer) == parts[1],
              parts[3] == "weight" || parts[3] == "bias" else { return nil }
        let module: String
        switch parts[2] {
        case "attn_norm": module = "input_layernorm"
        case "ffn_norm": module = "post_attention_layernorm"
        case "attn_q": module = "self_attn.q_proj"
        case "attn_k": module = "self_attn.k_proj"
        case "attn_v": module = "self_attn.v_proj"
        case "attn_output": module = "self_attn.o_proj"
        case "ffn_gate": module = "mlp.gate_proj"
        case "ffn_up": module = "mlp.up_proj"
        case "ffn_down": module = "mlp.down_proj"
        default: return nil
        }
        return "model.layers.\(layer).\(module).\(parts[3])"
    }
}
