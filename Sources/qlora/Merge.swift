import ArgumentParser
import Foundation
import Llama
import ModelFiles
import Tensors
import Tokenizers

extension MergeBase: ExpressibleByArgument {}

/// `qlora merge`: the adapter folded into the base, written as a plain Hugging Face folder (config.json without
/// quantization_config, safetensors, tokenizer and generation files), which any loader reads without peft.
struct Merge: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Merge a PEFT adapter into its base model and write a plain Hugging Face folder.")

    @Option(help: "The base model: a Hugging Face folder (plain or bitsandbytes 4-bit) or a GGUF file.")
    var model: String
    @Option(help: "The PEFT adapter folder (adapter_config.json, adapter_model.safetensors).") var adapter: String
    @Option(name: [.customLong("output"), .customLong("output-dir")],
            help: "Where the merged model goes (a new folder, not the model's).")
    var output: String
    // The same option as export's --type / --dtype (both names here too), with another default: a merged Hugging
    // Face folder keeps the bf16 that Llama checkpoints ship in (f16 overflows where bf16 does not), a GGUF takes
    // llama.cpp's f16.
    @Option(name: [.customLong("dtype"), .customLong("type")],
            help: ArgumentHelp("Weights' dtype in the output: bf16, f16 or f32 (bf16 as the checkpoints are "
                               + "stored; export's --type defaults to f16, llama.cpp's usual type)."))
    var dtype: String = "bf16"
    @Option(help: """
        What the delta is added to: dequantized (the NF4 weights training saw; the default) or original (the \
        16/32-bit weights the base was quantized from, as peft's merge_and_unload on a float base).
        """)
    var onto: MergeBase = .dequantized
    @Option(help: "Largest safetensors file in bytes before the weights are split into shards with an index.")
    var maxShardSize: Int = 5_000_000_000
    @Option(help: """
        Check the export (load it back and compare logits with base + adapter on the CPU): auto (models up to \
                1.5 B parameters), always or never.
        """)
    var check: String = "auto"

    func validate() throws {
        guard ["bf16", "f16", "f32"].contains(dtype) else {
            throw ValidationError("--dtype \(dtype): use bf16, f16 or f32")
        }
        guard maxShardSize > 0 else { throw ValidationError("--max-shard-size must be positive") }
        guard ["auto", "always", "never"].contains(check) else {
            throw ValidationError("--check \(check): auto, always or never")
        }
        try Quantize.checkOutput(output, model: model, writing: "merging")
        try Quantize.checkOutput(output, model: adapter, writing: "merging", source: "--adapter")
        try Quantize.refuseExistingModel(output)
    }

    func run() throws {
        let weights = try LlamaWeights.open(path: model)
        let (lora, adapters) = try PEFTAdapter.read(directory: adapter, config: weights.config)
        let type: DType = dtype == "f32" ? .f32 : dtype == "f16" ? .f16 : .bf16
        let reporter = ProgressReporter(label: "merge")
        let extra = FileSystem.isDirectory(model) ? [] : try Self.tokenizerFiles(gguf: model, config: weights.config)
        let files = try LlamaMerge.write(weights: weights, lora: lora, adapters: adapters, onto: onto, dtype: type,
                                         to: output, shardBytes: maxShardSize, files: extra) { done, total, name in
            reporter.update(done: done, total: total, detail: name)
        }
        reporter.finish()
        let c = weights.config
        let parameters = c.layerCount * LlamaConfig.projectionNames.reduce(0) { n, p in
            n + c.projectionShape(p)!.0 * c.projectionShape(p)!.1 } + 2 * c.vocabSize * c.hiddenSize
        if check == "always" || (check == "auto" && parameters <= 1_500_000_000) {
            var rng = SeededGenerator(seed: 7)
            let tokens = (0..<min(64, c.maxPositionEmbeddings)).map { _ in Int(rng.next() % UInt64(c.vocabSize)) }
            let r = try LlamaMerge.check(merged: output, base: weights, lora: lora, adapters: adapters, onto: onto,
                                         tokens: tokens)
            print(String(format: "check: the merged model against base + adapter on %ld tokens: largest |Δ logit| " +
                "%.3g, "
                         + "loss %.6f against %.6f", tokens.count, r.maxLogitDifference, r.loss, r.referenceLoss))
        } else if check == "auto" {
            print("check skipped: \(parameters / 1_000_000) M parameters (--check always runs it on the CPU)")
        }
        print("merged \(adapters.count) adapters (r \(lora.r), scale \(lora.scale)) onto the \(onto.rawValue) " +
            "weights of "
              + "\(model) → \(output): \(files.joined(separator: ", "))")
    }

    /// A GGUF base's vocabulary as the Hugging Face files (tokenizer.json, tokenizer_config.json with its chat
    /// template) and generation_config.json, so the merged folder is complete.
    static func tokenizerFiles(gguf path: String, config: LlamaConfig) throws -> [(name: String, text: String)] {
        let m = try GGUFFile(path: path).metadata
        guard let model = m["tokenizer.ggml.model"]?.string, let tokens = m["tokenizer.ggml.tokens"]?.strings else {
            throw ModelFileError.invalidHeader(path: path, detail: "no tokenizer.ggml.model / tokens vocabulary")
        }
        let bos: Int? = m["tokenizer.ggml.bos_token_id"]?.int, eos: Int? = m["tokenizer.ggml.eos_token_id"]?.int
        let unknown: Int? = m["tokenizer.ggml.unknown_token_id"]?.int
        let padding: Int? = m["tokenizer.ggml.padding_token_id"]?.int
        let types: [Int]? = m["tokenizer.ggml.token_type"]?.ints
        let merges: [String]? = m["tokenizer.ggml.merges"]?.strings
        let addBOS: Bool = m["tokenizer.ggml.add_bos_token"]?.bool ?? false
        let addEOS: Bool = m["tokenizer.ggml.add_eos_token"]?.bool ?? false
        let vocabulary = try GGUFVocabulary(
            ggufModel: model, pre: m["tokenizer.ggml.pre"]?.string, tokens: tokens, tokenTypes: types, merges: merges,
            bosTokenId: bos, eosTokenId: eos, unknownTokenId: unknown, paddingTokenId: padding, addBOS: addBOS,
            addEOS: addEOS, file: path)
        var generation: [(String, JSONValue)] = []
        if let bos { generation.append(("bos_token_id", .int(bos))) }
        if let eos { generation.append(("eos_token_id", .int(eos))) }
        return [
            ("tokenizer.json", try vocabulary.tokenizerJSON().pythonText() + "\n"),
            ("tokenizer_config.json", vocabulary.tokenizerConfig(chatTemplate: m["tokenizer.chat_template"]?.string,
                maxLength: config.maxPositionEmbeddings).pythonText(indent: 2) + "\n"),
            ("generation_config.json", JSONValue.object(generation).pythonText(indent: 2) + "\n"),
        ]
    }

}
