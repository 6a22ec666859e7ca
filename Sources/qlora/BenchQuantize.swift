import ArgumentParser
import Foundation
import Llama
import ModelFiles
import Quantization
import Tensors

/// `qlora bench-quantize`: CPU quantization throughput, printed as a table.
struct BenchQuantize: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench-quantize",
        abstract: "Benchmark 4-bit quantization on the CPU: a large bf16 matrix, and a whole model's linear weights.")

    @Option(help: "Rows of the benchmark matrix.")
    var rows: Int = 4096

    @Option(help: "Columns of the benchmark matrix.")
    var cols: Int = 11008

    @Option(help: "Timed repetitions (the best is reported).")
    var repeats: Int = 3

    @Option(help: "Also time `quantize` on this model folder.")
    var model: String?

    /// Most elements of the benchmark matrix (2^31: 4 GB of bf16, more than any model's largest weight).
    static let maximumElements = 1 << 31
    /// The memory the benchmark takes per element of the matrix, at its peak (a bound for the check).
    static let bytesPerElement = 12
    /// Elements of the SmolLM2-135M linear weights quantized in each repeat.
    static let smolLMElements = 30 * (576 * 576 * 2 + 192 * 576 * 2 + 1536 * 576 * 3)
    /// Most elements quantized in all the repeats together (the default run: about 10 % of it; a minute or so).
    static let maximumWork = 1 << 33

    func validate() throws {
        guard rows >= 1, cols >= 1 else {
            throw ValidationError("--rows \(rows) and --cols \(cols): each must be at least 1")
        }
        let (elements, overflow) = rows.multipliedReportingOverflow(by: cols)
        guard !overflow, elements <= Self.maximumElements else {
            throw ValidationError("--rows \(rows) × --cols \(cols) is more than the \(Self.maximumElements) elements "
                                  + "allowed")
        }
        // The matrix is drawn in float32, kept in bf16 and dequantized back to float32 beside its 4-bit codes:
        // more than the process may allocate failed an allocation (a trap) under a memory limit.
        let needed = Double(elements) * Double(Self.bytesPerElement)
        guard needed <= Double(FileSystem.allocatableBytes) else {
            throw ValidationError(String(format: "--rows %ld × --cols %ld needs about %.1f GB (%ld bytes an element); "
                                         + "this process may allocate %.1f GB: lower them", rows, cols, needed / 1e9,
                                         Self.bytesPerElement, Double(FileSystem.allocatableBytes) / 1e9))
        }
        // An unusable --model (a missing folder, a damaged model) was found only after the whole benchmark had run
        // (a minute by default): it is opened and checked first, as quantize checks it.
        if let model {
            let weights = try LlamaWeights.open(path: model)
            try weights.checkComplete()
            try weights.checkShapes()
        }
        // 2^31 repeats used to run for days: a bound a fuzzer (or a typo) cannot mistake for a hang.
        guard (1...1000).contains(repeats) else {
            throw ValidationError("--repeats is \(repeats): must be from 1 to 1000")
        }
        // Each repeat quantizes the matrix and the SmolLM2 weights: --repeats 1000 took about 20 minutes, so the
        // work in all (elements quantized) is bounded too, not only the count.
        let work = Double(repeats) * Double(4 * elements + Self.smolLMElements)
        guard work <= Double(Self.maximumWork) else {
            throw ValidationError(String(format: "--repeats %ld over a %ld × %ld matrix (and the %ld SmolLM2 weights) "
                                         + "is %.3g elements quantized, more than the %.3g allowed: lower --repeats "
                                         + "or the matrix", repeats, rows, cols, Self.smolLMElements, work,
                                         Double(Self.maximumWork)))
        }
    }

    func run() throws {
        print("| what | quant | elements | best time (s) | input GB/s |")
        print("| --- | --- | ---: | ---: | ---: |")
        let matrix = randomBF16(count: rows * cols, seed: 1, scale: 0.02).reshaped([rows, cols])
        for (type, dq) in [(QuantType.nf4, true), (.nf4, false), (.fp4, true)] {
            let t = best(of: repeats) { _ = try! Quantized4BitTensor(quantizing: matrix, type: type, doubleQuant: dq) }
            row("\(rows)×\(cols) bf16", type, dq, rows * cols, t, matrix.byteCount)
        }
        let t = best(of: repeats) {
            let q = try! Quantized4BitTensor(quantizing: matrix, type: .nf4, doubleQuant: true)
            _ = q.dequantized()
        }
        row("\(rows)×\(cols) quantize+dequantize", .nf4, true, rows * cols, t, matrix.byteCount)

        // SmolLM2-135M: 30 layers, hidden 576, MLP 1536, 9 heads and 3 KV heads of 64.
        let shapes = [(576, 576), (192, 576), (192, 576), (576, 576), (1536, 576), (1536, 576), (576, 1536)]
        let layers = (0..<30).map { l in shapes.enumerated().map { i, s in
            randomBF16(count: s.0 * s.1, seed: UInt64(l * 7 + i + 2), scale: 0.02).reshaped([s.0, s.1]) } }
        let elements = layers.joined().reduce(0) { $0 + $1.elementCount }
        let bytes = layers.joined().reduce(0) { $0 + $1.byteCount }
        let tm = best(of: repeats) {
            for layer in layers { for w in layer { _ = try! Quantized4BitTensor(quantizing: w, type: .nf4, doubleQuant: true) } }
        }
        row("SmolLM2-135M linear weights (210)", .nf4, true, elements, tm, bytes)

        if let model {
            let out = NSTemporaryDirectory() + "qlora-bench-\(getpid())"
            let start = Date()
            try ModelQuantizer().quantize(modelDirectory: model, outputDirectory: out)
            let seconds = Date().timeIntervalSince(start)
            try? FileManager.default.removeItem(atPath: out)
            print("| quantize \(model) (read + quantize + write) | nf4 + dq | | \(String(format: "%.3f", seconds)) | |")
        }
        print("\ncores: \(ProcessInfo.processInfo.activeProcessorCount)")
    }

    private func row(_ what: String, _ type: QuantType, _ dq: Bool, _ n: Int, _ seconds: Double, _ bytes: Int) {
        print("| \(what) | \(type.rawValue)\(dq ? " + dq" : "") | \(n) | \(String(format: "%.4f", seconds)) | "
              + String(format: "%.2f", Double(bytes) / seconds / 1e9) + " |")
    }

    private func best(of n: Int, _ body: () -> Void) -> Double {
        var best = Double.infinity
        for _ in 0..<max(1, n) {
            let start = DispatchTime.now().uptimeNanoseconds
            body()
            best = min(best, Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9)
        }
        return best
    }

    private func randomBF16(count: Int, seed: UInt64, scale: Float) -> Tensor {
        let bits = benchNoise(count: count, seed: seed).map { bf16Bits(from: $0 * 2 * scale) }
        return Tensor(copying: bits, shape: [count], dtype: .bf16)
    }
}

/// `count` benchmark inputs uniform in [−0.5, 0.5) from a xorshift generator seeded with `seed`.
func benchNoise(count: Int, seed: UInt64) -> [Float] {
    var state = seed &* 0x9E3779B97F4A7C15 | 1
    return (0..<count).map { _ in
        state ^= state << 13; state ^= state >> 7; state ^= state << 17
        return Float(state >> 40) / Float(1 << 24) - 0.5
    }
}
