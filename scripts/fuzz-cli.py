#!/usr/bin/env python3
"""A seeded, repeatable fuzzer of the qlora release binary, end to end through the command line.

It builds small valid inputs once (tiny-llama with a byte-level BPE tokenizer and a chat template, its PEFT
adapter, the bitsandbytes NF4 checkpoint, a GGUF export, data files, a recipe and a training run with
checkpoints), then for each input kind writes mutated copies under the work folder and runs one qlora command on
each, under a timeout and an address-space limit. Every outcome is classified:

  ok      exit 0
  error   exit 1..127 with a message on stderr (a clean, reported refusal)
  crash   a signal, exit >= 128, or "Fatal error" / "Segmentation" / "Illegal instruction" in the output
  hang    still running at the timeout
  lost    a file given as input changed (or vanished) although the command only reads it

Kinds (--kinds, comma-separated): synthetic (models of odd but consistent shapes and values, written from scratch),
config, safetensors, quant_state, sharded, adapter, tokenizer, chat_template, gguf, data, recipe, flags,
environment, checkpoint, plot, lost_file (outputs pointed at inputs), scale (large inputs whose cost must stay
about linear).

Crashes, hangs and lost files keep their reproducer under WORK/findings/KIND-N/ (the files and a cmd.sh that runs
the same command line). The same --seed gives the same cases.

Usage:
  python3 scripts/fuzz-cli.py [--binary .build/release/qlora] [--work /tmp/qlora-fuzz] [--seed 12]
                              [--cases 40] [--kinds config,gguf,...] [--timeout 40] [--memory-gib 8]
                              [--only KIND-N] [--verbose]

Needs ../shared/golden/hf-qlora (or $QLORA_SHARED/golden/hf-qlora). Standard library only.
"""

import argparse
import hashlib
import json
import os
import random
import resource
import shlex
import shutil
import struct
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.environ.get("QLORA_SHARED", os.path.join(os.path.dirname(REPO), "shared"))
GOLDEN = os.path.join(SHARED, "golden", "hf-qlora")

# Values a number, a string or a flag is replaced with.
WEIRD_NUMBERS = [0, -1, 1, 2, 3, 7, 255, 256, 65535, 65536, 2**31 - 1, 2**31, 2**32, 2**32 + 1, 2**53 + 1,
                 2**63 - 1, 2**63, 2**64, -2**63, 10**12, 10**30, 1.5, -0.5, 1e-300, 1e300, 0.0]
WEIRD_JSON = WEIRD_NUMBERS + [None, True, False, "", "x", "nan", "-1", [], {}, [1, 2], {"a": 1}, "q_proj",
                              "a" * 10000]
WEIRD_FLAGS = ["-1", "0", "1", "2", "1e300", "-1e300", "nan", "inf", "-inf", "", "9223372036854775807",
               "9223372036854775808", "-9223372036854775808", "18446744073709551615", "1.5", "0.5", "abc",
               "0x10", "1e-300", "-0", "2147483648", "4294967296", "1000000000", "true", "false", " 1", "1e9"]


# ---------------------------------------------------------------------------------------------------------------
# File formats


def st_read(path):
    """A safetensors file as (header dict, data bytes)."""
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def st_resized(header, data, name, count=None, dtype=None):
    """The file with tensor `name` given `count` elements (its bytes cut or repeated) and/or another dtype (its
    bytes kept, so the values are reinterpreted), every offset moved to match: a consistent file, a wrong tensor."""
    sizes = {"F32": 4, "F16": 2, "BF16": 2, "U8": 1, "I32": 4, "I64": 8, "F64": 8}
    out, new = b"", {"__metadata__": header.get("__metadata__", {})}
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(x, int) for x in offsets)):
            new[key] = entry             # already broken by an earlier mutation: kept as it is
            continue
        lo, hi = offsets
        blob, entry = data[max(0, lo):max(0, hi)], dict(entry)
        if key == name:
            entry["dtype"] = dtype or entry["dtype"]
            n = count if count is not None else len(blob) // sizes.get(entry["dtype"], 1)
            need = n * sizes.get(entry["dtype"], 1)
            blob = (blob * (need // max(1, len(blob)) + 1))[:need] if blob else bytes(need)
            entry["shape"] = [n]
        entry["data_offsets"] = [len(out), len(out) + len(blob)]
        new[key] = entry
        out += blob
    return new, out


def st_bytes(header, data, header_text=None):
    text = header_text if header_text is not None else json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    return struct.pack("<Q", len(text)) + text + data


GGUF_SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<B", 10: "<Q", 11: "<q",
               12: "<d"}


def gguf_read(path):
    """A GGUF file as a dict: version, kv [(key, type, raw value bytes)], tensors [(name, dims, type, offset)],
    alignment and the data section."""
    with open(path, "rb") as f:
        raw = f.read()
    pos = 4
    version, n_tensors, n_kv = struct.unpack_from("<IQQ", raw, pos)
    pos += 20

    def string(p):
        (n,) = struct.unpack_from("<Q", raw, p)
        return raw[p + 8:p + 8 + n].decode(), p + 8 + n

    def value_end(t, p):
        if t in GGUF_SCALAR:
            return p + struct.calcsize(GGUF_SCALAR[t])
        if t == 8:
            return string(p)[1]
        inner, count = struct.unpack_from("<IQ", raw, p)
        p += 12
        for _ in range(count):
            p = value_end(inner, p)
        return p

    kv = []
    alignment = 32
    for _ in range(n_kv):
        key, pos = string(pos)
        (t,) = struct.unpack_from("<I", raw, pos)
        pos += 4
        end = value_end(t, pos)
        kv.append((key, t, raw[pos:end]))
        if key == "general.alignment":
            (alignment,) = struct.unpack_from("<I", raw, pos)
        pos = end
    tensors = []
    for _ in range(n_tensors):
        name, pos = string(pos)
        (nd,) = struct.unpack_from("<I", raw, pos)
        dims = list(struct.unpack_from("<%dQ" % nd, raw, pos + 4))
        pos += 4 + 8 * nd
        t, off = struct.unpack_from("<IQ", raw, pos)
        pos += 12
        tensors.append([name, dims, t, off])
    start = (pos + alignment - 1) // alignment * alignment
    return {"version": version, "kv": kv, "tensors": tensors, "alignment": alignment, "data": raw[start:]}


def gguf_string(s):
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("<Q", len(b)) + b


def gguf_bytes(g, n_tensors=None, n_kv=None):
    out = b"GGUF" + struct.pack("<IQQ", g["version"], len(g["tensors"]) if n_tensors is None else n_tensors,
                                len(g["kv"]) if n_kv is None else n_kv)
    for key, t, value in g["kv"]:
        out += gguf_string(key) + struct.pack("<I", t) + value
    for name, dims, t, off in g["tensors"]:
        out += gguf_string(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d & (2**64 - 1))
                                                                              for d in dims)
        out += struct.pack("<IQ", t, off & (2**64 - 1))
    a = g["alignment"] if g["alignment"] > 0 else 32
    out += b"\0" * ((a - len(out) % a) % a)
    return out + g["data"]


# ---------------------------------------------------------------------------------------------------------------
# Base fixtures


def byte_characters():
    out, nxt = [], 256
    for b in range(256):
        printable = 33 <= b <= 126 or 161 <= b <= 172 or 174 <= b <= 255
        out.append(chr(b if printable else nxt))
        if not printable:
            nxt += 1
    return out


CHAT_TEMPLATE = "{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}</s>\n{% endfor %}" + \
    "{% if add_generation_prompt %}<s>assistant\n{% endif %}"


def tokenizer_json(vocab_size=384):
    """tiny-llama's tokenizer, as GGUFExportTests.tinyLlamaWithTokenizer builds it."""
    chars = byte_characters()
    vocab = [("<unk>", 0), ("<s>", 1), ("</s>", 2)] + [(c, 3 + b) for b, c in enumerate(chars)]
    known = set(v for v, _ in vocab)
    merges = []
    text = ("the river rose slowly through the night and by morning the lower fields were under water farmers "
            "moved their animals to the hills while the children watched the boats drift past the church nobody "
            "had seen a flood like it in forty years and the old men argued about whether the bridge would hold a "
            "recipe for bread needs only four things flour water salt and yeast mix them and bake")
    done = False
    for i, word in enumerate(text.split(" ")):
        pieces = [chars[b] for b in (("" if i == 0 else " ") + word).encode()]
        left = pieces[0]
        for right in pieces[1:]:
            joined = left + right
            if joined not in known:
                if len(vocab) >= vocab_size:
                    done = True
                    break
                merges.append(left + " " + right)
                vocab.append((joined, len(vocab)))
                known.add(joined)
            left = joined
        if done:
            break
    added = [{"id": i, "content": c, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
              "special": True} for i, c in enumerate(["<unk>", "<s>", "</s>"])]
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    post = {"type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}}
    return {"version": "1.0", "added_tokens": added, "normalizer": None, "pre_tokenizer": byte_level,
            "post_processor": post, "decoder": byte_level,
            "model": {"type": "BPE", "unk_token": "<unk>", "vocab": dict(vocab), "merges": merges}}


def write_json(path, value):
    with open(path, "w") as f:
        json.dump(value, f, indent=2)


def write_bytes(path, data):
    with open(path, "wb") as f:
        f.write(data)


def copy_tree(src, dst):
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst)
    for root, dirs, files in os.walk(dst):
        for name in dirs + files:
            os.chmod(os.path.join(root, name), 0o755 if name in dirs else 0o644)
    os.chmod(dst, 0o755)


PRETOK = "".join(json.dumps({"input_ids": [1] + [(7 * i + j) % 380 + 3 for j in range(12)],
                             "labels": [-100] + [(7 * i + j) % 380 + 3 for j in range(12)]}) + "\n"
                 for i in range(8))
INSTR = "".join(json.dumps({"question": "the river rose %d" % i, "answer": "the old men argued %d" % i}) + "\n"
                for i in range(8))
CHAT = "".join(json.dumps({"messages": [{"role": "system", "content": "be brief"},
                                        {"role": "user", "content": "the river %d" % i},
                                        {"role": "assistant", "content": "rose slowly %d" % i}]}) + "\n"
               for i in range(8))
RECIPE = """per_device_train_batch_size: 2
gradient_accumulation_steps: 1
learning_rate: 2.0e-4
max_steps: 1
warmup_ratio: 0.0
lr_scheduler_type: cosine
r: 4
lora_alpha: 8
lora_dropout: 0.0
target_modules: [q_proj, v_proj]
max_seq_length: 16
seed: 42
logging_steps: 1
optim: paged_adamw_8bit
"""


class Runner:
    def __init__(self, args):
        self.binary = os.path.abspath(args.binary)
        self.timeout = args.timeout
        self.memory = args.memory_gib * 2**30
        self.verbose = args.verbose

    def run(self, argv, cwd, stdin=None, timeout=None, extra_env=None):
        def limits():
            resource.setrlimit(resource.RLIMIT_AS, (self.memory, self.memory))
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
            os.setsid()
            os.nice(10)

        start = time.time()
        env = dict(os.environ, OPENBLAS_NUM_THREADS="1", QLORA_SHARED=SHARED)
        env.update(extra_env or {})
        try:
            p = subprocess.Popen([self.binary] + argv, cwd=cwd, stdin=subprocess.PIPE if stdin else
                                 subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 preexec_fn=limits, env=env)
            out, err = p.communicate(stdin, timeout=timeout or self.timeout)
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
    tok_config = {"bos_token": "<s>", "eos_token": "</s>", "chat_template": CHAT_TEMPLATE}
    write_json(os.path.join(model, "tokenizer_config.json"), tok_config)
    copy_tree(os.path.join(GOLDEN, "tiny-adapter"), os.path.join(base, "adapter"))
    bnb = os.path.join(base, "bnb")
    copy_tree(os.path.join(GOLDEN, "tiny-llama-bnb-nf4"), bnb)
    shutil.copy(os.path.join(model, "tokenizer.json"), bnb)
    shutil.copy(os.path.join(model, "tokenizer_config.json"), bnb)
    for name, text in [("pretok.jsonl", PRETOK), ("instr.jsonl", INSTR), ("chat.jsonl", CHAT),
                       ("recipe.yaml", RECIPE), ("prompts.jsonl", '{"prompt": "the river"}\n{"prompt": "by"}\n')]:
        with open(os.path.join(base, name), "w") as f:
            f.write(text)
    steps = [
        ["export", "--format", "gguf", "--model", model, "--output", os.path.join(base, "model.gguf"),
         "--check", "never"],
        ["export", "--format", "gguf", "--model", model, "--output", os.path.join(base, "model-q8.gguf"),
         "--type", "q8_0", "--check", "never"],
        ["train", "--model", model, "--data", os.path.join(base, "pretok.jsonl"), "--output-dir",
         os.path.join(base, "run"), "--max-steps", "2", "--save-steps", "1", "--batch-size", "2",
         "--max-seq-length", "16", "--lora-r", "4", "--target-modules", "q_proj,v_proj"],
        ["merge", "--model", model, "--adapter", os.path.join(base, "adapter"), "--output",
         os.path.join(base, "sharded"), "--max-shard-size", "400000", "--check", "never"],
        # r 32: q_proj's A has 6,144 values, so the 8-bit optimizer keeps 8-bit moments for it
        ["train", "--model", model, "--data", os.path.join(base, "pretok.jsonl"), "--output-dir",
         os.path.join(base, "run8"), "--max-steps", "2", "--save-steps", "1", "--batch-size", "2",
         "--max-seq-length", "16", "--lora-r", "32", "--target-modules", "q_proj", "--optim", "adamw_8bit"],
    ]
    for argv in steps:
        rc, out, err, _ = runner.run(argv, base, timeout=600)
        if rc != 0:
            sys.exit("setting up the base failed: qlora %s\n%s%s" % (" ".join(argv), out, err[-4000:]))
    open(os.path.join(base, "ready"), "w").close()
    return base


# ---------------------------------------------------------------------------------------------------------------
# Mutations


def mutate_tree(rng, value, depth=0):
    """One change somewhere in a JSON tree: a value replaced, a key removed or duplicated, a list grown."""
    if isinstance(value, dict) and value and rng.random() < 0.8:
        key = rng.choice(list(value))
        out = dict(value)
        r = rng.random()
        if r < 0.15:
            del out[key]
        elif r < 0.25:
            out[key + "_x"] = out[key]
        else:
            out[key] = mutate_tree(rng, value[key], depth + 1)
        return out
    if isinstance(value, list) and value and rng.random() < 0.8:
        out = list(value)
        i = rng.randrange(len(out))
        r = rng.random()
        if r < 0.15:
            del out[i]
        elif r < 0.25:
            out.insert(i, out[i])
        else:
            out[i] = mutate_tree(rng, out[i], depth + 1)
        return out
    return weird_value(rng, value)


def weird_value(rng, old):
    r = rng.random()
    if isinstance(old, bool) or old is None:
        return rng.choice(WEIRD_JSON)
    if isinstance(old, (int, float)) and r < 0.7:
        return rng.choice(WEIRD_NUMBERS + [old * rng.choice([2, 10, -1, 1000, 10**9]), old + 1, old - 1])
    if isinstance(old, str) and r < 0.5:
        return rng.choice(["", old * 2, old[:len(old) // 2], old + "\u0000", "\ud800" if False else "\u00ff",
                           old.upper(), "../../etc/passwd", "%s%n", "a" * 100000])
    return rng.choice(WEIRD_JSON)


def dumps(value):
    """JSON text, allowing the non-standard NaN/Infinity Python writes for float specials."""
    return json.dumps(value, indent=1, allow_nan=True)


def mutate_bytes(rng, data, focus=None):
    data = bytearray(data)
    lo, hi = focus if focus else (0, len(data))
    hi = max(hi, lo + 1)
    for _ in range(rng.choice([1, 1, 2, 4, 16])):
        if not data:
            break
        r = rng.random()
        i = rng.randrange(lo, min(hi, len(data))) if lo < len(data) else 0
        if r < 0.3:
            data[i] ^= 1 << rng.randrange(8)
        elif r < 0.55:
            data[i] = rng.choice([0, 0xFF, 0x7F, 0x80, 0x30, 0x22, 0x5C])
        elif r < 0.7 and i + 8 <= len(data):
            data[i:i + 8] = struct.pack("<Q", rng.choice([0, 2**63, 2**64 - 1, 2**32, len(data) * 2, 2**40]))
        elif r < 0.8:
            del data[i:i + rng.randrange(1, 64)]
        elif r < 0.9:
            data[i:i] = data[i:i + rng.randrange(1, 64)]
        else:
            del data[rng.randrange(len(data)):]
    return bytes(data)


def pick_flags(rng, specs, count):
    """specs: {flag: [values]}; some flags given, some with weird values."""
    argv = []
    chosen = rng.sample(list(specs), min(count, len(specs)))
    # at most one flag with a weird value (more would mostly stop at the first one the parser refuses)
    weird = rng.choice(chosen + [None])
    for flag in chosen:
        values = specs[flag]
        if values is None:          # a plain flag
            argv.append(flag)
            continue
        value = rng.choice(values) if weird != flag else rng.choice(WEIRD_FLAGS)
        argv += [flag, value] if rng.random() < 0.9 else [flag + "=" + value]
    return argv


# ---------------------------------------------------------------------------------------------------------------
# Cases: each function writes its files into `d` and returns (argv, inputs that must not change[, stdin])


def model_command(rng, base, d, model, adapter=None, data=None):
    """One command run on a (possibly mutated) model folder or GGUF file."""
    data = data or os.path.join(base, "pretok.jsonl")
    adapter_args = ["--adapter", adapter] if adapter else []
    c = rng.choice(["info", "generate", "generate", "eval", "train", "merge", "export", "quantize", "tokenize",
                    "bench", "plan"])
    out = os.path.join(d, "out")
    if c == "info":
        return ["info", model] + adapter_args
    if c == "generate":
        extra = rng.choice([[], ["--chat"], ["--base-weights", "file"], ["--base-weights", "4bit"]])
        return ["generate", "--model", model, "--prompt", "the river", "--max-new-tokens", "3"] + adapter_args + \
            extra
    if c == "eval":
        return ["eval", "--model", model, "--data", data, "--limit", "2", "--max-seq-length", "16"] + adapter_args
    if c == "train":
        a = ["--init-adapter", adapter] if adapter else ["--lora-r", "2", "--target-modules", "all"]
        return ["train", "--model", model, "--data", data, "--output-dir", out, "--max-steps", "1", "--batch-size",
                "1", "--max-seq-length", "16"] + a
    if c == "merge":
        return ["merge", "--model", model, "--adapter", adapter or os.path.join(base, "adapter"), "--output", out]
    if c == "export":
        return ["export", "--format", "gguf", "--model", model, "--output", out + ".gguf", "--check",
                rng.choice(["never", "always"])] + adapter_args
    if c == "quantize":
        return ["quantize", "--model", model, "--output", out]
    if c == "tokenize":
        return ["tokenize", "--tokenizer", model, "--input", os.path.join(base, "tokenize-input.jsonl")]
    if c == "bench":
        return ["bench", "--device", "cpu", "--model", model, "--batch-size", "1", "--max-seq-length", "8",
                "--steps", "1", "--warmup", "0"]
    return ["plan", "--model", model, "--batch-size", "1", "--max-seq-length", "8"]


CONFIG_FIELDS = ["hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads", "head_dim",
                 "num_hidden_layers", "vocab_size", "max_position_embeddings", "rms_norm_eps", "bos_token_id",
                 "eos_token_id", "pad_token_id", "tie_word_embeddings", "rope_theta", "rope_scaling",
                 "rope_parameters", "model_type", "architectures", "torch_dtype", "dtype", "hidden_act",
                 "attention_bias", "mlp_bias", "quantization_config", "sliding_window"]
ROPE_SCALINGS = [None, {}, {"type": "linear", "factor": 2.0}, {"rope_type": "llama3", "factor": 8.0,
                 "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
                 {"rope_type": "llama3", "factor": 0, "low_freq_factor": 1.0, "high_freq_factor": 1.0,
                  "original_max_position_embeddings": 0},
                 {"rope_type": "llama3", "factor": -1, "low_freq_factor": 4.0, "high_freq_factor": 1.0,
                  "original_max_position_embeddings": 10**12},
                 {"rope_type": "dynamic", "factor": 1e300}, {"rope_type": "yarn", "factor": 4.0},
                 {"type": "linear", "factor": "x"}, {"type": "linear", "factor": float("nan")}, [1, 2], "linear",
                 {"rope_type": "linear", "factor": 0}, {"rope_type": "linear"}, {"rope_type": 3, "factor": 2}]


def case_config(rng, base, d):
    model = os.path.join(d, "model")
    copy_tree(os.path.join(base, "model"), model)
    path = os.path.join(model, "config.json")
    config = json.load(open(path))
    for _ in range(rng.choice([1, 1, 2, 3])):
        key = rng.choice(CONFIG_FIELDS)
        r = rng.random()
        if key in ("rope_scaling", "rope_parameters") and r < 0.7:
            config[key] = rng.choice(ROPE_SCALINGS)
        elif r < 0.12:
            config.pop(key, None)
        elif r < 0.3 and isinstance(config.get(key), int):
            # consistent-looking but wrong: a multiple or a divisor
            config[key] = config[key] * rng.choice([2, 3]) if rng.random() < 0.5 else max(1, config[key] // 2)
        else:
            config[key] = weird_value(rng, config.get(key, 1))
    with open(path, "w") as f:
        f.write(dumps(config))
    return model_command(rng, base, d, model, adapter=rng.choice([None, os.path.join(base, "adapter")])), []


def case_safetensors(rng, base, d):
    kind = rng.choice(["model", "bnb"])
    model = os.path.join(d, "model")
    copy_tree(os.path.join(base, kind), model)
    path = os.path.join(model, "model.safetensors")
    header, data = st_read(path)
    names = [k for k in header if k != "__metadata__"]
    r = rng.random()
    if r < 0.2:
        raw = open(path, "rb").read()
        (n,) = struct.unpack("<Q", raw[:8])
        write_bytes(path, mutate_bytes(rng, raw, (0, 8 + n) if rng.random() < 0.8 else None))
    else:
        for _ in range(rng.choice([1, 1, 2])):
            name = rng.choice(names)
            entry = header.get(name)
            if entry is None:
                continue
            m = rng.random()
            if m < 0.15:
                del header[name]
            elif m < 0.35:
                shape = list(entry["shape"])
                if shape and rng.random() < 0.7:
                    i = rng.randrange(len(shape))
                    shape[i] = rng.choice([0, 1, shape[i] * 2, shape[i] + 1, 2**32, 2**62, -1])
                else:
                    shape = rng.choice([[], [1], shape + [1], shape[::-1], [0]])
                entry["shape"] = shape
            elif m < 0.5:
                entry["dtype"] = rng.choice(["F32", "F16", "BF16", "U8", "I8", "I32", "I64", "F64", "BOOL",
                                             "F8_E4M3", "X", ""])
            elif m < 0.7:
                lo, hi = entry["data_offsets"]
                entry["data_offsets"] = rng.choice([[hi, lo], [lo, lo], [lo, hi + 1], [lo + 1, hi],
                                                    [0, len(data) + 8], [2**63, 2**63 + 4], [-1, hi], [lo, 2**64]])
            elif m < 0.8 and rng.random() < 0.5:
                n = 1
                for x in entry["shape"]:
                    n *= x
                header, data = st_resized(header, data, name, count=rng.choice([None, 0, 1, n // 2, n + 1]),
                                          dtype=rng.choice([None, "F32", "F16", "BF16", "U8", "I64"]))
            elif m < 0.8:
                header[name + ".extra"] = entry
            elif m < 0.9 and ".quant_state." in name:
                lo, hi = entry["data_offsets"]
                text = data[lo:hi]
                cut = text[:rng.randrange(len(text))]
                data = data[:lo] + cut + data[hi:]
                shift = len(cut) - (hi - lo)
                entry["data_offsets"] = [lo, lo + len(cut)]
                for other in header.values():
                    if isinstance(other, dict) and "data_offsets" in other and other is not entry \
                            and other["data_offsets"][0] >= hi:
                        other["data_offsets"] = [other["data_offsets"][0] + shift, other["data_offsets"][1] + shift]
            else:
                header[name] = mutate_tree(rng, entry)
        write_bytes(path, st_bytes(header, data))
    return model_command(rng, base, d, model, adapter=rng.choice([None, os.path.join(base, "adapter")])), []


def case_quant_state(rng, base, d):
    """A bitsandbytes quant_state JSON rewritten."""
    model = os.path.join(d, "model")
    copy_tree(os.path.join(base, "bnb"), model)
    path = os.path.join(model, "model.safetensors")
    header, data = st_read(path)
    states = [k for k in header if ".quant_state." in k]
    tensors = []
    for name in [k for k in header if k != "__metadata__"]:
        lo, hi = header[name]["data_offsets"]
        tensors.append([name, header[name], data[lo:hi]])
    for t in tensors:
        if t[0] == rng.choice(states):
            qs = json.loads(t[2])
            qs = mutate_tree(rng, qs)
            if rng.random() < 0.3:
                qs = mutate_tree(rng, qs)
            t[2] = json.dumps(qs).encode()
            t[1]["shape"] = [len(t[2])]
    out, pos, new_header = b"", 0, {"__metadata__": header.get("__metadata__", {})}
    for name, entry, blob in tensors:
        entry = dict(entry)
        entry["data_offsets"] = [pos, pos + len(blob)]
        new_header[name] = entry
        out += blob
        pos += len(blob)
    write_bytes(path, st_bytes(new_header, out))
    return model_command(rng, base, d, model, adapter=rng.choice([None, os.path.join(base, "adapter")])), []


ADAPTER_FIELDS = {
    "r": [0, -1, 1, 3, 16, 2**31, 10**9, 1.5, "8", None],
    "lora_alpha": [0, -16, 1e300, float("nan"), float("inf"), "16", None, 10**30],
    "target_modules": [[], ["q_proj"], ["nope"], "all-linear", "q_proj", ".*", "(q|v)_proj", None, [1, 2],
                       ["lm_head"], ["embed_tokens"], ["model.layers.0.self_attn.q_proj"]],
    "rank_pattern": [{}, {"q_proj": 4}, {"q_proj": 0}, {"q_proj": -1}, {"q_proj": 2**40}, {".*": 4},
                     {"model.layers.0.self_attn.q_proj": 2}, {"(": 2}, {"q_proj": "x"}, [], None],
    "alpha_pattern": [{}, {"q_proj": 0}, {"q_proj": float("nan")}, {"q_proj": -5}, {"v_proj": 1e300}, {"[": 1},
                      None, "x"],
    "modules_to_save": [None, [], ["lm_head"], ["embed_tokens"], ["nope"], "lm_head", [None]],
    "use_rslora": [True, False, "yes", None, 1],
    "use_dora": [True, False, None],
    "fan_in_fan_out": [True, False],
    "bias": ["none", "all", "lora_only", None],
    "peft_type": ["LORA", "IA3", None, ""],
    "layers_to_transform": [None, [0], [5], [-1], 0, [0, 0]],
    "lora_dropout": [0.0, 1.0, -1, float("nan"), 2],
    "task_type": ["CAUSAL_LM", None, "SEQ_CLS"],
    "base_model_name_or_path": ["", None, 5],
    "trainable_token_indices": [None, [0, 1], {"embed_tokens": [10**9]}],
}


def case_adapter(rng, base, d):
    adapter = os.path.join(d, "adapter")
    copy_tree(os.path.join(base, "adapter"), adapter)
    cpath = os.path.join(adapter, "adapter_config.json")
    config = json.load(open(cpath))
    wpath = os.path.join(adapter, "adapter_model.safetensors")
    header, data = st_read(wpath)
    r = rng.random()
    if r < 0.5:
        for _ in range(rng.choice([1, 2])):
            key = rng.choice(list(ADAPTER_FIELDS))
            if rng.random() < 0.15:
                config.pop(key, None)
            else:
                config[key] = rng.choice(ADAPTER_FIELDS[key])
        with open(cpath, "w") as f:
            f.write(dumps(config))
    elif r < 0.65:
        with open(cpath, "w") as f:
            f.write(dumps(mutate_tree(rng, config)))
    else:
        names = [k for k in header if k != "__metadata__"]
        name = rng.choice(names)
        m = rng.random()
        if m < 0.2:
            del header[name]
        elif m < 0.5:
            shape = list(header[name]["shape"])
            i = rng.randrange(len(shape))
            shape[i] = rng.choice([0, 1, shape[i] + 1, shape[i] * 2, 2**33])
            header[name]["shape"] = shape
        elif m < 0.65:
            header, data = st_resized(header, data, name, count=rng.choice([None, 1, 8, 1536, 10**5]),
                                      dtype=rng.choice([None, "F16", "BF16", "U8", "I64", "F64"]))
        elif m < 0.8:
            header[name.replace("layers.0", "layers.7").replace("layers.1", "layers.99")] = header.pop(name)
        elif m < 0.9:
            header[name.replace("lora_A", "lora_X")] = header.pop(name)
        else:
            header[name + ".bogus"] = header[name]
        write_bytes(wpath, st_bytes(header, data))
    model = os.path.join(base, rng.choice(["model", "model", "bnb", "model.gguf"]))
    return model_command(rng, base, d, model, adapter=adapter), []


def case_tokenizer(rng, base, d):
    model = os.path.join(d, "model")
    copy_tree(os.path.join(base, "model"), model)
    path = os.path.join(model, "tokenizer.json")
    tok = json.load(open(path))
    r = rng.random()
    if r < 0.15:
        tok["added_tokens"].append({"id": rng.choice([-1, 384, 383, 10**9, 2**63 - 1, 0, 3, "x", None, 1.5]),
                                    "content": rng.choice(["<x>", "", "the", "<s>", "\u0000", "a" * 5000]),
                                    "special": rng.choice([True, False]), "normalized": False})
    elif r < 0.3:
        merges = tok["model"]["merges"]
        form = rng.random()
        if form < 0.4:
            tok["model"]["merges"] = [m.split(" ") for m in merges]        # the list form
            if rng.random() < 0.5:
                tok["model"]["merges"][0] = rng.choice([[], ["a"], ["a", "b", "c"], [1, 2], "a b", None])
        else:
            merges.insert(rng.randrange(len(merges) + 1), rng.choice(["", " ", "a", "a b c", "zz qq", "t h",
                                                                        "\u0120 t", "ab ab"]))
    elif r < 0.45:
        vocab = tok["model"]["vocab"]
        key = rng.choice(list(vocab))
        m = rng.random()
        if m < 0.3:
            vocab[key] = rng.choice([-1, 10**9, 2**63, 0, 383, "3", None, 1.5])
        elif m < 0.5:
            del vocab[key]
        else:
            vocab[rng.choice(["", "\u0000", "new", "a" * 3000])] = rng.choice([384, 5, 10**6])
    elif r < 0.6:
        tok["model"]["type"] = rng.choice(["WordPiece", "Unigram", "WordLevel", "", None, 3])
        if rng.random() < 0.5:
            tok["model"]["byte_fallback"] = rng.choice([True, "yes"])
    elif r < 0.7:
        tok[rng.choice(["pre_tokenizer", "normalizer", "decoder", "post_processor"])] = rng.choice([
            None, {}, {"type": "Sequence", "pretokenizers": []}, {"type": "Split", "pattern": {"Regex": "("},
                                                                    "behavior": "Isolated"},
            {"type": "Split", "pattern": {"Regex": "(a*)*b"}, "behavior": "Removed"},
            {"type": "Metaspace", "replacement": "", "prepend_scheme": "always"},
            {"type": "Replace", "pattern": {"String": ""}, "content": "x"},
            {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "a" * 10000}] * 50},
            {"type": "Sequence", "normalizers": [{"type": "Replace", "pattern": {"String": "e"},
                                                  "content": "e" * 16}] * 8},
            {"type": "Sequence", "normalizers": [{"type": "Replace", "pattern": {"String": " "},
                                                  "content": "  "}] * 40},
            {"type": "Metaspace", "replacement": "\u2581\u2581", "prepend_scheme": "always"},
            {"type": "Sequence", "pretokenizers": [{"type": "Sequence", "pretokenizers": []}] * 3},
            {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<zz>", "type_id": 0}}],
             "special_tokens": {}},
            {"type": "Unknown"}, [], "x"])
    else:
        tok = mutate_tree(rng, tok)
    with open(path, "w") as f:
        f.write(dumps(tok))
    c = rng.random()
    if c < 0.4:
        return ["tokenize", "--tokenizer", rng.choice([model, path]), "--input",
                os.path.join(base, "tokenize-input.jsonl")] + rng.choice([[], ["--add-special-tokens"]]), []
    return model_command(rng, base, d, model, data=os.path.join(base, rng.choice(["instr.jsonl", "chat.jsonl"]))), []


JINJA_BOMBS = [
    "{% for i in range(10**12) %}x{% endfor %}",
    "{% for i in range(1000000000) %}{% endfor %}",
    "{{ 'a' * 10**12 }}",
    "{{ 'ab' * 1000000000 }}",
    "{{ [1] * 10**12 }}",
    "{{ messages * 1000000000 }}",
    "{{ range(10**12)|list|length }}",
    "{{ range(10**12)|length }}",
    "{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}",
    "{% macro f(n) %}{{ f(n + 1) }}{{ f(n + 1) }}{% endmacro %}{{ f(1) }}",
    "{% set ns = namespace(x='a') %}{% for i in range(80) %}{% set ns.x = ns.x ~ ns.x %}{% endfor %}{{ ns.x }}",
    "{% set ns = namespace(x=[1]) %}{% for i in range(80) %}{% set ns.x = ns.x + ns.x %}{% endfor %}{{ ns.x|length }}",
    "{% for a in range(1000) %}{% for b in range(1000) %}{% for c in range(1000) %}x{% endfor %}{% endfor %}"
    "{% endfor %}",
    "{{ 10 ** 10 ** 10 }}", "{{ 2 ** 64 }}", "{{ 2 ** 63 }}", "{{ -2 ** 63 }}", "{{ 2 ** -1 }}", "{{ 0 ** -1 }}",
    "{{ 9223372036854775807 + 1 }}", "{{ -9223372036854775807 - 2 }}", "{{ 9223372036854775807 * 2 }}",
    "{{ (-9223372036854775807 - 1) // -1 }}", "{{ (-9223372036854775807 - 1) % -1 }}", "{{ 1 // 0 }}",
    "{{ 1 % 0 }}", "{{ 1 / 0 }}", "{{ 1.0 // 0.0 }}", "{{ 99999999999999999999999 }}",
    "{{ -(-9223372036854775807 - 1) }}",
    "{{ (1e308 * 10)|int }}", "{{ 'nan'|float|int }}", "{{ 1e300|int }}", "{{ 'inf'|float|round|int }}",
    "{{ 1e19|int }}", "{{ -1e19|int }}", "{{ 2.5|round(-9223372036854775807 - 1) }}", "{{ 2.5|round(10**6) }}",
    "{{ 'abc'[9223372036854775807] }}", "{{ 'abc'[-9223372036854775807 - 1] }}",
    "{{ [1,2][-9223372036854775807 - 1] }}",
    "{{ 'abc'[::0] }}", "{{ [1,2,3][::0] }}", "{{ 'abc'[::-9223372036854775807 - 1] }}",
    "{{ 'abc'[-9223372036854775807 - 1:9223372036854775807] }}", "{{ 'abc'[1:0:-1] }}",
    "{{ messages[-9223372036854775807 - 1:] }}", "{{ range(0, 10, 0)|list }}",
    "{{ range(-9223372036854775807 - 1, 9223372036854775807)|length }}",
    "{{ range(9223372036854775807, -9223372036854775807 - 1, -1)|length }}",
    "{{ range(0, 9223372036854775807, 4611686018427387904)|list }}",
    "{{ range(9223372036854775800, 9223372036854775807, 3)|list }}",
    "{{ 'x'|center(10**12) }}", "{{ 'x'|center(-5) }}", "{{ 'x'|indent(10**12) }}", "{{ 'x\ny'|indent(10**12) }}",
    "{{ 'abc'|truncate(-1) }}", "{{ 'abcdef'|truncate(2, true, 'xxxxx', -10) }}", "{{ messages|batch(0)|list }}",
    "{{ messages|batch(-1)|list }}", "{{ messages|slice(0)|list }}", "{{ 'a'|replace('', 'bb') }}",
    "{{ ('a' * 1000)|replace('', 'b' * 1000) }}", "{{ 'abc'.split('') }}", "{{ 'abc'.split(none, -5) }}",
    "{{ 'a b c'.split(' ', 9223372036854775807) }}", "{{ 'abc'.replace('', 'x', -1) }}",
    "{{ 'abc'.center(9223372036854775807) }}", "{{ 'abc'.ljust(10**12) }}", "{{ 'abc'.zfill(10**12) }}",
    "{{ 'a'.ljust(-1) }}", "{{ '%s %s'|format(1) }}", "{{ '%d'|format('x') }}", "{{ '%*d'|format(10**12, 1) }}",
    "{{ '%.1000000000f'|format(1.0) }}", "{{ '{:>1000000000}'.format(1) }}", "{{ '%c'|format(-1) }}",
    "{{ '%c'|format(1114112) }}", "{{ '%c'|format(55296) }}", "{{ messages|tojson(indent=10**12) }}",
    "{{ messages|tojson(indent=-1) }}", "{{ messages|join(',' * 10**9) }}", "{{ messages|map('x')|list }}",
    "{{ messages|sum }}", "{{ messages|sort(attribute='nope') }}", "{{ messages|first|int }}",
    "{{ messages|random }}", "{{ []|first }}", "{{ []|last }}", "{{ []|max }}", "{{ []|random }}",
    "{{ 'x'|wordwrap(0) }}", "{{ 'x y z'|wordwrap(-1) }}", "{{ 'abc'|list|batch(10**12) }}",
    "{{ [[[[[[1]]]]]]|flatten }}", "{{ dict(a=1)|dictsort(by='x') }}", "{{ 5|filesizeformat }}",
    "{{ 'x' ~ 1e400 }}", "{{ 1e400 }}", "{{ -1e400|abs }}", "{{ (2**62)|abs }}", "{{ (-9223372036854775807 - 1)|abs }}",
    "{{ (-9223372036854775807 - 1) * -1 }}", "{{ (-9223372036854775807 - 1) ** 2 }}", "{{ 3 ** 40 }}",
    "{{ 2 ** 62 * 4 }}", "{{ 'a' * -5 }}", "{{ 'a' * (-9223372036854775807 - 1) }}", "{{ 'a' * 9223372036854775807 }}",
    "{{ ['a'] * 9223372036854775807 }}", "{{ 'ab' * 4611686018427387904 }}", "{{ [1, 2] * 4611686018427387904 }}",
    "{{ loop }}", "{{ raise_exception('x') }}", "{{ raise_exception() }}", "{{ raise_exception(1, 2, 3) }}",
    "{{ strftime_now('%Y' * 100000) }}", "{{ strftime_now(5) }}", "{{ namespace(**{}) }}",
    "{% set x = x %}{{ x }}", "{% set a = [] %}{% for i in range(10) %}{{ a.append(a) }}{% endfor %}{{ a }}",
    "{% set a = [1] %}{{ a.append(a) }}{{ a|tojson }}", "{% set d = {} %}{{ d.update({'d': d}) }}{{ d|tojson }}",
    "{% set a = [1] %}{{ a.append(a) }}{{ a|string }}", "{% set a = [1] %}{{ a.append(a) }}{{ a == a }}",
    "{% set a = [1] %}{{ a.append(a) }}{{ a|flatten }}", "{% set a = [1] %}{{ a.append(a) }}{{ a|unique|list }}",
    "{% set a = [1] %}{{ a.append(a) }}{{ a|sort }}", "{% set a = [1] %}{{ a.append(a) }}{{ a in a }}",
    "{{ messages.pop() }}{{ messages.pop() }}{{ messages.pop() }}{{ messages.pop() }}{{ messages.pop() }}",
    "{{ [].pop() }}", "{{ [1].pop(5) }}", "{{ [1].pop(-9223372036854775807 - 1) }}",
    "{{ [1].insert(9223372036854775807, 2) }}",
    "{% for m in messages %}{{ messages.append(m) }}{% endfor %}",
    "".join("{%% for v%d in messages %%}" % i for i in range(12)) + "x" + "{% endfor %}" * 12,
    "{{ " + "(" * 20000 + "1" + ")" * 20000 + " }}",
    "{{ " + "[" * 20000 + "]" * 20000 + " }}",
    "{{ " + "-" * 50000 + "1 }}",
    "{{ " + "not " * 50000 + "1 }}",
    "{{ 1" + " + 1" * 50000 + " }}",
    "{{ 1" + "|string" * 50000 + " }}",
    "{{ a" + ".b" * 50000 + " }}",
    "{{ x" + "()" * 50000 + " }}",
    "{% if 1 %}" * 20000 + "x" + "{% endif %}" * 20000,
    "{% for i in [1] %}" * 5000 + "x" + "{% endfor %}" * 5000,
    "{% macro m() %}" * 5000 + "{% endmacro %}" * 5000,
    "{{ {" + "'a': {" * 20000 + "}" * 20000 + "} }}",
    "{{ 1 if 1 else " * 20000 + "1" + " }}",
    "{% set x %}" * 5000 + "{% endset %}" * 5000,
    "{% filter upper %}" * 5000 + "x" + "{% endfilter %}" * 5000,
    "{% raw %}" * 3 + "{% endraw %}",
    "{% for %}", "{% endfor %}", "{{", "}}", "{% if %}", "{% macro %}", "{% set %}", "{{ 'unterminated }}",
    "{# unterminated comment", "{% for x in %}{% endfor %}", "{% call %}{% endcall %}",
    "{% macro f() %}{{ caller() }}{% endmacro %}{% call f() %}{% call f() %}x{% endcall %}{% endcall %}",
    "{% macro f() %}{{ caller() }}{% endmacro %}{{ f() }}",
    "{% macro f() %}{% call f() %}{% endcall %}{% endmacro %}{{ f() }}",
    "{% macro f(a, a) %}{% endmacro %}{{ f(1, 2) }}", "{% macro f() %}{% endmacro %}{{ f(1, 2, 3, x=1) }}",
    "{% macro f(x=f()) %}{% endmacro %}{{ f() }}",
    "{% macro f() %}{{ g() }}{% endmacro %}{% macro g() %}{{ f() }}{% endmacro %}{{ f() }}",
    "{% set f = cycler %}{{ f(1) }}", "{% set c = cycler() %}{{ c.next() }}", "{{ joiner()() }}",
    "{% for m in messages recursive %}{{ loop(messages) }}{% endfor %}",
    "{% for m in messages recursive %}{{ loop([m]) }}{% endfor %}",
    "{% for m in messages %}{{ loop.cycle() }}{{ loop.previtem }}{{ loop.nextitem }}{% endfor %}",
    "{% for i in range(3) %}{{ loop.cycle(*[]) }}{% endfor %}",
    "{% for a, b in messages %}{% endfor %}", "{% for a, b, c in [[1, 2]] %}{% endfor %}",
    "{% for k, v in messages[0]|items %}{{ k }}{% endfor %}{% break %}", "{% continue %}",
    "{% for i in 5 %}{% endfor %}", "{% for i in none %}{% endfor %}", "{% set a, b = 1 %}",
    "{% set a.b = 1 %}", "{% set ns = namespace() %}{% set ns.a.b = 1 %}", "{% include 'x' %}",
    "{% import 'x' as y %}", "{% extends 'x' %}", "{% block b %}{% endblock %}", "{{ self }}", "{{ super() }}",
    "{% generation %}{% for i in range(10**12) %}{% endfor %}{% endgeneration %}",
    "{{ messages[0]['content'][10**12] }}", "{{ messages[10**12] }}", "{{ messages[0].content.__class__ }}",
    "{{ ''.__class__.__mro__ }}", "{{ cycler.__init__.__globals__ }}", "\udcff" if False else "\u00ff{{ 1 }}",
    "{{ '\\u0000' }}{{ '\\ud800' }}{{ '\\U0010ffff' }}{{ '\\U00110000' }}{{ '\\x' }}{{ '\\777' }}",
    "{{ 'a' is divisibleby 0 }}", "{{ 5 is divisibleby 0 }}", "{{ 5 is divisibleby (-9223372036854775807 - 1) }}",
    "{{ (-9223372036854775807 - 1) is divisibleby -1 }}", "{{ 1 is nope }}", "{{ x is defined(1, 2) }}",
    "{{ 'a' < 1 }}", "{{ [1] < [[1]] }}", "{{ {} < {} }}", "{{ none < none }}", "{{ (1, 2)|sort }}",
    "{{ ['b', 1]|sort }}", "{{ [1, 'a']|max }}", "{{ [none, 1]|min }}", "{{ messages|groupby('role')|list }}",
    "{{ messages|selectattr('role', 'equalto')|list }}", "{{ messages|rejectattr()|list }}",
    "{{ messages|map(attribute='content', default=1)|list }}", "{{ range(5)|select('divisibleby', 0)|list }}",
    "{{ 1|string|list|batch(1, 'x' * 10**9)|list }}",
]


def case_chat_template(rng, base, d):
    model = os.path.join(d, "model")
    copy_tree(os.path.join(base, "model"), model)
    if rng.random() < 0.75:
        template = rng.choice(JINJA_BOMBS)
        if rng.random() < 0.3:
            template = CHAT_TEMPLATE + template
    else:
        template = bytearray(CHAT_TEMPLATE.encode() if rng.random() < 0.5 else rng.choice(JINJA_BOMBS).encode())
        template = mutate_bytes(rng, bytes(template)).decode(errors="replace")
    path = os.path.join(model, "tokenizer_config.json")
    config = json.load(open(path))
    r = rng.random()
    if r < 0.7:
        config["chat_template"] = template
    elif r < 0.8:
        config["chat_template"] = rng.choice([[{"name": "default", "template": template}],
                                              [{"name": "tool_use", "template": template}], [], [None], 5, None,
                                              [{"name": "default"}], [{"name": "default", "template": 3}],
                                              {"name": "default", "template": template}])
    else:
        del config["chat_template"]
        with open(os.path.join(model, "chat_template.jinja"), "w") as f:
            f.write(template)
    if rng.random() < 0.2:
        config[rng.choice(["bos_token", "eos_token", "pad_token"])] = rng.choice(
            [None, "", 5, {"content": "<s>"}, {"content": 5}, "<nope>", "a" * 10000])
    write_json(path, config)
    c = rng.random()
    chat = os.path.join(base, "chat.jsonl")
    if c < 0.35:
        return ["generate", "--model", model, "--prompt", "the river", "--chat", "--max-new-tokens", "2"], []
    if c < 0.6:
        return ["eval", "--model", model, "--data", chat, "--limit", "2", "--max-seq-length", "16"], []
    if c < 0.8:
        return ["train", "--model", model, "--data", chat, "--output-dir", os.path.join(d, "out"), "--max-steps",
                "1", "--batch-size", "1", "--max-seq-length", "16", "--lora-r", "2"] + \
            rng.choice([[], ["--train-on-eos", "all"], ["--roles-to-train", "user,assistant"],
                        ["--train-on-inputs"]]), []
    return ["export", "--format", "gguf", "--model", model, "--output", os.path.join(d, "out.gguf"), "--check",
            "never"], []


def gguf_array(inner, items):
    """The bytes of a GGUF array value (after its type field) of scalar or string items."""
    if inner == 8:
        body = b"".join(gguf_string(x) for x in items)
    else:
        body = b"".join(struct.pack(GGUF_SCALAR[inner], x) for x in items)
    return struct.pack("<IQ", inner, len(items)) + body


def gguf_set(g, key, t, value):
    for i, (k, _, _) in enumerate(g["kv"]):
        if k == key:
            g["kv"][i] = (key, t, value)
            return
    g["kv"].append((key, t, value))


def mutate_gguf_meaning(rng, g):
    """A well-formed GGUF whose values say something odd: the vocabulary, special ids, hyperparameters."""
    tokens = tokenizer_json()["model"]["vocab"]
    words = sorted(tokens, key=tokens.get)
    m = rng.random()
    if m < 0.15:
        w = list(words)
        r = rng.random()
        if r < 0.3:
            w = w[:rng.choice([0, 1, 3, 100, 383])]
        elif r < 0.5:
            w += ["extra%d" % i for i in range(rng.choice([1, 100]))]
        elif r < 0.7:
            w[rng.randrange(len(w))] = rng.choice(["", w[5], "a" * 100000, "\u0000", "<s>"])
        else:
            w = [x.encode() + b"\xff" if rng.random() < 0.1 else x.encode() for x in w]
        gguf_set(g, "tokenizer.ggml.tokens", 9, gguf_array(8, w))
    elif m < 0.28:
        n = rng.choice([384, 384, 383, 385, 0])
        kinds = [rng.choice([0, 1, 2, 3, 4, 5, 6, 7, -1, 1000, 2**31 - 1]) if rng.random() < 0.2 else 1
                 for _ in range(n)]
        gguf_set(g, "tokenizer.ggml.token_type", 9, gguf_array(5, kinds))
    elif m < 0.36:
        n = rng.choice([384, 383, 1])
        scores = [rng.choice([0.0, -1.0, float("nan"), float("inf"), -3e38]) for _ in range(n)]
        gguf_set(g, "tokenizer.ggml.scores", 9, gguf_array(6, scores))
    elif m < 0.46:
        merges = tokenizer_json()["model"]["merges"]
        extra = rng.choice([["", "a", "a b c", "zz qq", " ", "t  h", "\u0120 \u0120"], ["t h"] * 5,
                            ["x%d y%d" % (i, i) for i in range(1000)]])
        merges = merges[:rng.randrange(len(merges) + 1)] + extra
        gguf_set(g, "tokenizer.ggml.merges", 9, gguf_array(8, merges))
    elif m < 0.56:
        gguf_set(g, "tokenizer.ggml.model", 8, gguf_string(rng.choice(["llama", "bert", "", "none", "t5", "rwkv",
                                                                      "gpt2", "GPT2", "x" * 1000])))
        if rng.random() < 0.5:
            gguf_set(g, "tokenizer.ggml.pre", 8, gguf_string(rng.choice(["llama3", "qwen2", "deepseek-llm",
                                                                        "smollm", "default", "", "x"])))
    elif m < 0.7:
        key = rng.choice(["tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
                          "tokenizer.ggml.unknown_token_id", "tokenizer.ggml.padding_token_id",
                          "tokenizer.ggml.eot_token_id"])
        t, v = rng.choice([(4, struct.pack("<I", rng.choice([383, 384, 2**31, 2**32 - 1, 10**9]))),
                           (5, struct.pack("<i", -1)), (8, gguf_string("1")), (6, struct.pack("<f", 1.5)),
                           (10, struct.pack("<Q", 2**63)), (7, b"\x01")])
        gguf_set(g, key, t, v)
    elif m < 0.76:
        key = rng.choice(["tokenizer.ggml.add_bos_token", "tokenizer.ggml.add_eos_token",
                          "tokenizer.ggml.add_space_prefix"])
        gguf_set(g, key, *rng.choice([(7, b"\x02"), (4, struct.pack("<I", 1)), (8, gguf_string("true"))]))
    elif m < 0.84:
        gguf_set(g, "tokenizer.chat_template", 8, gguf_string(rng.choice(JINJA_BOMBS)))
    elif m < 0.94:
        key, t, fmt, values = rng.choice([
            ("llama.context_length", 4, "<I", [0, 1, 2, 3, 2**32 - 1]),
            ("llama.rope.dimension_count", 4, "<I", [0, 1, 2, 16, 31, 64, 2**31]),
            ("llama.attention.head_count_kv", 4, "<I", [0, 1, 3, 6, 12]),
            ("llama.attention.head_count", 4, "<I", [1, 2, 3, 12, 192]),
            ("llama.attention.key_length", 4, "<I", [0, 16, 32, 64, 33]),
            ("llama.attention.value_length", 4, "<I", [0, 16, 32, 64]),
            ("llama.rope.freq_base", 6, "<f", [0.0, -1.0, float("nan"), float("inf"), 1e-30]),
            ("llama.attention.layer_norm_rms_epsilon", 6, "<f", [0.0, -1.0, float("nan"), 1e30]),
            ("llama.rope.scaling.type", 8, None, ["linear", "yarn", "none", "llama3", ""]),
            ("llama.rope.scaling.factor", 6, "<f", [0.0, -1.0, 1e30, float("nan"), 4.0]),
            ("llama.vocab_size", 4, "<I", [0, 1, 383, 385, 2**32 - 1]),
            ("llama.block_count", 4, "<I", [0, 1, 3, 2**31]),
            ("llama.expert_count", 4, "<I", [0, 8]),
            ("general.architecture", 8, None, ["mistral", "qwen2", "gpt2", "", "llama\u0000"])])
        v = rng.choice(values)
        gguf_set(g, key, t, gguf_string(v) if fmt is None else struct.pack(fmt, v))
    else:
        # a tensor renamed, or two swapped
        i, j = rng.randrange(len(g["tensors"])), rng.randrange(len(g["tensors"]))
        if rng.random() < 0.5:
            g["tensors"][i][0], g["tensors"][j][0] = g["tensors"][j][0], g["tensors"][i][0]
        else:
            g["tensors"][i][0] = rng.choice(["output.weight", "blk.9.attn_q.weight", "rope_freqs.weight",
                                             "blk.0.attn_q.bias", "token_embd.weight", ""])


def case_gguf(rng, base, d):
    src = os.path.join(base, rng.choice(["model.gguf", "model-q8.gguf"]))
    g = gguf_read(src)
    path = os.path.join(d, "model.gguf")
    n_tensors = n_kv = None
    r = rng.random()
    if r < 0.4:
        mutate_gguf_meaning(rng, g)
        write_bytes(path, gguf_bytes(g))
    elif r < 0.5:
        raw = open(src, "rb").read()
        header_end = len(raw) - len(g["data"])
        write_bytes(path, mutate_bytes(rng, raw, (0, header_end) if rng.random() < 0.85 else None))
    else:
        for _ in range(rng.choice([1, 1, 2])):
            m = rng.random()
            if m < 0.35:
                # a scalar hyperparameter set to something else
                scalars = [i for i, (k, t, v) in enumerate(g["kv"]) if t in GGUF_SCALAR]
                i = rng.choice(scalars)
                key, t, _ = g["kv"][i]
                fmt = GGUF_SCALAR[t]
                value = rng.choice(WEIRD_NUMBERS)
                if fmt in ("<f", "<d"):
                    value = float(rng.choice([0, -1, 1e30, float("nan"), float("inf"), 1e-30, 1e300
                                              if fmt == "<d" else 1e38]))
                else:
                    bits = struct.calcsize(fmt) * 8
                    value = int(value) % (2**bits)
                    if fmt.islower() or fmt in ("<b", "<h", "<i", "<q"):
                        value = value - 2**bits if value >= 2**(bits - 1) else value
                try:
                    g["kv"][i] = (key, t, struct.pack(fmt, value))
                except struct.error:
                    pass
                if rng.random() < 0.2:   # the type changed as well
                    g["kv"][i] = (key, rng.choice([4, 5, 6, 8, 10, 12]), struct.pack("<Q", 2**40))
            elif m < 0.45:
                # an array's count, or a string's length, made huge or short
                arrays = [i for i, (k, t, v) in enumerate(g["kv"]) if t in (8, 9)]
                i = rng.choice(arrays)
                key, t, v = g["kv"][i]
                off = 4 if t == 9 else 0
                count = rng.choice([0, 1, 2**32, 2**62, 2**64 - 1, struct.unpack_from("<Q", v, off)[0] + 1])
                g["kv"][i] = (key, t, v[:off] + struct.pack("<Q", count) + v[off + 8:])
            elif m < 0.5:
                # an array's element type changed
                arrays = [i for i, (k, t, v) in enumerate(g["kv"]) if t == 9]
                if arrays:
                    i = rng.choice(arrays)
                    key, t, v = g["kv"][i]
                    g["kv"][i] = (key, t, struct.pack("<I", rng.choice([0, 5, 6, 7, 9, 12, 13, 2**31])) + v[4:])
            elif m < 0.58:
                # a key removed or duplicated
                i = rng.randrange(len(g["kv"]))
                if rng.random() < 0.6:
                    del g["kv"][i]
                else:
                    g["kv"].insert(i, g["kv"][i])
            elif m < 0.78:
                t = rng.choice(g["tensors"])
                sub = rng.random()
                if sub < 0.4:
                    j = rng.randrange(len(t[1]))
                    t[1][j] = rng.choice([0, 1, t[1][j] + 1, t[1][j] * 2, 2**32, 2**63, 2**64 - 1, 31, 33])
                elif sub < 0.55:
                    t[1] = rng.choice([[], [1], t[1] + [1], t[1] + [2], t[1][::-1], [1] * 5, [2] * 9])
                elif sub < 0.75:
                    t[2] = rng.choice([0, 1, 2, 3, 6, 7, 8, 10, 11, 12, 13, 14, 15, 16, 30, 31, 39, 2**31])
                else:
                    t[3] = rng.choice([0, 1, 31, 32, len(g["data"]), len(g["data"]) - 32, 2**63, 2**64 - 32])
            elif m < 0.86:
                i = rng.randrange(len(g["tensors"]))
                if rng.random() < 0.6:
                    del g["tensors"][i]
                else:
                    g["tensors"].append(list(g["tensors"][i]))
            elif m < 0.92:
                n_tensors = rng.choice([0, len(g["tensors"]) + 1, 2**32, 2**63, 2**64 - 1])
            elif m < 0.96:
                n_kv = rng.choice([0, len(g["kv"]) + 1, 2**40, 2**64 - 1])
            else:
                g["alignment"] = rng.choice([1, 3, 64])
                for i, (k, t, v) in enumerate(g["kv"]):
                    if k == "general.alignment":
                        g["kv"][i] = (k, 4, struct.pack("<I", rng.choice([0, 1, 3, 64, 2**31])))
        try:
            write_bytes(path, gguf_bytes(g, n_tensors, n_kv))
        except (struct.error, OverflowError):
            write_bytes(path, open(src, "rb").read())
    return model_command(rng, base, d, path, adapter=rng.choice([None, os.path.join(base, "adapter")])), []


def weird_record(rng):
    ids = rng.choice([[], [1], [1, 2, 3], [384], [383, 384], [-1, 5], [10**9], [2**63 - 1], [2**64], [1.5, 2],
                      ["a"], [None], [[1]], [1] * 5000, [True, False]])
    r = rng.random()
    if r < 0.35:
        rec = {"input_ids": ids}
        if rng.random() < 0.6:
            rec["labels"] = rng.choice([ids, ids[:-1], ids + [5], [-100] * len(ids), [384] * len(ids),
                                        [-101] * len(ids), [10**9] * len(ids), [-2**63] * len(ids), None, "x"])
        if rng.random() < 0.2:
            rec["attention_mask"] = rng.choice([[0] * len(ids), [2] * len(ids), []])
        return rec
    if r < 0.55:
        return rng.choice([
            {"messages": []}, {"messages": [{}]}, {"messages": [{"role": "user"}]},
            {"messages": [{"role": "assistant", "content": ""}]}, {"messages": [{"role": 5, "content": None}]},
            {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]},
            {"messages": [{"role": "user", "content": "x" * 200000}]}, {"messages": "hi"},
            {"messages": [{"role": "tool", "content": "x"}] * 3}, {"conversations": []},
            {"conversations": [{"from": "gpt"}]}, {"conversations": [{"from": "martian", "value": "x"}]},
            {"messages": [[1, 2]]}, {"messages": None}])
    if r < 0.75:
        return rng.choice([
            {"question": "", "answer": ""}, {"question": None, "answer": 5}, {"question": "q"}, {"answer": "a"},
            {"question": ["a"], "answer": {"b": 1}}, {"question": "\u0000" * 100, "answer": "\ud7ff"},
            {"question": "q" * 300000, "answer": "a"}, {"text": ""}, {"text": None}, {"text": 5},
            {"prompt": "p", "completion": "c", "text": "t"}, {}, {"instruction": "i"}])
    return rng.choice([[], [[]], 5, "x", None, True, 1e300, [{"text": "x"}]])


def case_data(rng, base, d):
    path = os.path.join(d, "train.jsonl")
    r = rng.random()
    if r < 0.55:
        lines = [json.dumps(weird_record(rng)) for _ in range(rng.choice([1, 2, 3, 8]))]
        if rng.random() < 0.5:
            lines += rng.choice([PRETOK, INSTR, CHAT]).splitlines()[:3]
        rng.shuffle(lines)
        text = ("\n" if rng.random() < 0.9 else "\r\n").join(lines).encode()
    elif r < 0.75:
        text = mutate_bytes(rng, rng.choice([PRETOK, INSTR, CHAT]).encode())
    elif r < 0.85:
        text = rng.choice([b"", b"\n\n\n", b"[", b"[]", b"{}", b"null", b"\xff\xfe\x00", bytes(range(256)) * 10,
                           b"[" * 100000 + b"]" * 100000, b'{"a":' * 50000 + b"1" + b"}" * 50000,
                           b'{"input_ids": [' + b"1," * 500000 + b"1]}", b"\x00" * 10000,
                           b'{"text": "' + b"\\ud800" * 1000 + b'"}', b"\xef\xbb\xbf" + PRETOK.encode(),
                           b'{"input_ids": [1e400]}', b'{"input_ids": [-0]}', b'{"input_ids": [1]} trailing',
                           b'{"input_ids": [1], "input_ids": [2]}'])
    else:
        text = json.dumps([weird_record(rng) for _ in range(3)]).encode()
    write_bytes(path, text)
    model = os.path.join(base, rng.choice(["model", "model", "model.gguf", "bnb"]))
    fields = rng.choice([[], ["--prompt-field", "question", "--completion-field", "answer"], ["--packing"],
                         ["--train-on-inputs"], ["--dataset-text-field", "question"]])
    seq = rng.choice(["16", "16", "1", "2", "4"])
    if rng.random() < 0.5 and "--packing" not in fields:
        return ["eval", "--model", model, "--data", path, "--max-seq-length", seq] + fields, [path]
    extra = rng.choice([[], ["--validation-split", "0.5"], ["--eval-data", path], ["--num-train-epochs", "1"]])
    if "--num-train-epochs" not in extra:
        extra += ["--max-steps", "1"]
    return ["train", "--model", model, "--data", path, "--output-dir", os.path.join(d, "out"), "--batch-size",
            rng.choice(["1", "2", "3"]), "--max-seq-length", seq, "--lora-r", "2"] + fields + extra, [path]


RECIPE_KEYS = {
    "per_device_train_batch_size": 2, "per_device_eval_batch_size": 2, "gradient_accumulation_steps": 1,
    "learning_rate": 2e-4, "num_train_epochs": 1, "max_steps": 1, "logging_steps": 1, "eval_steps": 1,
    "save_steps": 1, "save_total_limit": 1, "optim": "adamw", "lr_scheduler_type": "linear", "warmup_steps": 0,
    "warmup_ratio": 0.1, "weight_decay": 0.0, "max_grad_norm": 1.0, "seed": 1, "gradient_checkpointing": True,
    "bf16": False, "fp16": False, "r": 4, "lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.1,
    "target_modules": ["q_proj"], "use_rslora": True, "bnb_4bit_quant_type": "nf4",
    "bnb_4bit_use_double_quant": True, "bnb_4bit_compute_dtype": "bfloat16", "max_seq_length": 16,
    "packing": True, "eval_strategy": "steps", "save_strategy": "steps", "load_best_model_at_end": True,
    "metric_for_best_model": "eval_loss", "early_stopping_patience": 1, "early_stopping_threshold": 0.0,
    "validation_split": 0.5, "train_file": "pretok.jsonl", "validation_file": "pretok.jsonl",
    "output_dir": "out", "model_name_or_path": "model", "report_to": "none", "logging_dir": "logs",
    "offload_checkpoints": False, "roles_to_train": ["assistant"], "train_on_eos": "turn", "shuffle": False,
    "dataset_text_field": "text", "prompt_field": "question", "completion_field": "answer",
    "train_on_inputs": False, "resume_from_checkpoint": "latest", "overwrite_output_dir": True, "bias": "none",
    "lora_bias": False, "load_in_4bit": True,
}
YAML_WEIRD = ["-1", "0", "1e30", ".inf", "-.inf", ".nan", "1e300", "9223372036854775808", "-9223372036854775809",
              "0x7fffffffffffffff", "0o777", "1_000", "1:30:00", "~", "null", "''", "[]", "{}", "[1, 2]",
              "{a: 1}", "yes", "no", "on", "off", "'1'", "\"nan\"", "!!binary aGVsbG8=", "!!float 1",
              "!!int 1e3", "*nope", "&a 1", "2001-12-14", "|\n  multi\n  line", ">-\n  folded", "1.5", "-0.5",
              "  ", "!!python/object:x {}", "[" * 200 + "]" * 200, "0.0000001", "'a' # c", "\"\\ud800\""]


def case_recipe(rng, base, d):
    keys = dict(RECIPE_KEYS)
    lines = []
    chosen = rng.sample(list(keys), rng.randrange(1, 8))
    base_text = RECIPE if rng.random() < 0.7 else ""
    for key in chosen:
        v = rng.choice(YAML_WEIRD) if rng.random() < 0.7 else json.dumps(keys[key])
        lines.append("%s: %s" % (key, v))
    text = base_text + "\n".join(lines) + "\n"
    r = rng.random()
    if r < 0.1:
        text = "a: &a [x, y]\n" + "".join("%s: &%s [*%s, *%s, *%s, *%s]\n" % (chr(98 + i), chr(98 + i),
                                          chr(97 + i), chr(97 + i), chr(97 + i), chr(97 + i)) for i in range(20))
    elif r < 0.15:
        text = RECIPE + "target_modules: " + "[" * rng.choice([100, 1000, 50000]) + "]" * 10
    elif r < 0.2:
        text = RECIPE + "x:\n" + "".join("  " * i + "- \n" for i in range(rng.choice([100, 3000])))
    elif r < 0.3:
        text = mutate_bytes(rng, text.encode()).decode(errors="replace")
    elif r < 0.35:
        text = json.dumps(mutate_tree(rng, dict((k, RECIPE_KEYS[k]) for k in rng.sample(list(RECIPE_KEYS), 6))),
                          allow_nan=True)
    ext = ".json" if text.lstrip().startswith("{") and rng.random() < 0.8 else rng.choice([".yaml", ".yml", ""])
    path = os.path.join(d, "recipe" + ext)
    with open(path, "w") as f:
        f.write(text)
    for name in ["pretok.jsonl"]:
        shutil.copy(os.path.join(base, name), d)
    os.symlink(os.path.join(base, "model"), os.path.join(d, "model"))
    argv = ["train", "--config", path]
    if rng.random() < 0.7:
        argv += ["--model", os.path.join(base, "model")]
    if rng.random() < 0.7:
        argv += ["--data", os.path.join(d, "pretok.jsonl")]
    if rng.random() < 0.8:
        argv += ["--output-dir", os.path.join(d, "out")]
    return argv, [os.path.join(d, "pretok.jsonl")]


TRAIN_FLAGS = {
    "--batch-size": ["1", "2"], "--gradient-accumulation-steps": ["1", "2"], "--max-steps": ["1", "2"],
    "--num-train-epochs": ["0.1", "1"], "--learning-rate": ["1e-3"], "--weight-decay": ["0.1"],
    "--optim": ["adamw", "adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit"],
    "--lr-scheduler": ["constant", "linear", "cosine"], "--warmup-steps": ["1"], "--warmup-ratio": ["0.5"],
    "--max-grad-norm": ["0", "1"], "--logging-steps": ["1"], "--eval-steps": ["1"], "--save-steps": ["1"],
    "--save-total-limit": ["1"], "--eval-strategy": ["steps", "epoch", "no"],
    "--save-strategy": ["steps", "epoch", "no"], "--load-best-model-at-end": None,
    "--early-stopping-patience": ["1"], "--early-stopping-threshold": ["0.1"], "--seed": ["1"],
    "--gradient-checkpointing": None, "--offload-checkpoints": ["true", "false"], "--lora-r": ["1", "8"],
    "--lora-alpha": ["1", "16"], "--lora-dropout": ["0.1"], "--target-modules": ["qv", "all", "q_proj,o_proj"],
    "--use-rslora": None, "--validation-split": ["0.25"], "--max-seq-length": ["8", "16"], "--packing": None,
    "--train-on-inputs": None, "--no-shuffle": None, "--report-to": ["none", "tensorboard"],
    "--logging-dir": ["logs"], "--quant-type": ["nf4", "fp4"], "--double-quant": ["true", "false"],
    "--compute-dtype": ["fp32", "bf16", "fp16"], "--device": ["cpu", "cuda", "auto"], "--devices": ["1", "2"],
    "--prompt-field": ["question"], "--completion-field": ["answer"], "--dataset-text-field": ["text"],
    "--roles-to-train": ["assistant", "user"], "--train-on-eos": ["turn", "last", "all", "none"],
    "--overwrite-output-dir": None, "--metric-for-best-model": ["eval_loss"], "--nnodes": ["1"],
    "--node-rank": ["0"], "--rendezvous": ["file:/tmp/x"], "--eval-data": None, "--resume-from-checkpoint": None,
    "--init-adapter": None, "--bogus-flag": ["1"],
}
COMMAND_FLAGS = {
    "eval": {"--batch-size": ["1"], "--limit": ["1", "2"], "--json": None, "--max-seq-length": ["8"],
             "--base-weights": ["auto", "4bit", "file"], "--packing": None, "--train-on-inputs": None,
             "--quant-type": ["fp4"], "--double-quant": ["false"], "--compute-dtype": ["bf16"],
             "--device": ["cpu"], "--roles-to-train": ["user"], "--prompt-field": ["question"]},
    "generate": {"--max-new-tokens": ["1", "3"], "--temperature": ["0", "0.7", "2"], "--top-p": ["0.5", "1"],
                 "--seed": ["1"], "--batch-size": ["1", "8"], "--chat": None, "--limit": ["1"],
                 "--base-weights": ["auto", "4bit", "file"], "--compute-dtype": ["fp16"], "--device": ["cpu"],
                 "--quant-type": ["fp4"]},
    "merge": {"--dtype": ["bf16", "f16", "f32"], "--onto": ["dequantized", "original"],
              "--max-shard-size": ["1000", "100000000"], "--device": ["cpu"]},
    "export": {"--type": ["f16", "bf16", "f32", "q8_0"], "--embedding-type": ["f32", "f16", "bf16", "q8_0"],
               "--onto": ["dequantized", "original"], "--adapter-only": None, "--check": ["auto", "never"],
               "--format": ["gguf", "safetensors"], "--max-seq-length": ["8"], "--device": ["cpu"]},
    "quantize": {"--quant-type": ["nf4", "fp4"], "--double-quant": ["true", "false"],
                 "--blocksize": ["32", "64", "4096"], "--compute-dtype": ["bf16", "fp32", "fp16"],
                 "--device": ["cpu"]},
    "info": {"--quant-type": ["nf4", "fp4"], "--double-quant": ["true", "false"], "--dot": None},
    "bench": {"--batch-size": ["1"], "--max-seq-length": ["4", "8"], "--steps": ["1"], "--warmup": ["0"],
              "--target-modules": ["qv", "all"], "--lora-dropout": ["0"], "--no-ckpt": None,
              "--offload-checkpoints": ["true", "false"], "--layers": ["1"], "--generate": ["1", "2"],
              "--compute-dtype": ["fp32", "bf16"], "--devices": ["1"]},
    "plan": {"--batch-size": ["1", "4"], "--max-seq-length": ["8", "512"], "--target-modules": ["qv", "all"],
             "--lora-dropout": ["0"], "--no-ckpt": None, "--offload-checkpoints": ["true", "false"],
             "--optim": ["adamw", "paged_adamw_8bit"], "--gpu-memory": ["8", "80"], "--json": None,
             "--layers": ["1"], "--compute-dtype": ["bf16"], "--shape": ["smollm2-135m", "llama2-7b", "x"]},
    "tokenize": {"--add-special-tokens": None},
    "bench-quantize": {"--rows": ["64", "128"], "--cols": ["64", "256"], "--repeats": ["1"]},
    "bench-gemm": {"--rows": ["8"], "--seq": ["8"], "--rank": ["4"], "--rounds": ["1"], "--seconds": ["0.01"]},
}


def case_flags(rng, base, d):
    model = os.path.join(base, rng.choice(["model", "model", "bnb", "model.gguf"]))
    adapter = os.path.join(base, "adapter")
    data = os.path.join(base, rng.choice(["pretok.jsonl", "chat.jsonl", "instr.jsonl"]))
    out = os.path.join(d, "out")
    command = rng.choice(["train", "train", "train"] + list(COMMAND_FLAGS))
    count = rng.choice([1, 2, 3, 5])
    if command == "train":
        specs = dict(TRAIN_FLAGS)
        specs["--eval-data"] = [data]
        specs["--resume-from-checkpoint"] = [os.path.join(base, "run", "checkpoint-1"), "latest"]
        specs["--init-adapter"] = [adapter]
        argv = ["train", "--model", model, "--data", data, "--output-dir", out]
        flags = pick_flags(rng, specs, count)
        if "--max-steps" not in flags and "--num-train-epochs" not in flags:
            argv += ["--max-steps", "1"]
        if "--max-seq-length" not in flags:
            argv += ["--max-seq-length", "16"]
        if "--batch-size" not in flags:
            argv += ["--batch-size", "2"]
        if "--lora-r" not in flags and "--init-adapter" not in flags:
            argv += ["--lora-r", "2"]
        return argv + flags, [data]
    flags = pick_flags(rng, COMMAND_FLAGS[command], count)
    if command == "eval":
        argv = ["eval", "--model", model, "--data", data] + (["--limit", "2"] if "--limit" not in flags else [])
        if "--max-seq-length" not in flags:
            argv += ["--max-seq-length", "16"]
        argv += rng.choice([[], ["--adapter", adapter]])
    elif command == "generate":
        argv = ["generate", "--model", model] + rng.choice([["--prompt", rng.choice(
            ["the river", "", "x" * 3000, "\u0001\u007f", "<s><s></s>", "\ud7ff\ue000"])],
            ["--prompts-from", os.path.join(base, "prompts.jsonl")]])
        if "--max-new-tokens" not in flags:
            argv += ["--max-new-tokens", "2"]
        argv += rng.choice([[], ["--adapter", adapter]])
    elif command == "merge":
        argv = ["merge", "--model", model, "--adapter", adapter, "--output", out]
    elif command == "export":
        argv = ["export", "--model", model, "--adapter", adapter, "--output", out + ".gguf"]
        if "--check" not in flags:
            argv += ["--check", "never"]
    elif command == "quantize":
        argv = ["quantize", "--model", os.path.join(base, "model"), "--output", out]
    elif command == "info":
        argv = ["info", model] + rng.choice([[], ["--adapter", adapter]])
        flags = [os.path.join(d, "g.dot") if f is None else f for f in flags]
        if "--dot" in flags:
            flags.insert(flags.index("--dot") + 1, os.path.join(d, "g.dot"))
    elif command in ("bench", "plan"):
        argv = [command] + rng.choice([["--model-config", os.path.join(base, "model", "config.json")],
                                       ["--model", model], []])
        if command == "bench":
            argv += ["--device", "cpu"]
            for f, v in [("--steps", "1"), ("--warmup", "0"), ("--max-seq-length", "8"), ("--batch-size", "1")]:
                if f not in flags:
                    argv += [f, v]
            if "--model-config" not in argv and "--model" not in argv:
                argv += ["--layers", "1"]
    elif command == "tokenize":
        argv = ["tokenize", "--tokenizer", model if model.endswith(".gguf") else os.path.join(base, "model"),
                "--input", rng.choice([data, os.path.join(base, "tokenize-input.jsonl")])]
    elif command == "bench-quantize":
        argv = ["bench-quantize"]
        for f, v in [("--rows", "64"), ("--cols", "64"), ("--repeats", "1")]:
            if f not in flags:
                argv += [f, v]
    else:
        argv = ["bench-gemm"]
        for f, v in [("--rows", "8"), ("--seq", "8"), ("--rank", "4"), ("--rounds", "1"), ("--seconds", "0.01")]:
            if f not in flags:
                argv += [f, v]
    if rng.random() < 0.1:
        flags += flags[:2]          # repeated flags
    return argv + flags, [data]


def case_checkpoint(rng, base, d):
    run = os.path.join(d, "run")
    eight = rng.random() < 0.5
    copy_tree(os.path.join(base, "run8" if eight else "run"), run)
    ckpt = os.path.join(run, rng.choice(["checkpoint-1", "checkpoint-2"]))
    files = sorted(os.listdir(ckpt))
    name = rng.choice(files)
    path = os.path.join(ckpt, name)
    r = rng.random()
    if r < 0.15:
        os.remove(path)
    elif name.endswith(".json") and r < 0.7:
        try:
            value = json.load(open(path))
            with open(path, "w") as f:
                f.write(dumps(mutate_tree(rng, value)))
        except ValueError:
            write_bytes(path, mutate_bytes(rng, open(path, "rb").read()))
    elif name.endswith(".safetensors") and r < 0.45:
        # one tensor of a consistent file resized or retyped
        header, data = st_read(path)
        names = [k for k in header if k != "__metadata__"]
        k = rng.choice(names)
        n = header[k]["shape"][0] if header[k]["shape"] else 1
        header, data = st_resized(header, data, k, count=rng.choice([None, 0, 1, n // 2, n - 1, n + 1, 2 * n]),
                                  dtype=rng.choice([None, None, "U8", "F16", "BF16", "I64"]))
        write_bytes(path, st_bytes(header, data))
    elif name.endswith(".safetensors") and r < 0.7:
        header, data = st_read(path)
        names = [k for k in header if k != "__metadata__"]
        if names:
            k = rng.choice(names)
            m = rng.random()
            if m < 0.3:
                del header[k]
            elif m < 0.6:
                header[k]["shape"] = [max(0, s + rng.choice([-1, 1, s])) for s in header[k]["shape"]]
            elif m < 0.8:
                header[k]["dtype"] = rng.choice(["F16", "U8", "I64", "BF16"])
            else:
                lo, hi = header[k]["data_offsets"]
                data = data[:lo] + bytes(hi - lo) + data[hi:] if rng.random() < 0.5 else data[:max(0, hi - 3)]
        write_bytes(path, st_bytes(header, data))
    else:
        raw = open(path, "rb").read()
        write_bytes(path, mutate_bytes(rng, raw) if rng.random() < 0.7 else raw[:rng.randrange(len(raw) + 1)])
    data = os.path.join(d, "train.jsonl")
    lines = PRETOK.splitlines()
    write_bytes(data, ("\n".join(lines[:rng.choice([1, 8, 8, 8, 8])]) + "\n").encode())
    argv = ["train", "--model", os.path.join(base, "model"), "--data", data, "--output-dir", run,
            "--resume-from-checkpoint", rng.choice([ckpt, "latest"]), "--batch-size", rng.choice(["2", "1", "4"]),
            "--max-seq-length", "16", "--max-steps", rng.choice(["3", "2", "1"])]
    argv += ["--lora-r", "32", "--target-modules", "q_proj", "--optim", "adamw_8bit"] if eight else \
        ["--lora-r", "4", "--target-modules", "q_proj,v_proj"]
    if rng.random() < 0.3:
        argv += rng.choice([["--optim", "adamw"], ["--lora-r", "8"], ["--seed", "5"], ["--save-steps", "1"],
                            ["--gradient-accumulation-steps", "2"], ["--packing"]])
    return argv, [data]


def case_plot(rng, base, d):
    run = os.path.join(d, "run")
    os.makedirs(run)
    src = open(os.path.join(base, "run", "metrics.jsonl"), "rb").read()
    r = rng.random()
    if r < 0.4:
        lines = [json.loads(l) for l in src.splitlines() if l.strip()]
        lines = [mutate_tree(rng, l) if rng.random() < 0.5 else l for l in lines]
        text = "\n".join(dumps(l).replace("\n", "") for l in lines).encode()
    elif r < 0.6:
        text = b"".join(json.dumps({"step": rng.choice(WEIRD_NUMBERS), "loss": rng.choice(WEIRD_NUMBERS + [
            float("nan"), float("inf")]), "eval_loss": rng.choice([1.0, float("inf"), -1e300])},
            allow_nan=True).encode() + b"\n" for _ in range(rng.choice([1, 2, 500])))
    else:
        text = mutate_bytes(rng, src)
    write_bytes(os.path.join(run, "metrics.jsonl"), text)
    return ["plot", run], []


def case_lost_file(rng, base, d):
    """Outputs pointed at inputs: nothing given as input may change."""
    model = os.path.join(d, "model")
    copy_tree(os.path.join(base, "model"), model)
    adapter = os.path.join(d, "adapter")
    copy_tree(os.path.join(base, "adapter"), adapter)
    data = os.path.join(d, "pretok.jsonl")
    shutil.copy(os.path.join(base, "pretok.jsonl"), data)
    gguf = os.path.join(d, "model.gguf")
    shutil.copy(os.path.join(base, "model.gguf"), gguf)
    c = rng.choice(["quantize", "merge", "export", "train", "info", "tokenize"])
    base_model = rng.choice([model, gguf])
    target = rng.choice([model, adapter, data, gguf, os.path.join(model, "model.safetensors"),
                         os.path.join(model, "config.json"), os.path.join(adapter, "adapter_model.safetensors"),
                         os.path.join(model, "sub"), d, model + "/"])
    # the inputs of each command: what must not change
    if c == "quantize":
        argv, watched = ["quantize", "--model", model, "--output", target], [model]
    elif c == "merge":
        argv = ["merge", "--model", base_model, "--adapter", adapter, "--output", target]
        watched = [base_model, adapter]
    elif c == "export":
        argv = ["export", "--format", "gguf", "--model", base_model, "--adapter", adapter,
                "--output", target, "--check", "never"] + rng.choice([[], ["--adapter-only"]])
        watched = [base_model, adapter]
    elif c == "train":
        start = rng.choice([[], ["--init-adapter", adapter]])
        argv = ["train", "--model", base_model, "--data", data, "--output-dir", target, "--max-steps", "1",
                "--max-seq-length", "16", "--batch-size", "1"] + (start or ["--lora-r", "2"]) + \
            rng.choice([[], ["--overwrite-output-dir"], ["--report-to", "tensorboard", "--logging-dir", target]])
        watched = [base_model, data] + ([adapter] if start else [])
    elif c == "info":
        start = rng.choice([[], ["--adapter", adapter]])
        argv, watched = ["info", base_model, "--dot", target] + start, [base_model] + ([adapter] if start else [])
    else:
        argv, watched = ["tokenize", "--tokenizer", base_model, "--input", target], [base_model]
    return argv, watched


def f32_values(rng, n, style):
    if style == "normal":
        return [rng.gauss(0, 0.05) for _ in range(n)]
    if style == "zeros":
        return [0.0] * n
    if style == "huge":
        return [rng.choice([-1, 1]) * rng.choice([1e30, 3e38, 6e4]) for _ in range(n)]
    if style == "tiny":
        return [rng.choice([-1, 1]) * 1e-40 for _ in range(n)]
    specials = [float("nan"), float("inf"), -float("inf")]
    return [rng.choice(specials) if rng.random() < 0.1 else rng.gauss(0, 0.05) for _ in range(n)]


def tensor_bytes(values, dtype):
    raw = struct.pack("<%df" % len(values), *values)
    if dtype == "F32":
        return raw
    if dtype == "F16":
        out = b""
        for v in values:
            try:
                out += struct.pack("<e", v)
            except (OverflowError, struct.error):
                out += struct.pack("<e", float("inf") if v > 0 else -float("inf"))
        return out
    words = struct.unpack("<%dI" % len(values), raw)     # BF16: the top half of each float32
    return struct.pack("<%dH" % len(values), *[w >> 16 for w in words])


def case_synthetic(rng, base, d):
    """A model of an unusual but self-consistent shape, written from scratch (config and weights agree)."""
    heads = rng.choice([1, 1, 2, 3, 4])
    kv = rng.choice([h for h in range(1, heads + 1) if heads % h == 0])
    head_dim = rng.choice([2, 4, 6, 8, 16, 30])
    hidden = rng.choice([2, 4, 6, 8, 30, 64, 66, heads * head_dim])
    inter = rng.choice([1, 2, 3, 7, 64, 65])
    vocab = rng.choice([384, 384, 384, 1, 2, 3, 5, 390])
    layers = rng.choice([1, 1, 2])
    tie = rng.random() < 0.3
    dtype = rng.choice(["F32", "BF16", "F16"])
    style = rng.choice(["normal"] * 5 + ["zeros", "huge", "tiny", "special"])
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": hidden,
              "intermediate_size": inter, "num_attention_heads": heads, "num_key_value_heads": kv,
              "head_dim": head_dim, "num_hidden_layers": layers, "vocab_size": vocab,
              "max_position_embeddings": rng.choice([1, 2, 3, 8, 16, 256]), "rms_norm_eps": rng.choice(
                  [1e-5, 1e-5, 1e-5, 1e-5, 0.0, 1.0, 1e-30]), "tie_word_embeddings": tie, "bos_token_id": 1,
              "eos_token_id": 2, "torch_dtype": {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}[dtype],
              "rope_theta": rng.choice([10000.0, 10000.0, 1.0, 1e-30, 1e30, 0.5])}
    if rng.random() < 0.3:
        config["rope_scaling"] = rng.choice([
            {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
             "original_max_position_embeddings": rng.choice([1, 2, 8, 8192])},
            {"rope_type": "linear", "factor": rng.choice([0.5, 1.0, 4.0, 1e-30, 1e30])}])
    shapes = [("model.embed_tokens.weight", [vocab, hidden]), ("model.norm.weight", [hidden])]
    if not tie:
        shapes.append(("lm_head.weight", [vocab, hidden]))
    for i in range(layers):
        p = "model.layers.%d." % i
        shapes += [(p + "input_layernorm.weight", [hidden]), (p + "post_attention_layernorm.weight", [hidden]),
                   (p + "self_attn.q_proj.weight", [heads * head_dim, hidden]),
                   (p + "self_attn.k_proj.weight", [kv * head_dim, hidden]),
                   (p + "self_attn.v_proj.weight", [kv * head_dim, hidden]),
                   (p + "self_attn.o_proj.weight", [hidden, heads * head_dim]),
                   (p + "mlp.gate_proj.weight", [inter, hidden]), (p + "mlp.up_proj.weight", [inter, hidden]),
                   (p + "mlp.down_proj.weight", [hidden, inter])]
    header, data = {"__metadata__": {"format": "pt"}}, b""
    for name, shape in shapes:
        n = 1
        for s in shape:
            n *= s
        values = [1.0] * n if name.endswith("norm.weight") and style == "normal" else f32_values(rng, n, style)
        blob = tensor_bytes(values, dtype)
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(blob)]}
        data += blob
    model = os.path.join(d, "model")
    os.makedirs(model)
    write_json(os.path.join(model, "config.json"), config)
    write_bytes(os.path.join(model, "model.safetensors"), st_bytes(header, data))
    if vocab >= 384:
        shutil.copy(os.path.join(base, "model", "tokenizer.json"), model)
        shutil.copy(os.path.join(base, "model", "tokenizer_config.json"), model)
    pretok = os.path.join(d, "pretok.jsonl")
    with open(pretok, "w") as f:
        for _ in range(4):
            ids = [rng.randrange(vocab) for _ in range(rng.choice([2, 3, 9, 20]))]
            f.write(json.dumps({"input_ids": ids}) + "\n")
    c = rng.random()
    if c < 0.2:
        return ["generate", "--model", model, "--prompt", "the river", "--max-new-tokens", "4", "--temperature",
                rng.choice(["0", "0.8", "1e-20", "100"]), "--top-p", rng.choice(["1", "0.5", "1e-30"])] + \
            rng.choice([[], ["--base-weights", "file"], ["--base-weights", "4bit"]]), []
    if c < 0.3:
        return ["quantize", "--model", model, "--output", os.path.join(d, "q"), "--blocksize",
                rng.choice(["32", "64", "4096"])] + rng.choice([[], ["--quant-type", "fp4"]]), []
    if c < 0.55:
        return ["train", "--model", model, "--data", pretok, "--output-dir", os.path.join(d, "out"), "--max-steps",
                "2", "--batch-size", rng.choice(["1", "2"]), "--max-seq-length", rng.choice(["2", "4", "16"]),
                "--lora-r", rng.choice(["1", "2", "8"]), "--target-modules", rng.choice(["all", "qv"])] + \
            rng.choice([[], ["--packing"], ["--gradient-checkpointing"], ["--optim", "adamw_8bit"],
                        ["--quant-type", "fp4"], ["--double-quant", "false"], ["--compute-dtype", "bf16"],
                        ["--compute-dtype", "fp16"], ["--lora-dropout", "0.5"], ["--validation-split", "0.5"]]), []
    if c < 0.7:
        # the shape alone, random weights: bench's training step or generation, and plan's memory
        argv = [rng.choice(["bench", "bench", "plan"]), "--model-config", os.path.join(model, "config.json"),
                "--batch-size", rng.choice(["1", "2"]), "--max-seq-length", rng.choice(["1", "2", "4", "8"]),
                "--target-modules", rng.choice(["all", "qv", "o_proj"])] + \
            rng.choice([[], ["--no-ckpt"], ["--lora-dropout", "0.5"], ["--compute-dtype", "bf16"]])
        if argv[0] == "bench":
            argv += ["--device", "cpu"] + rng.choice([["--steps", "1", "--warmup", "0"]] * 2 + [
                ["--generate", rng.choice(["1", "3"])]])
            if "--generate" in argv:
                argv = [a for a in argv if a not in ("--no-ckpt", "--lora-dropout", "0.5")]
        return argv, []
    return model_command(rng, base, d, model, data=pretok), []


def case_sharded(rng, base, d):
    """A sharded model folder (merge's output with small shards) whose index or shards are changed."""
    model = os.path.join(d, "model")
    copy_tree(os.path.join(base, "sharded"), model)
    index_path = os.path.join(model, "model.safetensors.index.json")
    index = json.load(open(index_path))
    shards = sorted(set(index["weight_map"].values()))
    r = rng.random()
    if r < 0.5:
        wm = index["weight_map"]
        name = rng.choice(list(wm))
        m = rng.random()
        if m < 0.2:
            del wm[name]
        elif m < 0.5:
            wm[name] = rng.choice(shards + ["", ".", "..", "missing.safetensors", "config.json", "/etc/passwd",
                                            "model.safetensors.index.json", "a/b", 5, None])
        elif m < 0.7:
            wm["model.layers.9.mlp.up_proj.weight"] = rng.choice(shards)
        else:
            index = mutate_tree(rng, index)
        with open(index_path, "w") as f:
            f.write(dumps(index))
    elif r < 0.7:
        os.remove(os.path.join(model, rng.choice(shards)))
    elif r < 0.85:
        shard = os.path.join(model, rng.choice(shards))
        raw = open(shard, "rb").read()
        write_bytes(shard, mutate_bytes(rng, raw) if rng.random() < 0.5 else raw[:rng.randrange(len(raw))])
    else:
        shutil.copy(os.path.join(base, "model", "model.safetensors"), model)   # both forms in one folder
    return model_command(rng, base, d, model, adapter=rng.choice([None, os.path.join(base, "adapter")])), []


def case_scale(rng, base, d):
    """Large but well-formed inputs whose cost must stay about linear in their size: a long conversation, many
    or long added tokens, long words, many records, a long prompt."""
    model = os.path.join(d, "model")
    copy_tree(os.path.join(base, "model"), model)
    data = os.path.join(d, "data.jsonl")
    c = rng.choice(["conversation", "added", "long-added", "word", "records", "prompt", "merges"])
    if c == "conversation":
        n = rng.choice([2000, 8000, 30000])
        messages = [{"role": "user" if i % 2 == 0 else "assistant", "content": "a"} for i in range(n)]
        write_bytes(data, (json.dumps({"messages": messages}) + "\n").encode())
        return ["eval", "--model", model, "--data", data, "--max-seq-length", "16"], []
    if c in ("added", "long-added"):
        tok = json.load(open(os.path.join(model, "tokenizer.json")))
        if c == "added":
            k = rng.choice([20000, 80000])
            tok["added_tokens"] += [{"id": 3 + i % 380, "content": "tok%d" % i, "special": False} for i in range(k)]
            text = "tok1 ab tok19999 " * 20000
        else:
            n = rng.choice([1000, 100000])
            tok["added_tokens"].append({"id": 5, "content": "a" * n, "special": True})
            text = ("a" * (n - 1) + "b") * max(1, 300000 // n)
        write_json(os.path.join(model, "tokenizer.json"), tok)
        write_bytes(data, (json.dumps({"text": text}) + "\n").encode())
        return ["tokenize", "--tokenizer", model, "--input", data], []
    if c == "word":
        text = rng.choice(["a" * 1000000, "the" * 300000, "\u00e9" * 500000, " " * 1000000, "1" * 1000000])
        write_bytes(data, (json.dumps({"text": text}) + "\n").encode())
        return ["tokenize", "--tokenizer", model, "--input", data], []
    if c == "records":
        write_bytes(data, ("".join(json.dumps({"input_ids": [1, 5, 9, 3]}) + "\n" for _ in range(200000))).encode())
        return ["eval", "--model", model, "--data", data, "--limit", "2"], []
    if c == "prompt":
        return ["generate", "--model", model, "--prompt", "the river " * 10000, "--max-new-tokens", "2"], []
    tok = json.load(open(os.path.join(model, "tokenizer.json")))
    tok["model"]["merges"] = tok["model"]["merges"] * 2000          # repeated merges
    write_json(os.path.join(model, "tokenizer.json"), tok)
    return ["tokenize", "--tokenizer", model, "--input", os.path.join(base, "tokenize-input.jsonl")], []


def case_environment(rng, base, d):
    """Launcher variables (torchrun's, Slurm's) and library settings with odd values."""
    env = {}
    for key in rng.sample(["RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "LOCAL_WORLD_SIZE",
                           "CUDA_VISIBLE_DEVICES", "QLORA_GEMM", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                           "QLORA_SHARED", "HOME", "TMPDIR"], rng.choice([1, 2, 3, 5])):
        env[key] = rng.choice(["0", "1", "2", "-1", "", "abc", "65536", "99999999999999999999", "1e3", "0x1",
                               "localhost", "::1", "256.0.0.1", "ours", "cblas", "/nonexistent", " 1"])
    argv, watched = case_flags(rng, base, d)
    return argv, watched, env


KINDS = {
    "sharded": case_sharded, "environment": case_environment, "scale": case_scale,
    "synthetic": case_synthetic,
    "config": case_config, "safetensors": case_safetensors, "quant_state": case_quant_state,
    "adapter": case_adapter, "tokenizer": case_tokenizer, "chat_template": case_chat_template, "gguf": case_gguf,
    "data": case_data, "recipe": case_recipe, "flags": case_flags, "checkpoint": case_checkpoint,
    "plot": case_plot, "lost_file": case_lost_file,
}


# ---------------------------------------------------------------------------------------------------------------
# Running and classifying


def fingerprint(paths):
    out = {}
    for p in paths:
        if os.path.isdir(p):
            for root, _, files in os.walk(p):
                for f in files:
                    q = os.path.join(root, f)
                    out[q] = hashlib.sha256(open(q, "rb").read()).hexdigest()
        elif os.path.exists(p):
            out[p] = hashlib.sha256(open(p, "rb").read()).hexdigest()
    return out


CRASH_MARKS = ["Fatal error", "Segmentation", "Illegal instruction", "Bus error", "Trace/breakpoint",
               "Stack dump", "Current stack trace", "💣", "Aborted", "double free", "malloc(): ",
               "Could not allocate", "failed to allocate"]


def classify(rc, out, err):
    text = out + err
    if rc is None:
        return "hang"
    if rc < 0 or rc >= 128 or any(m in text for m in CRASH_MARKS):
        return "crash"
    if rc == 0:
        return "ok"
    return "error" if err.strip() else "crash"   # a failure with nothing said is a finding too


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--binary", default=os.path.join(REPO, ".build", "release", "qlora"))
    ap.add_argument("--work", default="/tmp/qlora-fuzz")
    ap.add_argument("--seed", type=int, default=12)
    ap.add_argument("--cases", type=int, default=40, help="cases per kind")
    ap.add_argument("--kinds", default=",".join(KINDS))
    ap.add_argument("--timeout", type=float, default=40)
    ap.add_argument("--memory-gib", type=float, default=8)
    ap.add_argument("--only", help="run one case, KIND-N")
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args()
    runner = Runner(args)
    os.makedirs(args.work, exist_ok=True)
    base = build_base(runner, args.work)
    with open(os.path.join(base, "tokenize-input.jsonl"), "w") as f:
        f.write('{"text": "the river rose"}\n{"text": ""}\n{"text": "\\u00e9\\ud83d\\ude00 <s>"}\n')
    findings = os.path.join(args.work, "findings")
    os.makedirs(findings, exist_ok=True)
    cases = []
    if args.only:
        kind, n = args.only.rsplit("-", 1)
        cases = [(kind, int(n))]
    else:
        for kind in args.kinds.split(","):
            cases += [(kind, n) for n in range(args.cases)]
    tally = {}
    started = time.time()
    for kind, n in cases:
        rng = random.Random("%d-%s-%d" % (args.seed, kind, n))
        d = os.path.join(args.work, "cases", "%s-%d" % (kind, n))
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        try:
            made = KINDS[kind](rng, base, d)
        except Exception as e:      # a mutation this script cannot write (a bug here, not in qlora): skipped
            print("%-14s %4d skipped: the case could not be made (%s: %s)" % (kind, n, type(e).__name__, e))
            tally.setdefault(kind, {}).setdefault("skipped", 0)
            tally[kind]["skipped"] += 1
            continue
        argv, watched, env = made if len(made) == 3 else made + ({},)
        before = fingerprint(watched)
        rc, out, err, seconds = runner.run(argv, d, extra_env=env)
        outcome = classify(rc, out, err)
        after = fingerprint(watched)
        if outcome in ("ok", "error") and any(after.get(f) != h for f, h in before.items()):
            outcome = "lost"      # a file that was there changed or vanished (new files beside it are no loss)
        tally.setdefault(kind, {}).setdefault(outcome, 0)
        tally[kind][outcome] += 1
        line = "%-14s %4d %-6s rc=%-5s %5.1fs  qlora %s" % (kind, n, outcome, rc, seconds,
                                                          " ".join(shlex.quote(a) for a in argv))
        if args.verbose or outcome not in ("ok", "error"):
            print(line[:400], flush=True)
            if outcome != "ok":
                said = [l for l in err.splitlines() if l.strip() and not l.strip().startswith(("Usage", "See "))]
                print("   " + (said[-1][:300] if said else "(no stderr)"), flush=True)
        if outcome in ("crash", "hang", "lost"):
            keep = os.path.join(findings, "%s-%d" % (kind, n))
            shutil.rmtree(keep, ignore_errors=True)
            shutil.copytree(d, keep, symlinks=True)
            with open(os.path.join(keep, "cmd.sh"), "w") as f:
                f.write("# %s (rc %s) seed %d\n" % (outcome, rc, args.seed))
                f.write("cd %s && %s%s %s\n" % (shlex.quote(d), "".join("%s=%s " % (k, shlex.quote(v))
                                                                         for k, v in env.items()),
                                                shlex.quote(runner.binary), " ".join(shlex.quote(a) for a in argv)))
            with open(os.path.join(keep, "output.txt"), "w") as f:
                f.write(out[-20000:] + "\n--- stderr ---\n" + err[-20000:])
        else:
            shutil.rmtree(d, ignore_errors=True)
    outcomes = ["ok", "error", "crash", "hang", "lost", "skipped"]
    print("\n%-14s %6s " % ("kind", "cases") + " ".join("%6s" % o for o in outcomes))
    for kind, counts in tally.items():
        print("%-14s %6d " % (kind, sum(counts.values())) + " ".join("%6d" % counts.get(o, 0) for o in outcomes))
    total = {o: sum(c.get(o, 0) for c in tally.values()) for o in outcomes}
    print("%-14s %6d " % ("all", sum(total.values())) + " ".join("%6d" % total[o] for o in outcomes))
    print("seed %d, %.0f s; findings in %s" % (args.seed, time.time() - started, findings))
    return 1 if total["crash"] + total["hang"] + total["lost"] else 0


if __name__ == "__main__":
    sys.exit(main())
