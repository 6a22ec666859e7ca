import Foundation

/// NVRTC (`libnvrtc.so`), the run-time CUDA C++ compiler: kernels are compiled for the device in hand.
final class NVRTC: @unchecked Sendable {
    typealias Program = UnsafeMutableRawPointer?
    let library: DynamicLibrary
    let nvrtcVersion: @convention(c) (UnsafeMutablePointer<Int32>, UnsafeMutablePointer<Int32>) -> Int32
    let nvrtcCreateProgram: @convention(c) (UnsafeMutablePointer<Program>, UnsafePointer<CChar>, UnsafePointer<CChar>,
                                            Int32, UnsafePointer<UnsafePointer<CChar>?>?,
                                            UnsafePointer<UnsafePointer<CChar>?>?) -> Int32
    let nvrtcCompileProgram: @convention(c) (Program, Int32, UnsafePointer<UnsafePointer<CChar>?>?) -> Int32
    let nvrtcGetProgramLogSize: @convention(c) (Program, UnsafeMutablePointer<Int>) -> Int32
    let nvrtcGetProgramLog: @convention(c) (Program, UnsafeMutablePointer<CChar>) -> Int32
    let nvrtcGetCUBINSize: @convention(c) (Program, UnsafeMutablePointer<Int>) -> Int32
    let nvrtcGetCUBIN: @convention(c) (Program, UnsafeMutablePointer<CChar>) -> Int32
    let nvrtcDestroyProgram: @convention(c) (UnsafeMutablePointer<Program>) -> Int32
    let nvrtcGetErrorString: @convention(c) (Int32) -> UnsafePointer<CChar>?

    init() throws {
        let l = try DynamicLibrary.open(["libnvrtc.so", "libnvrtc.so.13", "libnvrtc.so.12"], what: "NVRTC (libnvrtc.so)",
                                        install: "Install the CUDA toolkit, or `pip install nvidia-cuda-nvrtc`, or set CUDA_HOME.")
        library = l
        nvrtcVersion = try l.function("nvrtcVersion")
        nvrtcCreateProgram = try l.function("nvrtcCreateProgram")
        nvrtcCompileProgram = try l.function("nvrtcCompileProgram")
        nvrtcGetProgramLogSize = try l.function("nvrtcGetProgramLogSize")
        nvrtcGetProgramLog = try l.function("nvrtcGetProgramLog")
        nvrtcGetCUBINSize = try l.function("nvrtcGetCUBINSize")
        nvrtcGetCUBIN = try l.function("nvrtcGetCUBIN")
        nvrtcDestroyProgram = try l.function("nvrtcDestroyProgram")
        nvrtcGetErrorString = try l.function("nvrtcGetErrorString")
    }

    /// "major.minor" of this NVRTC.
    var version: String {
        var major: Int32 = 0, minor: Int32 = 0
        _ = nvrtcVersion(&major, &minor)
        return "\(major).\(minor)"
    }

    /// Compiles `source` (named `name`, with in-memory `headers` name → text) to a cubin for `architecture`
    /// (e.g. "sm_90"); a compile error throws with NVRTC's log.
    func compile(_ source: String, name: String, headers: [String: String], architecture: String,
                 options: [String]) throws -> [UInt8] {
        let headerNames = headers.keys.sorted()
        let cHeaderTexts = headerNames.map { strdup(headers[$0]!) }
        let cHeaderNames = headerNames.map { strdup($0) }
        let cOptions = (["--gpu-architecture=\(architecture)", "--std=c++17"] + options).map { strdup($0) }
        defer { (cHeaderTexts + cHeaderNames + cOptions).forEach { free($0) } }
        var program: Program = nil
        let texts = cHeaderTexts.map { UnsafePointer($0) }, names = cHeaderNames.map { UnsafePointer($0) }
        try check(texts.withUnsafeBufferPointer { t in names.withUnsafeBufferPointer { n in
            nvrtcCreateProgram(&program, source, name, Int32(headerNames.count), t.baseAddress, n.baseAddress)
        } }, "nvrtcCreateProgram(\(name))")
        defer { _ = nvrtcDestroyProgram(&program) }
        let options = cOptions.map { UnsafePointer($0) }
        let status = options.withUnsafeBufferPointer { nvrtcCompileProgram(program, Int32(options.count), $0.baseAddress) }
        if status != 0 {
            var size = 0
            _ = nvrtcGetProgramLogSize(program, &size)
            var log = [CChar](repeating: 0, count: max(size, 1))
            _ = nvrtcGetProgramLog(program, &log)
            throw CUDAError.compileFailed(source: name, architecture: architecture, message: message(status),
                                          log: String(cString: log))
        }
        var size = 0
        try check(nvrtcGetCUBINSize(program, &size), "nvrtcGetCUBINSize(\(name))")
        var cubin = [CChar](repeating: 0, count: size)
        try check(nvrtcGetCUBIN(program, &cubin), "nvrtcGetCUBIN(\(name))")
        return cubin.map { UInt8(bitPattern: $0) }
    }

    private func message(_ status: Int32) -> String {
        nvrtcGetErrorString(status).map { String(cString: $0) } ?? "NVRTC error \(status)"
    }

    func check(_ status: Int32, _ call: @autoclosure () -> String) throws {
        guard status != 0 else { return }
        throw CUDAError.callFailed(call: call(), status: status, message: message(status))
    }
}
