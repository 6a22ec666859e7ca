import ArgumentParser
import CUDABackend
import Foundation

/// `--device`, the same for every command that takes it: `cpu`, `cuda` (GPU 0) or `cuda:N`.
enum DeviceChoice: Equatable, ExpressibleByArgument, CustomStringConvertible {
    case cpu
    case cuda(Int)

    init?(argument: String) {
        if argument == "cpu" { self = .cpu; return }
        if argument == "cuda" { self = .cuda(0); return }
        guard argument.hasPrefix("cuda:"), let n = Int(argument.dropFirst(5)), n >= 0 else { return nil }
        self = .cuda(n)
    }

    static let help = "cpu, cuda or cuda:N (GPU N; needs an NVIDIA driver and CUDA 12/13 libraries)"

    var description: String {
        switch self {
        case .cpu: return "cpu"
        case .cuda(let n): return n == 0 ? "cuda" : "cuda:\(n)"
        }
    }
    var defaultValueDescription: String { description }

    /// True for cuda[:N].
    var isGPU: Bool { self != .cpu }

    /// The GPU it names, opened (a clear error where there is none); nil for cpu.
    func open() throws -> CUDADevice? {
        guard case .cuda(let n) = self else { return nil }
        return try CUDADevice(ordinal: n)
    }
}
