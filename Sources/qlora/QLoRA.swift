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
    /// 32 MiB (its most) on its own and gives no freed memory back, so the next step's arrays reuse the last step's
    /// pages instead of fresh ones that the kernel clears. Measured (2026-12-03, the main job's batches): keeping up
    /// to 1 GiB, as before, let the heap shrink by the step's activations (1.2 GB) and grow again, 134k page faults a
    /// step over steps 3 to 6; keeping everything, 57k there and none from step 6 to 14. The peak is unchanged: the
    /// memory kept is the steps' own, reused.
    static func main() {
        #if canImport(Glibc)
        typealias Mallopt = @convention(c) (Int32, Int32) -> Int32   // malloc.h's, which Glibc does not import
        if let symbol = dlsym(nil, "mallopt") {
            let mallopt = unsafeBitCast(symbol, to: Mallopt.self)
            let (trimThreshold, mmapThreshold): (Int32, Int32) = (-1, -3)   // M_TRIM_THRESHOLD, M_MMAP_THRESHOLD
            _ = mallopt(mmapThreshold, 32 << 20)
            _ = mallopt(trimThreshold, -1)
        }
        #endif
        main(joiningNegativeValues(Array(CommandLine.arguments.dropFirst())))
    }

    /// `--seed -1` as `--seed=-1`: the argument parser takes a word that starts with a dash for an option, so a
    /// negative value used to be reported as a missing one ("Missing value for '--seed'") instead of being checked
    /// as the value it is. A `--name` without `=` followed by a negative number (or -inf, -nan) is joined to it;
    /// nothing after a bare `--` is touched.
    static func joiningNegativeValues(_ arguments: [String]) -> [String] {
        func negativeNumber(_ s: String) -> Bool {
            guard s.hasPrefix("-"), s.count > 1 else { return false }
            let rest = s.dropFirst().lowercased()
            return rest.first.map { $0.isNumber || $0 == "." } == true || ["inf", "infinity", "nan"].contains(rest)
        }
        var out: [String] = [], i = 0
        while i < arguments.count {
            let a = arguments[i]
            if a == "--" { out += arguments[i...]; break }
            if a.hasPrefix("--"), a.count > 2, !a.contains("="), i + 1 < arguments.count,
               negativeNumber(arguments[i + 1]) {
                out.append(a + "=" + arguments[i + 1]); i += 2
            } else {
                out.append(a); i += 1
            }
        }
        return out
    }
}

/// Prints each of `warnings` to standard error as "warning: …" (the settings a command was given and will not
/// read, and the like: said, never refused).
func printWarnings(_ warnings: [String]) {
    for warning in warnings { FileHandle.standardError.write(Data("warning: \(warning)\n".utf8)) }
}
