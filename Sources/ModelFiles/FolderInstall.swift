import Foundation

extension FileSystem {
    /// Puts a finished output folder in place: `temporary` (holding `files`) becomes `destination` by one rename
    /// onto a missing or empty folder. Where that cannot be done (`destination` is a link to a folder, or a folder
    /// that has been filled since the command checked it was empty), the files are moved in one by one, and never
    /// over a file that is already there. Two merges into one new folder at once used to end with the second
    /// replacing the first one's files while both reported success; two quantizations at once failed with
    /// Foundation's raw error text.
    public static func installFolder(_ temporary: String, files: [String], at destination: String) throws {
        if rename(temporary, withoutTrailingSlashes(destination)) == 0 { return }
        let reason = String(cString: strerror(errno))
        guard isDirectory(destination) else { throw ModelFileError.writeFailed(path: destination, reason: reason) }
        func present(_ name: String) -> Bool {
            var info = stat()
            return lstat(destination + "/" + name, &info) == 0
        }
        if let taken = files.first(where: present) {
            throw ModelFileError.writeFailed(path: destination, reason: "it holds \(taken) now, written by another "
                + "command since this one found the folder empty; nothing was replaced (choose a new folder, or "
                + "remove that one and run again)")
        }
        for file in files {
            do {
                try FileManager.default.moveItem(atPath: temporary + "/" + file, toPath: destination + "/" + file)
            } catch {
                let why = present(file) ? "another command wrote it meanwhile; it was not replaced"
                    : (error as NSError).localizedDescription
                throw ModelFileError.writeFailed(path: destination + "/" + file, reason: why)
            }
        }
        try? FileManager.default.removeItem(atPath: temporary)
    }
}
