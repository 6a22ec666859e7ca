import Foundation

/// The kernel sources (`Kernels/*.cu`, embedded in the binary) and their compiled cubins: NVRTC compiles a source
/// for the device's architecture once; the cubin is kept on disk under `~/.cache/qlora/kernels` (or
/// `$QLORA_KERNEL_CACHE`), named by a hash of the source, the options, the architecture and the NVRTC version.
public enum KernelSource: String, CaseIterable, Sendable {
    case quantize, norm, rope, elementwise, loss, optimizer, lora, decode
    case flashAttention = "flash_attention"
    /// Hopper's flash attention forward (wgmma): compiled for sm_90a.
    case flashAttentionHopper = "flash_attention_sm90"

    /// The `.cu` text.
    public var text: String {
        let bytes: [UInt8]
        switch self {
        case .quantize: bytes = PackageResources.quantize_cu
        case .norm: bytes = PackageResources.norm_cu
        case .rope: bytes = PackageResources.rope_cu
        case .elementwise: bytes = PackageResources.elementwise_cu
        case .loss: bytes = PackageResources.loss_cu
        case .optimizer: bytes = PackageResources.optimizer_cu
        case .lora: bytes = PackageResources.lora_cu
        case .decode: bytes = PackageResources.decode_cu
        case .flashAttention: bytes = PackageResources.flash_attention_cu
        case .flashAttentionHopper: bytes = PackageResources.flash_attention_sm90_cu
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// What NVRTC compiles this source for on a device of `architecture`: the Hopper source needs the
    /// architecture-specific target (wgmma exists only in sm_90a); the others take the device's own.
    public func target(on architecture: String) -> String {
        self == .flashAttentionHopper && architecture == "sm_90" ? "sm_90a" : architecture
    }

    /// The shared headers the sources include.
    static var headers: [String: String] {
        ["common.cuh": String(decoding: PackageResources.common_cuh, as: UTF8.self),
         "attention.cuh": String(decoding: PackageResources.attention_cuh, as: UTF8.self)]
    }
}

/// Compiles kernel sources with NVRTC and caches the cubins on disk.
public final class KernelCompiler: @unchecked Sendable {
    let nvrtc: NVRTC
    let cacheFolder: String?

    /// Loads NVRTC; `cacheFolder` nil disables the disk cache.
    public init(cacheFolder: String? = KernelCompiler.defaultCacheFolder) throws {
        nvrtc = try NVRTC()
        self.cacheFolder = cacheFolder
    }

    /// `QLORA_KERNEL_DEFINES="NAME=VALUE …"`: macros every kernel source is compiled with, for comparing a kernel's
    /// variants in one binary (each source says which it reads; they are part of the cache name).
    static let experimentDefines: [String] = (ProcessInfo.processInfo.environment["QLORA_KERNEL_DEFINES"] ?? "")
        .split(whereSeparator: { $0 == " " || $0 == "," }).map(String.init)

    /// `$QLORA_KERNEL_CACHE`, else `~/.cache/qlora/kernels`.
    public static var defaultCacheFolder: String {
        ProcessInfo.processInfo.environment["QLORA_KERNEL_CACHE"] ?? NSHomeDirectory() + "/.cache/qlora/kernels"
    }

    /// Where NVRTC was found, and its version.
    public var description: String { "NVRTC \(nvrtc.version) (\(nvrtc.library.path))" }

    /// The cubin of `source` for `architecture` ("sm_90"), with `bf16` selecting the bf16 activation type.
    public func cubin(_ source: KernelSource, bf16: Bool, architecture: String) throws -> [UInt8] {
        let options = ["-DQLORA_BF16=\(bf16 ? 1 : 0)", "--fmad=true"] + Self.experimentDefines.map { "-D" + $0 }
        let text = source.text
        var hasher = FNV1a()
        for part in [text] + KernelSource.headers.values.sorted() + options + [architecture, nvrtc.version] { hasher.add(part) }
        let file = cacheFolder.map { "\($0)/\(source.rawValue)-\(bf16 ? "bf16" : "f32")-\(architecture)-\(String(hasher.value, radix: 16)).cubin" }
        if let file, let data = FileManager.default.contents(atPath: file), !data.isEmpty { return [UInt8](data) }
        let cubin = try nvrtc.compile(text, name: source.rawValue + ".cu", headers: KernelSource.headers,
                                      architecture: architecture, options: options)
        if let file, let folder = cacheFolder {
            // A cache that cannot be written only costs a recompile next time.
            try? FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
            let temp = file + ".tmp\(getpid())"
            if FileManager.default.createFile(atPath: temp, contents: Data(cubin)) { _ = rename(temp, file) }
        }
        return cubin
    }
}

/// 64-bit FNV-1a, for cache names (not for security).
struct FNV1a {
    var value: UInt64 = 0xcbf2_9ce4_8422_2325
    mutating func add(_ s: String) {
        for b in s.utf8 { value = (value ^ UInt64(b)) &* 0x100_0000_01b3 }
        value = (value ^ 0xff) &* 0x100_0000_01b3
    }
}
