import Tensors

/// The weights of a Hugging Face model folder: one `model.safetensors`, or shards listed by
/// `model.safetensors.index.json`. Shards are opened on first use.
public final class SafeTensorsArchive: @unchecked Sendable {
    /// The folder.
    public let directory: String
    /// Every tensor name, in file order (shards in index order).
    public let names: [String]
    private let shardOf: [String: String]
    private var openShards: [String: SafeTensorsFile] = [:]

    /// Opens the weights in `directory`.
    public init(directory: String) throws {
        self.directory = directory
        let single = directory + "/model.safetensors"
        let indexPath = directory + "/model.safetensors.index.json"
        // A folder or FIFO under either name is reported as what it is, not as "no model.safetensors".
        for path in [single, indexPath] {
            if let kind = FileSystem.irregularKind(path) {
                throw ModelFileError.cannotOpen(path: path, reason: "not a regular file (\(kind))")
            }
        }
        if FileSystem.isFile(single) {
            let file = try SafeTensorsFile(path: single)
            names = file.names
            shardOf = Dictionary(uniqueKeysWithValues: names.map { ($0, "model.safetensors") })
            openShards["model.safetensors"] = file
        } else if FileSystem.isFile(indexPath) {
            let json: JSONValue
            do { json = try JSONValue(parsing: try FileSystem.readBytes(indexPath)) } catch let e as JSONParseError {
                throw ModelFileError.invalidConfig(path: indexPath, detail: "\(e)")
            }
            guard let map = json["weight_map"]?.objectValue else {
                throw ModelFileError.invalidConfig(path: indexPath, detail: "no \"weight_map\" object")
            }
            var shardOf: [String: String] = [:]
            var names: [String] = []
            for (name, file) in map {
                guard let f = file.stringValue, !f.contains("/") else {
                    throw ModelFileError.invalidConfig(path: indexPath, detail: "weight_map entry for '\(name)' is not a file name")
                }
                // A name listed twice (in two shards, say) was read from the last one and listed twice: quantize
                // then failed only when writing its output, after all the work.
                guard shardOf[name] == nil else {
                    throw ModelFileError.invalidConfig(path: indexPath, detail: "weight_map lists '\(name)' twice")
                }
                shardOf[name] = f
                names.append(name)
            }
            self.names = names
            self.shardOf = shardOf
        } else {
            throw ModelFileError.cannotOpen(path: directory,
                                            reason: "no model.safetensors or model.safetensors.index.json in the folder")
        }
    }

    /// The tensor `name` (a view into its mapped shard).
    public func tensor(named name: String) throws -> Tensor {
        guard let shard = shardOf[name] else { throw ModelFileError.missingTensor(name: name, location: directory) }
        if openShards[shard] == nil { openShards[shard] = try SafeTensorsFile(path: directory + "/" + shard) }
        return try openShards[shard]!.tensor(named: name)
    }

    /// True when the folder has a tensor called `name`.
    public func contains(_ name: String) -> Bool { shardOf[name] != nil }

    /// Drops the open shards' pages from resident memory.
    public func evictPages() { for f in openShards.values { f.evictPages() } }
}
