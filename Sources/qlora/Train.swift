import ArgumentParser
import CUDATraining
import Foundation
import Llama
import ModelFiles
import Training

extension OptimizerKind: ExpressibleByArgument {}
extension LRScheduleKind: ExpressibleByArgument {}
extension IntervalStrategy: ExpressibleByArgument {}

/// `qlora train`: QLoRA fine-tuning on the CPU. Settings come from flags, else from `--config` (Hugging Face key
/// names), else from the defaults; writes metrics.jsonl, checkpoints, the adapter in PEFT format and loss.svg.
struct Train: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Fine-tune LoRA adapters on a frozen 4-bit base (CPU, or an NVIDIA GPU with --device cuda).")

    /// The defaults the help shows: TrainingConfig's, written once there (a flag left out, and a key missing from
    /// the recipe, take the same value).
    static let defaults = TrainingConfig()

    @OptionGroup var modelOptions: ModelOptions
    @Option(help: "Recipe file (YAML or JSON) with Hugging Face key names; flags override it.") var config: String?
    @Option(help: "Training data file.") var data: String?
    @Option(help: "Validation data file.") var evalData: String?
    @Option(help: "Hold out this fraction of the training data for validation (when no --eval-data).") var validationSplit: Double?
    @Option(help: "Where metrics.jsonl, checkpoints, the adapter and loss.svg go.") var outputDir: String?
    @Option(help: "Start from this PEFT adapter (its r, alpha, targets) instead of fresh adapters.") var initAdapter: String?
    @Option(help: "Continue from a checkpoint folder, or 'latest' in --output-dir.") var resumeFromCheckpoint: String?
    @Flag(help: "Start a new run in an --output-dir that already holds one (its metrics.jsonl is replaced).")
    var overwriteOutputDir = false
    // The LoRA defaults are LoRAConfig's (peft's LoraConfig's), written once there; the help shows them.
    @Option(help: ArgumentHelp("LoRA rank r (default \(LoRAConfig().r)).")) var loraR: Int?
    @Option(help: ArgumentHelp("LoRA alpha (default \(LoRAConfig().alpha.formatted())).")) var loraAlpha: Double?
    @Option(help: ArgumentHelp("LoRA dropout (default \(LoRAConfig().dropout.formatted())).")) var loraDropout: Double?
    @Option(help: ArgumentHelp("\(LoRATargets.help) (default \(LoRATargets.defaultText)).")) var targetModules: String?
    @Flag(help: "rsLoRA scaling (alpha / sqrt(r)).") var useRslora = false
    @Option(help: ArgumentHelp("Sequences per micro-batch (default \(Train.defaults.batchSize)).")) var batchSize: Int?
    @Option(help: ArgumentHelp(
        "Micro-batches per optimizer step (default \(Train.defaults.gradientAccumulationSteps))."))
    var gradientAccumulationSteps: Int?
    @Option(help: "Optimizer steps (default: run the epochs).") var maxSteps: Int?
    @Option(help: ArgumentHelp("Epochs when --max-steps is not given (default \(Train.defaults.epochs.formatted()))."))
    var numTrainEpochs: Double?
    @Option(help: ArgumentHelp("Peak learning rate (default \(Train.defaults.learningRate)).")) var learningRate: Float?
    @Option(help: ArgumentHelp("Decoupled weight decay (default \(Train.defaults.weightDecay.formatted()))."))
    var weightDecay: Float?
    @Option(help: ArgumentHelp(
        "adamw, adamw_8bit, paged_adamw_8bit or paged_adamw_32bit (default \(Train.defaults.optimizer))."))
    var optim: OptimizerKind?
    @Option(help: ArgumentHelp("constant, linear or cosine (default \(Train.defaults.schedule))."))
    var lrScheduler: LRScheduleKind?
    @Option(help: ArgumentHelp("Linear warm-up steps (default \(Train.defaults.warmupSteps)).")) var warmupSteps: Int?
    @Option(help: ArgumentHelp(
        "Warm-up as a fraction of the steps (default \(Train.defaults.warmupRatio.formatted()))."))
    var warmupRatio: Double?
    @Option(help: ArgumentHelp(
        "Clip the global gradient norm to this (0: off; default \(Train.defaults.maxGradNorm.formatted()))."))
    var maxGradNorm: Float?
    @Flag(help: "Keep the data order.") var noShuffle = false
    @Option(help: ArgumentHelp("Log every this many steps (default \(Train.defaults.loggingSteps))."))
    var loggingSteps: Int?
    @Option(help: "Evaluate every this many steps (default: at the end).") var evalSteps: Int?
    @Option(help: "Save a checkpoint every this many steps.") var saveSteps: Int?
    @Option(help: "Keep at most this many checkpoints.") var saveTotalLimit: Int?
    @Option(help: "When to evaluate: steps, epoch or no (default: every --eval-steps when given, and at the end).")
    var evalStrategy: IntervalStrategy?
    @Option(help: "When to save a checkpoint: steps, epoch or no (default: every --save-steps when given).")
    var saveStrategy: IntervalStrategy?
    @Flag(help: "Keep the adapter with the lowest validation loss as OUTPUT_DIR/best and end with it.")
    var loadBestModelAtEnd = false
    @Option(help: "The metric that picks the best adapter: eval_loss (the only one; lower is better).")
    var metricForBestModel: String?
    @Option(help: "Stop after this many evaluations in a row without improvement.") var earlyStoppingPatience: Int?
    @Option(help: ArgumentHelp("The decrease in validation loss that counts as an improvement (default "
        + "\(Train.defaults.earlyStoppingThreshold.formatted()))."))
    var earlyStoppingThreshold: Double?
    @Option(help: ArgumentHelp("Seed for adapters, dropout and shuffling (default \(Train.defaults.seed))."))
    var seed: UInt64?
    @Flag(help: "Recompute each layer's activations in the backward pass (less memory, same numbers).")
    var gradientCheckpointing = false
    @Flag(help: ArgumentHelp("Put each micro-batch's examples in one row, each its own document, instead of padding "
                             + "them to the longest (TRL's padding_free): the same loss, no padding computed."))
    var paddingFree = false
    @Option(help: """
        On a GPU, keep gradient checkpoints in pinned host memory (true, the default) \
        or on the GPU (false).
        """)
    var offloadCheckpoints: Bool?
    @Option(help: "Where logs go besides metrics.jsonl: none or tensorboard (event files under --logging-dir).")
    var reportTo: String?
    @Option(help: "TensorBoard's folder (default OUTPUT_DIR/runs).") var loggingDir: String?
    @OptionGroup var dataOptions: DataOptions
    @OptionGroup var parallel: DataParallelOptions

    /// Takes an exclusive lock on OUTPUT/.qlora-run.lock for the rest of the process (flock: released when the
    /// process ends, however it ends), so that two runs started together into one folder cannot both pass the
    /// check for an existing run and then write over each other's adapter, checkpoints and metrics.
    static func lockOutput(_ output: String) throws {
        let path = output + "/.qlora-run.lock"
        let fd = open(path, O_CREAT | O_RDWR | O_CLOEXEC, 0o644)
        guard fd >= 0 else {
            throw ValidationError("--output-dir \(output): cannot create \(path): \(String(cString: strerror(errno)))")
        }
        guard flock(fd, LOCK_EX | LOCK_NB) == 0 else {
            close(fd)
            throw ValidationError("--output-dir \(output) is in use by another training run (it holds \(path)): " +
                "wait for it to end, or choose another folder")
        }
    }

    /// The lines of OUTPUT/metrics.jsonl up to `step`, which a resume keeps (what came after is logged again). A
    /// file there that cannot be read (no read permission, a FIFO, a folder, a dangling link) is an error before
    /// any step: it used to count as empty, and the resumed run then replaced it, losing every line before the
    /// checkpoint. Bytes that are not UTF-8 (a torn write) spoil only their own line, not the whole file.
    static func metricsHistory(_ path: String, upTo step: Int) throws -> [String] {
        var info = stat()
        guard lstat(path, &info) == 0 else { return [] }
        let bytes: [UInt8]
        do { bytes = try FileSystem.readBytes(path) } catch {
            throw ValidationError("--resume-from-checkpoint: \(error); the metrics logged up to the checkpoint would "
                + "be lost when the run rewrites \(path): make it readable, or move it away")
        }
        return String(decoding: bytes, as: UTF8.self).split(separator: "\n").map(String.init)
            .filter { (StepMetrics(json: $0)?.step ?? .max) <= step }
    }

    /// The folders of OUTPUT that a run writes or deletes (OUTPUT/best, OUTPUT/checkpoint-N): an --init-adapter
    /// there (say the best adapter of an earlier run, continued with --overwrite-output-dir) was overwritten by the
    /// new best, or by the new checkpoint of the same step, or deleted by --save-total-limit's rotation.
    static func refuseInitAdapterInRunFolders(_ initAdapter: String, output: String) throws {
        let adapter = Quantize.resolvedPath(initAdapter), out = Quantize.resolvedPath(output)
        let prefix = out.hasSuffix("/") ? out : out + "/"
        guard adapter.hasPrefix(prefix) else { return }
        let first = adapter.dropFirst(prefix.count).split(separator: "/").first.map(String.init) ?? ""
        guard first == "best" || first.hasPrefix("checkpoint-") else { return }
        throw ValidationError("--init-adapter \(initAdapter) is inside \(output)/\(first), which training into "
            + "--output-dir \(output) writes or removes (the best adapter, the checkpoints): copy the adapter "
            + "elsewhere first, or choose another --output-dir")
    }

    /// A --logging-dir inside OUTPUT/checkpoint-N: the save of step N replaced that folder, and the run's TensorBoard
    /// events with it, while the run still pointed `tensorboard --logdir` there (and rotation by --save-total-limit
    /// removed them later). Refused.
    static func refuseLoggingDirInCheckpoints(_ logs: String, output: String) throws {
        let dir = Quantize.resolvedPath(logs), out = Quantize.resolvedPath(output)
        let prefix = out.hasSuffix("/") ? out : out + "/"
        guard dir.hasPrefix(prefix) else { return }
        let first = dir.dropFirst(prefix.count).split(separator: "/").first.map(String.init) ?? ""
        guard first.hasPrefix("checkpoint-") else { return }
        throw ValidationError("--logging-dir (recipe logging_dir) \(logs) is inside \(output)/\(first), which the "
            + "checkpoint saves of --output-dir \(output) replace or remove: the TensorBoard events would be lost; "
            + "choose a folder outside the checkpoints (the default is \(output)/runs)")
    }

    /// Why OUTPUT/best does not hold the best adapter of `step`, or nil when it does (or when it holds an adapter
    /// saved without its step, by an earlier version, which is taken as it always was).
    static func bestAdapterMismatch(_ directory: String, step: Int) -> String? {
        guard FileManager.default.fileExists(atPath: directory + "/adapter_model.safetensors") else {
            return "the run that saved it was without --load-best-model-at-end"
        }
        let path = directory + "/best_state.json"
        guard FileManager.default.fileExists(atPath: path) else { return nil }
        let saved = (try? JSONValue(parsing: FileSystem.readBytes(path)))?["best_global_step"]?.intValue
        guard saved != step else { return nil }
        return saved.map { "it holds the adapter of step \($0), saved after that checkpoint" }
            ?? "\(path) does not name the step of the adapter there"
    }

    /// The files a run writes into an existing --output-dir replace what a symbolic link there points to (the
    /// link is kept): a link to the run's own model, adapter or data would destroy it. Such links are refused.
    static func refuseLinkedOutputs(_ output: String) throws {
        for name in ["adapter_config.json", "adapter_model.safetensors", "metrics.jsonl", "loss.svg", "best",
                     "best/adapter_config.json", "best/adapter_model.safetensors", "best/best_state.json"] {
            var info = stat()
            let path = output + "/" + name
            if lstat(path, &info) == 0, (info.st_mode & S_IFMT) == S_IFLNK {
                throw ValidationError("--output-dir \(output): \(path) is a symbolic link; training would replace "
                    + "the file it points to: remove the link, or choose another folder")
            }
        }
    }

    func run() throws {
        if parallel.isLauncher { try parallel.launchWorkers() }
        let worker = try DataParallelOptions.validatedWorker()
        let isMain = (worker?.rank ?? 0) == 0
        DataParallelOptions.quietUnlessRankZero()
        let recipe = try config.map { try TrainingRecipe(contentsOf: $0) } ?? TrainingRecipe()
        for key in recipe.ignoredKeys.sorted() {
            FileHandle.standardError.write(Data(("warning: recipe key \(key) has no effect here (it steers the " +
                                                 "Python tooling only)\n").utf8))
        }
        printWarnings(try checkKeysWithoutSettings(recipe))
        guard let dataPath = try data ?? recipe.string("data") else { throw ValidationError("missing --data (or \"train_file\" in the recipe)") }
        guard let output = try outputDir ?? recipe.string("output_dir") else { throw ValidationError("missing --output-dir (or \"output_dir\" in the recipe)") }
        var lora = LoRAConfig()   // each setting the flag's, else the recipe's, else LoRAConfig's default
        lora.r = try loraR ?? recipe.int("r") ?? lora.r
        lora.alpha = try loraAlpha ?? recipe.double("lora_alpha") ?? lora.alpha
        lora.dropout = try loraDropout ?? recipe.double("lora_dropout") ?? lora.dropout
        lora.useRSLoRA = try useRslora || (recipe.bool("use_rslora") ?? false)
        lora.targetModules = try targetModules.map(LoRATargets.parse) ?? recipe.list("target_modules")
            .map(LoRATargets.expand) ?? lora.targetModules
        if let bias = try recipe.string("bias"), bias != "none" { throw ValidationError("bias \"\(bias)\": only \"none\" is supported") }
        // The same bound as an adapter file's r: 2^31 used to fail a 1.6 TB allocation, 10^6 to fill memory.
        guard (1...PEFTAdapter.maximumRank).contains(lora.r) else {
            throw ValidationError("--lora-r (recipe r) is \(lora.r): must be from 1 to \(PEFTAdapter.maximumRank)")
        }
        guard (0..<1).contains(lora.dropout) else {
            throw ValidationError("--lora-dropout (recipe lora_dropout) is \(lora.dropout): must be in [0, 1)")
        }
        guard lora.alpha.isFinite, lora.alpha > 0 else {
            throw ValidationError("--lora-alpha (recipe lora_alpha) is \(lora.alpha): must be a finite number above 0")
        }
        let scale = Double(lora.scale)
        guard scale <= LoRAConfig.maximumTrainingScale else {
            throw ValidationError("--lora-alpha (recipe lora_alpha) \(lora.alpha) over " +
                "\(lora.useRSLoRA ? "√r" : "r") \(lora.r) is a LoRA scale of \(scale): at most " +
                "\(Int(LoRAConfig.maximumTrainingScale)) is accepted (the adapter's update is multiplied by " +
                "it, as by a learning rate that many times larger; typical scales are 0.5 to 4)")
        }
        if initAdapter == nil {   // an --init-adapter brings its own targets (checked once it is read)
            try LoRATargets.check(lora.targetModules, flag: "--target-modules (recipe target_modules)")
        }
        var settings = TrainingConfig()
        settings.batchSize = try batchSize ?? recipe.int("batch_size") ?? settings.batchSize
        settings.gradientAccumulationSteps = try gradientAccumulationSteps ?? recipe.int("gradient_accumulation_steps")
            ?? settings.gradientAccumulationSteps
        settings.maxSteps = try maxSteps ?? recipe.int("max_steps")
        if let m = settings.maxSteps, m <= 0 { settings.maxSteps = nil }
        settings.epochs = try numTrainEpochs ?? recipe.double("num_train_epochs") ?? settings.epochs
        settings.learningRate = try learningRate ?? recipe.double("learning_rate").map(Float.init)
            ?? settings.learningRate
        settings.weightDecay = try weightDecay ?? recipe.double("weight_decay").map(Float.init) ?? settings.weightDecay
        settings.optimizer = try optim ?? recipe.string("optim").map { name in
            guard let o = OptimizerKind(rawValue: name) else { throw ValidationError("optim \"\(name)\": use \(OptimizerKind.allCases.map(\.rawValue).joined(separator: ", "))") }
            return o
        } ?? settings.optimizer
        settings.schedule = try lrScheduler ?? recipe.string("lr_scheduler_type").map { name in
            guard let s = LRScheduleKind(rawValue: name) else { throw ValidationError("lr_scheduler_type \"\(name)\": use constant, linear or cosine") }
            return s
        } ?? settings.schedule
        settings.warmupSteps = try warmupSteps ?? recipe.int("warmup_steps") ?? settings.warmupSteps
        settings.warmupRatio = try warmupRatio ?? recipe.double("warmup_ratio") ?? settings.warmupRatio
        settings.maxGradNorm = try maxGradNorm ?? recipe.double("max_grad_norm").map(Float.init) ?? settings.maxGradNorm
        settings.loggingSteps = try loggingSteps ?? recipe.int("logging_steps") ?? settings.loggingSteps
        settings.evalSteps = try evalSteps ?? recipe.int("eval_steps")
        settings.saveSteps = try saveSteps ?? recipe.int("save_steps")
        settings.saveTotalLimit = try saveTotalLimit ?? recipe.int("save_total_limit")
        func strategy(_ flag: IntervalStrategy?, _ key: String) throws -> IntervalStrategy? {
            try flag ?? recipe.string(key).map { name in
                guard let s = IntervalStrategy(rawValue: name) else {
                    throw ValidationError("recipe \(recipe.keyName(key)) \"\(name)\": use steps, epoch or no")
                }
                return s
            }
        }
        settings.evalStrategy = try strategy(evalStrategy, "eval_strategy")
        settings.saveStrategy = try strategy(saveStrategy, "save_strategy")
        settings.loadBestModelAtEnd = try loadBestModelAtEnd || (recipe.bool("load_best_model_at_end") ?? false)
        if let metric = try metricForBestModel ?? recipe.string("metric_for_best_model"),
           !["eval_loss", "loss"].contains(metric) {
            throw ValidationError("--metric-for-best-model (recipe metric_for_best_model) is \"\(metric)\": only " +
                "eval_loss (the validation loss) is measured here")
        }
        if try recipe.bool("greater_is_better") == true {
            throw ValidationError("recipe greater_is_better is true: the best adapter is the one with the lowest " +
                "validation loss (greater_is_better: false)")
        }
        settings.earlyStoppingPatience = try earlyStoppingPatience ?? recipe.int("early_stopping_patience")
        settings.earlyStoppingThreshold = try earlyStoppingThreshold ?? recipe.double("early_stopping_threshold")
            ?? settings.earlyStoppingThreshold
        if settings.earlyStoppingPatience != nil && (parallel.devices != nil || DataParallelOptions.worker != nil) {
            // Rank 0 alone evaluates; the other ranks would not know to stop.
            throw ValidationError("--early-stopping-patience (recipe early_stopping_patience) trains on one device " +
                "for now, not with --devices or a launcher's ranks")
        }
        settings.seed = try seed ?? recipe.int("seed").map { value in
            // The flag is unsigned (ArgumentParser refuses -1); the recipe's seed must be too: no wrapping.
            guard value >= 0 else {
                throw ValidationError("recipe seed is \(value): must be an integer ≥ 0 (no negative seeds)")
            }
            return UInt64(value)
        } ?? settings.seed
        settings.shuffle = try !noShuffle && (recipe.bool("shuffle") ?? true)
        settings.gradientCheckpointing = try gradientCheckpointing || (recipe.bool("gradient_checkpointing") ?? false)
        settings.paddingFree = try paddingFree || (recipe.bool("padding_free") ?? false)
        // Every setting checked here, once, after flags and recipe are merged, before anything is loaded or written.
        try settings.validate()
        let split = try validationSplit ?? recipe.double("validation_split")
        if let split, !(split.isFinite && split >= 0 && split < 1) {
            throw ValidationError("--validation-split (recipe validation_split) is \(split): must be in [0, 1) (0: " +
                "no split)")
        }
        let evalBatch = try recipe.int("eval_batch_size") ?? settings.batchSize
        guard (1...TrainingConfig.maximumBatch).contains(evalBatch) else {
            throw ValidationError("recipe \(recipe.keyName("eval_batch_size")) is \(evalBatch): must be an integer " +
                "from 1 to \(TrainingConfig.maximumBatch)")
        }
        _ = try dataOptions.maxSeqLength(recipe: recipe)
        _ = try dataOptions.trainOnEOS(recipe: recipe)
        let evalPath = try evalData ?? recipe.string("eval_data")
        if settings.loadBestModelAtEnd || settings.earlyStoppingPatience != nil, evalPath == nil, (split ?? 0) == 0 {
            throw ValidationError("--load-best-model-at-end / --early-stopping-patience (recipe " +
                "load_best_model_at_end, early_stopping_patience) need validation data: give --eval-data or " +
                "--validation-split")
        }
        if isMain {
            printWarnings(try settingsWithoutEffect(recipe, settings: settings, split: split, evalPath: evalPath,
                                                    resume: resume(recipe)))
        }
        try InputFile.requireRegular(dataPath, what: "--data")
        // The run's adapter files would replace the starting adapter's, or land among the model's files.
        let modelPath = try modelOptions.modelPath(recipe)
        try Quantize.checkOutput(output, model: modelPath, writing: "training", flag: "--output-dir",
                                 insideAllowed: true)
        try Quantize.refuseNonFolder(output, flag: "--output-dir")
        try Self.refuseLinkedOutputs(output)
        if let initAdapter {
            try Quantize.checkOutput(output, model: initAdapter, writing: "training", flag: "--output-dir",
                                     source: "--init-adapter", insideAllowed: true)
            try Self.refuseInitAdapterInRunFolders(initAdapter, output: output)
        }
        if let logs = try loggingDir ?? recipe.string("logging_dir") {
            // An empty one failed after training had started with ": cannot write: the folder path is empty".
            guard !logs.isEmpty else {
                throw ValidationError("--logging-dir (recipe logging_dir) is empty: name a folder")
            }
            try Self.refuseLoggingDirInCheckpoints(logs, output: output)
        }
        if let evalPath { try InputFile.requireRegular(evalPath, what: "--eval-data") }
        let resume = try resume(recipe)
        if let resume, resume != "latest" { try Self.checkResumeFolder(resume) }
        let overwrite = try overwriteOutputDir || (recipe.bool("overwrite_output_dir") ?? false)
        // Nothing lost: a second run into the same folder would replace its metrics and mix its checkpoints.
        func refuseExistingRun() throws {
            guard resume == nil, !overwrite, let existing = try Checkpoint.existingRun(in: output) else { return }
            if existing.hasSuffix("/adapter_model.safetensors") {
                throw ValidationError("\(output) holds an adapter (\(existing)), which this run's would replace: "
                    + "choose a new --output-dir, or pass --overwrite-output-dir (recipe overwrite_output_dir: true) "
                    + "to replace it")
            }
            throw ValidationError("\(output) already holds a run (\(existing)): continue it with " +
                "--resume-from-checkpoint latest, choose a new --output-dir, or pass --overwrite-output-dir " +
                "(recipe overwrite_output_dir: true) to replace it")
        }
        if isMain {
            try refuseExistingRun()
            for path in try Checkpoint.removeStaleTemporaries(in: output) {
                FileHandle.standardError.write(
                    "removed \(path), left by an interrupted checkpoint save\n".data(using: .utf8)!)
            }
        }

        let loaded = try modelOptions.load(lora: lora, adapter: initAdapter, seed: settings.seed, recipe: recipe)
        if let initAdapter, loaded.lora.resolvedTargets.isEmpty {
            throw ValidationError("--init-adapter \(initAdapter): its target_modules name no projection of the " +
                "model, so nothing would be trained")
        }
        if let initAdapter, isMain {
            printWarnings(try loraWithoutEffect(recipe, asked: lora, adapter: initAdapter, adapterLoRA: loaded.lora))
        }
        let config = loaded.config
        let text = try ModelText.loadIfPresent(path: loaded.path)
        let options = try dataOptions.options(text, recipe: recipe,
                                              maxPositions: config.maxPositionEmbeddings)
        print("\(dataPath): training examples are being tokenized")
        var examples = try TextDataset.load(path: dataPath, tokenizer: text.tokenizer,
                                            vocabularySize: config.vocabSize, options: options)
        var validation: [TokenizedExample] = []
        if let evalPath {
            var evalOptions = options
            evalOptions.packing = false
            validation = try TextDataset.load(path: evalPath, tokenizer: text.tokenizer,
                                              vocabularySize: config.vocabSize, options: evalOptions)
        } else if let split, split > 0 {
            var rng = SeededGenerator(seed: settings.seed ^ 0x5eed)
            examples.shuffle(using: &rng)
            let held = max(1, Int(Double(examples.count) * split))
            validation = Array(examples.prefix(held))
            examples = Array(examples.dropFirst(held))
            guard !examples.isEmpty else {
                throw ValidationError("--validation-split (recipe validation_split) \(split) holds out all \(held) " +
                    "examples of \(dataPath); lower it or give --eval-data")
            }
        }
        guard !examples.isEmpty else { throw ValidationError("--data \(dataPath) holds no training examples") }
        // Every micro-batch is full (the trainer goes on into the next pass over the data rather than yield a short
        // batch), so a batch larger than the data holds some examples twice: allowed, but said.
        let rows = settings.batchSize * (worker?.worldSize ?? 1)
        if isMain, rows > examples.count {
            FileHandle.standardError.write(Data(("warning: --batch-size \(settings.batchSize)" +
                (rows == settings.batchSize ? "" : " × \(rows / settings.batchSize) devices") + " is more than the " +
                "\(examples.count) training example\(examples.count == 1 ? "" : "s") of \(dataPath): each batch is " +
                "filled by going on into the next pass over the data, so examples repeat within a step (a batch " +
                "size of \(max(1, examples.count / (rows / settings.batchSize))) or less avoids it)\n").utf8))
        }

        if !modelOptions.usesGPU && worker == nil {
            // Rows are as long as the longest example at most (the micro-batch and the evaluation batch alike).
            let longest = max(examples.map(\.inputIds.count).max() ?? 1, validation.map(\.inputIds.count).max() ?? 1)
            let evaluated = validation.isEmpty ? 1 : evalBatch
            let flag = evaluated > settings.batchSize ? "recipe \(recipe.keyName("eval_batch_size")) \(evalBatch)"
                : "--batch-size \(settings.batchSize)"
            try HostMemory.checkStepFits(config, batch: max(settings.batchSize, evaluated), tokens: longest,
                                         flags: "\(flag) × examples of up to \(longest) tokens", lora: loaded.lora)
        }
        try FileSystem.createDirectory(output)
        if isMain {   // the folder locked for this run, and checked again under the lock (a run started beside it)
            try Self.lockOutput(output)
            try refuseExistingRun()
            // metrics.jsonl is replaced at the first logged step: a FIFO or folder there is refused now, not after
            // the run has trained up to that step.
            do { _ = try AtomicFile.replaceableTarget(output + "/metrics.jsonl") } catch {
                throw ValidationError("--output-dir \(output): \(error)")
            }
        }
        let optimizer = AdamW(kind: settings.optimizer, settings: AdamWSettings(weightDecay: settings.weightDecay))
        let joined = try worker.map { try DataParallelOptions.join($0) }
        let loadStarted = Date()
        let engine = try modelOptions.makeEngine(loaded, optimizer: optimizer, recipe: recipe, worker: joined)
        if let gpuEngine = engine as? CUDATrainingEngine {
            gpuEngine.model.offloadCheckpoints = try offloadCheckpoints ?? recipe.bool("offload_checkpoints")
        }
        let counts = engine.parameterCounts
        print(String(format: "trainable params: %@ || all params: %@ || trainable%%: %.4f",
                     counts.trainable.formatted(), counts.all.formatted(),
                     100 * Double(counts.trainable) / Double(counts.all)))
        print(String(format: "loaded %@ in %.1f s (host memory peak so far %.2f GB)", loaded.path,
                     Date().timeIntervalSince(loadStarted), Double(HostMemory.peakResidentBytes()) / 1e9))
        var trainer = Trainer(engine: engine, examples: examples, config: settings, group: joined.map { NCCLGroup($0.1) })
        let metricsPath = output + "/metrics.jsonl"
        var history: [String] = []
        if let resume {
            let dir = resume == "latest" ? try Checkpoint.checkpoints(in: output).last?.path : resume
            guard let dir else { throw ValidationError("--resume-from-checkpoint latest: no checkpoint in \(output)") }
            let warnings = try Checkpoint.restore(&trainer, from: dir)
            if isMain { printWarnings(warnings) }
            // The final adapter would be read from OUTPUT/best at the end, after every remaining step: a run that
            // saved the checkpoint without --load-best-model-at-end kept none there, and the resumed run used to
            // fail only then, writing no final adapter.
            let bestAdapter = output + "/best/adapter_model.safetensors"
            if settings.loadBestModelAtEnd, let best = trainer.best,
               !FileManager.default.fileExists(atPath: bestAdapter) {
                throw ValidationError("--load-best-model-at-end (recipe load_best_model_at_end): \(dir) records the "
                    + "best validation loss \(String(format: "%.4f", best.loss)) at step \(best.step), but "
                    + "\(bestAdapter) is missing (the run that saved it did not keep its best adapter): resume without "
                    + "--load-best-model-at-end, or start a new run")
            }
            // Keep the metrics logged up to the checkpoint; what came after it is logged again.
            history = try Self.metricsHistory(metricsPath, upTo: trainer.step)
            if isMain { print("resuming from \(dir) at step \(trainer.step) of \(trainer.totalSteps)") }
            // A checkpoint at or past the run's last step trains nothing: said, not left to "final logged loss nan".
            if isMain, trainer.step >= trainer.totalSteps {
                printWarnings(["\(dir) is at step \(trainer.step), and this run ends at step \(trainer.totalSteps) "
                               + "(--max-steps / --num-train-epochs): no step is trained"])
            }
        }
        // metrics.jsonl is rewritten (the lines up to the checkpoint; nothing for a new run) when the first step is
        // logged, not before: a resume that fails first (a damaged checkpoint, a first step that diverges) used to
        // lose the lines after the checkpoint all the same.
        var metrics: FileHandle? = nil
        func openMetrics() throws -> FileHandle {
            if let metrics { return metrics }
            try AtomicFile.write(text: history.map { $0 + "\n" }.joined(), to: metricsPath)
            let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: metricsPath))
            do { try handle.seekToEnd() } catch {
                throw ValidationError("\(metricsPath): cannot append: \(error.localizedDescription)")
            }
            metrics = handle
            return handle
        }
        defer { try? metrics?.close() }
        // report_to: tensorboard writes event files too; the Hugging Face Trainer's other reporters are not here.
        let reports = try reportTo.map { $0.split(separator: ",").map { String($0) } } ?? recipe.list("report_to") ?? []
        if let other = reports.first(where: { !["none", "tensorboard", "all"].contains($0) }) {
            FileHandle.standardError.write("warning: report_to \(other) is not supported (only tensorboard); ignored\n"
                .data(using: .utf8)!)
        }
        let board = isMain && reports.contains(where: { $0 == "tensorboard" || $0 == "all" })
            ? try TensorBoardWriter(directory: try loggingDir ?? recipe.string("logging_dir") ?? output + "/runs") : nil
        if let board {
            print("TensorBoard: tensorboard --logdir \((board.path as NSString).deletingLastPathComponent)")
        }
        let reporter = ProgressReporter(label: "train")
        var callbacks = Trainer.Callbacks()
        var lastLoss = Double.nan
        callbacks.log = { m in
            // A full disk stops the run with an error (the trainer rethrows it); no trap.
            do { try openMetrics().write(contentsOf: Data((m.json + "\n").utf8)) } catch {
                throw TrainingError(description: "\(metricsPath): cannot append step \(m.step)'s metrics " +
                    "(\(error)); stopping")
            }
            try board?.add(m)
            if let loss = m.loss { lastLoss = loss }
            if let e = m.evalLoss {
                FileHandle.standardError.write(Data(String(format: "\nstep %ld: validation loss %.4f\n", m.step,
                                                           e).utf8))
            }
        }
        var tokensSeen = 0
        let started = Date()
        callbacks.progress = { step, total, loss, tokens in
            tokensSeen += tokens
            let rate = Double(tokensSeen) / max(Date().timeIntervalSince(started), 1e-9)
            reporter.update(done: step, total: total, detail: String(format: "loss %.4f  lr %.2e  %.0f tokens/s", loss,
                                                                     settings.learningRate(atStep: step - 1, totalSteps: total), rate))
        }
        if !validation.isEmpty {
            let paddingFree = settings.paddingFree
            callbacks.evaluate = { engine in
                try Trainer.evaluate(engine: engine, examples: validation, batchSize: evalBatch,
                                     paddingFree: paddingFree).loss
            }
        }
        let limit = settings.saveTotalLimit
        callbacks.save = { t in try Checkpoint.save(t, outputDirectory: output, limit: limit) }
        let bestDirectory = output + "/best"
        callbacks.saveBest = { t in
            try PEFTAdapter.save(t.engine.adapterWeights(), lora: t.engine.loraConfig, to: bestDirectory,
                                 baseModel: loaded.path)
            // The step beside it: a run resumed from an earlier checkpoint must not take the best adapter that the
            // abandoned rest of the run saved there for its own best.
            let state: JSONValue = .object([("best_global_step", .int(t.step)),
                                            ("best_metric", .double(t.best?.loss ?? .nan))])
            try AtomicFile.write(text: state.pythonText(indent: 2) + "\n", to: bestDirectory + "/best_state.json")
        }
        if !isMain { callbacks = Trainer.Callbacks() }   // rank 0 alone logs, evaluates and saves
        do {
            try trainer.train(callbacks)
        } catch {
            reporter.finish()
            throw error
        }
        reporter.finish()
        guard isMain else { return }
        _ = try openMetrics()   // a run that logged no step still replaces what it resumed from
        if let gpu = (engine as? CUDATrainingEngine)?.model.device {
            print(String(format: "peak GPU memory: %.3f GiB allocated, %.3f GiB reserved (%@)", Double(gpu.peakAllocatedBytes) / 1073741824,
                         Double(gpu.reservedBytes) / 1073741824, gpu.name))
        }
        if trainer.stoppedEarly {
            print("stopped early at step \(trainer.step): the validation loss did not improve for " +
                  "\(settings.earlyStoppingPatience ?? 0) evaluations in a row")
        }
        if settings.loadBestModelAtEnd, let best = trainer.best, let other = Self.bestAdapterMismatch(
            bestDirectory, step: best.step) {
            // A best loss restored from a checkpoint and never beaten since, whose adapter is not in OUTPUT/best:
            // the abandoned rest of the run saved its own later best there (it used to be taken as this one), or
            // the adapter was removed during the run (a resume without one is refused before training). As the
            // Hugging Face Trainer does when it cannot find the best model, the last step's adapter is kept.
            printWarnings([String(format: "the best validation loss %.4f (step %ld, from the checkpoint resumed) has "
                                  + "no adapter in %@ (%@): the final adapter is the last step's", best.loss,
                                  best.step, bestDirectory, other)])
        } else if settings.loadBestModelAtEnd, let best = trainer.best {
            // The final adapter is the best one (as the Hugging Face Trainer loads the best model at the end).
            try trainer.engine.setAdapterWeights(try trainer.engine.readAdapterWeights(directory: bestDirectory))
            print(String(format: "the final adapter is the best: step %ld, validation loss %.4f (%@)", best.step,
                         best.loss, bestDirectory))
        }
        try PEFTAdapter.save(trainer.engine.adapterWeights(), lora: trainer.engine.loraConfig, to: output, baseModel: loaded.path)
        let plot = try LossPlot.write(runDirectory: output)
        let logged = lastLoss.isNaN ? "no step trained" : "final logged loss " + String(format: "%.4f", lastLoss)
        print("saved the adapter, metrics.jsonl and \(plot) to \(output) (\(logged))")
    }
}

extension Train {
    /// A --resume-from-checkpoint that is no checkpoint folder, named before the model loads: an empty value read
    /// /trainer_state.json, and a run's own folder was "t: tensor 'trainer_state.json': t/trainer_state.json: cannot
    /// open", naming neither the flag nor the checkpoints it holds.
    static func checkResumeFolder(_ path: String) throws {
        let flag = "--resume-from-checkpoint (recipe resume_from_checkpoint)"
        guard !path.isEmpty else {
            throw ValidationError("\(flag) is empty: give a checkpoint folder (OUTPUT_DIR/checkpoint-N) or latest")
        }
        guard !FileManager.default.fileExists(atPath: path + "/trainer_state.json") else { return }
        if let inside = try? Checkpoint.checkpoints(in: path), let last = inside.last {
            throw ValidationError("\(flag) \(path) is a run's folder, not one of its checkpoints: give "
                + "\(last.path)" + (inside.count > 1 ? " (or another of its \(inside.count) checkpoints)" : "")
                + ", or latest with --output-dir \(path)")
        }
        guard FileSystem.isDirectory(path) else {
            let what = FileManager.default.fileExists(atPath: path) ? "not a folder" : "no such folder"
            throw ValidationError("\(flag) \(path): \(what) (give a checkpoint folder, OUTPUT_DIR/checkpoint-N, "
                + "or latest)")
        }
    }

    /// --resume-from-checkpoint, else the recipe's resume_from_checkpoint.
    func resume(_ recipe: TrainingRecipe) throws -> String? {
        try resumeFromCheckpoint ?? recipe.string("resume_from_checkpoint")
    }

    /// Settings given (as a flag or a recipe key) that this run would never read, each as a warning that names it
    /// and says why: the Hugging Face Trainer accepts them in silence, which leaves a user believing they acted.
    func settingsWithoutEffect(_ recipe: TrainingRecipe, settings: TrainingConfig, split: Double?, evalPath: String?,
                               resume: String?) throws -> [String] {
        func name(_ flag: String, _ key: String) -> String { "\(flag) (recipe \(recipe.keyName(key)))" }
        func given(_ flag: Any?, _ key: String) -> Bool { flag != nil || recipe.sets(key) }
        var warnings: [String] = []
        func say(_ flag: String, _ key: String, _ why: String) {
            warnings.append("\(name(flag, key)) has no effect: \(why)")
        }
        if settings.warmupSteps > 0, given(warmupRatio, "warmup_ratio"), settings.warmupRatio > 0 {
            say("--warmup-ratio", "warmup_ratio", "--warmup-steps \(settings.warmupSteps) sets the warm-up")
        }
        if let steps = settings.maxSteps, given(numTrainEpochs, "num_train_epochs") {
            say("--num-train-epochs", "num_train_epochs", "--max-steps \(steps) sets the length of the run")
        }
        if evalPath != nil, let split, split > 0 {
            say("--validation-split", "validation_split", "--eval-data is the validation data")
        }
        let validates = evalPath != nil || (split ?? 0) > 0
        if validates, settings.evalStrategy == .no {
            let (flag, key) = evalPath != nil ? ("--eval-data", "eval_data")
                : ("--validation-split", "validation_split")
            say(flag, key, "--eval-strategy no never evaluates"
                + (evalPath == nil ? " (and the split still holds examples out of training)" : ""))
        }
        if !validates, given(evalSteps, "eval_steps") || (settings.evalStrategy.map { $0 != .no } ?? false) {
            say(evalSteps != nil || recipe.sets("eval_steps") ? "--eval-steps" : "--eval-strategy",
                evalSteps != nil || recipe.sets("eval_steps") ? "eval_steps" : "eval_strategy",
                "there is no validation data (give --eval-data or --validation-split)")
        }
        if settings.paddingFree, try dataOptions.packing || (recipe.bool("packing") ?? false) {
            say("--padding-free", "padding_free", "--packing makes full rows, with no padding to leave out")
        }
        let onGPU = modelOptions.usesGPU || parallel.devices != nil || DataParallelOptions.worker != nil
        if given(offloadCheckpoints, "offload_checkpoints") {
            if !onGPU {
                say("--offload-checkpoints", "offload_checkpoints", "checkpoints stay in host memory on the CPU")
            } else if !settings.gradientCheckpointing {
                say("--offload-checkpoints", "offload_checkpoints",
                    "there are no checkpoints without --gradient-checkpointing")
            }
        }
        let reports = try reportTo.map { $0.split(separator: ",").map(String.init) } ?? recipe.list("report_to") ?? []
        if given(loggingDir, "logging_dir"), !reports.contains(where: { $0 == "tensorboard" || $0 == "all" }) {
            say("--logging-dir", "logging_dir", "it is TensorBoard's folder, and --report-to is not tensorboard")
        }
        if given(earlyStoppingThreshold, "early_stopping_threshold"), settings.earlyStoppingPatience == nil {
            say("--early-stopping-threshold", "early_stopping_threshold", "there is no --early-stopping-patience")
        }
        if given(metricForBestModel, "metric_for_best_model"), !settings.loadBestModelAtEnd,
           settings.earlyStoppingPatience == nil {
            say("--metric-for-best-model", "metric_for_best_model",
                "neither --load-best-model-at-end nor --early-stopping-patience is given")
        }
        let saves = settings.saveStrategy.map { $0 != .no } ?? (settings.saveSteps != nil)
        if given(saveTotalLimit, "save_total_limit"), !saves {
            say("--save-total-limit", "save_total_limit", "no checkpoint is saved (give --save-steps)")
        }
        if resume != nil, try overwriteOutputDir || (recipe.bool("overwrite_output_dir") ?? false) {
            say("--overwrite-output-dir", "overwrite_output_dir", "--resume-from-checkpoint continues the run there")
        }
        if modelOptions.usesGPU, parallel.devices != nil {
            warnings.append("--device \(modelOptions.device) has no effect with --devices (each worker takes its "
                            + "own GPU)")
        }
        return warnings
    }

    /// The LoRA settings given with --init-adapter that differ from the adapter's own (which are used), as warnings.
    func loraWithoutEffect(_ recipe: TrainingRecipe, asked: LoRAConfig, adapter: String,
                           adapterLoRA: LoRAConfig) throws -> [String] {
        func given(_ flag: Any?, _ key: String) -> Bool { flag != nil || recipe.sets(key) }
        var warnings: [String] = []
        func say(_ flag: String, _ key: String, _ asked: String, _ own: String) {
            warnings.append("\(flag) (recipe \(recipe.keyName(key))) \(asked) has no effect: --init-adapter \(adapter) "
                            + "brings its own (\(own)), which is used")
        }
        if given(loraR, "r"), asked.r != adapterLoRA.r { say("--lora-r", "r", "\(asked.r)", "\(adapterLoRA.r)") }
        if given(loraAlpha, "lora_alpha"), asked.alpha != adapterLoRA.alpha {
            say("--lora-alpha", "lora_alpha", "\(asked.alpha)", "\(adapterLoRA.alpha)")
        }
        if given(loraDropout, "lora_dropout"), asked.dropout != adapterLoRA.dropout {
            say("--lora-dropout", "lora_dropout", "\(asked.dropout)", "\(adapterLoRA.dropout)")
        }
        if useRslora || recipe.sets("use_rslora"), asked.useRSLoRA != adapterLoRA.useRSLoRA {
            say("--use-rslora", "use_rslora", "\(asked.useRSLoRA)", "\(adapterLoRA.useRSLoRA)")
        }
        if given(targetModules, "target_modules"), asked.resolvedTargets != adapterLoRA.resolvedTargets {
            say("--target-modules", "target_modules", asked.targetModules.joined(separator: ","),
                adapterLoRA.resolvedTargets.joined(separator: ","))
        }
        return warnings
    }

    /// Recipe keys that set nothing of their own but state what the recipe expects (load_in_4bit, task_type,
    /// fp16, bnb_4bit_compute_dtype): a value this tool cannot honour is an error, one without effect a warning
    /// (returned), never silence. `load_in_4bit: false` or `task_type: SEQ_CLS` used to be accepted and ignored.
    func checkKeysWithoutSettings(_ recipe: TrainingRecipe) throws -> [String] {
        if try recipe.bool("load_in_4bit") == false {
            throw ValidationError("recipe load_in_4bit is false: this tool trains on a 4-bit base only (set it "
                                  + "true or leave it out)")
        }
        if let task = try recipe.string("task_type"), task != "CAUSAL_LM" {
            throw ValidationError("recipe task_type is \"\(task)\": only CAUSAL_LM (causal language modelling) is "
                                  + "trained here")
        }
        var warnings: [String] = []
        if try recipe.bool("fp16") == true {
            warnings.append("recipe key fp16 has no effect here: the compute dtype is fp32 or bf16 (--compute-dtype, "
                            + "else the recipe's bf16)")
        }
        if let name = try recipe.string("bnb_4bit_compute_dtype") {
            let names: [String: ComputeDType?] = ["bfloat16": .bf16, "bf16": .bf16, "float32": .fp32, "fp32": .fp32,
                                                  "float16": nil, "fp16": nil]
            guard let named = names[name] else {
                throw ValidationError("recipe bnb_4bit_compute_dtype is \"\(name)\": use bfloat16, float16 or float32")
            }
            let onGPU = modelOptions.usesGPU || parallel.devices != nil || DataParallelOptions.worker != nil
            let used: ComputeDType = onGPU ? (try modelOptions.gpuDType(recipe) == .bf16 ? .bf16 : .fp32)
                : try modelOptions.cpuDType(recipe)
            if named != used {
                warnings.append("recipe bnb_4bit_compute_dtype \(name) has no effect here: this run computes in "
                                + "\(used.rawValue) (--compute-dtype, else the recipe's bf16)")
            }
        }
        return warnings
    }
}

/// `qlora plot RUN_DIR`: the loss plot of a run as SVG.
struct Plot: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Draw RUN_DIR/metrics.jsonl as RUN_DIR/loss.svg.")
    @Argument(help: "A run folder (holding metrics.jsonl).") var runDirectory: String
    func run() throws {
        // "" + "/loss.svg" is the root's: an empty RUN_DIR read /metrics.jsonl and wrote /loss.svg.
        guard !runDirectory.isEmpty else { throw ValidationError("RUN_DIR is empty: name the run folder") }
        // As train refuses it (`Train.refuseLinkedOutputs`): writing RUN/loss.svg replaces the file a link there
        // points to (a model's config.json, the run's own metrics.jsonl) with the SVG.
        var info = stat()
        let path = runDirectory + "/loss.svg"
        if lstat(path, &info) == 0, (info.st_mode & S_IFMT) == S_IFLNK {
            throw ValidationError("\(path) is a symbolic link; plotting would replace the file it points to: remove "
                                  + "the link first")
        }
        print(try LossPlot.write(runDirectory: runDirectory))
    }
}
