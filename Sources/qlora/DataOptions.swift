import ArgumentParser
import Foundation
import Training

/// How data files are read, shared by `train` and `eval`; each may come from a recipe too.
struct DataOptions: ParsableArguments {
    @Option(help: "Field with the prompt of instruction records (e.g. question).") var promptField: String?
    @Option(help: "Field with the completion of instruction records (e.g. answer).") var completionField: String?
    @Option(help: "Field with plain text to train on (TRL's dataset_text_field; default text).")
    var datasetTextField: String?
    @Flag(help: "Take the loss on prompts too, not only on completions and assistant turns.") var trainOnInputs = false
    @Flag(help: "Concatenate examples into full --max-seq-length blocks.") var packing = false
    @Option(help: ArgumentHelp("Cut examples to this many tokens (default \(DatasetOptions().maxSeqLength))."))
    var maxSeqLength: Int?
    @Option(help: "Comma-separated roles whose chat turns take the loss (axolotl's roles_to_train; default assistant).")
    var rolesToTrain: String?
    @Option(help: "Which end-of-turn markers take the loss: turn (each trained turn's, the default), last, all, none.")
    var trainOnEos: String?

    /// `--max-seq-length` (recipe `max_seq_length`, default 512), checked: at least 2 tokens (one input, one target).
    func maxSeqLength(recipe: TrainingRecipe) throws -> Int {
        let value = try maxSeqLength ?? recipe.int("max_seq_length") ?? DatasetOptions().maxSeqLength
        guard value >= 2 else {
            throw ValidationError("--max-seq-length (recipe max_seq_length) is \(value): must be an integer ≥ 2")
        }
        return value
    }

    /// For a command that reads each example whole (eval, export's check): --packing, a training layout, would be
    /// dropped without a word, so it is an error.
    func refusePacking(_ command: String) throws {
        guard !packing else {
            throw ValidationError("--packing has no effect in \(command), which reads each example whole: leave it out")
        }
    }

    /// `--train-on-eos` (recipe `train_on_eos`, default turn), checked.
    func trainOnEOS(recipe: TrainingRecipe) throws -> TrainOnEOS {
        guard let name = try trainOnEos ?? recipe.string("train_on_eos") else { return .turn }
        guard let value = TrainOnEOS(rawValue: name) else {
            throw ValidationError("--train-on-eos (recipe train_on_eos) is \"\(name)\": use turn, last, all or none")
        }
        return value
    }

    /// The dataset options for a model's text (the chat template comes from the model).
    func options(_ text: ModelText, recipe: TrainingRecipe = TrainingRecipe(), maxPositions: Int) throws -> DatasetOptions {
        var o = DatasetOptions()
        o.promptField = try promptField ?? recipe.string("prompt_field")
        o.completionField = try completionField ?? recipe.string("completion_field")
        if (o.promptField == nil) != (o.completionField == nil) {
            throw ValidationError("--prompt-field and --completion-field go together")
        }
        o.textField = try datasetTextField ?? recipe.string("dataset_text_field")
        o.trainOnInputs = try trainOnInputs || (recipe.bool("train_on_inputs") ?? false)
        o.packing = try packing || (recipe.bool("packing") ?? false)
        o.maxSeqLength = min(try self.maxSeqLength(recipe: recipe), maxPositions)
        o.chatTemplate = text.chatTemplate
        if let roles = try rolesToTrain.map({ $0.split(separator: ",").map(String.init) })
            ?? recipe.list("roles_to_train") {
            o.rolesToTrain = Set(roles.map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty })
        }
        o.trainOnEOS = try trainOnEOS(recipe: recipe)
        o.chatTemplateError = text.chatTemplateError
        return o
    }
}
