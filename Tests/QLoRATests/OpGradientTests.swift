import CPUBackend
import Llama
import XCTest

/// Every op's backward against central finite differences of L = Σ r ⊙ forward(x) (computed in Double where it
/// matters), and the BLAS versions against the plain reference loops.
final class OpGradientTests: XCTestCase {
    var rng = TestRandom(seed: 21)
    func random(_ n: Int, _ scale: Float = 1) -> [Float] { (0..<n).map { _ in rng.normal() * scale } }

    /// Checks analytic gradient `grad` of `loss` at `x` on `samples` coordinates.
    func checkGradient(_ x: [Float], _ grad: [Float], samples: Int = 24, h: Float = 1e-2, tolerance: Double = 2e-2,
                       _ what: String, loss: ([Float]) -> Double) {
        var worst = 0.0
        for s in 0..<samples {
            let i = (s * 7919) % x.count
            var xp = x, xm = x
            xp[i] += h; xm[i] -= h
            let numeric = (loss(xp) - loss(xm)) / Double(2 * h)
            let err = abs(numeric - Double(grad[i])) / max(1e-3, abs(numeric) + abs(Double(grad[i])))
            worst = max(worst, err)
        }
        XCTAssertLessThan(worst, tolerance, "\(what): worst relative error \(worst)")
    }

    func dot(_ a: [Float], _ b: [Float]) -> Double { zip(a, b).reduce(0.0) { $0 + Double($1.0) * Double($1.1) } }

    func testRMSNorm() {
        let rows = 3, width = 16
        let x = random(rows * width), w = random(width), r = random(rows * width)
        func f(_ x: [Float]) -> Double {
            var y = [Float](repeating: 0, count: x.count), s = [Float](repeating: 0, count: rows)
            CPUOps.rmsNormForward(&y, &s, x, w, rows: rows, width: width, eps: 1e-5)
            return dot(y, r)
        }
        var y = [Float](repeating: 0, count: x.count), s = [Float](repeating: 0, count: rows)
        CPUOps.rmsNormForward(&y, &s, x, w, rows: rows, width: width, eps: 1e-5)
        var dx = [Float](repeating: 0, count: x.count)
        CPUOps.rmsNormBackward(&dx, r, x, w, s, rows: rows, width: width, accumulate: false)
        checkGradient(x, dx, "rmsnorm", loss: f)
    }

    func testRoPEIsARotationAndItsInverseIsTheBackward() {
        let (b, t, h, d) = (2, 5, 3, 8)
        var cosT = [Float](), sinT = [Float]()
        for pos in 0..<t { for i in 0..<d { let a = Float(pos) * Float(i % (d / 2) + 1) * 0.3; cosT.append(cos(a)); sinT.append(sin(a)) } }
        let x = random(b * t * h * d), r = random(x.count)
        var y = x
        CPUOps.rope(&y, cos: cosT, sin: sinT, batch: b, tokens: t, heads: h, headDim: d)
        XCTAssertEqual(dot(y, y), dot(x, x), accuracy: 1e-3, "a rotation keeps the norm")
        var g = r
        CPUOps.rope(&g, cos: cosT, sin: sinT, batch: b, tokens: t, heads: h, headDim: d, inverse: true)
        checkGradient(x, g, "rope") { x in
            var y = x
            CPUOps.rope(&y, cos: cosT, sin: sinT, batch: b, tokens: t, heads: h, headDim: d)
            return dot(y, r)
        }
    }

    func testAttentionBLASEqualsReferenceAndGradients() {
        let (b, t, h, hkv, d) = (2, 7, 4, 2, 8)
        let q = random(b * t * h * d), k = random(b * t * hkv * d), v = random(b * t * hkv * d), r = random(b * t * h * d)
        func forward(_ q: [Float], _ k: [Float], _ v: [Float], reference: Bool = false) -> ([Float], [Float]) {
            var out = [Float](repeating: 0, count: q.count), p = [Float](repeating: 0, count: b * h * t * t)
            if reference {
                CPUOps.attentionForwardReference(&out, &p, q: q, k: k, v: v, batch: b, tokens: t, heads: h, kvHeads: hkv, headDim: d)
            } else {
                CPUOps.attentionForward(&out, &p, q: q, k: k, v: v, batch: b, tokens: t, heads: h, kvHeads: hkv, headDim: d)
            }
            return (out, p)
        }
        let (out, p) = forward(q, k, v), (outRef, pRef) = forward(q, k, v, reference: true)
        let layout = CPUOps.AttentionProbabilities(batch: b, tokens: t, heads: h, starts: nil)
        XCTAssertLessThan(relativeError(out, outRef), 1e-5)
        XCTAssertEqual(p.count, layout.count)
        XCTAssertLessThan(relativeError(layout.expanded(p), pRef), 1e-5)
        let (dq, dk, dv) = attentionBackwardAgainstReference(dout: r, probs: p, q: q, k: k, v: v,
                                                             shape: (b, t, h, hkv, d), fill: 0)
        checkGradient(q, dq, "attention dq") { dot(forward($0, k, v).0, r) }
        checkGradient(k, dk, "attention dk") { dot(forward(q, $0, v).0, r) }
        checkGradient(v, dv, "attention dv") { dot(forward(q, k, $0).0, r) }
    }

    /// A sequence over three row blocks (the last one ragged): the blocked products against the plain loops; with
    /// packed documents (one starting inside a block, one at a block's start), only the blocks' keys are kept.
    func testAttentionBLASOverSeveralRowBlocksEqualsReference() {
        let (b, t, h, hkv, d) = (2, 2 * CPUOps.attentionRowBlock + 5, 3, 1, 8)
        let q = random(b * t * h * d), k = random(b * t * hkv * d), v = random(b * t * hkv * d)
        let r = random(b * t * h * d)
        var out = [Float](repeating: 0, count: q.count), p: [Float] = []
        CPUOps.attentionForward(&out, &p, q: q, k: k, v: v, batch: b, tokens: t, heads: h, kvHeads: hkv, headDim: d)
        var outRef = out, pRef = [Float](repeating: .nan, count: b * h * t * t)
        CPUOps.attentionForwardReference(&outRef, &pRef, q: q, k: k, v: v, batch: b, tokens: t, heads: h, kvHeads: hkv,
                                         headDim: d)
        let layout = CPUOps.AttentionProbabilities(batch: b, tokens: t, heads: h, starts: nil)
        XCTAssertLessThan(relativeError(out, outRef), 1e-5)
        XCTAssertLessThan(relativeError(layout.expanded(p), pRef), 1e-5)   // zeros included
        _ = attentionBackwardAgainstReference(dout: r, probs: p, q: q, k: k, v: v, shape: (b, t, h, hkv, d),
                                              fill: .nan)   // every entry written (NaN before)

        // Row 0: documents at 0, 50 and 128 (a block's first row); row 1: one document, then one from 200.
        let starts = (0..<t).map { i in i < 50 ? 0 : i < 128 ? 50 : 128 } + (0..<t).map { i in i < 200 ? 0 : 200 }
        CPUOps.attentionForward(&out, &p, q: q, k: k, v: v, batch: b, tokens: t, heads: h, kvHeads: hkv, headDim: d,
                                starts: starts)
        let packed = CPUOps.AttentionProbabilities(batch: b, tokens: t, heads: h, starts: starts)
        XCTAssertEqual(p.count, packed.count)
        XCTAssertLessThan(packed.count, layout.count)
        // The plain loops per document: each one's rows and keys are a sequence of their own.
        let full = packed.expanded(p)
        for (row, documents) in [(0, [0..<50, 50..<128, 128..<t]), (1, [0..<200, 200..<t])] {
            for doc in documents {
                let n = doc.count
                func part(_ x: [Float], _ heads: Int) -> [Float] {
                    Array(x[((row * t + doc.lowerBound) * heads * d)..<((row * t + doc.upperBound) * heads * d)])
                }
                var o = [Float](repeating: 0, count: n * h * d), pd = [Float](repeating: 0, count: h * n * n)
                CPUOps.attentionForwardReference(&o, &pd, q: part(q, h), k: part(k, hkv), v: part(v, hkv), batch: 1,
                                                 tokens: n, heads: h, kvHeads: hkv, headDim: d)
                XCTAssertLessThan(relativeError(part(out, h), o), 1e-5, "row \(row), document \(doc)")
                for hh in 0..<h {
                    for i in 0..<n {
                        let fullRow = ((row * h + hh) * t + doc.lowerBound + i) * t, seen = fullRow + doc.lowerBound
                        let docRow = (hh * n + i) * n
                        let seenProbabilities = Array(full[seen...(seen + i)])
                        XCTAssertLessThan(relativeError(seenProbabilities, Array(pd[docRow...(docRow + i)])), 1e-5)
                        XCTAssertEqual(full[fullRow..<seen].reduce(0, +), 0)
                    }
                }
            }
        }
        // Backward with documents against the expanded probabilities in the plain loops (zero where unseen).
        var dq = [Float](repeating: .nan, count: q.count), dk = [Float](repeating: .nan, count: k.count), dv = dk
        CPUOps.attentionBackward(dq: &dq, dk: &dk, dv: &dv, dout: r, probs: p, q: q, k: k, v: v, batch: b, tokens: t,
                                 heads: h, kvHeads: hkv, headDim: d, starts: starts)
        var dqR = dq, dkR = dk, dvR = dv
        CPUOps.attentionBackwardReference(dq: &dqR, dk: &dkR, dv: &dvR, dout: r, probs: full, q: q, k: k, v: v,
                                          batch: b, tokens: t, heads: h, kvHeads: hkv, headDim: d)
        XCTAssertLessThan(relativeError(dq, dqR), 1e-5)
        XCTAssertLessThan(relativeError(dk, dkR), 1e-5)
        XCTAssertLessThan(relativeError(dv, dvR), 1e-5)
    }

    /// The blocked attention backward against the plain loops on the same inputs (the gradients start as `fill`,
    /// the reference's as what the blocked one wrote; the reference reads the probabilities expanded); returns the
    /// blocked one's dq, dk, dv.
    func attentionBackwardAgainstReference(dout: [Float], probs: [Float], q: [Float], k: [Float], v: [Float],
                                           shape: (b: Int, t: Int, h: Int, hkv: Int, d: Int),
                                           fill: Float) -> (dq: [Float], dk: [Float], dv: [Float]) {
        let (b, t, h, hkv, d) = shape
        var dq = [Float](repeating: fill, count: q.count), dk = [Float](repeating: fill, count: k.count), dv = dk
        CPUOps.attentionBackward(dq: &dq, dk: &dk, dv: &dv, dout: dout, probs: probs, q: q, k: k, v: v, batch: b,
                                 tokens: t, heads: h, kvHeads: hkv, headDim: d)
        var dqR = dq, dkR = dk, dvR = dv
        let full = CPUOps.AttentionProbabilities(batch: b, tokens: t, heads: h, starts: nil).expanded(probs)
        CPUOps.attentionBackwardReference(dq: &dqR, dk: &dkR, dv: &dvR, dout: dout, probs: full, q: q, k: k, v: v,
                                          batch: b, tokens: t, heads: h, kvHeads: hkv, headDim: d)
        XCTAssertLessThan(relativeError(dq, dqR), 1e-5)
        XCTAssertLessThan(relativeError(dk, dkR), 1e-5)
        XCTAssertLessThan(relativeError(dv, dvR), 1e-5)
        return (dq, dk, dv)
    }

    func testSwiGLU() {
        let g = random(40), u = random(40), r = random(40)
        var dg = [Float](repeating: 0, count: 40), du = dg
        CPUOps.swigluBackward(dgate: &dg, dup: &du, da: r, gate: g, up: u)
        func f(_ g: [Float], _ u: [Float]) -> Double {
            var a = [Float](repeating: 0, count: 40)
            CPUOps.swigluForward(&a, gate: g, up: u)
            return dot(a, r)
        }
        checkGradient(g, dg, "swiglu gate") { f($0, u) }
        checkGradient(u, du, "swiglu up") { f(g, $0) }
    }

    func testCrossEntropy() {
        let vocab = 11, rows = 4
        let logits = random(rows * vocab, 2)
        let targets = [3, -100, 0, 10]
        var d: [Float]? = [Float](repeating: 0, count: logits.count)
        let (loss, count) = CPUOps.crossEntropy(logits, targets: targets, vocab: vocab, dlogits: &d)
        XCTAssertEqual(count, 3)
        // Independent: −log softmax by hand for row 0.
        let row0 = logits[0..<vocab].map { Double($0) }
        let lse = log(row0.map { exp($0) }.reduce(0, +))
        XCTAssertGreaterThan(loss, 0)
        var none: [Float]? = nil
        XCTAssertEqual(CPUOps.crossEntropy(Array(logits[0..<vocab]), targets: [3], vocab: vocab, dlogits: &none).loss,
                       lse - row0[3], accuracy: 1e-6)  // exponentials taken in float32
        checkGradient(logits, d!, h: 1e-2, "cross-entropy") { x in
            var none: [Float]? = nil
            return CPUOps.crossEntropy(x, targets: targets, vocab: vocab, dlogits: &none).loss
        }
    }

    func testBLASEqualsNaiveLoops() {
        for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
            let (m, n, k) = (13, 9, 17)
            let a = random(m * k), b = random(k * n)
            var c1 = random(m * n), c2 = c1
            a.withUnsafeBufferPointer { ap in b.withUnsafeBufferPointer { bp in
                c1.withUnsafeMutableBufferPointer { cp in
                    BLAS.sgemm(transposeA: ta, transposeB: tb, m: m, n: n, k: k, alpha: 0.5, a: ap.baseAddress!, lda: ta ? m : k,
                               b: bp.baseAddress!, ldb: tb ? k : n, beta: 2, c: cp.baseAddress!, ldc: n)
                }
                c2.withUnsafeMutableBufferPointer { cp in
                    BLAS.naiveSgemm(transposeA: ta, transposeB: tb, m: m, n: n, k: k, alpha: 0.5, a: ap.baseAddress!, lda: ta ? m : k,
                                    b: bp.baseAddress!, ldb: tb ? k : n, beta: 2, c: cp.baseAddress!, ldc: n)
                }
            } }
            XCTAssertLessThan(relativeError(c1, c2), 1e-5, "transposes \(ta) \(tb)")
        }
    }
}

/// Evaluating or generating before or during training changes no training number.
final class EvaluationIsolationTests: XCTestCase {
    func testEvaluationBeforeAndBetweenStepsChangesNothing() throws {
        let golden = try Shared.requireGolden()
        func run(evaluate: Bool) throws -> [String: LoRAWeights] {
            var lora = LoRAConfig()
            lora.targetModules = ["all-linear"]; lora.dropout = 0.1
            let model = try LlamaModel.load(directory: golden + "/tiny-llama", lora: lora, seed: 3)
            var rng = SeededGenerator(seed: 9)
            let ids = (0..<64).map { ($0 * 37) % 384 }
            for _ in 0..<3 {
                if evaluate { _ = model.logits(inputIds: ids, batch: 2, tokens: 32) }
                let r = model.step(inputIds: ids, labels: ids, batch: 2, tokens: 32, rng: &rng)
                for key in model.adapters.keys {
                    var w = model.adapters[key]!
                    for i in w.a.indices { w.a[i] -= 0.01 * r.gradients[key]!.a[i] }
                    for i in w.b.indices { w.b[i] -= 0.01 * r.gradients[key]!.b[i] }
                    model.adapters[key] = w
                }
            }
            return model.adapters
        }
        let plain = try run(evaluate: false), withEval = try run(evaluate: true)
        for (k, w) in plain { XCTAssertEqual(w, withEval[k], k) }
    }
}
