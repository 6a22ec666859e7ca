import Foundation

/// The CUDA driver API (`libcuda.so.1`), the functions qlora uses, resolved once. Device pointers are `UInt64`
/// (`CUdeviceptr`); contexts, streams, modules and functions are opaque pointers.
final class CUDADriver: @unchecked Sendable {
    typealias Handle = UnsafeMutableRawPointer?
    let library: DynamicLibrary
    let cuInit: @convention(c) (UInt32) -> Int32
    let cuDeviceGetCount: @convention(c) (UnsafeMutablePointer<Int32>) -> Int32
    let cuDeviceGet: @convention(c) (UnsafeMutablePointer<Int32>, Int32) -> Int32
    let cuDeviceGetName: @convention(c) (UnsafeMutablePointer<CChar>, Int32, Int32) -> Int32
    let cuDeviceGetAttribute: @convention(c) (UnsafeMutablePointer<Int32>, Int32, Int32) -> Int32
    let cuDevicePrimaryCtxRetain: @convention(c) (UnsafeMutablePointer<Handle>, Int32) -> Int32
    let cuCtxSetCurrent: @convention(c) (Handle) -> Int32
    let cuCtxSynchronize: @convention(c) () -> Int32
    let cuStreamCreate: @convention(c) (UnsafeMutablePointer<Handle>, UInt32) -> Int32
    let cuStreamSynchronize: @convention(c) (Handle) -> Int32
    let cuMemAlloc: @convention(c) (UnsafeMutablePointer<UInt64>, Int) -> Int32
    let cuMemAllocManaged: @convention(c) (UnsafeMutablePointer<UInt64>, Int, UInt32) -> Int32
    let cuMemFree: @convention(c) (UInt64) -> Int32
    let cuMemGetInfo: @convention(c) (UnsafeMutablePointer<Int>, UnsafeMutablePointer<Int>) -> Int32
    let cuMemcpyHtoDAsync: @convention(c) (UInt64, UnsafeRawPointer, Int, Handle) -> Int32
    let cuMemcpyDtoHAsync: @convention(c) (UnsafeMutableRawPointer, UInt64, Int, Handle) -> Int32
    let cuMemcpyDtoDAsync: @convention(c) (UInt64, UInt64, Int, Handle) -> Int32
    let cuMemsetD8Async: @convention(c) (UInt64, UInt8, Int, Handle) -> Int32
    let cuMemHostAlloc: @convention(c) (UnsafeMutablePointer<UnsafeMutableRawPointer?>, Int, UInt32) -> Int32
    let cuMemFreeHost: @convention(c) (UnsafeMutableRawPointer?) -> Int32
    let cuEventCreate: @convention(c) (UnsafeMutablePointer<Handle>, UInt32) -> Int32
    let cuEventRecord: @convention(c) (Handle, Handle) -> Int32
    let cuEventDestroy: @convention(c) (Handle) -> Int32
    let cuEventSynchronize: @convention(c) (Handle) -> Int32
    let cuEventElapsedTime: @convention(c) (UnsafeMutablePointer<Float>, Handle, Handle) -> Int32
    let cuStreamWaitEvent: @convention(c) (Handle, Handle, UInt32) -> Int32
    /// CUDA ≥ 12.2: (pointer, bytes, CUmemLocation {type, id} passed by value, flags, stream). The 8-byte struct of
    /// two ints travels in one integer register on x86-64 and arm64, so it is declared as a UInt64 (type | id << 32).
    let cuMemPrefetchAsyncV2: (@convention(c) (UInt64, Int, UInt64, UInt32, Handle) -> Int32)?
    /// The older form: (pointer, bytes, device, stream).
    let cuMemPrefetchAsyncV1: (@convention(c) (UInt64, Int, Int32, Handle) -> Int32)?
    let cuModuleLoadData: @convention(c) (UnsafeMutablePointer<Handle>, UnsafeRawPointer) -> Int32
    let cuModuleGetFunction: @convention(c) (UnsafeMutablePointer<Handle>, Handle, UnsafePointer<CChar>) -> Int32
    let cuOccupancyMaxActiveBlocksPerMultiprocessor: @convention(c) (UnsafeMutablePointer<Int32>, Handle, Int32,
                                                                      Int) -> Int32
    let cuLaunchKernel: @convention(c) (Handle, UInt32, UInt32, UInt32, UInt32, UInt32, UInt32, UInt32, Handle,
                                        UnsafeMutablePointer<UnsafeMutableRawPointer?>?,
                                        UnsafeMutablePointer<UnsafeMutableRawPointer?>?) -> Int32
    let cuGetErrorName: @convention(c) (Int32, UnsafeMutablePointer<UnsafePointer<CChar>?>) -> Int32
    let cuGetErrorString: @convention(c) (Int32, UnsafeMutablePointer<UnsafePointer<CChar>?>) -> Int32

    init() throws {
        let l = try DynamicLibrary.open(["libcuda.so.1", "libcuda.so"], what: "the NVIDIA driver (libcuda.so.1)",
                                        install: "Install the NVIDIA driver, or run without --device cuda.")
        library = l
        cuInit = try l.function("cuInit")
        cuDeviceGetCount = try l.function("cuDeviceGetCount")
        cuDeviceGet = try l.function("cuDeviceGet")
        cuDeviceGetName = try l.function("cuDeviceGetName")
        cuDeviceGetAttribute = try l.function("cuDeviceGetAttribute")
        cuDevicePrimaryCtxRetain = try l.function("cuDevicePrimaryCtxRetain")
        cuCtxSetCurrent = try l.function("cuCtxSetCurrent")
        cuCtxSynchronize = try l.function("cuCtxSynchronize")
        cuStreamCreate = try l.function("cuStreamCreate")
        cuStreamSynchronize = try l.function("cuStreamSynchronize")
        cuMemAlloc = try l.function("cuMemAlloc_v2")
        cuMemAllocManaged = try l.function("cuMemAllocManaged")
        cuMemFree = try l.function("cuMemFree_v2")
        cuMemGetInfo = try l.function("cuMemGetInfo_v2")
        cuMemcpyHtoDAsync = try l.function("cuMemcpyHtoDAsync_v2")
        cuMemcpyDtoHAsync = try l.function("cuMemcpyDtoHAsync_v2")
        cuMemcpyDtoDAsync = try l.function("cuMemcpyDtoDAsync_v2")
        cuMemsetD8Async = try l.function("cuMemsetD8Async")
        cuMemHostAlloc = try l.function("cuMemHostAlloc")
        cuMemFreeHost = try l.function("cuMemFreeHost")
        cuEventCreate = try l.function("cuEventCreate")
        cuEventRecord = try l.function("cuEventRecord")
        cuEventDestroy = try l.function("cuEventDestroy_v2")
        cuEventSynchronize = try l.function("cuEventSynchronize")
        cuEventElapsedTime = try l.function("cuEventElapsedTime")
        cuStreamWaitEvent = try l.function("cuStreamWaitEvent")
        cuMemPrefetchAsyncV2 = l.optionalFunction("cuMemPrefetchAsync_v2")
        cuMemPrefetchAsyncV1 = l.optionalFunction("cuMemPrefetchAsync")
        cuModuleLoadData = try l.function("cuModuleLoadData")
        cuModuleGetFunction = try l.function("cuModuleGetFunction")
        cuOccupancyMaxActiveBlocksPerMultiprocessor = try l.function("cuOccupancyMaxActiveBlocksPerMultiprocessor")
        cuLaunchKernel = try l.function("cuLaunchKernel")
        cuGetErrorName = try l.function("cuGetErrorName")
        cuGetErrorString = try l.function("cuGetErrorString")
    }

    /// Throws a `CUDAError` naming `call` and the driver's own name and text for a non-zero status.
    func check(_ status: Int32, _ call: @autoclosure () -> String) throws {
        guard status != 0 else { return }
        var name: UnsafePointer<CChar>? = nil, text: UnsafePointer<CChar>? = nil
        _ = cuGetErrorName(status, &name)
        _ = cuGetErrorString(status, &text)
        throw CUDAError.callFailed(call: call(), status: status,
                                   message: (name.map { String(cString: $0) } ?? "CUDA error \(status)")
                                       + (text.map { " (" + String(cString: $0) + ")" } ?? ""))
    }
}
