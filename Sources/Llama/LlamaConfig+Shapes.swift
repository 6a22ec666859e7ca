import Foundation

extension LlamaConfig {
    /// The model shapes of `../shared/bench/hf_baseline.py` (and `qlora bench --shape`), as config.json fields.
    public static let benchmarkShapes: [String: String] = [
        "smollm2-135m": #""hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "#
            + #""num_attention_heads": 9, "num_key_value_heads": 3, "vocab_size": 49152, "#
            + #""tie_word_embeddings": true, "rope_theta": 100000.0"#,
        "tinyllama-1.1b": #""hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22, "#
            + #""num_attention_heads": 32, "num_key_value_heads": 4, "vocab_size": 32000"#,
        "llama2-7b": #""hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32, "#
            + #""num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 32000"#,
        "llama3-8b": #""hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32, "#
            + #""num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256, "rope_theta": 500000.0"#,
    ]


    /// The named benchmark shape with `maxPositions` positions (4096 in the baselines).
    public static func benchmarkShape(_ name: String, maxPositions: Int = 4096) throws -> LlamaConfig {
        guard let fields = benchmarkShapes[name] else {
            throw ModelError("unknown shape \(name): one of \(benchmarkShapes.keys.sorted().joined(separator: ", "))")
        }
        let json = "{\"model_type\": \"llama\", \"max_position_embeddings\": \(maxPositions), "
            + "\"rms_norm_eps\": 1e-05, \(fields)}"
        return try JSONDecoder().decode(LlamaConfig.self, from: Data(json.utf8))
    }
}
