import ArgumentParser
import CPUBackend
import CUDABackend
import CUDATraining
import Foundation
import Llama
import ModelFiles
import Quantization
import Tensors
import Training

/// `qlora check-cuda`: every GPU op against its CPU twin on random inputs of several shapes (ragged ones included),
/// the GPU quantizer against bitsandbytes' NF4 vectors, and tiny-llama's golden logits, loss, gradients and
/// training steps on the GPU. Prints one line per check and fails if any check fails. This is the GPU test suite:
/// `swift test` cannot run on the GPU machine, the release binary can.
struct CheckCUDA: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check-cuda",
        abstract: "Check every GPU op against the CPU reference and the golden vectors (needs an NVIDIA GPU).")

    @Option(help: "The shared/ folder with golden/hf-qlora (default: $QLORA_SHARED or ../shared).")
    var shared: String = ProcessInfo.processInfo.environment["QLORA_SHARED"] ?? "../shared"

    func run() throws {
        setvbuf(stdout, nil, _IOLBF, 0)   // lines reach a pipe or file as they are printed
        let device = try CUDADevice()
        print("device: \(device.description)")
        var checker = Checker()
        let golden = shared + "/golden/hf-qlora"
        var ops = GPUOpChecks(device: device)
        try ops.run(&checker)
        if FileSystem.isDirectory(golden) {
            try GPUGoldenChecks(device: device, golden: golden).run(&checker)
        } else {
            print("SKIPPED: no golden vectors at \(golden) (set --shared)")
            checker.failures += 1
        }
        print("\(checker.passed) passed, \(checker.failures) failed; peak GPU memory \(device.peakAllocatedBytes >> 20) MiB")
        if checker.failures > 0 { throw ExitCode(1) }
    }
}
