import CNCCLShim
import Foundation

/// NCCL (`libnccl.so.2`), the collective library of NVIDIA GPUs: here, the all-reduce of data-parallel training.
final class NCCL: @unchecked Sendable {
    typealias Handle = UnsafeMutableRawPointer?
    static let float32: Int32 = 7, float64: Int32 = 8   // ncclDataType_t
    static let sum: Int32 = 0                           // ncclRedOp_t
    static let uniqueIdBytes = 128

    let library: DynamicLibrary
    let ncclGetVersion: @convention(c) (UnsafeMutablePointer<Int32>) -> Int32
    let ncclGetUniqueId: @convention(c) (UnsafeMutableRawPointer) -> Int32
    let ncclCommInitRank: UnsafeMutableRawPointer   // called through CNCCLShim (the id is passed by value)
    let ncclCommDestroy: @convention(c) (Handle) -> Int32
    let ncclAllReduce: @convention(c) (UnsafeRawPointer?, UnsafeMutableRawPointer?, Int, Int32, Int32, Handle, Handle) -> Int32
    let ncclGroupStart: @convention(c) () -> Int32
    let ncclGroupEnd: @convention(c) () -> Int32
    let ncclGetErrorString: @convention(c) (Int32) -> UnsafePointer<CChar>?

    init() throws {
        let l = try DynamicLibrary.open(["libnccl.so.2", "libnccl.so"], what: "NCCL (libnccl.so.2)",
                                        install: "Install NCCL (`pip install nvidia-nccl-cu13`, or the CUDA toolkit's), or set QLORA_CUDA_LIB to its folder.")
        library = l
        ncclGetVersion = try l.function("ncclGetVersion")
        ncclGetUniqueId = try l.function("ncclGetUniqueId")
        guard let initRank = dlsym(l.handle, "ncclCommInitRank") else {
            throw CUDAError.symbolMissing(library: l.path, symbol: "ncclCommInitRank")
        }
        ncclCommInitRank = initRank
        ncclCommDestroy = try l.function("ncclCommDestroy")
        ncclAllReduce = try l.function("ncclAllReduce")
        ncclGroupStart = try l.function("ncclGroupStart")
        ncclGroupEnd = try l.function("ncclGroupEnd")
        ncclGetErrorString = try l.function("ncclGetErrorString")
    }

    var version: String {
        var v: Int32 = 0
        _ = ncclGetVersion(&v)
        return v >= 10000 ? "\(v / 10000).\(v / 100 % 100).\(v % 100)" : "\(v / 1000).\(v / 100 % 10).\(v % 100)"
    }

    func check(_ status: Int32, _ call: @autoclosure () -> String) throws {
        guard status != 0 else { return }
        throw CUDAError.callFailed(call: call(), status: status,
                                   message: ncclGetErrorString(status).map { String(cString: $0) }
                                       ?? "NCCL error \(status)")
    }
}

/// One rank's NCCL communicator on its GPU: sums buffers over all ranks on the device's stream.
public final class NCCLCommunicator: @unchecked Sendable {
    let nccl: NCCL
    let comm: UnsafeMutableRawPointer?
    public let device: CUDADevice
    public let rank: Int
    public let worldSize: Int

    /// A new unique id (rank 0 makes it and hands it to the others through the rendezvous).
    public static func makeUniqueId() throws -> [UInt8] {
        let nccl = try NCCL()
        var id = [UInt8](repeating: 0, count: NCCL.uniqueIdBytes)
        try id.withUnsafeMutableBytes { try nccl.check(nccl.ncclGetUniqueId($0.baseAddress!), "ncclGetUniqueId") }
        return id
    }

    /// Joins the group `uniqueId` as `rank` of `worldSize` (blocks until every rank has joined).
    public init(device: CUDADevice, rank: Int, worldSize: Int, uniqueId: [UInt8]) throws {
        precondition(uniqueId.count == NCCL.uniqueIdBytes)
        let library = try NCCL()
        var c: UnsafeMutableRawPointer? = nil
        try device.makeCurrent()
        let status = uniqueId.withUnsafeBytes { qlora_nccl_comm_init_rank(library.ncclCommInitRank, &c, Int32(worldSize), $0.baseAddress!, Int32(rank)) }
        try library.check(status, "ncclCommInitRank(rank \(rank) of \(worldSize))")
        nccl = library; comm = c
        self.device = device; self.rank = rank; self.worldSize = worldSize
    }

    deinit { _ = nccl.ncclCommDestroy(comm) }

    /// "NCCL 2.x.y (path)".
    public var description: String { "NCCL \(nccl.version) (\(nccl.library.path))" }

    /// Each buffer (f32 or f64) ← its sum over all ranks, in place, as one NCCL group.
    public func allReduceSum(_ buffers: [DeviceBuffer]) throws {
        try nccl.check(nccl.ncclGroupStart(), "ncclGroupStart")
        for b in buffers {
            precondition(b.dtype == .f32 || b.dtype == .f64)
            let p = UnsafeMutableRawPointer(bitPattern: UInt(b.address))
            try nccl.check(nccl.ncclAllReduce(UnsafeRawPointer(p), p, b.count, b.dtype == .f32 ? NCCL.float32 : NCCL.float64,
                                              NCCL.sum, comm, device.stream), "ncclAllReduce(\(b.count) values)")
        }
        try nccl.check(nccl.ncclGroupEnd(), "ncclGroupEnd")
    }

    /// Host values summed over all ranks (through the GPU; waits for the result).
    public func sum(_ values: [Double]) throws -> [Double] {
        let b = try device.allocate(values.count, .f64)
        try values.withUnsafeBytes { try device.copy(bytes: $0, to: b.address) }
        try allReduceSum([b])
        var out = [Double](repeating: 0, count: values.count)
        try out.withUnsafeMutableBytes { try device.read(b.address, into: $0) }
        return out
    }
}
