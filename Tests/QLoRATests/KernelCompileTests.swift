import CUDABackend
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
                let cubin = try compiler.cubin(source, bf16: bf16, architecture: "sm_90")
                XCTAssertEqual(Array(cubin.prefix(4)), [0x7F, 0x45, 0x4C, 0x46], "\(source) is not an ELF cubin")
            }
        }
    }
}
