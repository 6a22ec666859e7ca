import ArgumentParser
import CUDATraining
import Foundation
import Llama
import ModelFiles
import Training

/// `qlora generate`: continue a prompt with the model (and an adapter), greedy by default.
struct Generate: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Generate text from a prompt (greedy unless --temperature > 0).")

    @OptionGroup var modelOptions: ModelOptions
    @Option(help: "A PEFT adapter folder to apply.") var adapter: String?
    @Option(help: ArgumentHelp(BaseWeights.help)) var baseWeights: BaseWeights = .auto
    @Option(help: "The prompt.") var prompt: String?
    @Option(help: "Read prompts from a JSONL file instead (see --prompt-field).") var promptsFrom: String?
    @Option(help: "Field of --prompts-from records holding the prompt.") var promptField: String = "prompt"
    @Option(help: "Use only the first N prompts of --prompts-from.") var limit: Int?
    @Flag(help: "Wrap the prompt as a user turn in the model's chat template.") var chat = false
    @Option(help: "Tokens to generate at most.") var maxNewTokens: Int = 128
    @Option(help: "Sampling temperature (0: greedy).") var temperature: Float = 0
    @Option(help: "Nucleus sampling threshold.") var topP: Float = 1
    @Option(help: "Sampling seed.") var seed: UInt64 = 0
    @Option(help: "On a GPU, prompts decoded together (each row its own; the CPU takes them one by one).")
    var batchSize: Int = Generate.defaultBatchSize
    static let defaultBatchSize = 8

    /// The settings given that this run never reads, each with why: warned about, not refused (a command line
    /// copied from a sampling run, or from a GPU machine, carries them harmlessly).
    func settingsWithoutEffect(onGPU: Bool) -> [String] {
        var out: [String] = []
        if temperature == 0 {
            if seed != 0 {
                out.append("--seed \(seed) has no effect at --temperature 0 (greedy decoding draws nothing)")
            }
            if topP != 1 { out.append("--top-p \(topP) has no effect at --temperature 0 (greedy decoding)") }
        }
        if promptsFrom == nil {
            if promptField != "prompt" { out.append("--prompt-field has no effect without --prompts-from") }
            if limit != nil { out.append("--limit has no effect without --prompts-from") }
        }
        if !onGPU && batchSize != Self.defaultBatchSize {
            out.append("--batch-size \(batchSize) has no effect on the CPU, which decodes the prompts one by one")
        }
        return out
    }

    func validate() throws {
        guard (prompt == nil) != (promptsFrom == nil) else { throw ValidationError("give exactly one of --prompt and --prompts-from") }
        guard maxNewTokens > 0 else {
            throw ValidationError("--max-new-tokens is \(maxNewTokens): must be at least 1")
        }
        // An infinite temperature (--temperature inf) sampled uniformly from the vocabulary without a word.
        guard temperature >= 0, temperature.isFinite else {
            throw ValidationError("--temperature is \(temperature): must be finite and at least 0 (0: greedy)")
        }
        guard topP > 0, topP <= 1 else {
            throw ValidationError("--top-p is \(topP): must be in (0, 1], above 0 and at most 1 (1 keeps every token)")
        }
        guard batchSize > 0 else { throw ValidationError("--batch-size is \(batchSize): must be at least 1") }
        if let limit, limit < 1 {
            throw ValidationError("--limit is \(limit): must be at least 1 (or left out for every prompt)")
        }
        if let promptsFrom { try InputFile.requireRegular(promptsFrom, what: "--prompts-from") }
    }

    func run() throws {
        printWarnings(settingsWithoutEffect(onGPU: modelOptions.usesGPU))
        var lora = LoRAConfig()
        lora.targetModules = []
        try modelOptions.checkBaseWeights(baseWeights, adapter: adapter)
        let loaded = try modelOptions.load(lora: lora, adapter: adapter)
        let gpuModel = modelOptions.usesGPU
            ? try modelOptions.gpuModel(loaded, device: try modelOptions.openGPU()) : nil
        let cpuModel = gpuModel == nil
            ? try modelOptions.cpuModel(loaded, base: baseWeights.resolved(adapter: adapter)) : nil
        let text = try ModelText.load(path: loaded.path)
        guard let tokenizer = text.tokenizer else { throw ValidationError("\(loaded.path) has no tokenizer") }
        var prompts: [String] = []
        if let prompt { prompts = [prompt] }
        if let promptsFrom {
            let bytes = try FileSystem.readBytes(promptsFrom)
            for (n, line) in bytes.split(separator: 0x0A, omittingEmptySubsequences: false).enumerated() {
                guard let record = Self.recordLine(line, number: n + 1) else { continue }
                prompts.append(try Self.stringField(promptField, line: record, number: n + 1, file: promptsFrom))
            }
            if let limit { prompts = Array(prompts.prefix(limit)) }
        }
        var options = SamplingOptions()
        options.maxNewTokens = maxNewTokens; options.temperature = temperature; options.topP = topP; options.seed = seed
        options.stopTokenIds = text.stopTokenIds
        var encoded: [[Int]] = []
        for p in prompts {
            var ids: [Int]
            if chat {
                guard let template = text.chatTemplate else {
                    throw ValidationError("--chat: the model has no chat template" +
                        (text.chatTemplateError.map { " that parses: \($0)" } ?? ""))
                }
                let prompt: String
                do { prompt = try template.render([ChatMessage(role: "user", content: p)], addGenerationPrompt: true) }
                catch { throw ValidationError("--chat: \(text.chatTemplateOrigin ?? "the chat template"): \(error)") }
                ids = tokenizer.encode(prompt)
            } else {
                ids = tokenizer.encode(p, addSpecialTokens: tokenizer.addsBOS)
            }
            if ids.isEmpty, let bos = tokenizer.bosTokenId { ids = [bos] }
            try Self.checkPrompt(tokenCount: ids.count, context: loaded.config.maxPositionEmbeddings, prompt: p)
            // The model indexes its embedding with every id (a precondition there, not an error).
            if let bad = ids.first(where: { $0 < 0 || $0 >= loaded.config.vocabSize }) {
                throw ValidationError("the prompt \"\(p)\" encodes to token id \(bad), outside the model's "
                                      + "vocabulary [0, \(loaded.config.vocabSize)): use the model's own tokenizer")
            }
            encoded.append(ids)
        }
        let started = Date()
        var generated = 0
        for first in stride(from: 0, to: prompts.count, by: gpuModel == nil ? 1 : batchSize) {
            let rows = first..<min(first + (gpuModel == nil ? 1 : batchSize), prompts.count)
            let outs = try gpuModel?.generate(prompts: Array(encoded[rows]), options: options)
                ?? [cpuModel!.generate(prompt: encoded[first], options: options)]
            for (p, out) in zip(prompts[rows], outs) {
                let answer = tokenizer.decode(out.filter { !options.stopTokenIds.contains($0) },
                                              skipSpecialTokens: true)
                print("### prompt\n\(p)\n### completion\n\(answer)\n")
                generated += out.count
            }
        }
        let seconds = Date().timeIntervalSince(started)
        FileHandle.standardError.write(String(format: "%d prompts, %d new tokens in %.2f s (%.1f tokens/s)\n",
            prompts.count, generated, seconds, Double(generated) / max(seconds, 1e-9)).data(using: .utf8)!)
    }
}

extension Generate {
    /// The string `field` of one JSONL line, or an error naming the file and line: a line that is not UTF-8 text
    /// (with the first bad byte), not JSON (with where), or has no such string.
    /// Line `number` of a JSONL file as its record, or nil when it holds none, as the training data reader reads
    /// them: white space only (an empty line of a CRLF file is a lone CR) holds none, and the first line loses a
    /// UTF-8 byte order mark. Empty lines used to be dropped before counting, so an error named the wrong line;
    /// a mark or a blank line was refused as invalid JSON.
    static func recordLine(_ line: ArraySlice<UInt8>, number: Int) -> ArraySlice<UInt8>? {
        let record = number == 1 && line.starts(with: [0xEF, 0xBB, 0xBF]) ? line.dropFirst(3) : line
        return record.allSatisfy({ [0x20, 0x0D, 0x09].contains($0) }) ? nil : record
    }

    static func stringField(_ field: String, line: ArraySlice<UInt8>, number n: Int, file: String) throws -> String {
        let bytes = Array(line)
        if let at = ModelText.firstInvalidUTF8(bytes) {
            throw ValidationError("\(file):\(n): line \(n) is not valid UTF-8 text (byte "
                + String(format: "0x%02X", bytes[at]) + " at offset \(at) of the line); save the file as UTF-8")
        }
        let json: JSONValue
        do { json = try JSONValue(parsing: bytes) } catch {
            throw ValidationError("\(file):\(n): line \(n) is not valid JSON: \(error)")
        }
        guard let text = json[field]?.stringValue else {
            throw ValidationError("\(file):\(n): no string field \"\(field)\"")
        }
        return text
    }

    /// A prompt the model can continue: at least one token (an empty prompt needs a BOS token to start from) and
    /// room left in the model's context.
    static func checkPrompt(tokenCount: Int, context: Int, prompt: String) throws {
        guard tokenCount > 0 else {
            throw ValidationError("the prompt \"\(prompt)\" is empty and the model's tokenizer has no BOS token to " +
                "start from: give a non-empty prompt")
        }
        guard tokenCount < context else {
            throw ValidationError("the prompt is \(tokenCount) tokens, but the model's context " +
                "(max_position_embeddings) is \(context) tokens, "
                                  + "leaving no room to generate: shorten it below \(context) tokens")
        }
    }
}

/// `qlora tokenize`: JSONL {"text": ...} in, {"ids": [...]} out.
struct Tokenize: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Tokenize JSONL {\"text\": ...} lines (stdin or --input) into {\"ids\": [...]}.")
    @Option(help: "tokenizer.json, a model folder, or a GGUF file.") var tokenizer: String
    @Option(help: "Input file (default: standard input).") var input: String?
    @Flag(help: "Add the tokenizer's special tokens (BOS).") var addSpecialTokens = false

    /// Longest line read from standard input (a stream with no newline, such as /dev/zero, is refused there).
    static let lineLimit = 64 << 20

    func run() throws {
        // An empty path was ": cannot open: No such file or directory", naming nothing.
        guard !tokenizer.isEmpty else { throw ValidationError("--tokenizer is empty: name a tokenizer.json, a model "
                                                              + "folder or a GGUF file") }
        guard let tok = try ModelText.load(path: tokenizer).tokenizer else { throw ValidationError("no tokenizer at \(tokenizer)") }
        func emit(_ line: ArraySlice<UInt8>, _ n: Int) throws {
            guard let line = Generate.recordLine(line, number: n) else { return }
            let text = try Generate.stringField("text", line: line, number: n, file: input ?? "stdin")
            print(JSONValue.object([("ids", .array(tok.encode(text, addSpecialTokens: addSpecialTokens)
                .map { .int($0) }))]).pythonText())
        }
        if let input {
            for (n, line) in try FileSystem.readBytes(input).split(separator: 0x0A, omittingEmptySubsequences: false)
                .enumerated() { try emit(line, n + 1) }
            return
        }
        // Standard input line by line, as it comes.
        var pending: [UInt8] = [], n = 0
        while let chunk = try FileHandle.standardInput.read(upToCount: 1 << 20), !chunk.isEmpty {
            var start = 0   // where the current line begins in `lines`
            let lines = pending + chunk
            var at = pending.count   // the bytes before it were searched already
            while let end = lines[at...].firstIndex(of: 0x0A) {
                n += 1
                try emit(lines[start..<end], n)
                start = end + 1; at = start
            }
            pending = Array(lines[start...])
            guard pending.count <= Self.lineLimit else {
                throw ValidationError("stdin:\(n + 1): a line longer than \(Self.lineLimit >> 20) MiB (is it text?)")
            }
        }
        try emit(pending[...], n + 1)
    }
}
