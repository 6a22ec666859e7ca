import Foundation
import Llama
import ModelFiles
import Quantization
@testable import Training
import XCTest

final class OptimizerGoldenTests: XCTestCase {
    /// bitsandbytes AdamW8bit on one tensor for six steps (extra.safetensors): parameters within 1e-6 after each
    /// step, the final 8-bit codes equal for ≥ 99.9% of elements.
    func testEightBitAdamWMatchesBitsandbytes() throws {
        let golden = try Shared.requireGolden()
        let file = try SafeTensorsFile(path: golden + "/extra.safetensors")
        let json = try JSONValue(parsing: FileSystem.readBytes(golden + "/extra.json"))
        for name in ["p_even", "p_ragged"] {
            let key = "adamw8bit.\(name)"
            let h = json[key]!
            let settings = AdamWSettings(beta1: Float(h["betas"]!.arrayValue![0].doubleValue!),
                                         beta2: Float(h["betas"]!.arrayValue![1].doubleValue!),
                                         eps: Float(h["eps"]!.doubleValue!), weightDecay: Float(h["weight_decay"]!.doubleValue!))
            var opt = AdamW(kind: .adamw_8bit, settings: settings)
            var p = try file.tensor(named: key + ".p0").floats()
            let grads = try file.tensor(named: key + ".grads").floats()
            let n = p.count
            XCTAssertGreaterThanOrEqual(n, AdamW.minimumEightBitSize)
            for s in 0..<6 {
                opt.update(name, parameter: &p, gradient: Array(grads[(s * n)..<((s + 1) * n)]), lr: Float(h["lr"]!.doubleValue!))
                let expected = try file.tensor(named: key + ".p_after\(s)").floats()
                let worst = zip(p, expected).map { abs($0 - $1) }.max()!
                XCTAssertLessThanOrEqual(worst, 1e-6, "\(key) step \(s): worst |Δp| \(worst)")
            }
            guard case .eightBit(let m, let v, let am, let av)? = opt.states[name] else { return XCTFail("no 8-bit state") }
            let c1 = try file.tensor(named: key + ".final_state1").bytesArray()
            let c2 = try file.tensor(named: key + ".final_state2").bytesArray()
            let same1 = zip(m, c1).filter { $0 == $1 }.count, same2 = zip(v, c2).filter { $0 == $1 }.count
            XCTAssertGreaterThanOrEqual(Double(same1) / Double(n), 0.999, "\(key) state1: \(same1)/\(n)")
            XCTAssertGreaterThanOrEqual(Double(same2) / Double(n), 0.999, "\(key) state2: \(same2)/\(n)")
            XCTAssertLessThan(relativeError(am, try file.tensor(named: key + ".final_absmax1").floats()), 1e-5)
            XCTAssertLessThan(relativeError(av, try file.tensor(named: key + ".final_absmax2").floats()), 1e-5)
            print("\(key): state1 \(same1)/\(n), state2 \(same2)/\(n) codes equal")
        }
    }

    /// The 8-bit update's C loops (CVector's vector and plain ones) equal the plain Swift reference bit for bit: a
    /// ragged last block, gradients of every size with non-finite ones among them, weight decay, six steps.
    func testEightBitAdamWLoopEqualsItsReference() {
        var rng = SeededGenerator(seed: 9)
        let n = 4096 + 256 * 3 + 77
        let p0 = (0..<n).map { _ in Float.random(in: -1...1, using: &rng) }
        var grads = (0..<(6 * n)).map { i in Float.random(in: -1...1, using: &rng) * Float(pow(10, Double(i % 9) - 6)) }
        grads[5] = .nan; grads[n + 700] = .infinity; grads[3 * n + 4100] = -.infinity
        var runs: [([Float], AdamW)] = []
        for loop in [AdamW.EightBitLoop.swift, .plain, .vector] {
            AdamW.eightBitLoop = loop
            defer { AdamW.eightBitLoop = .vector }
            var opt = AdamW(kind: .paged_adamw_8bit, settings: AdamWSettings(weightDecay: 0.01))
            var p = p0
            for s in 0..<6 { opt.update("w", parameter: &p, gradient: Array(grads[(s * n)..<((s + 1) * n)]), lr: 1e-3) }
            runs.append((p, opt))
        }
        for r in 1..<3 {
            XCTAssertEqual(runs[0].0.map(\.bitPattern), runs[r].0.map(\.bitPattern), "run \(r)")
            guard case .eightBit(let m0, let v0, let a0, let b0)? = runs[0].1.states["w"],
                  case .eightBit(let m1, let v1, let a1, let b1)? = runs[r].1.states["w"] else {
                return XCTFail("state")
            }
            XCTAssertEqual(m0, m1); XCTAssertEqual(v0, v1)
            XCTAssertEqual(a0.map(\.bitPattern), a1.map(\.bitPattern))
            XCTAssertEqual(b0.map(\.bitPattern), b1.map(\.bitPattern))
        }
    }

    /// Five training steps on tiny-llama from tiny-adapter, torch AdamW and bitsandbytes PagedAdamW8bit: losses
    /// within 1e-4 and final adapter weights within 1e-4 relative.
    func testFiveTrainingStepsMatchTransformers() throws {
        let golden = try Shared.requireGolden()
        let ref = try SafeTensorsFile(path: golden + "/qlora.safetensors")
        let json = try JSONValue(parsing: FileSystem.readBytes(golden + "/qlora.json"))
        let batches = try ref.tensor(named: "train_batches")
        let ids = batches.integers()
        for (kind, name) in [(OptimizerKind.adamw, "adamw32"), (.paged_adamw_8bit, "paged_adamw8bit")] {
            let model = try LlamaModel.load(directory: golden + "/tiny-llama")
            try PEFTAdapter.load(directory: golden + "/tiny-adapter", into: model)
            var opt = AdamW(kind: kind, settings: AdamWSettings(beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0))
            var rng = SeededGenerator(seed: 0)
            var losses: [Double] = []
            for s in 0..<5 {
                let batch = Array(ids[(s * 128)..<((s + 1) * 128)])
                let r = model.step(inputIds: batch, labels: batch, batch: 4, tokens: 32, rng: &rng)
                losses.append(r.loss)
                opt.update(model, gradients: r.gradients, lr: 1e-3)
            }
            let expected = json["losses_\(name)"]!.arrayValue!.map { $0.doubleValue! }
            for (a, e) in zip(losses, expected) { XCTAssertEqual(a, e, accuracy: 1e-4, name) }
            for (key, w) in model.adapters {
                let parts = key.split(separator: ".")
                let path = PEFTAdapter.modulePath(layer: Int(parts[0])!, projection: String(parts[1]))
                for (matrix, values) in [("A", w.a), ("B", w.b)] {
                    let e = try ref.tensor(named: "after_\(name).base_model.model.\(path).lora_\(matrix).default.weight").floats()
                    XCTAssertLessThan(relativeError(values, e), 1e-4, "\(name) \(key) \(matrix)")
                }
            }
        }
    }
}
