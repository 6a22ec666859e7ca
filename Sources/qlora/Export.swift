import ArgumentParser
import Foundation
import Llama
import ModelFiles
import Tokenizers
import Training

/// `qlora export --format gguf`: the merged model (base + adapter folded as `merge` folds it) as one GGUF file in
/// llama.cpp's conventions, or with `--adapter-only` the adapter as a GGUF LoRA file; every export is loaded back
/// with this project's GGUF reader and checked against base + adapter as trained.
struct Export: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Write the merged model (or the adapter alone) as a GGUF file for llama.cpp.")

    @Option(help: "Output format: gguf.") var format: String = "gguf"
    @OptionGroup var modelOptions: ModelOptions
    @Option(help: "The PEFT adapter folder to fold in (without it the base alone is written).") var adapter: String?
    @Option(help: "The GGUF file to write (outside the model and adapter folders).") var output: String
    @Option(name: [.customLong("type"), .customLong("dtype")],
            help: "Matrices' type: f16, bf16, f32 or q8_0 (norms stay f32; an adapter takes f32, f16 or bf16).")
    var type: String = "f16"
    @Option(help: """
        The token embedding's and output matrix's type (llama-quantize's --token-embedding-type and \
        --output-tensor-type): f32, f16, bf16 or q8_0; default: --type's.
        """)
    var embeddingType: String?
    @Option(help: """
        What the delta is added to: dequantized (the NF4 weights training saw; the default) or original (the \
        16/32-bit weights the base was quantized from).
        """)
    var onto: MergeBase = .dequantized
    @Flag(help: "Write only the adapter, as a GGUF LoRA file for llama-cli --lora.") var adapterOnly = false
    @Option(help: """
        Check the export (load it back with this project's GGUF reader and compare logits and loss with base + \
        adapter on the CPU): auto (models up to 1.5 B parameters), always or never.
        """)
    var check: String = "auto"
    @Option(help: "Held-out data for the check (any data file eval reads); default: built-in English text.")
    var checkData: String?
    @OptionGroup var dataOptions: DataOptions

    /// Text the check runs on when no --check-data is given (written for this purpose).
    static let builtInText = """
        The river rose slowly through the night, and by morning the lower fields were under water. Farmers moved \
        their animals to the hills, while the children watched the boats drift past the church. Nobody had seen a \
        flood like it in forty years, and the old men argued about whether the bridge would hold.
        A recipe for bread needs only four things: flour, water, salt and yeast. Mix them, let the dough rest for an \
        hour, fold it twice, and bake it in a hot oven until the crust sounds hollow when you knock on it.
        In 1969 two astronauts walked on the Moon while a third circled above them. They collected rocks, planted a \
        flag, and returned to Earth eight days after they had left it.
        Question: Tom has 12 apples and gives 5 of them to his sister. How many apples does he have left? Answer: \
        12 - 5 = 7, so Tom has 7 apples left.
        """

    func validate() throws {
        guard format == "gguf" else { throw ValidationError("--format \(format): only gguf is written") }
        guard let t = GGUFExportType(rawValue: type) else {
            throw ValidationError("--type \(type): use one of " + GGUFExportType.allCases.map(\.rawValue)
                                  .joined(separator: ", "))
        }
        if let embeddingType, GGUFExportType(rawValue: embeddingType) == nil {
            throw ValidationError("--embedding-type \(embeddingType): use one of " + GGUFExportType.allCases
                                  .map(\.rawValue).joined(separator: ", "))
        }
        guard ["auto", "always", "never"].contains(check) else {
            throw ValidationError("--check \(check): auto, always or never")
        }
        guard !modelOptions.usesGPU else { throw ValidationError("export and its check run on the CPU (--device cpu)") }
        if adapterOnly {
            guard adapter != nil else { throw ValidationError("--adapter-only needs --adapter") }
            guard t != .q8_0 else { throw ValidationError("--adapter-only writes f32, f16 or bf16, not q8_0") }
            guard embeddingType == nil else {
                throw ValidationError("--embedding-type is for the merged model: an adapter has no embedding")
            }
        }
        guard output.hasSuffix(".gguf") else { throw ValidationError("--output \(output): name it FILE.gguf") }
        guard !FileSystem.isDirectory(output) else { throw ValidationError("--output \(output) is a folder") }
        let model = try modelOptions.modelPath()
        try Quantize.checkOutput(output, model: model, writing: "exporting")
        if let adapter {
            try Quantize.checkOutput(output, model: adapter, writing: "exporting", source: "--adapter")
        }
        if let checkData {
            try InputFile.requireRegular(checkData, what: "--check-data")
            // An --output that is a link to the --check-data file replaced that file with the GGUF.
            guard Quantize.resolvedPath(checkData) != Quantize.resolvedPath(output) else {
                throw ValidationError("--output \(output) is the --check-data file \(checkData): exporting there "
                                      + "would replace the data the check reads; name another file")
            }
        }
        try dataOptions.refusePacking("export's check")
    }

    func run() throws {
        var warnings: [String] = []
        if check == "never" && checkData != nil { warnings.append("--check-data has no effect with --check never") }
        if adapterOnly && onto == .original {
            warnings.append("--onto original has no effect with --adapter-only (the adapter is written as trained)")
        }
        printWarnings(warnings)
        var none = LoRAConfig(); none.targetModules = []
        let loaded = try modelOptions.load(lora: none, adapter: adapter)
        let type = GGUFExportType(rawValue: self.type)!
        let name = URL(fileURLWithPath: loaded.path).deletingPathExtension().lastPathComponent
        let text = try ModelText.loadIfPresent(path: loaded.path)
        // With a check to run, the file is written beside --output and renamed onto it once the check has passed:
        // a check that fails (an unusable --check-data, a context too short to hold a target) used to fail the run
        // after the previous file at --output had been replaced.
        let target = try AtomicFile.replaceableTarget(output)
        let staged = check == "never" ? output
            : (target as NSString).deletingPathExtension + ".check-\(getpid()).gguf"
        do {
            try export(loaded, type: type, name: name, text: text, to: staged)
            if staged != output {
                guard rename(staged, target) == 0 else {
                    throw ModelFileError.writeFailed(path: output, reason: String(cString: strerror(errno)))
                }
            }
        } catch {
            if staged != output { unlink(staged) }
            throw error
        }
    }

    /// Writes and checks the export at `path`.
    func export(_ loaded: LoadedModel, type: GGUFExportType, name: String, text: ModelText, to path: String) throws {
        let config = loaded.config
        if adapterOnly {
            let tensors = try LlamaGGUFExport.writeAdapter(config: config, lora: loaded.lora,
                                                           adapters: loaded.adapters, type: type,
                                                           name: name + "-lora", to: path)
            print("wrote the adapter (r \(loaded.lora.r), alpha \(loaded.lora.scale * Float(loaded.lora.r))) as "
                  + "\(tensors.count) \(type.rawValue) tensors → \(output)")
            guard shouldCheck(parameters: try LlamaInventory.parameterCounts(loaded.weights,
                                                                             adapters: loaded.adapters).all)
            else { return }
            let r = try LlamaGGUFExport.checkAdapter(exported: path, base: loaded.weights, lora: loaded.lora,
                                                     adapters: loaded.adapters,
                                                     sequences: try checkSequences(text: text, config: config))
            report(r, what: "base + the adapter read back from \(output)", text: text)
            return
        }
        let reporter = ProgressReporter(label: "export")
        let plan = try LlamaGGUFExport.write(
            weights: loaded.weights, lora: loaded.lora, adapters: loaded.adapters, onto: onto, type: type,
            embeddings: embeddingType.flatMap(GGUFExportType.init(rawValue:)), name: name,
            tokenizerMetadata: try tokenizerMetadata(path: loaded.path, config: config), to: path
        ) { done, total, tensor in reporter.update(done: done, total: total, detail: tensor) }
        reporter.finish()
        let bytes = (try? FileManager.default.attributesOfItem(atPath: path)[.size] as? Int) ?? 0
        print("exported \(loaded.adapters.count) adapted projections folded onto the \(onto.rawValue) weights of "
              + "\(loaded.path) → \(output): \(plan.count) tensors (\(type.rawValue) matrices, "
              + (embeddingType.map { "\($0) token embedding and output, " } ?? "") + "f32 norms), "
              + String(format: "%.1f MB", Double(bytes) / 1e6))

        let parameters = plan.reduce(0) { $0 + $1.elementCount }
        guard shouldCheck(parameters: parameters) else { return }
        let sequences = try checkSequences(text: text, config: config)
        let r = try LlamaGGUFExport.check(exported: path, base: loaded.weights, lora: loaded.lora,
                                          adapters: loaded.adapters, onto: onto, sequences: sequences)
        report(r, what: "\(output) read back", text: text)
        if type == .q8_0 {
            print(String(format: "Q8_0's cost: perplexity %+.4f (%+.3f%%) over base + adapter",
                         r.perplexity - r.referencePerplexity, 100 * (r.perplexity / r.referencePerplexity - 1)))
        }
    }

    /// Whether --check runs for a model of `parameters` (auto: up to 1.5 B, as merge), saying so when auto skips.
    func shouldCheck(parameters: Int) -> Bool {
        if check == "always" || (check == "auto" && parameters <= 1_500_000_000) { return true }
        if check == "auto" {
            print("check skipped: \(parameters / 1_000_000) M parameters (--check always runs it on the CPU)")
        }
        return false
    }

    /// Prints a check's outcome.
    func report(_ r: LlamaGGUFExport.Check, what: String, text: ModelText) {
        let source = checkData ?? (text.tokenizer == nil ? "seeded random ids: no tokenizer" : "built-in text")
        print("check: \(what) against base + adapter as trained on \(r.sequences) sequences (\(r.tokens) tokens of "
              + "\(source)): " + String(format: "largest |Δ logit| %.3g, loss %.6f against %.6f, perplexity %.4f "
              + "against %.4f", r.maxLogitDifference, r.loss, r.referenceLoss, r.perplexity, r.referencePerplexity))
        print("check: the greedy (top) token differs at \(r.topTokenChanges) of \(r.positions) positions"
              + (r.topTokenChanges == 0 ? ""
                 : String(format: " (reference gaps there up to %.3g)", r.widestChangedGap)))
    }

    /// The tokenizer and chat template metadata: from a GGUF base its own `tokenizer.*` keys, from a folder its
    /// tokenizer.json (byte-level BPE) and template; none when the folder has no tokenizer.json.
    func tokenizerMetadata(path: String, config: LlamaConfig) throws -> [(String, GGUFValue)] {
        if !FileSystem.isDirectory(path) {
            let file = try GGUFFile(path: path)
            return file.metadataKeys.filter { $0.hasPrefix("tokenizer.") }.map { ($0, file.metadata[$0]!) }
        }
        guard FileSystem.isFile(path + "/tokenizer.json") else {
            let note = "export: \(path) has no tokenizer.json, so the GGUF has no vocabulary (llama.cpp needs one; "
                + "this project's reader does not)\n"
            FileHandle.standardError.write(Data(note.utf8))
            return []
        }
        var m = try GGUFVocabulary(tokenizerJSONPath: path + "/tokenizer.json", vocabularySize: config.vocabSize)
            .metadata
        if let template = try ModelText.chatTemplateSource(folder: path) {
            m.append(("tokenizer.chat_template", .string(template.text)))
        }
        return m
    }

    /// The check's held-out sequences: --check-data's examples (the first 8), else the built-in text in pieces of
    /// up to 128 tokens, else (no tokenizer) 4 sequences of seeded random ids.
    func checkSequences(text: ModelText, config: LlamaConfig) throws -> [(inputIds: [Int], labels: [Int])] {
        let length = min(128, config.maxPositionEmbeddings)
        if let checkData {
            var options = try dataOptions.options(text, maxPositions: config.maxPositionEmbeddings)
            options.packing = false
            let examples = try TextDataset.load(path: checkData, tokenizer: text.tokenizer,
                                                vocabularySize: config.vocabSize, options: options)
            guard !examples.isEmpty else { throw ValidationError("--check-data \(checkData) holds no examples") }
            return examples.prefix(8).map { ($0.inputIds, $0.labels) }
        }
        if let tokenizer = text.tokenizer {
            let ids = tokenizer.encode(Self.builtInText, addSpecialTokens: true).filter { $0 < config.vocabSize }
            return stride(from: 0, to: ids.count, by: length).prefix(8).compactMap { start in
                let piece = Array(ids[start..<min(ids.count, start + length)])
                return piece.count >= 2 ? (piece, piece) : nil
            }
        }
        var rng = SeededGenerator(seed: 7)
        return (0..<4).map { _ in
            let ids = (0..<length).map { _ in Int(rng.next() % UInt64(config.vocabSize)) }
            return (ids, ids)
        }
    }
}
