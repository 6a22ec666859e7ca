/// Contiguous bytes behind a tensor: memory this process owns, or a view into a memory-mapped file kept alive by
/// `owner`.
public final class TensorStorage: @unchecked Sendable {
    /// The bytes.
    public let bytes: UnsafeMutableRawBufferPointer
    private let allocation: UnsafeMutableRawPointer?
    private let owner: AnyObject?

    /// Zero-filled memory of `byteCount` bytes, aligned for any element type.
    public init(zeroedByteCount byteCount: Int) {
        let base = UnsafeMutableRawPointer.allocate(byteCount: max(byteCount, 1), alignment: 64)
        base.initializeMemory(as: UInt8.self, repeating: 0, count: max(byteCount, 1))
        bytes = UnsafeMutableRawBufferPointer(start: base, count: byteCount)
        allocation = base
        owner = nil
    }

    /// A read-only view of memory that `owner` keeps valid (a mapped file); never written through.
    public init(view: UnsafeRawBufferPointer, owner: AnyObject) {
        bytes = UnsafeMutableRawBufferPointer(mutating: view)
        allocation = nil
        self.owner = owner
    }

    deinit { allocation?.deallocate() }
}
