import ArgumentParser
import Foundation
import Llama
import ModelFiles
import Quantization
import Tokenizers
import Training

/// A model file opened for reading (nothing loaded yet: each device builds its own copy from `weights`, tensor by
/// tensor), with the LoRA settings and starting adapters to train or apply.
struct LoadedModel {
    let weights: LlamaWeights
    let path: String
    let lora: LoRAConfig
    let adapters: [String: LoRAWeights]
    var config: LlamaConfig { weights.config }
}

/// `--base-weights` of generate and eval: what the frozen base computes with.
enum BaseWeights: String, ExpressibleByArgument, CaseIterable {
    /// `fourBit` when an adapter is applied (the QLoRA model as trained: the adapter was fit to the 4-bit base),
    /// `file` without one (a finished model, such as a merged export, as its file holds it).
    case auto
    /// Quantized to 4 bits as train quantizes it (--quant-type, --double-quant); a 4-bit checkpoint as it is.
    case fourBit = "4bit"
    /// The file's own weights decoded to float32, never re-quantized: F32/F16/BF16 exactly, a GGUF's Q8_0 or Q4_1
    /// blocks as their type defines them, a bitsandbytes checkpoint's 4-bit codes dequantized.
    case file

    /// The option's help, shared by generate and eval.
    static let help = """
        The frozen base: auto (4bit with --adapter, the model as trained; otherwise file), 4bit (quantized as train \
        does) or file (the file's own weights, not re-quantized: how an exported merged F32/F16/Q8_0 GGUF or \
        safetensors model answers). The GPU computes in 4 bits only.
        """

    /// `auto` settled for a command with or without an adapter.
    func resolved(adapter: String?) -> BaseWeights {
        self == .auto ? (adapter == nil ? .file : .fourBit) : self
    }
}

extension ModelOptions {
    /// Refuses `--base-weights file` on a GPU (its model holds every frozen projection in 4 bits); with `auto` it
    /// says on standard error that the GPU quantizes what the CPU would run as the file holds it.
    func checkBaseWeights(_ choice: BaseWeights, adapter: String?) throws {
        guard usesGPU, choice.resolved(adapter: adapter) == .file else { return }
        if choice == .file {
            throw ValidationError("--base-weights file runs on the CPU (--device cpu): the GPU model holds the "
                                  + "frozen weights in 4 bits")
        }
        FileHandle.standardError.write(Data(("note: on the GPU the base is quantized to 4 bits; --device cpu "
            + "computes with the file's own weights\n").utf8))
    }

    /// The CPU model generate and eval run: the 4-bit one train builds, or with `file` (settled) one that computes
    /// with the file's own weights; with `loaded`'s adapters either way.
    func cpuModel(_ loaded: LoadedModel, base: BaseWeights) throws -> LlamaModel {
        guard base == .file else { return try cpuModel(loaded) }
        let model = try LlamaModel(denseWeights: loaded.weights, compute: try cpuDType(), lora: loaded.lora)
        model.adapters = loaded.adapters
        return model
    }

    /// The engine eval runs: `makeEngine`'s, or on the CPU with `file` (settled) the file's own weights.
    func evalEngine(_ loaded: LoadedModel, base: BaseWeights) throws -> TrainingEngine {
        let optimizer = AdamW(kind: .adamw)   // never used
        guard base == .file, !usesGPU else { return try makeEngine(loaded, optimizer: optimizer) }
        return CPUTrainingEngine(model: try cpuModel(loaded, base: .file), optimizer: optimizer)
    }
}

/// The tokenizer and chat format of a model path (folder or GGUF file), or of a tokenizer.json file.
struct ModelText {
    let tokenizer: Tokenizer?
    let chatTemplate: ChatTemplate?
    /// Why the model's chat template could not be parsed (the tokenizer is still used; chat records name this),
    /// starting with where the template came from.
    var chatTemplateError: String? = nil
    /// Where the chat template came from (tokenizer_config.json, chat_template.jinja, a GGUF's key), for messages.
    var chatTemplateOrigin: String? = nil

    /// No tokenizer (a model folder without one: only pre-tokenized data can be used).
    static let none = ModelText(tokenizer: nil, chatTemplate: nil)

    /// The model's tokenizer where it has one, else `none` (a folder without tokenizer.json, a GGUF without a
    /// tokenizer.ggml vocabulary: only pre-tokenized data then). A tokenizer that is there but cannot be read is an
    /// error naming its file, not taken for a missing one.
    static func loadIfPresent(path: String) throws -> ModelText {
        if FileSystem.isDirectory(path) {
            guard FileManager.default.fileExists(atPath: path + "/tokenizer.json") else { return .none }
        } else if !path.hasSuffix(".json") {
            let m = try GGUFFile(path: path).metadata
            guard m["tokenizer.ggml.model"] != nil || m["tokenizer.ggml.tokens"] != nil else { return .none }
        }
        return try load(path: path)
    }

    static func load(path: String) throws -> ModelText {
        if FileSystem.isDirectory(path) {
            let tokenizer = try Tokenizer(tokenizerJSONPath: path + "/tokenizer.json")
            try checkFits(tokenizer, tokenizerPath: path + "/tokenizer.json",
                          modelVocabulary: (try? LlamaConfig(contentsOf: path))?.vocabSize)
            let template = try chatTemplateSource(folder: path)
            return with(tokenizer, template: template?.text, origin: template?.origin ?? path)
        }
        if path.hasSuffix(".json") {
            return ModelText(tokenizer: try Tokenizer(tokenizerJSONPath: path), chatTemplate: nil)
        }
        let gguf = try GGUFFile(path: path)
        let m = gguf.metadata
        guard let model = m["tokenizer.ggml.model"]?.string, let tokens = m["tokenizer.ggml.tokens"]?.strings else {
            throw ModelFileError.invalidHeader(path: path, detail: "no tokenizer.ggml.model / tokenizer.ggml.tokens vocabulary")
        }
        let tokenizer = try Tokenizer(
            ggufModel: model, pre: m["tokenizer.ggml.pre"]?.string, tokens: tokens,
            tokenTypes: m["tokenizer.ggml.token_type"]?.ints, scores: m["tokenizer.ggml.scores"]?.floats?.map { Float($0) },
            merges: m["tokenizer.ggml.merges"]?.strings, bosTokenId: m["tokenizer.ggml.bos_token_id"]?.int,
            eosTokenId: m["tokenizer.ggml.eos_token_id"]?.int, unknownTokenId: m["tokenizer.ggml.unknown_token_id"]?.int,
            paddingTokenId: m["tokenizer.ggml.padding_token_id"]?.int,
            addBOS: m["tokenizer.ggml.add_bos_token"]?.bool ?? (model == "llama"),
            addSpacePrefix: m["tokenizer.ggml.add_space_prefix"]?.bool ?? (model == "llama"), file: path)
        try checkFits(tokenizer, tokenizerPath: path, modelVocabulary: (try? LlamaConfig(gguf: gguf))?.vocabSize)
        return with(tokenizer, template: m["tokenizer.chat_template"]?.string,
                    origin: path + " (tokenizer.chat_template)")
    }

    /// A tokenizer with more ids than the model has embeddings would hand the model ids past its vocabulary (a
    /// prompt of them read past the embedding table): an error naming both sizes. Where the model's config cannot
    /// be read (a tokenizer-only folder) there is nothing to compare.
    static func checkFits(_ tokenizer: Tokenizer, tokenizerPath: String, modelVocabulary: Int?) throws {
        guard let modelVocabulary, tokenizer.vocabularySize > modelVocabulary else { return }
        throw ModelFileError.invalidConfig(
            path: tokenizerPath,
            detail: "the tokenizer has \(tokenizer.vocabularySize) token ids, more than the model's vocabulary "
                + "(vocab_size \(modelVocabulary)): ids from \(modelVocabulary) on have no embedding; use the "
                + "model's own tokenizer")
    }

    /// The tokenizer with the model's Jinja chat template (the tokenizer's BOS and EOS tokens as `bos_token` and
    /// `eos_token`); a template that does not parse leaves the tokenizer usable and its error recorded.
    static func with(_ tokenizer: Tokenizer, template source: String?, origin: String) -> ModelText {
        guard let source else { return ModelText(tokenizer: tokenizer, chatTemplate: nil) }
        do {
            let template = try ChatTemplate(jinja: source,
                                            bosToken: tokenizer.bosTokenId.flatMap { tokenizer.token(forId: $0) },
                                            eosToken: tokenizer.eosTokenId.flatMap { tokenizer.token(forId: $0) })
            return ModelText(tokenizer: tokenizer, chatTemplate: template, chatTemplateOrigin: origin)
        } catch {
            return ModelText(tokenizer: tokenizer, chatTemplate: nil, chatTemplateError: "\(origin): \(error)",
                             chatTemplateOrigin: origin)
        }
    }

    /// The chat template of a Hugging Face folder and the file it came from: tokenizer_config.json's
    /// `chat_template` (a string, or the "default" of a list of named templates), else `chat_template.jinja`, else
    /// nil. A tokenizer_config.json that is not a JSON object, a `chat_template` of another form, or a
    /// chat_template.jinja that is not a regular file of UTF-8 text is an error naming the file: each used to read
    /// as "no chat template", without a word.
    static func chatTemplateSource(folder path: String) throws -> (text: String, origin: String)? {
        let configPath = path + "/tokenizer_config.json"
        if let config = try TokenizerConfig.read(folder: path),
           let template = try TokenizerConfig.chatTemplate(in: config, path: configPath) {
            return (template, configPath)
        }
        let file = path + "/chat_template.jinja"
        var info = stat()
        guard lstat(file, &info) == 0 else { return nil }
        try InputFile.requireRegular(file, what: "the chat template")
        let bytes = try FileSystem.readBytes(file, limit: JinjaTemplate.maximumSourceBytes)
        if let at = firstInvalidUTF8(bytes) {
            throw ModelFileError.invalidConfig(path: file, detail: "the chat template is not UTF-8 text (byte "
                + String(format: "0x%02X", bytes[at]) + " at offset \(at)); save it as UTF-8")
        }
        return (String(decoding: bytes, as: UTF8.self), file)
    }

    /// The offset of the first byte of `bytes` that starts no valid UTF-8 character (a cut-off last character
    /// included), or nil when all of it is UTF-8.
    static func firstInvalidUTF8(_ bytes: [UInt8]) -> Int? { TextDataset.firstInvalidUTF8(bytes) }

    /// Ids that end generation: EOS and the chat format's end-of-turn marker.
    var stopTokenIds: Set<Int> {
        var ids = Set<Int>()
        guard let tokenizer else { return ids }
        if let eos = tokenizer.eosTokenId { ids.insert(eos) }
        for marker in chatTemplate?.endOfTurnMarkers ?? [] { if let id = tokenizer.id(forToken: marker) { ids.insert(id) } }
        return ids
    }
}
