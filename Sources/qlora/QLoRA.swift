import ArgumentParser

/// The command line: one subcommand per job.
@main
struct QLoRA: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "qlora",
        abstract: "QLoRA fine-tuning: 4-bit NF4 base models with LoRA adapters.",
        subcommands: [Quantize.self, Train.self, Merge.self, Export.self, Info.self, Eval.self, Generate.self,
                      Tokenize.self, Plot.self, BenchQuantize.self, BenchGEMM.self, Bench.self, Plan.self,
                      CheckCUDA.self]
    )
}
