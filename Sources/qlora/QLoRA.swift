import ArgumentParser
import Foundation
#if canImport(Glibc)
import Glibc
#endif

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

    /// The command, with glibc's malloc told to keep what a CPU training step frees: it maps no allocation below
    /// 32 MiB (its most) on its own and keeps up to 1 GiB of freed memory, so the next step's arrays reuse the
    /// last step's pages instead of fresh ones that the kernel clears (a measured cost of the step).
    static func main() {
        #if canImport(Glibc)
        typealias Mallopt = @convention(c) (Int32, Int32) -> Int32   // malloc.h's, which Glibc does not import
        if let symbol = dlsym(nil, "mallopt") {
            let mallopt = unsafeBitCast(symbol, to: Mallopt.self)
            let (trimThreshold, mmapThreshold): (Int32, Int32) = (-1, -3)   // M_TRIM_THRESHOLD, M_MMAP_THRESHOLD
            _ = mallopt(mmapThreshold, 32 << 20)
            _ = mallopt(trimThreshold, 1 << 30)
        }
        #endif
        main(nil)
    }
}

/// Prints each of `warnings` to standard error as "warning: …" (the settings a command was given and will not
/// read, and the like: said, never refused).
func printWarnings(_ warnings: [String]) {
    for warning in warnings { FileHandle.standardError.write(Data("warning: \(warning)\n".utf8)) }
}
