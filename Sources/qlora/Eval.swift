import ArgumentParser
import Foundation
import Llama
import ModelFiles
import Training

/// `qlora eval`: mean token loss and perplexity of a model (and adapter) on a data file.
struct Eval: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Mean token loss and perplexity on a JSONL data file.")

    @OptionGroup var modelOptions: ModelOptions

    @Option(help: "A PEFT adapter folder to apply.")
    var adapter: String?

    @Option(help: "JSONL data: {\"input_ids\": [...]} per line, optionally with \"labels\" (-100 masked).")
    var data: String

    @Option(help: "Sequences per forward pass.")
    var batchSize: Int = 4

    @Option(help: "Cut sequences to this many tokens.")
    var maxSeqLength: Int?

    @Flag(help: "Print one JSON object instead of text.")
    var json = false

    func run() throws {
        var lora = LoRAConfig()
        lora.targetModules = []
        let model = try modelOptions.load(lora: lora)
        if let adapter { try PEFTAdapter.load(directory: adapter, into: model) }
        let examples = try TokenizedDataset.load(path: data, vocabSize: model.config.vocabSize,
                                                 maxLength: maxSeqLength ?? model.config.maxPositionEmbeddings)
        let (loss, tokens) = Trainer.evaluate(model: model, examples: examples, batchSize: batchSize)
        if json {
            print(JSONValue.object([("loss", .double(loss)), ("perplexity", .double(Foundation.exp(loss))),
                                    ("tokens", .int(tokens)), ("examples", .int(examples.count))]).pythonText())
        } else {
            print(String(format: "loss %.6f  perplexity %.4f  (%d tokens, %d examples)", loss, Foundation.exp(loss), tokens, examples.count))
        }
    }
}
