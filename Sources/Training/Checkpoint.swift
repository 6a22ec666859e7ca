import Foundation
import Llama
import ModelFiles
import Tensors

/// A training checkpoint, `OUTPUT/checkpoint-STEP/`: the adapter in PEFT format, `optimizer.safetensors` (every
/// moment, bit for bit, and each tensor's step count), and `trainer_state.json` (the step, the generator state, the
/// data order and position). Written into a temporary folder and renamed, so a crash never leaves a half checkpoint;
/// resuming from one continues exactly as if the run had never stopped.
public enum Checkpoint {
    /// Saves `trainer` under `outputDirectory`, then deletes the oldest checkpoints beyond `limit`.
    @discardableResult
    public static func save(_ trainer: Trainer, outputDirectory: String, limit: Int?) throws -> String {
        let final = outputDirectory + "/checkpoint-\(trainer.step)"
        let temporary = final + ".tmp-\(getpid())"
        let weights = try trainer.engine.adapterWeights()
        // Never write a checkpoint that could not be resumed from.
        if let bad = weights.sorted(by: { $0.key < $1.key })
            .first(where: { !$0.value.a.allSatisfy(\.isFinite) || !$0.value.b.allSatisfy(\.isFinite) }) {
            throw TrainingError(description: "not saving \(final): adapter \(bad.key) holds non-finite weights at " +
                "step \(trainer.step)")
        }
        try? FileManager.default.removeItem(atPath: temporary)
        // A save that fails (a full disk) takes its partial folder with it, not leaving the space taken until
        // the next run removes it.
        do {
            try PEFTAdapter.save(weights, lora: trainer.engine.loraConfig, to: temporary)
            let optimizer = try trainer.engine.optimizerSnapshot()
            var tensors: [(name: String, tensor: Tensor)] = []
            var steps: [(String, JSONValue)] = []
            for (name, state) in optimizer.states.sorted(by: { $0.key < $1.key }) {
                switch state {
                case .float32(let m, let v):
                    tensors.append((name + ".m", Tensor(m, shape: [m.count])))
                    tensors.append((name + ".v", Tensor(v, shape: [v.count])))
                case .eightBit(let m, let v, let am, let av):
                    tensors.append((name + ".m", Tensor(copying: m, shape: [m.count], dtype: .u8)))
                    tensors.append((name + ".v", Tensor(copying: v, shape: [v.count], dtype: .u8)))
                    tensors.append((name + ".absmax_m", Tensor(am, shape: [am.count])))
                    tensors.append((name + ".absmax_v", Tensor(av, shape: [av.count])))
                }
                steps.append((name, .int(optimizer.steps[name] ?? 0)))
            }
            // One id in both files: an optimizer file copied in from another run or step is refused on resume.
            let id = String(UInt64.random(in: 1...UInt64.max), radix: 16)
            try SafeTensorsWriter.write(tensors, metadata: ["optim": optimizer.kind.rawValue,
                                                            "steps": JSONValue.object(steps).compactText(),
                                                            "checkpoint_id": id],
                                        to: temporary + "/optimizer.safetensors")
            var fields: [(String, JSONValue)] = [
                ("global_step", .int(trainer.step)),
                ("total_steps", .int(trainer.totalSteps)),
                ("rng_state", .string(String(trainer.rng.state))),
                ("epoch", .int(trainer.data.epoch)),
                ("data_position", .int(trainer.data.position)),
                ("data_order", .array(trainer.data.order.map { .int($0) })),
            ]
            if let best = trainer.best {
                fields += [("best_metric", .double(best.loss)), ("best_global_step", .int(best.step))]
            }
            fields.append(("early_stopping_patience_counter", .int(trainer.evaluationsWithoutImprovement)))
            fields += runSettings(of: trainer)
            fields.append(("checkpoint_id", .string(id)))
            let state: JSONValue = .object(fields)
            try AtomicFile.write(text: state.pythonText(indent: 2) + "\n", to: temporary + "/trainer_state.json")
        } catch {
            try? FileManager.default.removeItem(atPath: temporary)
            throw error
        }
        // A checkpoint of this step from an abandoned run is moved aside (one rename), not deleted file by file
        // before the new one is in place: a run stopped in between used to leave it half deleted, and the next run
        // then removed the complete new one as a stale temporary. `removeStaleTemporaries` puts it back.
        let previous = final + ".old-\(getpid())"
        try? FileManager.default.removeItem(atPath: previous)
        if FileManager.default.fileExists(atPath: final), rename(final, previous) != 0 {
            throw ModelFileError.writeFailed(path: final, reason: String(cString: strerror(errno)))
        }
        guard rename(temporary, final) == 0 else {
            let reason = String(cString: strerror(errno))
            _ = rename(previous, final)
            throw ModelFileError.writeFailed(path: final, reason: reason)
        }
        try? FileManager.default.removeItem(atPath: previous)
        if let limit, limit > 0 {
            let all = try checkpoints(in: outputDirectory)
            // The checkpoint just written is always kept (a run resumed from an earlier checkpoint saves steps
            // below those of the abandoned run's later checkpoints, which used to win and delete it).
            let others = all.filter { $0.step != trainer.step }
            for old in others.dropLast(limit - 1) { try? FileManager.default.removeItem(atPath: old.path) }
        }
        return final
    }

    /// Removes the `checkpoint-N.tmp-PID` folders that an interrupted save left in `outputDirectory`, when the
    /// process PID is no longer running (a live one may be saving right now). Returns the paths removed. A
    /// `checkpoint-N.old-PID` (the checkpoint that save was replacing, moved aside) is put back as `checkpoint-N`
    /// when the save stopped before the new one took its place, else removed.
    @discardableResult
    public static func removeStaleTemporaries(in outputDirectory: String) throws -> [String] {
        guard FileSystem.isDirectory(outputDirectory) else { return [] }
        var removed: [String] = []
        // The moved-aside checkpoints first: one put back makes the temporary beside it stale.
        let names = try FileSystem.contents(of: outputDirectory).filter { $0.hasPrefix("checkpoint-") }
            .sorted { $0.contains(".old-") && !$1.contains(".old-") }
        for name in names {
            guard let range = name.range(of: ".tmp-") ?? name.range(of: ".old-"),
                  let pid = Int32(name[range.upperBound...]),
                  Int(name[name.index(name.startIndex, offsetBy: "checkpoint-".count)..<range.lowerBound]) != nil
            else { continue }
            if pid != getpid(), kill(pid, 0) == 0 || errno == EPERM { continue }   // still running
            let path = outputDirectory + "/" + name
            let final = outputDirectory + "/" + name[..<range.lowerBound]
            if name[range] == ".old-", !FileManager.default.fileExists(atPath: final), rename(path, final) == 0 {
                let said = "restored \(final), which an interrupted save had moved to \(path)\n"
                FileHandle.standardError.write(Data(said.utf8))
                continue
            }
            try FileManager.default.removeItem(atPath: path)
            removed.append(path)
        }
        return removed
    }

    /// Whether `outputDirectory` already holds a run: a non-empty `metrics.jsonl`, an adapter
    /// (`adapter_model.safetensors`) or a `checkpoint-N` folder (the first found). An empty metrics.jsonl (a run
    /// that stopped before its first logged step) holds nothing to lose. An adapter folder (a fine-tune, a
    /// checkpoint, a run's OUTPUT/best) used to count as none: the new run replaced its adapter without a word.
    public static func existingRun(in outputDirectory: String) throws -> String? {
        guard FileSystem.isDirectory(outputDirectory) else { return nil }
        let metrics = outputDirectory + "/metrics.jsonl"
        if let size = (try? FileManager.default.attributesOfItem(atPath: metrics))?[.size] as? NSNumber,
            size.intValue > 0 {
            return metrics
        }
        let adapter = outputDirectory + "/adapter_model.safetensors"
        if FileManager.default.fileExists(atPath: adapter) { return adapter }
        return try checkpoints(in: outputDirectory).first?.path
    }

    /// The checkpoints in `outputDirectory`, oldest first.
    public static func checkpoints(in outputDirectory: String) throws -> [(step: Int, path: String)] {
        guard FileSystem.isDirectory(outputDirectory) else { return [] }
        return try FileSystem.contents(of: outputDirectory).compactMap { name -> (Int, String)? in
            guard name.hasPrefix("checkpoint-"), let step = Int(name.dropFirst("checkpoint-".count)) else { return nil }
            return (step, outputDirectory + "/" + name)
        }.sorted { $0.0 < $1.0 }
    }

    /// The largest epoch a checkpoint may hold (2^53).
    public static let maximumEpoch = 1 << 53

    /// Checks a checkpoint's place in the data against the data of this run, before anything is restored: the
    /// order must be empty or a permutation of this data's examples (a different data file, or another
    /// --validation-split, gives another count), the position within it, the step not negative, the epoch in
    /// 0 ... `maximumEpoch`.
    public static func checkState(step: Int, order: [Int], rawOrderCount: Int, position: Int, epoch: Int,
                                  exampleCount: Int, directory: String) throws {
        func fail(_ detail: String) -> ModelFileError {
            ModelFileError.invalidCheckpoint(path: directory, tensor: "trainer_state.json", detail: detail)
        }
        guard step >= 0 else { throw fail("global_step is \(step): must be ≥ 0") }
        // Bounded far beyond any run: an epoch of Int.max overflowed (a trap) at the next pass over the data.
        guard (0...maximumEpoch).contains(epoch) else {
            throw fail("epoch is \(epoch): must be in 0 ... \(maximumEpoch)")
        }
        guard order.isEmpty && rawOrderCount == 0
                || order.count == rawOrderCount && Set(order) == Set(0..<exampleCount) && order.count == exampleCount
        else {
            throw fail("data_order holds \(rawOrderCount) entries that are not an order of this run's \(exampleCount) "
                       + "training examples: resume with the same data file (and --validation-split) as the run that "
                       + "saved it")
        }
        guard (0...order.count).contains(position) else {
            throw fail("data_position is \(position): must be in 0 ... \(order.count) (the data order's length)")
        }
    }

    /// Restores the checkpoint in `directory` into `trainer` (the engine's adapters and optimizer; the step, generator
    /// and data position). The checkpoint's LoRA settings must be the engine's.
    /// Returns warnings: settings of this run that differ from the checkpoint's and take effect from here on.
    @discardableResult
    public static func restore(_ trainer: inout Trainer, from directory: String) throws -> [String] {
        var warnings: [String] = []
        let statePath = directory + "/trainer_state.json"
        let state: JSONValue
        do { state = try JSONValue(parsing: FileSystem.readBytes(statePath)) } catch {
            throw ModelFileError.invalidCheckpoint(path: directory, tensor: "trainer_state.json",
                                                   detail: ModelFileError.detail(of: error, droppingPath: statePath))
        }
        // Each field named with what it holds and what it should (a bare "missing or malformed fields" left the
        // user to guess which of six).
        func field<T>(_ key: String, _ expected: String, _ read: (JSONValue) -> T?,
                      optional: Bool = false) throws -> T? {
            guard let value = state[key] else {
                if optional { return nil }
                throw ModelFileError.invalidCheckpoint(path: directory, tensor: "trainer_state.json",
                                                       detail: "\(key) is missing (expected \(expected))")
            }
            guard let read = read(value) else {
                throw ModelFileError.invalidCheckpoint(path: directory, tensor: "trainer_state.json", detail: "\(key) "
                    + "is \(value.compactText().prefix(80)): expected \(expected)")
            }
            return read
        }
        let whole = "an integer"
        guard let step = try field("global_step", whole, \.intValue),
              let rngState = try field("rng_state", "a decimal 64-bit unsigned integer in a string",
                                       { $0.stringValue.flatMap { UInt64($0) } }),
              let order = try field("data_order", "an array of integers", {
                  $0.arrayValue.flatMap { a in a.allSatisfy { $0.intValue != nil } ? a.compactMap(\.intValue) : nil }
              }),
              let position = try field("data_position", whole, \.intValue),
              let epoch = try field("epoch", whole, \.intValue) else {
            throw ModelFileError.invalidCheckpoint(path: directory, tensor: "trainer_state.json", detail: "unreadable")
        }
        try checkState(step: step, order: order, rawOrderCount: order.count,
                       position: position, epoch: epoch, exampleCount: trainer.exampleCount, directory: directory)
        // A checkpoint beyond this run's last step would train nothing and save its adapter as the run's final one,
        // replacing the adapter and the metrics the run wrote after that step (exit status 0, "final logged loss
        // nan").
        guard step <= trainer.totalSteps else {
            throw ModelFileError.invalidCheckpoint(path: directory, tensor: "trainer_state.json", detail:
                "global_step is \(step), beyond this run's \(trainer.totalSteps) steps (--max-steps, or "
                + "--num-train-epochs over this data): nothing would be trained; give a larger --max-steps, or resume "
                + "from an earlier checkpoint")
        }
        try checkRunSettings(state, of: trainer, directory: directory, warnings: &warnings)
        let counter = try field("early_stopping_patience_counter", whole, \.intValue, optional: true) ?? 0
        // At most one evaluation a step: a counter of Int.max overflowed (a trap) at the next evaluation without
        // an improvement.
        guard (0...step).contains(counter) else {
            throw ModelFileError.invalidCheckpoint(
                path: directory, tensor: "trainer_state.json",
                detail: "early_stopping_patience_counter is \(counter): must be in 0 ... global_step \(step) (one "
                    + "evaluation a step at most)")
        }
        let engine = trainer.engine
        let lora = engine.loraConfig, saved = try PEFTAdapter.readConfig(directory: directory)
        guard saved.r == lora.r, saved.alpha == lora.alpha, saved.dropout == lora.dropout, saved.useRSLoRA == lora.useRSLoRA,
              saved.resolvedTargets == lora.resolvedTargets else {
            func text(_ c: LoRAConfig) -> String {
                "r \(c.r), alpha \(c.alpha), dropout \(c.dropout), rsLoRA \(c.useRSLoRA), targets \(c.resolvedTargets.joined(separator: ","))"
            }
            throw ModelFileError.invalidCheckpoint(path: directory, tensor: "adapter_config.json",
                                                   detail: "was saved with \(text(saved)), this run uses \(text(lora))")
        }
        let adapters = try engine.readAdapterWeights(directory: directory)
        let current = try engine.optimizerSnapshot()
        let file = try SafeTensorsFile(path: directory + "/optimizer.safetensors")
        guard file.metadata["optim"] == current.kind.rawValue else {
            throw ModelFileError.invalidCheckpoint(path: file.path, tensor: "optimizer", detail: file.metadata["optim"]
                .map { "was saved by \($0), this run uses \(current.kind.rawValue)" }
                ?? "the metadata names no optimizer (\"optim\"); this run uses \(current.kind.rawValue)")
        }
        // The update counts by tensor: text that is no JSON object used to stop with a JSON error naming no file,
        // or (a list, a number) to restore no moment at all, resuming with a fresh optimizer without a word.
        let stepsText = file.metadata["steps"] ?? "{}"
        let stepsJSON: JSONValue
        do { stepsJSON = try JSONValue(parsing: Array(stepsText.utf8)) } catch {
            throw ModelFileError.invalidCheckpoint(path: file.path, tensor: "optimizer",
                                                   detail: "the metadata's \"steps\" is not JSON: \(error)")
        }
        guard let stepCounts = stepsJSON.objectValue else {
            throw ModelFileError.invalidCheckpoint(path: file.path, tensor: "optimizer", detail: "the metadata's "
                + "\"steps\" is \(stepsJSON.compactText().prefix(80)), expected an object of update counts by tensor")
        }
        // (Older checkpoints have no id.) Moments of another run or step used to be taken without a word.
        if let id = file.metadata["checkpoint_id"], let expected = state["checkpoint_id"]?.stringValue, id != expected {
            throw ModelFileError.invalidCheckpoint(path: file.path, tensor: "optimizer", detail: "belongs to another "
                + "checkpoint (checkpoint_id \(id.prefix(40)), trainer_state.json's is \(expected.prefix(40))): an "
                + "optimizer file copied from another run or step; put back the one saved with this checkpoint")
        }
        // Moments in the file that "steps" does not list were left out in silence: those matrices resumed with a
        // fresh optimizer state (the writer lists every tensor whose moments it writes).
        let listed = Set(stepCounts.map(\.0))
        if let unlisted = file.names.filter({ $0.hasSuffix(".m") }).map({ String($0.dropLast(2)) })
            .sorted().first(where: { !listed.contains($0) }) {
            throw ModelFileError.invalidCheckpoint(path: file.path, tensor: unlisted + ".m", detail: "moments that "
                + "the metadata's \"steps\" does not list (it gives no update count for \(unlisted))")
        }
        var states: [String: OptimizerState] = [:], steps: [String: Int] = [:]
        for (name, count) in stepCounts {
            // Each tensor's update count: an integer from 0 to the checkpoint's step (the next update adds one).
            guard let updates = count.intValue, (0...max(step, 0)).contains(updates) else {
                throw ModelFileError.invalidCheckpoint(path: file.path, tensor: name, detail: "optimizer step count "
                    + "\(count.compactText()) is not an integer from 0 to the checkpoint's global_step \(step)")
            }
            steps[name] = updates
            let m = try file.tensor(named: name + ".m"), v = try file.tensor(named: name + ".v")
            try checkMoments(name, m: m, v: v, file: file, kind: current.kind, adapters: adapters)
            // Moments and block scales finite, second moments and scales not negative: a damaged value used to
            // make the first resumed step diverge (and blame the learning rate).
            func checked(_ suffix: String, _ values: [Float], nonNegative: Bool) throws -> [Float] {
                if let bad = values.firstIndex(where: { !$0.isFinite || (nonNegative && $0 < 0) }) {
                    throw ModelFileError.invalidCheckpoint(path: file.path, tensor: name + suffix, detail: "element " +
                        "\(bad) is \(values[bad]): \(nonNegative ? "must be finite and ≥ 0" : "not finite")")
                }
                return values
            }
            if m.dtype == .u8 {
                states[name] = .eightBit(m: m.bytesArray(), v: v.bytesArray(),
                                         absmaxM: try checked(".absmax_m", try file.tensor(named: name + ".absmax_m")
                                            .floats(), nonNegative: true),
                                         absmaxV: try checked(".absmax_v", try file.tensor(named: name + ".absmax_v")
                                            .floats(), nonNegative: true))
            } else {
                states[name] = .float32(m: try checked(".m", m.floats(), nonNegative: false),
                                        v: try checked(".v", v.floats(), nonNegative: true))
            }
        }
        try engine.setAdapterWeights(adapters)
        try engine.restoreOptimizer(AdamW(kind: current.kind, settings: current.settings, states: states, steps: steps))
        var rng = SeededGenerator(seed: 0)
        rng.state = rngState
        // The best validation loss and early stopping's counter (absent from checkpoints of older runs).
        var best: (loss: Double, step: Int)? = nil
        if let loss = try field("best_metric", "a number", \.doubleValue, optional: true),
           let at = try field("best_global_step", whole, \.intValue, optional: true) {
            best = (loss, at)
        }
        trainer.restore(step: step, rng: rng, data: DataPosition(order: order, position: position, epoch: epoch),
                        best: best, evaluationsWithoutImprovement: counter)
        return warnings
    }

    /// The settings of the run a checkpoint was saved by that decide what the rest of it computes (Hugging Face's
    /// trainer_state.json keeps train_batch_size too), and a fingerprint of its training examples.
    static func runSettings(of trainer: Trainer) -> [(String, JSONValue)] {
        let c = trainer.config
        return [
            ("train_batch_size", .int(c.batchSize * (trainer.group?.worldSize ?? 1))),
            ("gradient_accumulation_steps", .int(c.gradientAccumulationSteps)),
            ("learning_rate", .double(Double(c.learningRate))),
            ("lr_scheduler_type", .string(c.schedule.rawValue)),
            ("warmup_steps", .int(c.warmup(totalSteps: trainer.totalSteps))),
            ("weight_decay", .double(Double(c.weightDecay))),
            ("max_grad_norm", .double(Double(c.maxGradNorm))),
            ("seed", .string(String(c.seed))),
            ("train_data_fingerprint", .string(trainer.dataFingerprint)),
        ]
    }

    /// Compares the settings a checkpoint records (`runSettings`; older checkpoints have none) with this run's. Other
    /// training examples, or another batch per step, are refused: the saved data order and position and the step
    /// counts belong to the run that wrote them. Another learning rate, schedule, warm-up, weight decay or clipping
    /// takes effect from the next step, and is said; a seed has no effect (the generator comes from the checkpoint).
    /// Resuming with any of these changed used to go on silently.
    static func checkRunSettings(_ state: JSONValue, of trainer: Trainer, directory: String,
                                 warnings: inout [String]) throws {
        let saved = Dictionary(state.objectValue ?? [], uniquingKeysWith: { $1 })
        let now = Dictionary(runSettings(of: trainer), uniquingKeysWith: { $1 })
        func text(_ v: JSONValue) -> String {
            if let s = v.stringValue { return s }
            if case .double(let d) = v { return "\(Float(d))" }
            return v.compactText()
        }
        func differs(_ key: String) -> (was: String, now: String)? {
            guard let was = saved[key], let current = now[key], was != current else { return nil }
            return (text(was), text(current))
        }
        if differs("train_data_fingerprint") != nil {
            throw ModelFileError.invalidCheckpoint(path: directory, tensor: "trainer_state.json", detail:
                "train_data_fingerprint: this run's \(trainer.exampleCount) training examples are not those of the run "
                + "that saved it (another --data file, or another --max-seq-length, --packing, --validation-split or "
                + "--seed with a split, prompt or chat settings): resume with the same, or start a new run from its "
                + "adapter with --init-adapter")
        }
        let refused = [("train_batch_size", "--batch-size (× devices)"),
                       ("gradient_accumulation_steps", "--gradient-accumulation-steps")]
        for (key, flag) in refused {
            if let (was, current) = differs(key) {
                throw ModelFileError.invalidCheckpoint(path: directory, tensor: "trainer_state.json", detail:
                    "\(key) is \(was), this run's \(flag) gives \(current): resume with the same batch per step "
                    + "(the saved data position, epoch and step counts belong to it)")
            }
        }
        let step = (state["global_step"]?.intValue ?? 0) + 1
        let taking = [("learning_rate", "--learning-rate"), ("lr_scheduler_type", "--lr-scheduler"),
                      ("warmup_steps", "--warmup-steps / --warmup-ratio"), ("weight_decay", "--weight-decay"),
                      ("max_grad_norm", "--max-grad-norm")]
        for (key, flag) in taking {
            if let (was, current) = differs(key) {
                warnings.append("\(flag): \(key) is \(current) in this run, \(was) in the run that saved "
                    + "\(directory): the resumed run takes the new value from step \(step) on")
            }
        }
        if let (was, current) = differs("seed") {
            warnings.append("--seed \(current) has no effect on a run resumed from \(directory) (saved by a run with "
                + "seed \(was)): the random generator's state comes from the checkpoint")
        }
    }

    /// Checks the moments of optimizer tensor `name` ("LAYER.PROJECTION.A" or ".B") against the adapter matrix they
    /// update: one value per weight, stored as the update of `kind` reads them (8-bit codes with an absmax per block
    /// for a large matrix of an 8-bit optimizer, float32 otherwise). Moments cut short used to be read past their
    /// end by the first update (a trap in the 32-bit update, unchecked memory in the 8-bit one).
    public static func checkMoments(_ name: String, m: Tensor, v: Tensor, file: SafeTensorsFile, kind: OptimizerKind,
                             adapters: [String: LoRAWeights]) throws {
        func fail(_ detail: String) -> ModelFileError {
            ModelFileError.invalidCheckpoint(path: file.path, tensor: name, detail: detail)
        }
        var weights: Int?
        if let dot = name.lastIndex(of: "."), let w = adapters[String(name[..<dot])] {
            switch name[name.index(after: dot)...] {
            case "A": weights = w.a.count
            case "B": weights = w.b.count
            default: break
            }
        }
        guard let n = weights else {
            throw fail("optimizer state for no adapter matrix of this run (expected LAYER.PROJECTION.A or .B of the "
                       + "adapters \(adapters.keys.sorted().prefix(4).joined(separator: ", ")), ...)")
        }
        let eightBit = kind.isEightBit && n >= AdamW.minimumEightBitSize
        let expected = eightBit ? "8-bit codes (U8)" : "floats"
        guard eightBit ? m.dtype == .u8 && v.dtype == .u8 : m.dtype.isFloatingPoint && v.dtype.isFloatingPoint else {
            throw fail("moments are \(m.dtype.rawValue) and \(v.dtype.rawValue), expected \(expected) for a " +
                       "\(n)-value matrix under \(kind.rawValue)")
        }
        guard m.elementCount == n, v.elementCount == n else {
            throw fail("moments hold \(m.elementCount) and \(v.elementCount) values, expected \(n) (one per weight " +
                       "of the adapter matrix)")
        }
        if eightBit {
            let blocks = (n + AdamW.blocksize - 1) / AdamW.blocksize
            for suffix in [".absmax_m", ".absmax_v"] {
                let count = try file.tensor(named: name + suffix).elementCount
                guard count == blocks else {
                    throw fail("\(suffix.dropFirst()) holds \(count) values, expected \(blocks) (one per block of " +
                               "\(AdamW.blocksize))")
                }
            }
        }
    }
}
