import ModelFiles
import Quantization
import Tensors
import XCTest

/// bitsandbytes' `quantize_4bit` / `dequantize_4bit` outputs (nf4.safetensors) reproduced bit for bit.
final class QuantizationGoldenTests: XCTestCase {
    func testAllTwelveGoldenCasesBitExact() throws {
        let file = try SafeTensorsFile(path: try Shared.requireGolden() + "/nf4.safetensors")
        var checked = 0
        for input in ["w_aligned", "w_ragged", "w_big"] {
            let x = try file.tensor(named: "\(input).input")
            XCTAssertEqual(x.dtype, .bf16)
            for type in QuantType.allCases {
                for dq in [false, true] {
                    let key = "\(input).\(type.rawValue).dq\(dq ? 1 : 0)"
                    let q = try Quantized4BitTensor(quantizing: x, type: type, blocksize: 64, doubleQuant: dq)
                    assertBytesEqual(q.packed, try file.tensor(named: key + ".packed").bytesArray(), key + ".packed")
                    XCTAssertEqual(try file.tensor(named: key + ".packed").shape, [q.packed.count, 1])
                    assertBitsEqual(type.codeBook, try file.tensor(named: key + ".code").floats(), key + ".code")
                    switch q.scales {
                    case .float32(let absmax):
                        XCTAssertFalse(dq)
                        assertBitsEqual(absmax, try file.tensor(named: key + ".absmax").floats(), key + ".absmax")
                    case .doubleQuantized(let d):
                        XCTAssertTrue(dq)
                        assertBytesEqual(d.codes, try file.tensor(named: key + ".absmax").bytesArray(), key + ".absmax")
                        assertBitsEqual(d.nestedAbsmax, try file.tensor(named: key + ".nested_absmax").floats(), key + ".nested_absmax")
                        assertBitsEqual([d.offset], try file.tensor(named: key + ".offset").floats(), key + ".offset")
                        assertBitsEqual(d.nestedCodeBook, try file.tensor(named: key + ".nested_code").floats(), key + ".nested_code")
                    }
                    let dequant = q.dequantized()
                    XCTAssertEqual(dequant.shape, x.shape)
                    XCTAssertEqual(dequant.dtype, .bf16)
                    assertBytesEqual(dequant.bytesArray(), try file.tensor(named: key + ".dequant").bytesArray(), key + ".dequant")
                    checked += 1
                }
            }
        }
        XCTAssertEqual(checked, 12)
    }

    /// The unsigned dynamic map (Adam's second moment in 8-bit optimizers) equals the one bitsandbytes used.
    func testDynamicMapsMatchBitsandbytes() throws {
        let extra = try SafeTensorsFile(path: try Shared.requireGolden() + "/extra.safetensors")
        assertBitsEqual(DynamicMap.signed, try extra.tensor(named: "adamw8bit.p_even.final_qmap1").floats(), "signed map")
        assertBitsEqual(DynamicMap.unsigned, try extra.tensor(named: "adamw8bit.p_even.final_qmap2").floats(), "unsigned map")
    }
}

/// bitsandbytes 0.50.2 on an H200 (Fixtures/bnb-extra.safetensors, made by scripts/bnb_reference.py): bf16, f16 and
/// f32 inputs with values placed on the decision thresholds, every blocksize from 32 to 4096, NF4 and FP4, with and
/// without double quantization; and 8-bit blockwise quantization of f32 values.
final class QuantizationFixtureTests: XCTestCase {
    static let fixture = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .appendingPathComponent("Fixtures/bnb-extra.safetensors").path

    func testEveryDtypeBlocksizeAndTypeMatchesBitsandbytes() throws {
        let file = try SafeTensorsFile(path: Self.fixture)
        var cases = 0
        var exactCases = 0
        for dtype in ["bf16", "f16", "f32"] {
            let x = try file.tensor(named: "\(dtype).input")
            for blocksize in [32, 64, 128, 256, 512, 1024, 2048, 4096] {
                for type in QuantType.allCases {
                    for dq in [false, true] {
                        let key = "\(dtype).\(type.rawValue).bs\(blocksize).dq\(dq ? 1 : 0)"
                        guard file.entry(named: key + ".packed") != nil else { continue }
                        cases += 1
                        let q = try Quantized4BitTensor(quantizing: x, type: type, blocksize: blocksize, doubleQuant: dq)
                        let expectedPacked = try file.tensor(named: key + ".packed").bytesArray()
                        switch q.scales {
                        case .float32(let absmax):
                            assertBitsEqual(absmax, try file.tensor(named: key + ".absmax").floats(), key + ".absmax")
                        case .doubleQuantized(let d):
                            assertBytesEqual(d.codes, try file.tensor(named: key + ".absmax").bytesArray(), key + ".absmax")
                            assertBitsEqual(d.nestedAbsmax, try file.tensor(named: key + ".nested_absmax").floats(), key + ".nested_absmax")
                            assertBitsEqual([d.offset], try file.tensor(named: key + ".offset").floats(), key + ".offset")
                        }
                        let deq = q.dequantized().bytesArray()
                        let expectedDeq = try file.tensor(named: key + ".dequant").bytesArray()
                        if dtype == "f32" {
                            // f32 mantissas beyond 10 bits use the correctly rounded reciprocal (GPUReciprocal), which
                            // may differ from the GPU's in the last bit: allow a rare flipped code, nothing more.
                            let flipped = zip(q.packed, expectedPacked).filter { $0 != $1 }.count
                            XCTAssertLessThanOrEqual(flipped, 1, key + ".packed")
                            if flipped == 0 { assertBytesEqual(deq, expectedDeq, key + ".dequant") }
                        } else {
                            assertBytesEqual(q.packed, expectedPacked, key + ".packed")
                            assertBytesEqual(deq, expectedDeq, key + ".dequant")
                        }
                        if q.packed == expectedPacked { exactCases += 1 }
                    }
                }
            }
        }
        XCTAssertEqual(cases, 96, "3 dtypes × 8 blocksizes × 2 types × 2")
        print("bitsandbytes fixture: \(exactCases) of \(cases) cases bit-exact")
    }

    func testBlockwise8BitMatchesBitsandbytes() throws {
        let file = try SafeTensorsFile(path: Self.fixture)
        let x = try file.tensor(named: "q8.input").floats()
        assertBitsEqual(DynamicMap.signed, try file.tensor(named: "q8.code").floats(), "q8.code")
        let (codes, absmax) = Blockwise8Bit.quantize(x, blocksize: 256, map: DynamicMap.signed)
        assertBitsEqual(absmax, try file.tensor(named: "q8.absmax").floats(), "q8.absmax")
        let expected = try file.tensor(named: "q8.codes").bytesArray()
        let differing = zip(codes, expected).filter { $0 != $1 }.count
        // f32 block maxima: the reciprocal is exact to the GPU's only for short mantissas (see GPUReciprocal).
        XCTAssertLessThanOrEqual(differing, 2, "q8.codes: \(differing) of \(codes.count) differ")
    }
}

/// torch.mean of float32 CUDA tensors (Fixtures/torch-mean.safetensors, from an H200), one block, several blocks.
final class GPUMeanTests: XCTestCase {
    func testMeanMatchesTorchOnTheGPU() throws {
        let path = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
            .appendingPathComponent("Fixtures/torch-mean.safetensors").path
        let file = try SafeTensorsFile(path: path)
        var checked = 0
        var exactSumWouldFail = 0
        for name in file.names where name.hasSuffix(".input") {
            let key = String(name.dropLast(".input".count))
            let x = try file.tensor(named: name).floats()
            let expected = try file.tensor(named: key + ".torch_mean").floats()[0]
            assertBitsEqual([GPUMean.mean(x)], [expected], key)
            let exact = Float(x.reduce(0.0) { $0 + Double($1) }) * (1 / Float(x.count))
            if exact != expected { exactSumWouldFail += 1 }
            checked += 1
        }
        XCTAssertEqual(checked, 8)
        XCTAssertGreaterThan(exactSumWouldFail, 0, "the fixture should include sizes where a plain sum differs")
    }
}
