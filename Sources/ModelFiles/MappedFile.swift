#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A whole file mapped read-only into memory; tensors read from it are views that keep it alive.
public final class MappedFile: @unchecked Sendable {
    /// The path it was opened from.
    public let path: String
    /// The file's bytes.
    public let bytes: UnsafeRawBufferPointer

    /// Maps `path`; an empty file maps to an empty buffer.
    public init(path: String) throws {
        self.path = path
        // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer forever (it is refused below).
        let fd = open(path, O_RDONLY | O_NONBLOCK)
        guard fd >= 0 else { throw ModelFileError.cannotOpen(path: path, reason: String(cString: strerror(errno))) }
        defer { close(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0 else {
            throw ModelFileError.cannotOpen(path: path, reason: String(cString: strerror(errno)))
        }
        guard (info.st_mode & S_IFMT) == S_IFREG else {
            throw ModelFileError.cannotOpen(path: path, reason: "not a regular file (\(Self.kind(info.st_mode)))")
        }
        let size = Int(info.st_size)
        if size == 0 {
            bytes = UnsafeRawBufferPointer(start: nil, count: 0)
            return
        }
        guard let base = mmap(nil, size, PROT_READ, MAP_PRIVATE, fd, 0), base != MAP_FAILED else {
            throw ModelFileError.cannotOpen(path: path, reason: "mmap failed: \(String(cString: strerror(errno)))")
        }
        bytes = UnsafeRawBufferPointer(start: base, count: size)
    }

    /// What a file that is not regular is, in words ("a folder", "a FIFO (named pipe)", ...).
    public static func kind(_ mode: mode_t) -> String {
        switch mode & S_IFMT {
        case S_IFDIR: return "a folder"
        case S_IFIFO: return "a FIFO (named pipe)"
        case S_IFCHR: return "a character device"
        case S_IFBLK: return "a block device"
        case S_IFSOCK: return "a socket"
        default: return "a special file"
        }
    }

    deinit {
        if let base = bytes.baseAddress { munmap(UnsafeMutableRawPointer(mutating: base), bytes.count) }
    }

    /// Drops the file's pages from this process's resident memory (they are read from the file again if touched):
    /// a loader that streams tensors to a GPU calls it after each one, so that the host never holds the whole model.
    /// The mapping is private and never written, so nothing is lost.
    public func evictPages() {
        guard let base = bytes.baseAddress else { return }
        _ = madvise(UnsafeMutableRawPointer(mutating: base), bytes.count, Int32(MADV_DONTNEED))
    }
}

/// Writes files so that nothing already on disk is lost on failure: data goes to a temporary name beside the
/// target, is flushed, and then renamed over it.
public enum AtomicFile {
    /// Writes the chunks produced by `produce` to `path` atomically; `produce` calls its argument once per chunk.
    public static func write(to requested: String,
                             _ produce: ((UnsafeRawBufferPointer) throws -> Void) throws -> Void) throws {
        let path = try replaceableTarget(requested)
        let temporary = path + ".tmp-\(getpid())"
        let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        guard fd >= 0 else { throw ModelFileError.writeFailed(path: path, reason: String(cString: strerror(errno))) }
        var closed = false
        do {
            try produce { chunk in
                var offset = 0
                while offset < chunk.count {
                    let written = Glibc.write(fd, chunk.baseAddress! + offset, chunk.count - offset)
                    if written < 0 {
                        if errno == EINTR { continue }
                        let reason = errno == ENOSPC ? "no space left on the device" : String(cString: strerror(errno))
                        throw ModelFileError.writeFailed(path: path, reason: reason)
                    }
                    offset += written
                }
            }
            guard fsync(fd) == 0 else {
                throw ModelFileError.writeFailed(path: path, reason: String(cString: strerror(errno)))
            }
            closed = true
            guard close(fd) == 0 else {
                throw ModelFileError.writeFailed(path: path, reason: String(cString: strerror(errno)))
            }
            guard rename(temporary, path) == 0 else {
                throw ModelFileError.writeFailed(path: path, reason: String(cString: strerror(errno)))
            }
        } catch {
            if !closed { close(fd) }
            unlink(temporary)
            throw error
        }
    }

    /// The file that writing `path` replaces: `path`, or the file a symbolic link there points to (the link is
    /// kept). Only a regular file is replaced: renaming over a device, FIFO, socket or folder would destroy it
    /// (`info --dot /dev/null` run as root used to replace /dev/null with a text file), so those are refused, as
    /// are an empty path (which names no file: "" + "/x" used to land in the root folder) and a dangling link.
    public static func replaceableTarget(_ path: String) throws -> String {
        guard !path.isEmpty else { throw ModelFileError.writeFailed(path: path, reason: "the path is empty") }
        var info = stat()
        if stat(path, &info) == 0 {
            guard (info.st_mode & S_IFMT) == S_IFREG else {
                throw ModelFileError.writeFailed(path: path, reason: "it is \(MappedFile.kind(info.st_mode)), not a "
                                                 + "regular file; writing would replace it (name a file)")
            }
            guard lstat(path, &info) == 0, (info.st_mode & S_IFMT) == S_IFLNK, let real = realpath(path, nil) else {
                return path
            }
            defer { free(real) }
            return String(cString: real)
        }
        if lstat(path, &info) == 0 {
            throw ModelFileError.writeFailed(path: path, reason: "it is a symbolic link to a missing file")
        }
        return path
    }

    /// Writes `bytes` to `path` atomically.
    public static func write(_ bytes: [UInt8], to path: String) throws {
        try write(to: path) { emit in try bytes.withUnsafeBytes { try emit($0) } }
    }

    /// Writes `text` as UTF-8 to `path` atomically.
    public static func write(text: String, to path: String) throws {
        try write(Array(text.utf8), to: path)
    }
}
