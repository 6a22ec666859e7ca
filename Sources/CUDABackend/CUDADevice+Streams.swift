import Foundation

// Copies that overlap compute: a second stream, events to order the two, and pinned host memory (which the GPU's
// copy engines read and write at full speed, unlike pageable memory). Used to keep gradient checkpoints in host
// memory between the forward and the backward pass.

/// Page-locked host memory of `bytes` bytes, freed with the object.
public final class PinnedHostBuffer: @unchecked Sendable {
    public let address: UnsafeMutableRawPointer!   // nil on a virtual device
    public let bytes: Int
    let device: CUDADevice
    init(address: UnsafeMutableRawPointer?, bytes: Int, device: CUDADevice) {
        self.address = address; self.bytes = bytes; self.device = device
        device.pinnedHostBytes += bytes
    }
    deinit {
        device.pinnedHostBytes -= bytes
        if let address { _ = device.driver.cuMemFreeHost(address) }
    }
}

/// A point in one stream's work that another stream (or the host) can wait for.
public final class GPUEvent: @unchecked Sendable {
    let handle: UnsafeMutableRawPointer?
    let driver: CUDADriver?
    init(handle: UnsafeMutableRawPointer?, driver: CUDADriver?) { self.handle = handle; self.driver = driver }
    deinit { if let handle { _ = driver?.cuEventDestroy(handle) } }
}

/// The device's two streams: kernels and products run on `.compute`; `.copy` moves data to and from the host.
public enum GPUStream { case compute, copy }

extension CUDADevice {
    func streamHandle(_ s: GPUStream) throws -> UnsafeMutableRawPointer? {
        switch s {
        case .compute: return stream
        case .copy:
            if copyStreamHandle == nil {
                var h: UnsafeMutableRawPointer? = nil
                try driver.check(driver.cuStreamCreate(&h, 1), "cuStreamCreate (copy stream)")
                copyStreamHandle = h
            }
            return copyStreamHandle
        }
    }

    /// `bytes` of pinned host memory.
    public func allocatePinned(_ bytes: Int) throws -> PinnedHostBuffer {
        if isVirtual { return PinnedHostBuffer(address: nil, bytes: bytes, device: self) }
        var p: UnsafeMutableRawPointer? = nil
        try driver.check(driver.cuMemHostAlloc(&p, max(bytes, 1), 0),
                         "cuMemHostAlloc(\(bytes) bytes of pinned host memory)")
        return PinnedHostBuffer(address: p!, bytes: bytes, device: self)
    }

    /// An event marking everything queued on `stream` so far.
    public func record(on s: GPUStream) throws -> GPUEvent {
        if isVirtual { return GPUEvent(handle: nil, driver: nil) }
        var e: UnsafeMutableRawPointer? = nil
        try driver.check(driver.cuEventCreate(&e, 2), "cuEventCreate")   // CU_EVENT_DISABLE_TIMING
        let event = GPUEvent(handle: e, driver: driver)
        try driver.check(driver.cuEventRecord(e, try streamHandle(s)), "cuEventRecord")
        return event
    }

    /// Work queued on `stream` from now on starts after `event`.
    public func wait(for event: GPUEvent, on s: GPUStream) throws {
        guard !isVirtual else { return }
        try driver.check(driver.cuStreamWaitEvent(try streamHandle(s), event.handle, 0), "cuStreamWaitEvent")
    }

    /// Queues a copy of `b`'s bytes into `host` (from byte `at` on) on the copy stream, after the compute stream's
    /// work queued so far; returns the event of its end. `b` must stay unwritten (and unfreed: hold it, or make
    /// compute wait for the event before it drops `b`) until then.
    public func copyToHostAsync(_ b: DeviceBuffer, _ host: PinnedHostBuffer, at: Int = 0) throws -> GPUEvent {
        precondition(at >= 0 && host.bytes - at >= b.bytes)
        if isVirtual { return try record(on: .copy) }
        try wait(for: try record(on: .compute), on: .copy)
        try driver.check(driver.cuMemcpyDtoHAsync(host.address + at, b.address, b.bytes, try streamHandle(.copy)),
                         "cuMemcpyDtoHAsync")
        return try record(on: .copy)
    }

    /// A new buffer of `count` × `dtype` filled from `host` (from byte `at` on) on the copy stream, after the compute
    /// stream's work queued so far (its memory may have been another buffer's a moment ago); compute must wait for
    /// the returned event before it reads the buffer.
    public func copyFromHostAsync(_ host: PinnedHostBuffer, at: Int = 0, count: Int,
                                  _ dtype: GPUDType) throws -> (DeviceBuffer, GPUEvent) {
        let b = try allocate(count, dtype)
        precondition(at >= 0 && host.bytes - at >= b.bytes)
        if isVirtual { return (b, try record(on: .copy)) }
        try wait(for: try record(on: .compute), on: .copy)
        try driver.check(driver.cuMemcpyHtoDAsync(b.address, host.address + at, b.bytes, try streamHandle(.copy)),
                         "cuMemcpyHtoDAsync")
        return (b, try record(on: .copy))
    }
}

extension CUDADevice {
    /// Bytes per staged piece of a large upload.
    static let stagingChunk = 32 << 20

    /// A large upload through two pinned buffers: host threads copy one piece of `bytes` into a buffer (in
    /// parallel, which also takes the page faults of a memory-mapped file in parallel) while the copy engine moves
    /// the other one to the GPU. Returns once `bytes` has been read (the source may then go away); the last piece may
    /// still be on its way, in stream order before any later work.
    func stagedCopy(bytes: UnsafeRawBufferPointer, to address: UInt64) throws {
        if uploadStaging.isEmpty {
            uploadStaging = try (0..<2).map { _ in (try allocatePinned(Self.stagingChunk), nil) }
        }
        var offset = 0, slot = 0
        while offset < bytes.count {
            let length = min(Self.stagingChunk, bytes.count - offset)
            if let done = uploadStaging[slot].done {
                try driver.check(driver.cuEventSynchronize(done.handle), "cuEventSynchronize (a staged upload)")
            }
            let target: UnsafeMutableRawPointer = uploadStaging[slot].buffer.address,
                source = bytes.baseAddress! + offset
            let pieces = 8, piece = (length + pieces - 1) / pieces
            DispatchQueue.concurrentPerform(iterations: pieces) { p in
                let start = p * piece, end = min(length, start + piece)
                if start < end { (target + start).copyMemory(from: source + start, byteCount: end - start) }
            }
            try driver.check(driver.cuMemcpyHtoDAsync(address + UInt64(offset), target, length, stream),
                             "cuMemcpyHtoDAsync (staged)")
            uploadStaging[slot].done = try record(on: .compute)
            offset += length; slot ^= 1
        }
    }
}
