import CUDABackend
import CUDATraining
import XCTest

/// The GPU checks of `qlora check-cuda` (every op against its CPU twin, the golden vectors on the GPU). Skipped,
/// saying why, where no NVIDIA GPU and driver are present; on the GPU machine run `qlora check-cuda` (the release
/// binary; see scripts/gpu-acceptance.sh).
final class GPUTests: XCTestCase {
    func testEveryGPUCheckPasses() throws {
        let device: CUDADevice
        do { device = try CUDADevice() } catch { throw XCTSkip("no GPU here, GPU checks skipped: \(error)") }
        var checker = Checker()
        var ops = GPUOpChecks(device: device)
        try ops.run(&checker)
        try GPUGoldenChecks(device: device, golden: try Shared.requireGolden()).run(&checker)
        XCTAssertEqual(checker.failures, 0)
        XCTAssertGreaterThan(checker.passed, 200)
    }
}
