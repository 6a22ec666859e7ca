#!/usr/bin/env python3
"""A seeded, structure-aware fuzzer of the qlora release binary: a different approach from fuzz-cli.py.

fuzz-cli.py mutates one valid input at a time (a JSON value replaced, bytes flipped, one weird flag). This script
instead generates *consistent* inputs and *combinations* that each pass validation on their own, and looks for the
places where they meet:

  lengths   a model whose config differs from tiny-llama only in max_position_embeddings (2..64), data whose
            examples sit around that length, and random combinations of the length-related settings
            (--padding-free, --packing, --max-seq-length, --batch-size, --gradient-accumulation-steps,
            --validation-split, --eval-data, --gradient-checkpointing, ...) for train, eval, generate, export
            --check-data, merge --check, bench and plan.
  resume    a differential chain: a run saved at every step, then resumed from each checkpoint with changed
            settings or data. A resume that fails must leave the run's metrics.jsonl, checkpoints and adapter as
            they were; one that succeeds must keep a checkpoint of its last saved step.
  outdir    output folders that already hold odd entries: symbolic links to the command's own inputs (the model's
            config.json, the --init-adapter, the --data file), FIFOs, folders or files where the command writes a
            file or a folder. Nothing given as input may change, and nothing may hang.
  gguf      GGUF files written from scratch by a grammar (not mutated from an export): the tiny-llama tensors in
            every dequantizable ggml type (Q4_0, Q4_1, Q8_0, Q4_K, Q5_K, Q6_K, F16, BF16, F32) with random block
            bytes (NaN and infinite scales included), optional tensors, random metadata subsets and values.
  env       QLORA_* variables (and a few the launcher reads) with odd values on quick commands.

Every run is classified like fuzz-cli.py: ok, error (exit 1..127), crash (a signal, exit >= 128, or "Fatal error",
"Segmentation", "Illegal instruction", "Trace/breakpoint", "runtime failure" in the output), hang (timeout), lost
(a watched input, or a prior output of a failed run, changed or vanished). Crashes, hangs and lost files keep
their reproducer under WORK/findings/KIND-N/ (files and a cmd.sh). The same --seed gives the same cases.

Usage:
  python3 scripts/fuzz-structured.py [--binary .build/release/qlora] [--work /tmp/qlora-fuzz2] [--seed 1]
                                     [--cases 30] [--kinds lengths,resume,outdir,gguf,env] [--timeout 60]
                                     [--memory-gib 8] [--only KIND-N] [--verbose]

Needs ../shared/golden/hf-qlora (or $QLORA_SHARED/golden/hf-qlora). Standard library only. Runs one case at a
time, under nice.
"""

import argparse
import hashlib
import importlib.util
import json
import math
import os
import random
import resource
import shlex
import shutil
import stat
import struct
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.environ.get("QLORA_SHARED", os.path.join(os.path.dirname(REPO), "shared"))
GOLDEN = os.path.join(SHARED, "golden", "hf-qlora")


# ---------------------------------------------------------------------------------------------------------------
# Small helpers and the base fixtures (tiny-llama with a byte-level BPE tokenizer, as fuzz-cli.py builds it)


# The fixtures fuzz-cli.py builds (the byte-level BPE tokenizer of tiny-llama's 384 ids, its chat template, file
# writers), taken from it rather than written again.
_cli_spec = importlib.util.spec_from_file_location("fuzz_cli", os.path.join(REPO, "scripts", "fuzz-cli.py"))
_cli = importlib.util.module_from_spec(_cli_spec)
_cli_spec.loader.exec_module(_cli)
byte_characters, tokenizer_json, CHAT_TEMPLATE = _cli.byte_characters, _cli.tokenizer_json, _cli.CHAT_TEMPLATE
write_json, write_bytes = _cli.write_json, _cli.write_bytes
TEXT = ("the river rose slowly through the night and by morning the lower fields were under water farmers "
        "moved their animals to the hills while the children watched the boats drift past the church nobody "
        "had seen a flood like it in forty years and the old men argued about whether the bridge would hold a "
        "recipe for bread needs only four things flour water salt and yeast mix them and bake")


def copy_tree(src, dst):
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst, symlinks=True)
    for root, dirs, files in os.walk(dst):
        for name in dirs + files:
            p = os.path.join(root, name)
            if not os.path.islink(p):
                os.chmod(p, 0o755 if name in dirs else 0o644)
    os.chmod(dst, 0o755)


def pretok_lines(rng, count, lengths, vocab=384):
    out = []
    for _ in range(count):
        n = rng.choice(lengths)
        ids = [rng.randrange(3, vocab) for _ in range(max(0, n))]
        rec = {"input_ids": ids}
        if rng.random() < 0.3 and ids:
            rec["labels"] = [-100] * (len(ids) // 2) + ids[len(ids) // 2:]
        out.append(json.dumps(rec))
    return "\n".join(out) + "\n"


def text_lines(rng, count, words):
    ws = TEXT.split(" ")
    out = []
    for _ in range(count):
        n = rng.choice(words)
        r = rng.random()
        q = " ".join(rng.choice(ws) for _ in range(max(1, n)))
        a = " ".join(rng.choice(ws) for _ in range(max(1, n)))
        if r < 0.4:
            out.append(json.dumps({"text": q}))
        elif r < 0.7:
            out.append(json.dumps({"question": q, "answer": a}))
        else:
            out.append(json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}))
    return "\n".join(out) + "\n"


class Runner:
    def __init__(self, args):
        self.binary = os.path.abspath(args.binary)
        self.timeout = args.timeout
        self.memory = args.memory_gib * 2**30
        self.verbose = args.verbose

    def run(self, argv, cwd, timeout=None, extra_env=None):
        def limits():
            resource.setrlimit(resource.RLIMIT_AS, (self.memory, self.memory))
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
            os.setsid()
            os.nice(10)

        start = time.time()
        env = dict(os.environ, OPENBLAS_NUM_THREADS="1", QLORA_SHARED=SHARED)
        env.update(extra_env or {})
        p = subprocess.Popen([self.binary] + argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, preexec_fn=limits, env=env)
        try:
            out, err = p.communicate(timeout=timeout or self.timeout)
            return p.returncode, out.decode(errors="replace"), err.decode(errors="replace"), time.time() - start
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, 9)
            out, err = p.communicate()
            return None, out.decode(errors="replace"), err.decode(errors="replace"), time.time() - start


def build_base(runner, work):
    base = os.path.join(work, "base")
    if os.path.exists(os.path.join(base, "ready")):
        return base
    shutil.rmtree(base, ignore_errors=True)
    os.makedirs(base)
    model = os.path.join(base, "model")
    copy_tree(os.path.join(GOLDEN, "tiny-llama"), model)
    write_json(os.path.join(model, "tokenizer.json"), tokenizer_json())
    write_json(os.path.join(model, "tokenizer_config.json"),
               {"bos_token": "<s>", "eos_token": "</s>", "chat_template": CHAT_TEMPLATE})
    copy_tree(os.path.join(GOLDEN, "tiny-adapter"), os.path.join(base, "adapter"))
    bnb = os.path.join(base, "bnb")
    copy_tree(os.path.join(GOLDEN, "tiny-llama-bnb-nf4"), bnb)
    shutil.copy(os.path.join(model, "tokenizer.json"), bnb)
    shutil.copy(os.path.join(model, "tokenizer_config.json"), bnb)
    rng = random.Random(0)
    write_bytes(os.path.join(base, "pretok.jsonl"), pretok_lines(rng, 8, [13]).encode())
    write_bytes(os.path.join(base, "text.jsonl"), text_lines(rng, 8, [3, 5]).encode())
    write_bytes(os.path.join(base, "tokenize.jsonl"), "".join(json.dumps({"text": t}) + "\n" for t in [
        "the river rose", "", " ", "<s>the</s>", "\u00e9\u4e2d\U0001f600", TEXT]).encode())
    rc, out, err, _ = runner.run(["export", "--format", "gguf", "--model", model, "--output",
                                  os.path.join(base, "model.gguf"), "--check", "never"], base, timeout=600)
    if rc != 0:
        sys.exit("setting up the base failed:\n" + out + err[-3000:])
    open(os.path.join(base, "ready"), "w").close()
    return base


# ---------------------------------------------------------------------------------------------------------------
# Kind: lengths — consistent models with a small context, data around that length, length settings combined


def short_context_model(rng, base, d, positions):
    model = os.path.join(d, "model")
    copy_tree(os.path.join(base, rng.choice(["model", "model", "bnb"])), model)
    path = os.path.join(model, "config.json")
    config = json.load(open(path))
    config["max_position_embeddings"] = positions
    write_json(path, config)
    return model


def case_lengths(rng, base, d):
    p = rng.choice([2, 3, 4, 5, 8, 9, 16, 17, 32, 64])
    model = short_context_model(rng, base, d, p)
    lengths = sorted(set(max(0, x) for x in [1, 2, p - 1, p, p + 1, 2 * p, rng.randrange(1, 3 * p + 2)]))
    data = os.path.join(d, "train.jsonl")
    if rng.random() < 0.6:
        write_bytes(data, pretok_lines(rng, rng.choice([1, 2, 3, 8]), lengths).encode())
    else:
        write_bytes(data, text_lines(rng, rng.choice([1, 2, 8]), [1, 2, max(1, p // 4), p]).encode())
    seq = str(rng.choice([1, 2, p - 1, p, p + 1, 2 * p] if p > 1 else [1, 2]))
    command = rng.choice(["train", "train", "train", "eval", "generate", "export", "merge", "bench", "plan"])
    out = os.path.join(d, "out")
    flags = []
    if command == "train":
        argv = ["train", "--model", model, "--data", data, "--output-dir", out, "--lora-r", "2",
                "--max-steps", rng.choice(["1", "2", "3"]), "--max-seq-length", seq]
        options = [["--padding-free"], ["--padding-free"], ["--packing"], ["--gradient-checkpointing"],
                   ["--batch-size", rng.choice(["1", "2", "3", "5"])],
                   ["--gradient-accumulation-steps", rng.choice(["1", "2", "3"])],
                   ["--validation-split", rng.choice(["0.25", "0.5", "0.9"])], ["--eval-data", data],
                   ["--eval-steps", "1"], ["--save-steps", "1"], ["--lora-dropout", "0.3"],
                   ["--train-on-inputs"], ["--load-best-model-at-end", "--validation-split", "0.5"],
                   ["--optim", rng.choice(["adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit"])],
                   ["--target-modules", rng.choice(["all", "qv", "o_proj,down_proj"])],
                   ["--train-on-eos", rng.choice(["turn", "last", "all", "none"])], ["--no-shuffle"]]
        for _ in range(rng.choice([1, 2, 3, 4, 5])):
            flags += rng.choice(options)
    elif command == "eval":
        argv = ["eval", "--model", model, "--data", data, "--max-seq-length", seq]
        for _ in range(rng.choice([0, 1, 2])):
            flags += rng.choice([["--batch-size", rng.choice(["1", "2", "7"])], ["--limit", "1"], ["--json"],
                                 ["--train-on-inputs"], ["--adapter", os.path.join(base, "adapter")],
                                 ["--base-weights", rng.choice(["4bit", "file"])]])
    elif command == "generate":
        words = rng.choice([0, 1, 2, max(1, p // 3), p, p + 1])
        prompt = " ".join(TEXT.split(" ")[:words])
        argv = ["generate", "--model", model, "--prompt", prompt, "--max-new-tokens",
                rng.choice(["1", "2", str(p), str(p + 5), "1000"])]
        for _ in range(rng.choice([0, 1, 2])):
            flags += rng.choice([["--chat"], ["--temperature", "0.9", "--top-p", "0.5"],
                                 ["--adapter", os.path.join(base, "adapter")],
                                 ["--base-weights", rng.choice(["4bit", "file"])]])
    elif command == "export":
        argv = ["export", "--model", model, "--output", out + ".gguf", "--check", rng.choice(["always", "auto"])]
        if rng.random() < 0.7:
            argv += ["--check-data", data, "--max-seq-length", seq]
        if rng.random() < 0.5:
            argv += ["--adapter", os.path.join(base, "adapter")]
        if rng.random() < 0.3:
            argv += ["--type", rng.choice(["q8_0", "bf16", "f32"])]
    elif command == "merge":
        argv = ["merge", "--model", model, "--adapter", os.path.join(base, "adapter"), "--output", out,
                "--check", rng.choice(["always", "auto"])]
    else:
        argv = [command, "--model-config", os.path.join(model, "config.json"), "--max-seq-length", seq,
                "--batch-size", rng.choice(["1", "2"])]
        if command == "bench":
            argv += ["--device", "cpu"] + rng.choice([["--steps", "1", "--warmup", "0"],
                                                      ["--generate", rng.choice(["1", str(p)])]])
    return argv + flags, [data, model]


# ---------------------------------------------------------------------------------------------------------------
# Kind: resume — a saved run resumed with other settings; a failed resume must lose nothing


def tree_fingerprint(path, skip=(".qlora-run.lock",)):
    """{relative path: digest} of every file under path (a file: itself)."""
    out = {}
    if os.path.isfile(path) and not os.path.islink(path):
        out[""] = hashlib.sha1(open(path, "rb").read()).hexdigest()
        return out
    if not os.path.isdir(path):
        return out
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(files):
            if name in skip:
                continue
            p = os.path.join(root, name)
            rel = os.path.relpath(p, path)
            try:
                if os.path.islink(p):
                    out[rel] = "link:" + os.readlink(p)
                elif stat.S_ISREG(os.lstat(p).st_mode):
                    out[rel] = hashlib.sha1(open(p, "rb").read()).hexdigest()
                else:
                    out[rel] = "special"
            except OSError as e:
                out[rel] = "error:%s" % e
    return out


def case_resume(rng, base, d, runner):
    run = os.path.join(d, "run")
    data = os.path.join(d, "train.jsonl")
    write_bytes(data, pretok_lines(rng, rng.choice([4, 8]), [6, 9, 13]).encode())
    first = ["train", "--model", os.path.join(base, "model"), "--data", data, "--output-dir", run,
             "--max-steps", str(rng.choice([3, 4])), "--save-steps", "1", "--batch-size", "2", "--max-seq-length",
             "16", "--lora-r", "2", "--target-modules", "q_proj,v_proj"]
    first += rng.choice([[], ["--optim", "adamw_8bit"], ["--validation-split", "0.25", "--eval-steps", "1"],
                         ["--gradient-accumulation-steps", "2"], ["--packing"]])
    rc, out, err, _ = runner.run(first, d, timeout=300)
    if rc != 0:
        return None
    ckpts = sorted((int(n.split("-")[1]), n) for n in os.listdir(run) if n.startswith("checkpoint-"))
    ckpt = rng.choice(ckpts)[1]
    argv = ["train", "--model", os.path.join(base, rng.choice(["model", "model", "bnb", "model.gguf"])),
            "--data", data, "--output-dir", run, "--resume-from-checkpoint",
            rng.choice([os.path.join(run, ckpt), "latest"]), "--max-seq-length", "16", "--lora-r", "2",
            "--target-modules", "q_proj,v_proj"]
    changes = [["--max-steps", str(rng.choice([1, 2, 3, 5, 6]))], ["--batch-size", rng.choice(["1", "3", "8"])],
               ["--gradient-accumulation-steps", rng.choice(["1", "3"])], ["--optim", "adamw"],
               ["--optim", "paged_adamw_8bit"], ["--lora-r", "4"], ["--target-modules", "all"],
               ["--packing"], ["--padding-free"], ["--save-total-limit", rng.choice(["1", "2"])],
               ["--save-steps", "1"], ["--save-strategy", rng.choice(["epoch", "no"])],
               ["--validation-split", "0.5"], ["--load-best-model-at-end", "--validation-split", "0.5"],
               ["--early-stopping-patience", "1", "--validation-split", "0.5", "--eval-steps", "1"],
               ["--seed", "7"], ["--no-shuffle"], ["--num-train-epochs", "0.5"], ["--lr-scheduler", "cosine"],
               ["--report-to", "tensorboard"], ["--use-rslora"], ["--lora-alpha", "1"], ["--overwrite-output-dir"]]
    for _ in range(rng.choice([0, 1, 2, 3])):
        argv += rng.choice(changes)
    if "--max-steps" not in argv and "--num-train-epochs" not in argv:
        argv += ["--max-steps", str(rng.choice([3, 4, 5]))]
    r = rng.random()
    if r < 0.25:      # the data changed between the runs
        write_bytes(data, pretok_lines(rng, rng.choice([1, 2, 3, 16]), [2, 6, 40]).encode())
    elif r < 0.35:    # the checkpoint's data order refers to more examples than there are now
        with open(data) as f:
            lines = f.read().splitlines()
        write_bytes(data, ("\n".join(lines[:1]) + "\n").encode())
    return argv, [data], [run]


# ---------------------------------------------------------------------------------------------------------------
# Kind: outdir — output folders holding symlinks to inputs, FIFOs, folders where files go, files where folders go


def odd_entry(rng, path, inputs):
    """Creates something odd at `path`: a symlink to an input, a FIFO, a folder, a dangling link, a file."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    r = rng.random()
    if r < 0.45 and inputs:
        os.symlink(os.path.abspath(rng.choice(inputs)), path)
    elif r < 0.6:
        os.mkfifo(path)
    elif r < 0.75:
        os.makedirs(path, exist_ok=True)
        write_bytes(os.path.join(path, "keep.txt"), b"keep")
    elif r < 0.85:
        os.symlink(path + ".missing", path)
    else:
        write_bytes(path, b"prior content\n")


def case_outdir(rng, base, d):
    model = os.path.join(d, "model")
    copy_tree(os.path.join(base, "model"), model)
    adapter = os.path.join(d, "adapter")
    copy_tree(os.path.join(base, "adapter"), adapter)
    data = os.path.join(d, "train.jsonl")
    shutil.copy(os.path.join(base, "pretok.jsonl"), data)
    gguf = os.path.join(d, "model.gguf")
    shutil.copy(os.path.join(base, "model.gguf"), gguf)

    def files_of(path):
        if path.endswith(".gguf") or path.endswith(".jsonl"):
            return [path]
        return [os.path.join(path, n) for n in sorted(os.listdir(path))] + [path]

    out = os.path.join(d, "out")
    c = rng.choice(["train", "train", "train", "merge", "quantize", "export", "info", "tokenize"])
    base_model = rng.choice([model, gguf])
    if c == "train":
        start = rng.choice([["--lora-r", "2"], ["--init-adapter", adapter]])
        used = [base_model, data] + ([adapter] if "--init-adapter" in start else [])
        names = ["adapter_config.json", "adapter_model.safetensors", "metrics.jsonl", "loss.svg", "checkpoint-1",
                 "checkpoint-1/adapter_model.safetensors", "checkpoint-1.tmp-1", "best", "best/adapter_config.json",
                 "runs", ".qlora-run.lock", "README.md"]
        os.makedirs(out, exist_ok=True)
        targets = sum((files_of(u) for u in used), [])
        for name in rng.sample(names, rng.choice([1, 1, 2])):
            if not os.path.lexists(os.path.join(out, name)):
                try:
                    odd_entry(rng, os.path.join(out, name), targets)
                except OSError:
                    pass
        argv = ["train", "--model", base_model, "--data", data, "--output-dir", out,
                "--max-steps", "2", "--max-seq-length", "16", "--batch-size", "2"] + start
        argv += rng.choice([[], ["--overwrite-output-dir"], ["--save-steps", "1"],
                            ["--load-best-model-at-end", "--validation-split", "0.5", "--eval-steps", "1"],
                            ["--report-to", "tensorboard"], ["--resume-from-checkpoint", "latest"]])
        return argv, used
    if c in ("merge", "quantize"):
        used = [model] if c == "quantize" else [base_model, adapter]
        targets = sum((files_of(u) for u in used), [])
        if rng.random() < 0.5:
            odd_entry(rng, out, targets)
        else:
            os.makedirs(out)
            odd_entry(rng, os.path.join(out, rng.choice(["model.safetensors", "config.json", "tokenizer.json",
                                                          "model.safetensors.index.json"])), targets)
        argv = ["quantize", "--model", model, "--output", out] if c == "quantize" else \
            ["merge", "--model", base_model, "--adapter", adapter, "--output", out]
        return argv, used
    if c == "export":
        used = [base_model, adapter]
        target = out + ".gguf"
        odd_entry(rng, target, sum((files_of(u) for u in used), []))
        return ["export", "--model", base_model, "--adapter", adapter, "--output", target, "--check", "never"] + \
            rng.choice([[], ["--adapter-only"]]), used
    if c == "info":
        used = [base_model] + ([adapter] if rng.random() < 0.5 else [])
        target = out + ".dot"
        odd_entry(rng, target, sum((files_of(u) for u in used), []))
        return ["info", base_model, "--dot", target] + (["--adapter", adapter] if adapter in used else []), used
    target = out + ".jsonl"
    odd_entry(rng, target, files_of(model))
    return ["tokenize", "--tokenizer", model, "--input", target], [model]


# ---------------------------------------------------------------------------------------------------------------
# Kind: gguf — GGUF files written from scratch


GGUF_T = {"u8": 0, "i8": 1, "u16": 2, "i16": 3, "u32": 4, "i32": 5, "f32": 6, "bool": 7, "str": 8, "arr": 9,
          "u64": 10, "i64": 11, "f64": 12}
# ggml type: (block size, block bytes)
GGML = {"F32": (0, 1, 4), "F16": (1, 1, 2), "Q4_0": (2, 32, 18), "Q4_1": (3, 32, 20), "Q8_0": (8, 32, 34),
        "Q4_K": (12, 256, 144), "Q5_K": (13, 256, 176), "Q6_K": (14, 256, 210), "BF16": (30, 1, 2)}


def g_str(s):
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("<Q", len(b)) + b


def g_value(kind, v):
    if kind == "str":
        return g_str(v)
    if kind == "arr":
        inner, items = v
        body = b"".join(g_value(inner, x) for x in items)
        return struct.pack("<IQ", GGUF_T[inner], len(items)) + body
    fmt = {"u8": "<B", "i8": "<b", "u16": "<H", "i16": "<h", "u32": "<I", "i32": "<i", "f32": "<f", "bool": "<B",
           "u64": "<Q", "i64": "<q", "f64": "<d"}[kind]
    return struct.pack(fmt, v)


def half_bytes(rng, style):
    if style == "nan" and rng.random() < 0.05:
        return rng.choice([b"\x00\x7e", b"\x00\x7c", b"\x00\xfc"])      # NaN, +inf, -inf
    return struct.pack("<e", rng.choice([1, -1]) * rng.uniform(0.0005, 0.02))


def block_bytes(rng, type_name, blocks, style):
    """Random but mostly sane blocks: each scale a small half, the quants random."""
    _, bs, bb = GGML[type_name]
    if type_name in ("F32", "F16", "BF16"):
        n = blocks
        vals = [rng.gauss(0, 0.05) for _ in range(n)]
        if style == "nan":
            vals = [float("nan") if rng.random() < 0.02 else v for v in vals]
        if type_name == "F32":
            return struct.pack("<%df" % n, *vals)
        if type_name == "F16":
            return b"".join(struct.pack("<e", v) for v in vals)
        raw = struct.unpack("<%dI" % n, struct.pack("<%df" % n, *vals))
        return struct.pack("<%dH" % n, *[w >> 16 for w in raw])
    out = bytearray()
    for _ in range(blocks):
        if type_name == "Q4_0":
            out += half_bytes(rng, style) + os.urandom(16) if style == "urandom" else \
                half_bytes(rng, style) + bytes(rng.randrange(256) for _ in range(16))
        elif type_name == "Q4_1":
            out += half_bytes(rng, style) + half_bytes(rng, style) + bytes(rng.randrange(256) for _ in range(16))
        elif type_name == "Q8_0":
            out += half_bytes(rng, style) + bytes(rng.randrange(256) for _ in range(32))
        elif type_name in ("Q4_K", "Q5_K"):
            out += half_bytes(rng, style) + half_bytes(rng, style) + bytes(rng.randrange(256) for _ in range(bb - 4))
        else:   # Q6_K: ql 128, qh 64, scales 16, d last
            out += bytes(rng.randrange(256) for _ in range(bb - 2)) + half_bytes(rng, style)
    return bytes(out)


def tiny_llama_shapes(config):
    c, f, v = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    h, kv, hd = config["num_attention_heads"], config["num_key_value_heads"], config["head_dim"]
    t = [("token_embd.weight", [c, v]), ("output_norm.weight", [c]), ("output.weight", [c, v])]
    for i in range(config["num_hidden_layers"]):
        p = "blk.%d." % i
        t += [(p + "attn_norm.weight", [c]), (p + "ffn_norm.weight", [c]), (p + "attn_q.weight", [c, h * hd]),
              (p + "attn_k.weight", [c, kv * hd]), (p + "attn_v.weight", [c, kv * hd]),
              (p + "attn_output.weight", [h * hd, c]), (p + "ffn_gate.weight", [c, f]),
              (p + "ffn_up.weight", [c, f]), (p + "ffn_down.weight", [f, c])]
    return t   # GGUF dims: innermost first


def case_gguf(rng, base, d):
    config = json.load(open(os.path.join(GOLDEN, "tiny-llama", "config.json")))
    style = rng.choice(["sane", "sane", "nan"])
    tok = tokenizer_json()
    words = sorted(tok["model"]["vocab"], key=tok["model"]["vocab"].get)
    arch = rng.choice(["llama", "llama", "llama", "qwen2"])
    kv = [("general.architecture", "str", arch), ("general.name", "str", "fuzz")]
    sane = {"context_length": ("u32", 256), "embedding_length": ("u32", 192), "feed_forward_length": ("u32", 512),
            "block_count": ("u32", 2), "attention.head_count": ("u32", 6), "attention.head_count_kv": ("u32", 2),
            "attention.key_length": ("u32", 32), "attention.value_length": ("u32", 32),
            "rope.dimension_count": ("u32", 32), "rope.freq_base": ("f32", 10000.0),
            "attention.layer_norm_rms_epsilon": ("f32", 1e-5), "vocab_size": ("u32", 384)}
    odd = {"context_length": [1, 2, 16, 2**31, 2**32 - 1], "embedding_length": [191, 384, 0, 96],
           "feed_forward_length": [511, 0, 256, 1024], "block_count": [1, 3, 0, 1000],
           "attention.head_count": [3, 12, 5, 0, 192, 1], "attention.head_count_kv": [1, 3, 6, 4, 0, 12],
           "attention.key_length": [64, 16, 0, 31], "attention.value_length": [64, 0, 16],
           "rope.dimension_count": [16, 8, 2, 0, 33, 64, 30], "rope.freq_base": [1.0, 1e-3, 1e30, 0.0],
           "attention.layer_norm_rms_epsilon": [1e-30, 10.0, 0.0], "vocab_size": [383, 385, 0, 1]}
    hp = dict(sane)
    for key in rng.sample(sorted(odd), rng.choice([0, 0, 1, 1, 2])):
        hp[key] = (hp[key][0], rng.choice(odd[key]))
    for key in list(hp):
        if rng.random() < 0.01:
            del hp[key]
        elif rng.random() < 0.01:
            hp[key] = rng.choice([("u64", 2), ("i32", -1), ("f64", 6.0), ("str", "6"), ("u8", 2), ("bool", 1)])
    for key, (t, v) in hp.items():
        kv.append(("%s.%s" % (arch, key), t, v))
    if rng.random() < 0.15:
        kv.append(("%s.rope.scaling.type" % arch, "str", rng.choice(["linear", "yarn", "llama3"])))
        kv.append(("%s.rope.scaling.factor" % arch, "f32", rng.choice([2.0, 0.5, 8.0])))
    if rng.random() < 0.95:
        n_tok = rng.choice([384] * 8 + [383, 400])
        tokens = (words + ["x%d" % i for i in range(50)])[:n_tok]
        kv += [("tokenizer.ggml.model", "str", rng.choice(["gpt2", "gpt2", "llama"])),
               ("tokenizer.ggml.tokens", "arr", ("str", tokens)),
               ("tokenizer.ggml.merges", "arr", ("str", tok["model"]["merges"])),
               ("tokenizer.ggml.bos_token_id", "u32", 1), ("tokenizer.ggml.eos_token_id", "u32", 2)]
        if rng.random() < 0.5:
            types = [3 if i < 3 else 1 for i in range(rng.choice([n_tok] * 8 + [n_tok - 1]))]
            kv.append(("tokenizer.ggml.token_type", "arr", ("i32", types)))
        if rng.random() < 0.4:
            kv.append(("tokenizer.ggml.scores", "arr", ("f32", [0.0] * rng.choice([n_tok] * 8 + [3]))))
        if rng.random() < 0.3:
            kv.append(("tokenizer.chat_template", "str", CHAT_TEMPLATE))
        if rng.random() < 0.2:
            kv.append(("tokenizer.ggml.pre", "str", rng.choice(["llama3", "smollm", "gpt2", "qwen2", "default"])))
    alignment = rng.choice([32, 32, 32, 1, 8, 64, 4096])
    if alignment != 32 or rng.random() < 0.2:
        kv.append(("general.alignment", "u32", alignment))
    rng.shuffle(kv)
    tensors = tiny_llama_shapes(config)
    if rng.random() < 0.2:
        tensors = [t for t in tensors if t[0] != "output.weight"]          # tied
    if rng.random() < 0.1:
        tensors.append(("rope_freqs.weight", [16]))
    if rng.random() < 0.1:
        tensors.append(("blk.0.attn_q.bias", [192]))
    types = [n for n in GGML]
    plan, blobs, offset = [], [], 0
    mix = rng.random() < 0.5
    one = rng.choice(types)
    for name, dims in tensors:
        t = rng.choice(types) if mix else one
        if len(dims) == 1 or dims[0] % GGML[t][1] != 0:
            t = rng.choice(["F32", "F32", "F16", "BF16"]) if len(dims) == 1 else \
                rng.choice([x for x in types if dims[0] % GGML[x][1] == 0])
        count = 1
        for x in dims:
            count *= x
        blocks = count // GGML[t][1]
        blob = block_bytes(rng, t, blocks, style)
        plan.append((name, dims, GGML[t][0], offset))
        blobs.append(blob)
        offset += len(blob)
        offset = (offset + alignment - 1) // alignment * alignment
    header = b"GGUF" + struct.pack("<IQQ", 3, len(plan), len(kv))
    for key, t, v in kv:
        header += g_str(key) + struct.pack("<I", GGUF_T[t]) + g_value(t, v)
    for name, dims, t, off in plan:
        header += g_str(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", x) for x in dims) + \
            struct.pack("<IQ", t, off)
    header += bytes((alignment - len(header) % alignment) % alignment)
    data = b""
    for (name, dims, t, off), blob in zip(plan, blobs):
        data += bytes(off - len(data)) + blob
    path = os.path.join(d, "model.gguf")
    write_bytes(path, header + data)
    c = rng.choice(["info", "generate", "generate", "generate", "eval", "eval", "train", "train", "export", "merge",
                   "tokenize", "quantize"])
    pretok = os.path.join(base, "pretok.jsonl")
    out = os.path.join(d, "out")
    ad = os.path.join(base, "adapter")
    argv = {"info": ["info", path],
            "generate": ["generate", "--model", path, "--prompt", "the river", "--max-new-tokens", "3"] +
            rng.choice([[], ["--chat"], ["--temperature", "1", "--top-p", "0.9"], ["--adapter", ad],
                        ["--base-weights", "file"]]),
            "eval": ["eval", "--model", path, "--data", pretok, "--max-seq-length", "16", "--limit", "2"],
            "train": ["train", "--model", path, "--data", pretok, "--output-dir", out, "--max-steps", "1",
                      "--max-seq-length", "16", "--lora-r", "2"],
            "export": ["export", "--model", path, "--adapter", ad, "--output", out + ".gguf", "--check",
                       rng.choice(["always", "never"])],
            "merge": ["merge", "--model", path, "--adapter", ad, "--output", out, "--check", "always"],
            "tokenize": ["tokenize", "--tokenizer", path, "--input", os.path.join(base, "tokenize.jsonl")],
            "quantize": ["bench", "--device", "cpu", "--model", path, "--steps", "1", "--warmup", "0",
                         "--max-seq-length", "8", "--batch-size", "1"]}[c]
    return argv, [path]


# ---------------------------------------------------------------------------------------------------------------
# Kind: env


def case_env(rng, base, d):
    env = {}
    for key in rng.sample(["QLORA_GEMM", "QLORA_GEMM_TUNE", "QLORA_KERNEL_CACHE", "QLORA_CUDA_SYNC",
                           "QLORA_ATTENTION", "QLORA_SHARED", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                           "LD_LIBRARY_PATH", "CUDA_VISIBLE_DEVICES", "RANK", "WORLD_SIZE", "LOCAL_RANK",
                           "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "HOME"], rng.choice([1, 2, 3])):
        env[key] = rng.choice(["", "0", "1", "-1", "cblas", "ours", "log", "portable", "/nonexistent",
                               "/dev/null", d, "x" * 5000, "99999999999999999999", "0,1", "\u00e9"])
    model = os.path.join(base, "model")
    argv = rng.choice([
        ["train", "--model", model, "--data", os.path.join(base, "pretok.jsonl"), "--output-dir",
         os.path.join(d, "out"), "--max-steps", "1", "--max-seq-length", "16", "--lora-r", "2"],
        ["generate", "--model", model, "--prompt", "the river", "--max-new-tokens", "2"],
        ["bench-gemm", "--rows", "8", "--tokens", "8", "--rank", "4", "--rounds", "1", "--seconds", "0.01"],
        ["check-cuda"], ["bench", "--device", "cpu", "--layers", "1", "--steps", "1", "--warmup", "0",
                         "--max-seq-length", "4", "--batch-size", "1"],
        ["generate", "--model", model, "--prompt", "x", "--max-new-tokens", "1", "--device", "cuda"]])
    return argv, [], env


KINDS = ["lengths", "resume", "outdir", "gguf", "env"]


# ---------------------------------------------------------------------------------------------------------------
# Running and classifying


def fingerprint(paths):
    return {p: tree_fingerprint(p) if os.path.exists(p) or os.path.islink(p) else None for p in paths}


def classify(rc, out, err):
    text = out + err
    if rc is None:
        return "hang"
    if rc < 0 or rc >= 128 or any(s in text for s in ("Fatal error", "Segmentation", "Illegal instruction",
                                                       "Trace/breakpoint", "runtime failure")):
        return "crash"
    return "ok" if rc == 0 else "error"


def keep_finding(keep, d, result, rc, seed, binary, argv, out, err, env=None):
    """Keeps case folder `d` as `keep` (its regular files, folders and links; FIFOs and devices left out), with a
    cmd.sh that runs the case again (`$QLORA`, else `binary`) and the run's output."""
    shutil.rmtree(keep, ignore_errors=True)
    shutil.copytree(d, keep, symlinks=True, ignore_dangling_symlinks=True,
                    ignore=lambda p, names: [x for x in names
                                             if not (os.path.isfile(os.path.join(p, x)) or
                                                     os.path.isdir(os.path.join(p, x)) or
                                                     os.path.islink(os.path.join(p, x)))])
    with open(os.path.join(keep, "cmd.sh"), "w") as f:
        envs = "".join("%s=%s " % (k, shlex.quote(v)) for k, v in (env or {}).items())
        f.write("#!/bin/sh\n# %s (rc %s), seed %d; files as they were after the run\ncd %s\n%s%s %s\n" % (
            result, rc, seed, shlex.quote(d), envs, "${QLORA:-%s}" % shlex.quote(binary),
            " ".join(shlex.quote(a) for a in argv)))
    os.chmod(os.path.join(keep, "cmd.sh"), 0o755)
    with open(os.path.join(keep, "output.txt"), "w") as f:
        f.write(out + "\n---- stderr ----\n" + err)


def parse_args(description, work, cases, kinds):
    """The options every fuzzer of scripts/ takes (fuzz-commands.py and fuzz-interrupts.py call this one)."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--binary", default=os.path.join(REPO, ".build", "release", "qlora"))
    ap.add_argument("--work", default=work)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--cases", type=int, default=cases, help="cases per kind")
    ap.add_argument("--kinds", default=",".join(kinds))
    ap.add_argument("--timeout", type=int, default=60)
    ap.add_argument("--memory-gib", type=int, default=8)
    ap.add_argument("--only", help="run one case, KIND-N")
    ap.add_argument("--verbose", action="store_true")
    return ap.parse_args()


def main():
    args = parse_args(__doc__.split("\n")[0], "/tmp/qlora-fuzz2", 30, KINDS)
    runner = Runner(args)
    os.makedirs(args.work, exist_ok=True)
    base = build_base(runner, args.work)
    findings = os.path.join(args.work, "findings")
    counts = {}
    kinds = args.kinds.split(",")
    todo = [(k, n) for n in range(args.cases) for k in kinds]
    if args.only:
        k, n = args.only.rsplit("-", 1)
        todo = [(k, int(n))]
    for kind, n in todo:
        rng = random.Random("%d-%s-%d" % (args.seed, kind, n))
        d = os.path.join(args.work, "cases", "%s-%d" % (kind, n))
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        fn = globals()["case_" + kind]
        made = fn(rng, base, d, runner) if kind == "resume" else fn(rng, base, d)
        if made is None:
            counts["skipped"] = counts.get("skipped", 0) + 1
            continue
        argv, watched = made[0], made[1]
        env = made[2] if len(made) > 2 and isinstance(made[2], dict) else {}
        prior = made[2] if len(made) > 2 and isinstance(made[2], list) else []
        before = fingerprint(watched)
        before_prior = fingerprint(prior)
        rc, out, err, secs = runner.run(argv, d, extra_env=env)
        result = classify(rc, out, err)
        if result != "hang" and fingerprint(watched) != before:
            result = "lost"
        if result in ("error", "crash") and fingerprint(prior) != before_prior:
            result = "lost"      # a failed run changed the prior run's outputs
        counts[result] = counts.get(result, 0) + 1
        tag = "%s-%d" % (kind, n)
        if args.verbose or result in ("crash", "hang", "lost"):
            tail = (out + err).strip().splitlines()[-4:]
            if result == "crash":
                tail = [l for l in (out + err).splitlines() if "runtime failure" in l or "Fatal error" in l
                        or (" at /" in l and "<compiler-generated>" not in l)][:3]
            print("%-12s %-6s rc=%s %.1fs qlora %s" % (tag, result, rc, secs, " ".join(shlex.quote(a) for a in argv))
                  [:600])
            for line in tail:
                print("    " + line[:300])
        if result in ("crash", "hang", "lost"):
            keep_finding(os.path.join(findings, tag), d, result, rc, args.seed, runner.binary, argv, out, err, env)
        else:
            shutil.rmtree(d, ignore_errors=True)
    print("summary:", json.dumps(counts, sort_keys=True))
    return 1 if any(counts.get(k, 0) for k in ("crash", "hang", "lost")) else 0


if __name__ == "__main__":
    sys.exit(main())
