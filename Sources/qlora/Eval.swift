import ArgumentParser
import Foundation
import Llama
import ModelFiles
import Training

/// `qlora eval`: mean token loss and perplexity of a model (and adapter) on a data file.
struct Eval: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Mean token loss and perplexity on a data file.")

    @OptionGroup var modelOptions: ModelOptions

    @Option(help: "A PEFT adapter folder to apply.")
    var adapter: String?

    @Option(help: ArgumentHelp(BaseWeights.help)) var baseWeights: BaseWeights = .auto

    @Option(help: "Data file: JSONL / JSON array of text, instruction, chat or pre-tokenized records, or plain text.")
    var data: String

    @OptionGroup var dataOptions: DataOptions

    @Option(help: "Sequences per forward pass.")   // train's default, written once in TrainingConfig
    var batchSize: Int = TrainingConfig().batchSize

    @Option(help: "Use only the first N examples.")
    var limit: Int?

    @Flag(help: "Print one JSON object instead of text.")
    var json = false

    /// The flag checks, in one place (ArgumentParser calls this before `run`).
    func validate() throws {
        try dataOptions.refusePacking("eval")
        guard batchSize >= 1 else { throw ValidationError("--batch-size is \(batchSize): must be at least 1") }
        if let limit, limit < 1 {
            throw ValidationError("--limit is \(limit): must be at least 1 (or left out for every example)")
        }
        if let maxSeqLength = dataOptions.maxSeqLength, maxSeqLength < 2 {
            throw ValidationError("--max-seq-length is \(maxSeqLength): must be an integer ≥ 2")
        }
        try InputFile.requireRegular(data, what: "--data")
    }

    func run() throws {
        var lora = LoRAConfig()
        lora.targetModules = []
        try modelOptions.checkBaseWeights(baseWeights, adapter: adapter)
        let loaded = try modelOptions.load(lora: lora, adapter: adapter)
        let text = try ModelText.loadIfPresent(path: loaded.path)
        var options = try dataOptions.options(text, maxPositions: loaded.config.maxPositionEmbeddings)
        options.packing = false
        var examples = try TextDataset.load(path: data, tokenizer: text.tokenizer,
                                            vocabularySize: loaded.config.vocabSize, options: options)
        if let limit { examples = Array(examples.prefix(limit)) }
        guard !examples.isEmpty else { throw ValidationError("--data \(data) holds no examples") }
        if !modelOptions.usesGPU {
            // As train checks its batches (`Train.run`): a forward pass of --batch-size rows as long as the longest
            // example, more than this process may allocate, used to fail an allocation ("Fatal error").
            let rows = min(batchSize, examples.count), longest = examples.map(\.inputIds.count).max() ?? 1
            try HostMemory.checkStepFits(loaded.config, batch: rows, tokens: longest,
                                         flags: "--batch-size \(batchSize) × examples of up to \(longest) tokens")
        }
        let engine = try modelOptions.evalEngine(loaded, base: baseWeights.resolved(adapter: adapter))
        let (loss, tokens) = try Trainer.evaluate(engine: engine, examples: examples, batchSize: batchSize)
        if json {
            print(JSONValue.object([("loss", .double(loss)), ("perplexity", .double(Foundation.exp(loss))),
                                    ("tokens", .int(tokens)), ("examples", .int(examples.count))]).pythonText())
        } else {
            print(String(format: "loss %.6f  perplexity %.4f  (%ld tokens, %ld examples)", loss,
                         Foundation.exp(loss), tokens, examples.count))
        }
    }
}
