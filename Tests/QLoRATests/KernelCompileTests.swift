@testable import CUDABackend
import XCTest

/// Every kernel source compiles with NVRTC for Hopper, in both activation types. NVRTC needs no GPU, so this runs
/// on CPU-only machines too (CI installs `nvidia-cuda-nvrtc`); it is skipped, saying so, where NVRTC is missing.
final class KernelCompileTests: XCTestCase {
    func testEveryKernelCompilesWithNVRTC() throws {
        let compiler: KernelCompiler
        do { compiler = try KernelCompiler(cacheFolder: nil) } catch {
            throw XCTSkip("NVRTC not found, kernels not compiled: \(error)")
        }
        print("compiling with \(compiler.description)")
        for source in KernelSource.allCases {
            for bf16 in [false, true] {
                let cubin = try compiler.cubin(source, bf16: bf16, architecture: source.target(on: "sm_90"))
                XCTAssertEqual(Array(cubin.prefix(4)), [0x7F, 0x45, 0x4C, 0x46], "\(source) is not an ELF cubin")
            }
        }
    }

    /// A source that does not compile is a typed error carrying NVRTC's log; a library that is not there is one
    /// naming what was tried.
    func testErrorsAreTyped() throws {
        let nvrtc: NVRTC
        do { nvrtc = try NVRTC() } catch { throw XCTSkip("NVRTC not found, kernels not compiled: \(error)") }
        XCTAssertThrowsError(try nvrtc.compile("extern \"C\" __global__ void k() { undeclared = 1; }", name: "bad.cu",
                                               headers: [:], architecture: "sm_90", options: [])) { error in
            guard case CUDAError.compileFailed(let source, let architecture, _, let log) = error else {
                return XCTFail("\(error)")
            }
            XCTAssertEqual(source, "bad.cu"); XCTAssertEqual(architecture, "sm_90")
            XCTAssertTrue(log.contains("undeclared"), log)
        }
        XCTAssertThrowsError(try DynamicLibrary.open(["libqlora-no-such-library.so"], what: "a test library",
                                                     install: "Nothing to install.")) { error in
            guard case CUDAError.libraryMissing(let library, let tried, _) = error else { return XCTFail("\(error)") }
            XCTAssertEqual(library, "a test library")
            XCTAssertTrue(tried.contains { $0.contains("libqlora-no-such-library.so") }, "\(tried)")
        }
    }
}
