import ArgumentParser
import CPUBackend
import Dispatch
import Foundation

/// `qlora bench-gemm`: GFLOP/s of our GEMM (fp32 and bf16) beside the CBLAS for the products of the CPU training
/// step, in interleaved rounds (the best of each cell is kept, so a noisy neighbour costs rounds, not the ratio).
struct BenchGEMM: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench-gemm",
        abstract: "Benchmark our CPU GEMM (fp32, bf16) against the CBLAS on the training step's matrix products.")

    @Option(help: "Rows of the step's activations (batch × tokens).")
    var rows: Int = 512

    @Option(help: "Tokens of one sequence (the attention products are T × T × 64 per head).")
    var tokens: Int = 512

    @Option(help: "LoRA rank.")
    var rank: Int = 16

    @Option(help: "Interleaved rounds (the best time of each cell is reported).")
    var rounds: Int = 3

    @Option(help: "Seconds each cell runs for in a round (at least one call).")
    var seconds: Double = 0.15

    /// The sizes checked before anything is allocated: `--rows 0` (or `--tokens`, `--rank` 0) used to time empty
    /// products forever, a negative one trapped, and 2^62 rows failed an allocation.
    func validate() throws {
        for (flag, value) in [("--rows", rows), ("--tokens", tokens), ("--rank", rank)] where value < 1 {
            throw ValidationError("\(flag) is \(value): must be at least 1")
        }
        guard (1...1000).contains(rounds) else {
            throw ValidationError("--rounds is \(rounds): must be from 1 to 1000")
        }
        guard seconds.isFinite, seconds > 0, seconds <= 3600 else {
            throw ValidationError("--seconds is \(seconds): must be above 0 and at most 3600")
        }
        for p in products() {
            for (rows, columns) in [(p.m, p.k), (p.k, p.n), (p.m, p.n)] {
                let (count, overflow) = rows.multipliedReportingOverflow(by: columns)
                guard !overflow, count <= Self.maximumMatrixElements else {
                    throw ValidationError("--rows \(self.rows), --tokens \(tokens), --rank \(rank): the \(p.name) "
                        + "product needs a \(rows) × \(columns) matrix, more than the "
                        + "\(Self.maximumMatrixElements) elements allowed")
                }
            }
        }
    }

    /// Most elements one matrix of a product may hold (1 GiB of floats).
    static let maximumMatrixElements = 1 << 28

    /// One product: C (m×n) = op(A) op(B) (+ C with `accumulate`).
    struct Product {
        let name: String, transposeA: Bool, transposeB: Bool, m: Int, n: Int, k: Int, accumulate: Bool
        var op: String { (transposeA ? "T" : "N") + (transposeB ? "T" : "N") }
    }

    /// The step's products for SmolLM2-135M (hidden 576, MLP 1536, 3 KV heads of 64, vocabulary 49152), named by
    /// the call that makes them.
    func products() -> [Product] {
        let n = rows, r = rank, t = tokens
        let lmRows = max(1, min(n, (1 << 22) / 49152))
        var list: [Product] = []
        for (what, out, inF) in [("q/o", 576, 576), ("k/v", 192, 576), ("gate/up", 1536, 576), ("down", 576, 1536)] {
            list.append(Product(name: "\(what) forward", transposeA: false, transposeB: true, m: n, n: out, k: inF,
                                accumulate: false))
            list.append(Product(name: "\(what) dx", transposeA: false, transposeB: false, m: n, n: inF, k: out,
                                accumulate: false))
        }
        list += [
            Product(name: "lm_head forward", transposeA: false, transposeB: true, m: lmRows, n: 49152, k: 576,
                    accumulate: false),
            Product(name: "lm_head dx", transposeA: false, transposeB: false, m: lmRows, n: 576, k: 49152,
                    accumulate: false),
            Product(name: "LoRA x·Aᵀ", transposeA: false, transposeB: true, m: n, n: r, k: 576, accumulate: false),
            Product(name: "LoRA z·Bᵀ", transposeA: false, transposeB: true, m: n, n: 1536, k: r, accumulate: true),
            Product(name: "LoRA dB", transposeA: true, transposeB: false, m: 1536, n: r, k: n, accumulate: true),
            Product(name: "LoRA dz", transposeA: false, transposeB: false, m: n, n: r, k: 1536, accumulate: false),
            Product(name: "LoRA dA", transposeA: true, transposeB: false, m: r, n: 576, k: n, accumulate: true),
            Product(name: "LoRA dx", transposeA: false, transposeB: false, m: n, n: 576, k: r, accumulate: false),
            Product(name: "attention Q·Kᵀ", transposeA: false, transposeB: true, m: t, n: t, k: 64,
                    accumulate: false),
            Product(name: "attention P·V", transposeA: false, transposeB: false, m: t, n: 64, k: t, accumulate: false),
            Product(name: "attention Pᵀ·dO", transposeA: true, transposeB: false, m: t, n: 64, k: t,
                    accumulate: true),
        ]
        return list
    }

    func run() throws {
        let list = products()
        let kinds = ["CBLAS", "ours fp32", "ours bf16"]
        var best = [[Double]](repeating: [Double](repeating: .infinity, count: kinds.count), count: list.count)
        for _ in 0..<rounds {
            for (i, p) in list.enumerated() {
                let a = benchNoise(count: p.m * p.k, seed: 1), b = benchNoise(count: p.k * p.n, seed: 2)
                var c = [Float](repeating: 0, count: p.m * p.n)
                for kind in kinds.indices {
                    best[i][kind] = min(best[i][kind], time(p, kind, a, b, &c))
                }
            }
        }
        print("| product | op | M × N × K | CBLAS | ours fp32 | ours bf16 | fp32 ours/CBLAS | bf16 ours/CBLAS |")
        print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |")
        for (i, p) in list.enumerated() {
            let flops = 2 * Double(p.m) * Double(p.n) * Double(p.k)
            let g = best[i].map { flops / $0 / 1e9 }
            print("| \(p.name) | \(p.op) | \(p.m) × \(p.n) × \(p.k) | " + g.map { String(format: "%.1f", $0) }
                .joined(separator: " | ") + String(format: " | %.2f | %.2f |", g[1] / g[0], g[2] / g[0]))
        }
        print("\nGFLOP/s, best of \(rounds) interleaved rounds; cores \(GEMM.cores); CBLAS: \(BLAS.implementation); "
              + "ours: fp32 \(GEMM.Kernel.bestFP32), bf16 \(GEMM.Kernel.bestBF16)"
              + (GEMM.Kernel.bestBF16.isBF16 ? "" : " (no AVX512_BF16 here: bf16-rounded inputs, fp32 kernel)"))
        let env = ProcessInfo.processInfo.environment
        print("OPENBLAS_CORETYPE=\(env["OPENBLAS_CORETYPE"] ?? "(unset)") "
              + "OPENBLAS_L2_SIZE=\(env["OPENBLAS_L2_SIZE"] ?? "(unset)")")
    }

    /// Seconds per call of product `p` with implementation `kind` (0 CBLAS, 1 ours fp32, 2 ours bf16).
    private func time(_ p: Product, _ kind: Int, _ a: [Float], _ b: [Float], _ output: inout [Float]) -> Double {
        let lda = p.transposeA ? p.m : p.k, ldb = p.transposeB ? p.k : p.n, beta: Float = p.accumulate ? 1 : 0
        return a.withUnsafeBufferPointer { a in b.withUnsafeBufferPointer { b in
        output.withUnsafeMutableBufferPointer { c in
            func call() {
                if kind == 0 {
                    BLAS.cblasSgemm(transposeA: p.transposeA, transposeB: p.transposeB, m: p.m, n: p.n, k: p.k,
                                    a: a.baseAddress!, lda: lda, b: b.baseAddress!, ldb: ldb, beta: beta,
                                    c: c.baseAddress!, ldc: p.n)
                } else {
                    GEMM.sgemm(transposeA: p.transposeA, transposeB: p.transposeB, m: p.m, n: p.n, k: p.k,
                               a: a.baseAddress!, lda: lda, b: b.baseAddress!, ldb: ldb, beta: beta,
                               c: c.baseAddress!, ldc: p.n, bf16: kind == 2)
                }
            }
            if kind == 0 && !BLAS.hasCBLAS { return Double.infinity }
            call()  // warm the caches and the packing buffers
            let start = DispatchTime.now().uptimeNanoseconds
            var calls = 0, elapsed = 0.0
            repeat {
                call()
                calls += 1
                elapsed = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
            } while elapsed < seconds
            return elapsed / Double(calls)
        } } }
    }
}
