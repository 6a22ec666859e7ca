import Quantization
import Tensors
import XCTest

/// The 4-bit quantizer against plain transcriptions of bitsandbytes' rules, on inputs the golden file lacks.
final class QuantizationTests: XCTestCase {
    /// bitsandbytes' NF4 comparison tree, written out as in the kernel (the oracle for the branch-free search).
    private func nf4Tree(_ x: Float) -> UInt8 {
        if x > 0.03979014977812767 {
            if x > 0.3893125355243683 {
                if x > 0.6427869200706482 { return x > 0.8614784181118011 ? 0b1111 : 0b1110 }
                return x > 0.5016634166240692 ? 0b1101 : 0b1100
            }
            if x > 0.2035212516784668 { return x > 0.2920137718319893 ? 0b1011 : 0b1010 }
            return x > 0.1202552504837513 ? 0b1001 : 0b1000
        }
        if x > -0.33967943489551544 {
            if x > -0.13791173323988914 { return x > -0.045525018125772476 ? 0b0111 : 0b0110 }
            return x > -0.23460740596055984 ? 0b0101 : 0b0100
        }
        if x > -0.6106329262256622 { return x > -0.4599952697753906 ? 0b0011 : 0b0010 }
        return x > -0.8480964004993439 ? 0b0001 : 0b0000
    }

    /// bitsandbytes' FP4 comparison tree.
    private func fp4Tree(_ value: Float) -> UInt8 {
        let sign: UInt8 = value < 0 ? 0b1000 : 0
        let x = abs(value)
        if x > 0.29166667 {
            if x > 0.583333 { return (x > 0.8333333 ? 0b0011 : 0b0010) + sign }
            return (x > 0.4166667 ? 0b101 : 0b100) + sign
        }
        if x > 0.0859375 { return (x > 0.20833333 ? 0b0111 : 0b0110) + sign }
        return (x > 0.00260417 ? 0b0001 : 0b0000) + sign
    }

    func testCodeSearchEqualsKernelTreeEverywhere() {
        var values: [Float] = [0, -0, .nan, 1, -1, .infinity, -.infinity]
        let thresholds: [Float] = [-0.8480964004993439, -0.6106329262256622, -0.4599952697753906, -0.33967943489551544,
                                   -0.23460740596055984, -0.13791173323988914, -0.045525018125772476,
                                   0.03979014977812767, 0.1202552504837513, 0.2035212516784668, 0.2920137718319893,
                                   0.3893125355243683, 0.5016634166240692, 0.6427869200706482, 0.8614784181118011,
                                   0.00260417, 0.0859375, 0.20833333, 0.29166667, 0.4166667, 0.583333, 0.8333333]
        for t in thresholds { values += [t, t.nextUp, t.nextDown, -t, (-t).nextUp, (-t).nextDown] }
        var rng = TestRandom(seed: 7)
        for _ in 0..<200_000 { values.append(rng.uniform()) }
        for x in values {
            XCTAssertEqual(NF4.code(for: x), nf4Tree(x), "NF4 code of \(x)")
            XCTAssertEqual(FP4.code(for: x), fp4Tree(x), "FP4 code of \(x)")
        }
    }

    /// Other blocksizes, f32 and f16 inputs, an odd count and an all-zero block, against a scalar re-statement of
    /// the algorithm (block absmax, multiply by its float32 reciprocal, code, pack high nibble first).
    func testBlocksizesDtypesAndRaggedInputsAgainstScalarRestatement() throws {
        var rng = TestRandom(seed: 11)
        for (count, blocksize, dtype) in [(1001, 32, DType.f32), (5000, 128, .f16), (4097, 4096, .bf16),
                                          (777, 256, .f32), (3, 64, .bf16), (2048, 1024, .f16)] {
            var values = (0..<count).map { _ in rng.normal() * 0.05 }
            for i in 0..<min(blocksize, count / 2) { values[i] = 0 }  // an all-zero first block
            let tensor = Tensor(values, shape: [count], dtype: dtype)
            let exact = tensor.floats()
            for type in QuantType.allCases {
                let q = try Quantized4BitTensor(quantizing: tensor, type: type, blocksize: blocksize, doubleQuant: false)
                var codes: [UInt8] = []
                var absmax: [Float] = []
                for start in stride(from: 0, to: count, by: blocksize) {
                    let block = exact[start..<min(count, start + blocksize)]
                    let m = block.map { abs($0) }.max()!
                    absmax.append(m)
                    codes += block.map { type.code(for: GPUReciprocal.flushToZero($0 * GPUReciprocal.reciprocal(m))) }
                }
                if count % 2 == 1 { codes.append(type.code(for: 0 * GPUReciprocal.reciprocal(absmax.last!))) }
                let packed = stride(from: 0, to: codes.count, by: 2).map { codes[$0] << 4 | codes[$0 + 1] }
                XCTAssertEqual(q.packed, packed, "\(type) blocksize \(blocksize) \(dtype)")
                guard case .float32(let got) = q.scales else { return XCTFail("expected float32 scales") }
                XCTAssertEqual(got, absmax)
                // Dequantized values: code book value times absmax, rounded to the input dtype.
                let deq = q.dequantized()
                XCTAssertEqual(deq.dtype, dtype)
                let expected = (0..<count).map { i -> Float in
                    let c = i % 2 == 0 ? packed[i / 2] >> 4 : packed[i / 2] & 0xF
                    return type.dequantizationTable[Int(c)] * absmax[i / blocksize]
                }
                XCTAssertEqual(deq.bytesArray(), Tensor(expected, shape: [count], dtype: dtype).bytesArray())
                // Every value within half the widest gap of the code book times its absmax (here 0.5 for FP4's
                // 0.667..1 step and NF4's 0.72..1 step, halved).
                for i in 0..<count where absmax[i / blocksize] > 0 {
                    XCTAssertLessThanOrEqual(abs(expected[i] - exact[i]), 0.17 * absmax[i / blocksize] + 1e-7)
                }
            }
        }
    }

    func testDoubleQuantizationRecoversScales() throws {
        var rng = TestRandom(seed: 3)
        let values = (0..<(64 * 700 + 5)).map { _ in rng.normal() * 0.02 }
        let tensor = Tensor(values, shape: [values.count], dtype: .bf16)
        let plain = try Quantized4BitTensor(quantizing: tensor, type: .nf4, doubleQuant: false)
        let double = try Quantized4BitTensor(quantizing: tensor, type: .nf4, doubleQuant: true)
        XCTAssertEqual(plain.packed, double.packed, "double quantization changes only the scales")
        guard case .float32(let absmax) = plain.scales, case .doubleQuantized(let d) = double.scales else {
            return XCTFail("unexpected scale storage")
        }
        XCTAssertEqual(d.codes.count, 701)
        XCTAssertEqual(d.nestedAbsmax.count, 3)
        let mean = Float(absmax.reduce(0.0) { $0 + Double($1) } / Double(absmax.count))
        XCTAssertEqual(d.offset, mean, accuracy: mean * 1e-6)
        let recovered = d.decompressed()
        for (a, r) in zip(absmax, recovered) {
            // 8-bit dynamic quantization of the centred values: relative error of the centred value under ~1%.
            XCTAssertEqual(r, a, accuracy: 0.01 * d.nestedAbsmax.max()! + 1e-7)
        }
    }

    func testRejectsBadBlocksizeAndDtype() {
        let t = Tensor(zeros: [64], dtype: .f32)
        XCTAssertThrowsError(try Quantized4BitTensor(quantizing: t, type: .nf4, blocksize: 48, doubleQuant: false)) {
            XCTAssertEqual($0 as? QuantizationError, .invalidBlocksize(48))
        }
        XCTAssertThrowsError(try Quantized4BitTensor(quantizing: Tensor(zeros: [64], dtype: .i32), type: .nf4, doubleQuant: false)) {
            XCTAssertEqual($0 as? QuantizationError, .unsupportedDType(.i32))
        }
    }

    func testBF16RoundsToNearestEven() {
        // 1 + 2^-8 lies exactly halfway between two bf16 values: ties go to the even mantissa (1.0).
        XCTAssertEqual(bf16Bits(from: 1 + 1 / 256), 0x3F80)
        // 1 + 3·2^-8 is halfway between 1+2^-7 (odd mantissa) and 1+2^-6: rounds up to the even one.
        XCTAssertEqual(bf16Bits(from: 1 + 3 / 256), 0x3F82)
        XCTAssertEqual(bf16Bits(from: 1 + 1 / 256 + 1 / 65536), 0x3F81)
        XCTAssertEqual(bf16Bits(from: -2.5), 0xC020)
        XCTAssertEqual(bf16Bits(from: .greatestFiniteMagnitude), 0x7F80, "overflows to infinity")
        XCTAssertTrue(float(fromBF16: bf16Bits(from: .nan)).isNaN)
        XCTAssertEqual(f16Bits(from: 1 + 1 / 2048), 0x3C00)
        XCTAssertEqual(f16Bits(from: 65520), 0x7C00, "rounds to infinity")
        XCTAssertEqual(float(fromF16: 0x3555), 0.333251953125)
        var rng = TestRandom(seed: 5)
        for _ in 0..<10_000 {
            let x = rng.normal() * 100
            let b = float(fromBF16: bf16Bits(from: x))
            // Nearest: no other bf16 is closer.
            XCTAssertLessThanOrEqual(abs(b - x), abs(float(fromBF16: bf16Bits(from: x) &+ 1) - x))
            XCTAssertLessThanOrEqual(abs(b - x), abs(float(fromBF16: bf16Bits(from: x) &- 1) - x))
        }
    }
}
