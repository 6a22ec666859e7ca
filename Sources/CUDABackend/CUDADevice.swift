import Foundation

/// Element types of device buffers.
public enum GPUDType: String, Sendable {
    case f32, bf16, u8, i32, f64

    /// Bytes per element.
    public var size: Int {
        switch self {
        case .f32, .i32: return 4
        case .bf16: return 2
        case .u8: return 1
        case .f64: return 8
        }
    }
}

/// A block of device memory from the pool, returned to it when the last reference goes.
public final class DeviceBuffer: @unchecked Sendable {
    /// The device address.
    public let address: UInt64
    /// Elements and their type.
    public let count: Int
    public let dtype: GPUDType
    /// Bytes reserved (rounded up).
    let reserved: Int
    let managed: Bool
    let pool: DeviceMemoryPool
    /// The buffer this one is a part of (`view`): it owns the memory and lives at least as long as this one.
    let parent: DeviceBuffer?

    init(address: UInt64, count: Int, dtype: GPUDType, reserved: Int, managed: Bool, pool: DeviceMemoryPool,
         parent: DeviceBuffer? = nil) {
        self.address = address; self.count = count; self.dtype = dtype; self.reserved = reserved
        self.managed = managed; self.pool = pool; self.parent = parent
    }
    deinit { if parent == nil { pool.release(address: address, reserved: reserved, managed: managed) } }

    /// `count` elements of this buffer from element `at` on, as a buffer of their own that shares this one's memory
    /// (one allocation for many tensors: one memset, one prefetch, one reduction over all of them).
    public func view(at: Int, count: Int) -> DeviceBuffer {
        precondition(at >= 0 && count >= 0 && at + count <= self.count,
                     "view: elements \(at)..<\(at + count) of \(self.count)")
        return DeviceBuffer(address: address(at: at), count: count, dtype: dtype, reserved: count * dtype.size,
                            managed: managed, pool: pool, parent: self)
    }

    /// Bytes of the elements.
    public var bytes: Int { count * dtype.size }
    /// The address `elements` elements in.
    public func address(at elements: Int) -> UInt64 { address + UInt64(elements * dtype.size) }
}

/// The device memory behind the buffers: blocks freed by a buffer are kept by size and handed to the next buffer
/// of that size (a training step asks for the same sizes every time), so no step calls cuMemAlloc after the first.
final class DeviceMemoryPool: @unchecked Sendable {
    /// nil for a virtual device (`CUDADevice(planningFor:)`): the same bookkeeping, no memory.
    let driver: CUDADriver?
    var freeBlocks: [Int: [UInt64]] = [:]
    var allocatedBytes = 0, peakAllocatedBytes = 0, reservedBytes = 0
    /// Live bytes by what they hold (`CUDADevice.allocationTag`), and that split at the peak.
    var taggedBytes: [String: Int] = [:], taggedAtPeak: [String: Int] = [:]
    var tagOf: [UInt64: String] = [:]
    init(driver: CUDADriver?) { self.driver = driver }

    func release(address: UInt64, reserved: Int, managed: Bool) {
        allocatedBytes -= reserved
        if let tag = tagOf.removeValue(forKey: address) { taggedBytes[tag, default: 0] -= reserved }
        if managed { _ = driver?.cuMemFree(address); reservedBytes -= reserved; return }
        freeBlocks[reserved, default: []].append(address)
    }

    func allocated(_ address: UInt64, _ size: Int, tag: String) {
        allocatedBytes += size
        tagOf[address] = tag
        taggedBytes[tag, default: 0] += size
        if allocatedBytes > peakAllocatedBytes {
            peakAllocatedBytes = allocatedBytes
            taggedAtPeak = taggedBytes
        }
    }

    /// Gives every cached block back to the driver.
    func trim() {
        for (s, list) in freeBlocks { for a in list { _ = driver?.cuMemFree(a); reservedBytes -= s } }
        freeBlocks = [:]
    }
}

/// One kernel argument, as `cuLaunchKernel` takes it (a pointer to the value).
public enum KernelArgument {
    case buffer(DeviceBuffer), address(UInt64), int32(Int32), int64(Int64), uint64(UInt64), float(Float)
    /// An `int` argument.
    public static func int(_ v: Int) -> KernelArgument { .int32(Int32(v)) }
    /// A buffer's address, or a null pointer without one.
    public static func optional(_ b: DeviceBuffer?) -> KernelArgument { b.map { .buffer($0) } ?? .address(0) }
    /// A `long long` argument.
    public static func long(_ v: Int) -> KernelArgument { .int64(Int64(v)) }
}

/// One GPU with its context, one stream, a caching memory pool, the compiled kernel modules and cuBLASLt.
/// Everything runs in order on the one stream; the host waits only where it reads results back.
public final class CUDADevice: @unchecked Sendable {
    // nil only on a virtual device, which never reaches the code that uses them (`isVirtual` guards).
    let driver: CUDADriver!
    let compiler: KernelCompiler!
    let blas: CublasLt!
    /// A device that plans: it keeps the memory pool's books for every allocation the step makes, and runs nothing
    /// (no GPU, no CUDA library; downloads read zeros). `qlora plan` runs a training step on one to predict its peak.
    public let isVirtual: Bool
    /// What the next allocations hold, for the breakdown of the peak ("weights", "activations", ...).
    public var allocationTag = "other"
    var nextVirtualAddress: UInt64 = 1 << 40
    /// Pinned host memory held now (the offloaded checkpoints and upload staging).
    public internal(set) var pinnedHostBytes = 0
    let ordinal: Int32
    let context: UnsafeMutableRawPointer?
    let stream: UnsafeMutableRawPointer?
    /// The second stream, for copies between GPU and host that overlap compute (made on first use).
    var copyStreamHandle: UnsafeMutableRawPointer? = nil
    /// Two pinned buffers that large uploads pass through, and the event of each one's last copy.
    var uploadStaging: [(buffer: PinnedHostBuffer, done: GPUEvent?)] = []
    var blasHandle: UnsafeMutableRawPointer? = nil
    /// "sm_90" for an H100/H200.
    public let architecture: String
    /// The device's name, as the driver gives it.
    public let name: String
    /// Streaming multiprocessors.
    public let multiprocessorCount: Int
    /// Whether bf16 attention at head dim 128 runs the Hopper kernels (flash_attention_sm90.cu, wgmma): true on an
    /// sm_90 device (and on the planning device, which stands for one) unless `QLORA_ATTENTION=portable` asks for
    /// the mma.sync kernels every GPU runs (check-cuda checks both; the benchmark compares them).
    public var hopperAttention: Bool

    let pool: DeviceMemoryPool
    private var modules: [String: UnsafeMutableRawPointer?] = [:]
    private var functions: [String: UnsafeMutableRawPointer?] = [:]
    private var occupancies: [String: Int] = [:]
    /// Bytes in live buffers now, and the most there were.
    public var allocatedBytes: Int { pool.allocatedBytes }
    public var peakAllocatedBytes: Int { pool.peakAllocatedBytes }
    /// Bytes held from the driver (live or cached).
    public var reservedBytes: Int { pool.reservedBytes }
    var workspace: DeviceBuffer? = nil
    /// While a profile runs (`startProfile` … `profileTable`), every kernel and product is bracketed by two timing
    /// events on the stream, labelled by its kernel file and name ("kernel:norm/rmsnorm_forward") or product label
    /// ("gemm:base"). The host never waits for them: the step runs as it does unprofiled.
    var profileMarks: [(label: String, start: Int, end: Int)]? = nil
    /// Timing events, reused from one profile to the next; `profileEventsUsed` of them hold this profile's marks.
    var profileEvents: [UnsafeMutableRawPointer?] = []
    var profileEventsUsed = 0
    /// What the next products are, for the profile ("base", "lora", "attention", "lm_head").
    public var gemmLabel = "other"
    var gemmPlans: [GemmKey: GemmPlan] = [:]
    var gemmShapesTuned = 0   // shapes whose algorithm was timed (`tune`)

    /// `QLORA_CUDA_SYNC=1` waits after every kernel and product, so that a failing one is reported where it is
    /// launched (debugging). Read once: looking the environment up costs tens of microseconds a call.
    static let synchronizesEveryCall = ProcessInfo.processInfo.environment["QLORA_CUDA_SYNC"] != nil

    /// Opens GPU `ordinal`: loads the driver, NVRTC and cuBLASLt, makes the context and the stream.
    public init(ordinal: Int = 0) throws {
        isVirtual = false
        driver = try CUDADriver()
        pool = DeviceMemoryPool(driver: driver)
        try driver.check(driver.cuInit(0), "cuInit")
        var count: Int32 = 0
        try driver.check(driver.cuDeviceGetCount(&count), "cuDeviceGetCount")
        guard ordinal < count else {
            throw CUDAError.noDevice("no CUDA GPU \(ordinal): the driver sees \(count). Run without --device cuda, " +
                                     "or on a machine with an NVIDIA GPU.")
        }
        var dev: Int32 = 0
        try driver.check(driver.cuDeviceGet(&dev, Int32(ordinal)), "cuDeviceGet(\(ordinal))")
        self.ordinal = dev
        var nameBytes = [CChar](repeating: 0, count: 256)
        _ = driver.cuDeviceGetName(&nameBytes, 256, dev)
        name = String(cString: nameBytes)
        var major: Int32 = 0, minor: Int32 = 0, sms: Int32 = 0
        try driver.check(driver.cuDeviceGetAttribute(&major, 75, dev), "cuDeviceGetAttribute(compute capability)")
        try driver.check(driver.cuDeviceGetAttribute(&minor, 76, dev), "cuDeviceGetAttribute(compute capability)")
        try driver.check(driver.cuDeviceGetAttribute(&sms, 16, dev), "cuDeviceGetAttribute(multiprocessors)")
        architecture = "sm_\(major)\(minor)"
        multiprocessorCount = Int(sms)
        hopperAttention = architecture == "sm_90"
            && ProcessInfo.processInfo.environment["QLORA_ATTENTION"] != "portable"
        var ctx: UnsafeMutableRawPointer? = nil
        try driver.check(driver.cuDevicePrimaryCtxRetain(&ctx, dev), "cuDevicePrimaryCtxRetain")
        context = ctx
        try driver.check(driver.cuCtxSetCurrent(ctx), "cuCtxSetCurrent")
        var s: UnsafeMutableRawPointer? = nil
        try driver.check(driver.cuStreamCreate(&s, 1), "cuStreamCreate")   // CU_STREAM_NON_BLOCKING
        stream = s
        compiler = try KernelCompiler()
        blas = try CublasLt()
        var h: UnsafeMutableRawPointer? = nil
        try blas.check(blas.cublasLtCreate(&h), "cublasLtCreate")
        blasHandle = h
    }

    /// A virtual device for planning: `name` and `multiprocessors` as a real one would report them.
    public init(planningFor name: String = "planned GPU", multiprocessors: Int = 132) {
        isVirtual = true
        driver = nil; compiler = nil; blas = nil
        pool = DeviceMemoryPool(driver: nil)
        ordinal = 0; context = nil; stream = nil
        architecture = "sm_90"; self.name = name; multiprocessorCount = multiprocessors; hopperAttention = true
    }

    /// Runs `body` with its allocations counted under `tag`.
    public func tagging<R>(_ tag: String, _ body: () throws -> R) rethrows -> R {
        let saved = allocationTag
        allocationTag = tag
        defer { allocationTag = saved }
        return try body()
    }

    /// Live bytes by allocation tag at the peak (virtual or real device).
    public var peakBreakdown: [String: Int] { pool.taggedAtPeak }

    /// Makes this device's context current on the calling thread.
    public func makeCurrent() throws {
        guard !isVirtual else { return }
        try driver.check(driver.cuCtxSetCurrent(context), "cuCtxSetCurrent")
    }

    /// How many CUDA GPUs the driver sees (0 where there is no driver).
    public static func count() -> Int {
        guard let driver = try? CUDADriver(), driver.cuInit(0) == 0 else { return 0 }
        var n: Int32 = 0
        return driver.cuDeviceGetCount(&n) == 0 ? Int(n) : 0
    }

    /// One line about the device and the libraries.
    public var description: String {
        if isVirtual { return "\(name) (virtual: planning only)" }
        return "\(name) (\(architecture), \(multiprocessorCount) SMs); driver \(driver.library.path); "
            + "\(compiler.description); cuBLASLt \(blas.library.path)"
    }

    // MARK: Memory

    static func rounded(_ bytes: Int) -> Int {
        let b = max(bytes, 1)
        return b < (1 << 20) ? (b + 511) / 512 * 512 : ((b + (1 << 21) - 1) >> 21) << 21
    }

    /// A buffer of `count` elements of `dtype` (contents undefined); `managed` memory is unified memory that pages
    /// between host and device (bitsandbytes' paged optimizer states).
    public func allocate(_ count: Int, _ dtype: GPUDType, managed: Bool = false) throws -> DeviceBuffer {
        let size = Self.rounded(count * dtype.size)
        var address: UInt64 = 0
        if isVirtual {
            if !managed, var list = pool.freeBlocks[size], let a = list.popLast() {
                address = a; pool.freeBlocks[size] = list
            } else {
                address = nextVirtualAddress; nextVirtualAddress += UInt64(size); pool.reservedBytes += size
            }
        } else if managed {
            try driver.check(driver.cuMemAllocManaged(&address, size, 1), "cuMemAllocManaged(\(size) bytes)")
            pool.reservedBytes += size
        } else if var list = pool.freeBlocks[size], let a = list.popLast() {
            address = a
            pool.freeBlocks[size] = list
        } else {
            var status = driver.cuMemAlloc(&address, size)
            if status == 2 {   // CUDA_ERROR_OUT_OF_MEMORY: give the cached blocks back and try once more
                try synchronize()
                pool.trim()
                status = driver.cuMemAlloc(&address, size)
            }
            try driver.check(status, "cuMemAlloc(\(size) bytes; \(allocatedBytes >> 20) MiB in use)")
            pool.reservedBytes += size
        }
        pool.allocated(address, size, tag: allocationTag)
        return DeviceBuffer(address: address, count: count, dtype: dtype, reserved: size, managed: managed, pool: pool)
    }

    /// A zero-filled buffer.
    public func zeros(_ count: Int, _ dtype: GPUDType, managed: Bool = false) throws -> DeviceBuffer {
        let b = try allocate(count, dtype, managed: managed)
        try fillZero(b)
        return b
    }

    /// Starts the peak count again from what is allocated now.
    public func resetPeak() { pool.peakAllocatedBytes = pool.allocatedBytes; pool.taggedAtPeak = pool.taggedBytes }

    /// Free and total device memory, as the driver reports them.
    public func memoryInfo() throws -> (free: Int, total: Int) {
        if isVirtual { return (0, 0) }
        var free = 0, total = 0
        try driver.check(driver.cuMemGetInfo(&free, &total), "cuMemGetInfo")
        return (free, total)
    }

    /// Moves a managed buffer to the GPU ahead of its use (a no-op for ordinary buffers).
    public func prefetch(_ b: DeviceBuffer) throws {
        guard b.managed, !isVirtual else { return }
        if let v2 = driver.cuMemPrefetchAsyncV2 {
            try driver.check(v2(b.address, b.reserved, 1 | UInt64(UInt32(bitPattern: ordinal)) << 32, 0, stream), "cuMemPrefetchAsync")
        } else if let v1 = driver.cuMemPrefetchAsyncV1 {
            try driver.check(v1(b.address, b.reserved, ordinal, stream), "cuMemPrefetchAsync")
        }
    }

    // MARK: Copies

    /// A device buffer holding `values`.
    public func upload(_ values: [Float]) throws -> DeviceBuffer {
        let b = try allocate(values.count, .f32)
        try copy(values, to: b)
        return b
    }
    public func upload(_ values: [Int32]) throws -> DeviceBuffer {
        let b = try allocate(values.count, .i32)
        try values.withUnsafeBytes { try copy(bytes: $0, to: b.address) }
        return b
    }
    public func upload(_ values: [UInt8]) throws -> DeviceBuffer {
        let b = try allocate(values.count, .u8)
        try values.withUnsafeBytes { try copy(bytes: $0, to: b.address) }
        return b
    }
    /// Copies float32 values into `b` (f32), or rounds them into it (bf16).
    public func copy(_ values: [Float], to b: DeviceBuffer, offset: Int = 0) throws {
        precondition(offset + values.count <= b.count)
        switch b.dtype {
        case .f32: try values.withUnsafeBytes { try copy(bytes: $0, to: b.address(at: offset)) }
        case .bf16:
            let bits = values.map { Self.bf16(from: $0) }
            try bits.withUnsafeBytes { try copy(bytes: $0, to: b.address(at: offset)) }
        default: preconditionFailure("copy of floats into \(b.dtype)")
        }
    }
    public func copy(_ values: [Int32], to b: DeviceBuffer) throws {
        precondition(b.dtype == .i32 && values.count <= b.count)
        try values.withUnsafeBytes { try copy(bytes: $0, to: b.address) }
    }
    public func copy(_ values: [UInt8], to b: DeviceBuffer) throws {
        precondition(b.dtype == .u8 && values.count <= b.count)
        try values.withUnsafeBytes { try copy(bytes: $0, to: b.address) }
    }

    func copy(bytes: UnsafeRawBufferPointer, to address: UInt64) throws {
        guard bytes.count > 0, !isVirtual else { return }
        if bytes.count >= Self.stagingChunk { return try stagedCopy(bytes: bytes, to: address) }
        try driver.check(driver.cuMemcpyHtoDAsync(address, bytes.baseAddress!, bytes.count, stream), "cuMemcpyHtoD")
        try synchronize()   // the host array may go away after return
    }

    /// Device-to-device copy of `count` elements.
    public func copy(from source: DeviceBuffer, to destination: DeviceBuffer, count: Int? = nil, sourceOffset: Int = 0,
                     destinationOffset: Int = 0) throws {
        precondition(source.dtype == destination.dtype)
        guard !isVirtual else { return }
        let n = count ?? source.count
        try driver.check(driver.cuMemcpyDtoDAsync(destination.address(at: destinationOffset), source.address(at: sourceOffset),
                                                  n * source.dtype.size, stream), "cuMemcpyDtoD")
    }

    /// The buffer's values as float32 (f32, bf16, f64, i32 buffers).
    public func download(_ b: DeviceBuffer, count: Int? = nil) throws -> [Float] {
        let n = count ?? b.count
        switch b.dtype {
        case .f32:
            var out = [Float](repeating: 0, count: n)
            try out.withUnsafeMutableBytes { try read(b.address, into: $0) }
            return out
        case .bf16:
            var bits = [UInt16](repeating: 0, count: n)
            try bits.withUnsafeMutableBytes { try read(b.address, into: $0) }
            return bits.map { Float(bitPattern: UInt32($0) << 16) }
        case .f64:
            var out = [Double](repeating: 0, count: n)
            try out.withUnsafeMutableBytes { try read(b.address, into: $0) }
            return out.map { Float($0) }
        case .i32:
            var out = [Int32](repeating: 0, count: n)
            try out.withUnsafeMutableBytes { try read(b.address, into: $0) }
            return out.map { Float($0) }
        case .u8:
            return try downloadBytes(b, count: n).map { Float($0) }
        }
    }
    /// The raw bytes of a u8 buffer.
    public func downloadBytes(_ b: DeviceBuffer, count: Int? = nil) throws -> [UInt8] {
        var out = [UInt8](repeating: 0, count: (count ?? b.count) * b.dtype.size)
        try out.withUnsafeMutableBytes { try read(b.address, into: $0) }
        return out
    }
    /// A float64 scalar (loss and norm accumulators).
    public func downloadDouble(_ b: DeviceBuffer) throws -> Double {
        var v = 0.0
        try withUnsafeMutableBytes(of: &v) { try read(b.address, into: $0) }
        return v
    }

    func read(_ address: UInt64, into bytes: UnsafeMutableRawBufferPointer) throws {
        guard bytes.count > 0, !isVirtual else { return }
        try driver.check(driver.cuMemcpyDtoHAsync(bytes.baseAddress!, address, bytes.count, stream), "cuMemcpyDtoH")
        try synchronize()
    }

    /// Sets every byte of `b` to zero.
    public func fillZero(_ b: DeviceBuffer) throws {
        guard !isVirtual else { return }
        try driver.check(driver.cuMemsetD8Async(b.address, 0, b.bytes, stream), "cuMemsetD8")
    }

    /// Waits for everything queued on the stream; reports a failed kernel here.
    public func synchronize() throws {
        guard !isVirtual else { return }
        try driver.check(driver.cuStreamSynchronize(stream), "cuStreamSynchronize (an earlier kernel or copy failed)")
        if let copyStreamHandle {
            try driver.check(driver.cuStreamSynchronize(copyStreamHandle),
                             "cuStreamSynchronize (an earlier copy to or from the host failed)")
        }
    }

    /// float32 → bf16 bits, round to nearest even (NaN kept).
    static func bf16(from f: Float) -> UInt16 {
        let u = f.bitPattern
        if u & 0x7fff_ffff > 0x7f80_0000 { return UInt16(u >> 16) | 0x40 }
        return UInt16((u &+ 0x7fff &+ ((u >> 16) & 1)) >> 16)
    }

    // MARK: Kernels

    /// Launches kernel `name` of `source` (bf16 or f32 activations) on `grid` × `block` threads.
    public func launch(_ source: KernelSource, _ name: String, bf16: Bool = false, grid: Int, block: Int,
                       _ arguments: [KernelArgument]) throws {
        guard grid > 0, !isVirtual else { return }
        let function = try self.function(source, name, bf16: bf16)
        let started = try profileStart()
        defer { if let started { profileEnd("kernel:\(source.rawValue)/\(name)", started) } }
        var storage = [UInt64](repeating: 0, count: arguments.count)
        for (i, a) in arguments.enumerated() {
            switch a {
            case .buffer(let b): storage[i] = b.address
            case .address(let v): storage[i] = v
            case .int32(let v): storage[i] = UInt64(UInt32(bitPattern: v))
            case .int64(let v): storage[i] = UInt64(bitPattern: v)
            case .uint64(let v): storage[i] = v
            case .float(let v): storage[i] = UInt64(v.bitPattern)
            }
        }
        // Each value sits at the start of its own 8-byte slot; little-endian, so a 4-byte int or float reads right.
        let status = storage.withUnsafeMutableBufferPointer { values -> Int32 in
            var pointers = (0..<arguments.count).map { UnsafeMutableRawPointer(values.baseAddress! + $0) as UnsafeMutableRawPointer? }
            return pointers.withUnsafeMutableBufferPointer { p in
                driver.cuLaunchKernel(function, UInt32(grid), 1, 1, UInt32(block), 1, 1, 0, stream, p.baseAddress, nil)
            }
        }
        try driver.check(status, "cuLaunchKernel(\(name), grid \(grid), block \(block))")
        if Self.synchronizesEveryCall { try synchronize() }
    }

    /// Starts a profile: what is queued from now on is timed (see `profileMarks`).
    public func startProfile() throws {
        guard !isVirtual else { return }
        profileMarks = []
        profileEventsUsed = 0
        _ = try profileEvent()   // event 0: the profile's start on the GPU's clock
    }

    /// Records the next timing event on the stream and returns its index.
    func profileEvent() throws -> Int {
        if profileEventsUsed == profileEvents.count {
            var e: UnsafeMutableRawPointer? = nil
            try driver.check(driver.cuEventCreate(&e, 0), "cuEventCreate (profile)")
            profileEvents.append(e)
        }
        try driver.check(driver.cuEventRecord(profileEvents[profileEventsUsed], stream), "cuEventRecord (profile)")
        profileEventsUsed += 1
        return profileEventsUsed - 1
    }

    func profileStart() throws -> Int? {
        guard profileMarks != nil else { return nil }
        return try profileEvent()
    }

    func profileEnd(_ label: String, _ start: Int) {
        guard let end = try? profileEvent() else { return }
        profileMarks?.append((label, start, end))
    }

    /// Ends the profile (waiting for the GPU) and returns it as a table, longest first: each label's GPU time and
    /// calls, then the GPU's idle time between them (waits for copies or for the host, memsets, launch gaps), so
    /// that the rows add up to the GPU's wall time from `startProfile` to now; then the longest idle stretches by
    /// what ran before and after them.
    public func profileTable() throws -> String {
        guard let marks = profileMarks else { return "" }
        profileMarks = nil
        let last = try profileEvent()
        try synchronize()
        func seconds(_ a: Int, _ b: Int) throws -> Double {
            var ms: Float = 0
            try driver.check(driver.cuEventElapsedTime(&ms, profileEvents[a], profileEvents[b]), "cuEventElapsedTime")
            return Double(ms) / 1000
        }
        var rows: [String: (seconds: Double, calls: Int)] = [:]
        var idle: [String: (seconds: Double, calls: Int)] = [:]
        var previous = (label: "start", end: 0)
        for m in marks + [(label: "end", start: last, end: last)] {
            let gap = try seconds(previous.end, m.start)
            let key = "\(previous.label) → \(m.label)"
            let g = idle[key] ?? (0, 0)
            idle[key] = (g.seconds + gap, g.calls + 1)
            if m.label != "end" {
                let t = rows[m.label] ?? (0, 0)
                rows[m.label] = (t.seconds + (try seconds(m.start, m.end)), t.calls + 1)
            }
            previous = (m.label, m.end)
        }
        let wall = try seconds(0, last)
        let idleTotal = idle.values.reduce(0) { $0 + $1.seconds }
        rows["idle (between kernels)"] = (idleTotal, idle.values.reduce(0) { $0 + $1.calls })
        func table(_ title: String, _ rows: [String: (seconds: Double, calls: Int)], limit: Int) -> String {
            var out = "| \(title) | seconds | share | calls |\n| --- | ---: | ---: | ---: |\n"
            for (label, t) in rows.sorted(by: { $0.value.seconds > $1.value.seconds }).prefix(limit) {
                out += String(format: "| %@ | %.4f | %.1f%% | %d |\n", label, t.seconds,
                              100 * t.seconds / max(wall, 1e-12), t.calls)
            }
            return out
        }
        let sum = rows.values.reduce(0) { $0 + $1.seconds }
        return table("kernel or product", rows, limit: rows.count)
            + String(format: "| total (GPU wall time %.4f s) | %.4f | | |\n\n", wall, sum)
            + table("idle stretch, after → before", idle, limit: 12)
    }

    func function(_ source: KernelSource, _ name: String, bf16: Bool) throws -> UnsafeMutableRawPointer? {
        let key = "\(source.rawValue)/\(bf16)/\(name)"
        if let f = functions[key] { return f }
        let moduleKey = "\(source.rawValue)/\(bf16)"
        var module = modules[moduleKey] ?? nil
        if module == nil {
            let cubin = try compiler.cubin(source, bf16: bf16, architecture: source.target(on: architecture))
            try cubin.withUnsafeBytes { try driver.check(driver.cuModuleLoadData(&module, $0.baseAddress!), "cuModuleLoadData(\(source).cu)") }
            modules[moduleKey] = module
        }
        var f: UnsafeMutableRawPointer? = nil
        try driver.check(driver.cuModuleGetFunction(&f, module, name), "cuModuleGetFunction(\(name) in \(source).cu)")
        functions[key] = f
        return f
    }

    /// How many blocks of `block` threads (and `sharedBytes` of dynamic shared memory) of kernel `name` an SM runs at
    /// once, as the driver works it out from the compiled kernel's registers and shared memory; `fallback` on the
    /// planning device, which compiles nothing.
    func blocksPerSM(_ source: KernelSource, _ name: String, bf16: Bool, block: Int, sharedBytes: Int = 0,
                     fallback: Int) throws -> Int {
        guard !isVirtual else { return fallback }
        let key = "\(source.rawValue)/\(bf16)/\(name)/\(block)/\(sharedBytes)"
        if let n = occupancies[key] { return n }
        var n: Int32 = 0
        try driver.check(driver.cuOccupancyMaxActiveBlocksPerMultiprocessor(
            &n, try function(source, name, bf16: bf16), Int32(block), sharedBytes),
                         "cuOccupancyMaxActiveBlocksPerMultiprocessor(\(name))")
        occupancies[key] = max(1, Int(n))
        return max(1, Int(n))
    }

    /// Blocks for a one-thread-per-element launch of `count` elements (grid-stride kernels cap it).
    public static func blocks(_ count: Int, threads: Int = 256, cap: Int = 1 << 20) -> Int {
        min(cap, max(1, (count + threads - 1) / threads))
    }
}
