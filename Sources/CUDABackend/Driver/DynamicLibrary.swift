import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Why the GPU path cannot run: a missing library or symbol, or a failed CUDA, NVRTC or cuBLASLt call.
/// What went wrong on the GPU side, by kind; `description` says it in words.
public enum CUDAError: Error, CustomStringConvertible, Equatable {
    /// A library (driver, NVRTC, cuBLASLt, NCCL) was not found: what it is, the paths tried, what to install.
    case libraryMissing(library: String, tried: [String], install: String)
    /// A library that was found lacks a function (too old).
    case symbolMissing(library: String, symbol: String)
    /// A call returned an error status: the call, the status, and the library's own text for it.
    case callFailed(call: String, status: Int32, message: String)
    /// NVRTC could not compile a kernel source: its name, the architecture, NVRTC's status text and the log.
    case compileFailed(source: String, architecture: String, message: String, log: String)
    /// There is no such GPU (or none at all).
    case noDevice(String)
    /// Sizes, types or shapes the kernels or libraries cannot take.
    case invalidArgument(String)
    /// The data-parallel rendezvous (the NCCL id's exchange) failed.
    case rendezvous(String)

    public var description: String {
        switch self {
        case .libraryMissing(let library, let tried, let install):
            return "\(library) not found (tried \(tried.joined(separator: ", "))). \(install)"
        case .symbolMissing(let library, let symbol):
            return "\(library) has no symbol \(symbol): the library is too old"
        case .callFailed(let call, _, let message): return "\(call) failed: \(message)"
        case .compileFailed(let source, let architecture, let message, let log):
            return "NVRTC could not compile \(source) for \(architecture): \(message)\n" + log
        case .noDevice(let text), .invalidArgument(let text), .rendezvous(let text): return text
        }
    }
}

/// A shared library opened with `dlopen`, so that building needs no CUDA and the binary starts where none is
/// installed; only asking for the GPU then fails, with a message that says what to install.
final class DynamicLibrary: @unchecked Sendable {
    let handle: UnsafeMutableRawPointer
    /// Where it was found.
    let path: String

    private init(handle: UnsafeMutableRawPointer, path: String) { self.handle = handle; self.path = path }

    /// Folders searched before the loader's own path: `$CUDA_HOME`, `/usr/local/cuda`, and pip's `nvidia/*/lib`
    /// folders (the `nvidia-cuda-nvrtc`, `nvidia-cublas` ... wheels) of the usual Python prefixes.
    static func searchFolders() -> [String] {
        var folders: [String] = []
        let env = ProcessInfo.processInfo.environment
        for key in ["QLORA_CUDA_LIB", "CUDA_HOME", "CUDA_PATH"] {
            if let root = env[key], !root.isEmpty { folders += [root, root + "/lib64", root + "/lib"] }
        }
        folders += ["/usr/local/cuda/lib64", "/usr/local/cuda/lib"]
        var prefixes = ["/usr/local/lib", "/usr/lib", NSHomeDirectory() + "/.local/lib"]
        if let venv = env["VIRTUAL_ENV"] { prefixes.insert(venv + "/lib", at: 0) }
        let pyenv = NSHomeDirectory() + "/.pyenv/versions"
        for v in (try? FileManager.default.contentsOfDirectory(atPath: pyenv)) ?? [] { prefixes.append("\(pyenv)/\(v)/lib") }
        for prefix in prefixes {
            for python in ((try? FileManager.default.contentsOfDirectory(atPath: prefix)) ?? []).sorted()
            where python.hasPrefix("python3") {
                for site in ["site-packages", "dist-packages"] {
                    let nvidia = "\(prefix)/\(python)/\(site)/nvidia"
                    for package in ((try? FileManager.default.contentsOfDirectory(atPath: nvidia)) ?? []).sorted() {
                        folders.append("\(nvidia)/\(package)/lib")
                    }
                }
            }
        }
        return folders
    }

    /// Opens the first of `names` found in the search folders, then through the loader's path.
    static func open(_ names: [String], what: String, install: String) throws -> DynamicLibrary {
        var tried: [String] = []
        let folders = searchFolders()
        for name in names {
            for folder in folders {
                let path = folder + "/" + name
                guard FileManager.default.fileExists(atPath: path) else { continue }
                if let h = dlopen(path, RTLD_NOW | RTLD_GLOBAL) { return DynamicLibrary(handle: h, path: path) }
                tried.append(path + " (" + String(cString: dlerror()) + ")")
            }
        }
        for name in names {
            if let h = dlopen(name, RTLD_NOW | RTLD_GLOBAL) { return DynamicLibrary(handle: h, path: name) }
            tried.append(name)
        }
        throw CUDAError.libraryMissing(library: what, tried: tried, install: install)
    }

    /// The function `name`, typed as `T` (a `@convention(c)` function type matching the C header).
    func function<T>(_ name: String, as type: T.Type = T.self) throws -> T {
        guard let p = dlsym(handle, name) else { throw CUDAError.symbolMissing(library: path, symbol: name) }
        return unsafeBitCast(p, to: T.self)
    }

    /// Like `function`, nil when the symbol is missing.
    func optionalFunction<T>(_ name: String, as type: T.Type = T.self) -> T? {
        guard let p = dlsym(handle, name) else { return nil }
        return unsafeBitCast(p, to: T.self)
    }
}
