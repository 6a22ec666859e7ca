#!/usr/bin/env python3
"""A seeded, high-volume fuzzer of the files a user hands to qlora, and of every command's options at their edges.

The other fuzzers mutate one input of a fixed command (fuzz-cli.py), combine valid settings (fuzz-structured.py,
fuzz-commands.py) or stop runs half way (fuzz-interrupts.py). This one takes the folders qlora itself writes and
the model folder's small files, breaks them structurally, and hands them to every command that reads them:

  ckpt     a checkpoint written by a real `train --save-steps 1` (32-bit and 8-bit optimizers, with validation
           and the best metric in its state): one file (adapter_config.json, adapter_model.safetensors,
           optimizer.safetensors, trainer_state.json) changed: JSON values of each key at type and range edges
           (combined where they meet: an epoch of 2^63 - 1 at the end of the data order, a patience counter of
           2^63 - 1 behind an unbeatable best), safetensors headers with dtype / shape / offsets / metadata
           changed, tensors swapped between the files or taken from the other run's checkpoint, files truncated at
           the header's and each tensor's boundaries, emptied, or replaced by a folder, a symbolic link loop, a link
           to /dev/zero; or the checkpoint folder itself replaced. Then used by train --resume-from-checkpoint,
           train --init-adapter, eval / generate / merge / info --adapter and export --adapter-only.
  modelfiles  tokenizer.json (merges in both forms, added_tokens with odd ids and contents, each normalizer,
           pre-tokenizer and decoder type, byte_fallback, unk_token, padding and truncation),
           tokenizer_config.json (chat_template as a list of named templates, bos / eos as objects, missing),
           config.json (each numeric field at 0, 1, -1, 2^31,
           2^63, 1e308, strings, floats for integers; rope_scaling variants; tie_word_embeddings; head_dim;
           num_key_value_heads not dividing the heads) and generation_config.json, for tokenize, info, plan,
           generate, eval, train, merge, export and quantize.
  options  each subcommand's options (read from its --help) at their type edges on a valid command: "", 0, -1,
           2^31, 2^63, 1e400, nan, inf, a folder, a FIFO, /dev/zero, a missing file, the flag repeated, the value
           joined with = or missing.

Every run is classified as fuzz-structured.py does: ok, error (exit 1..127 with something said on stderr), crash
(a signal, exit >= 128, "Fatal error" / "runtime failure" / ..., or a failure with nothing said), hang (timeout),
lost (a file given as input changed or vanished). Crashes, hangs and lost files keep a reproducer under
WORK/findings/KIND-N/ (the files and a cmd.sh). WORK/errors.txt collects one line per distinct error message
(numbers folded), to read for errors that name nothing. The same --seed gives the same cases.

Usage:
  python3 scripts/fuzz-files.py [--binary .build/release/qlora] [--work /tmp/qlora-fuzz5] [--seed 1]
                                [--cases 200] [--kinds ckpt,modelfiles,options] [--timeout 60]
                                [--memory-gib 8] [--only KIND-N] [--verbose]

Needs ../shared/golden/hf-qlora (or $QLORA_SHARED/golden/hf-qlora) and scripts/fuzz-structured.py (its fixtures
and runner are reused). Standard library only. Runs one case at a time, under nice.
"""

import importlib.util
import json
import os
import random
import re
import shlex
import shutil
import struct
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("fuzz_structured", os.path.join(REPO, "scripts", "fuzz-structured.py"))
fs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fs)
cli = fs._cli

write_json, write_bytes, copy_tree = fs.write_json, fs.write_bytes, fs.copy_tree
st_read, st_bytes = cli.st_read, cli.st_bytes

BIG_INTS = [0, 1, -1, 2, 2**31 - 1, 2**31, 2**32, 2**53 + 1, 2**63 - 1, -2**63, 2**63, 2**64, 10**30]
ODD_JSON = [None, True, False, "", "1", "nan", "NaN", "-1", [], {}, [1], {"a": 1}, 1.5, -0.5, 1e308, -1e308, 1e-320,
            0.0, -0.0]
EDGE_FLAGS = ["", "0", "-1", "1", "2147483648", "9223372036854775807", "9223372036854775808",
              "-9223372036854775808", "1e400", "-1e400", "1e-400", "nan", "-nan", "inf", "-inf", "0.5", "1.5", "abc",
              " 1", "1 ", "0x10", "+1", "1e3", "1_000", "١", "\u00e9", "true", "--", "-", "=", "a,b,,c", ",", "all"]


def odd_number(rng, old=None):
    r = rng.random()
    if r < 0.6:
        return rng.choice(BIG_INTS)
    if r < 0.85:
        return rng.choice(ODD_JSON)
    if isinstance(old, (int, float)) and not isinstance(old, bool):
        return rng.choice([old + 1, old - 1, old * 2, -old, old * 10**9, float(old) + 0.5])
    return rng.choice(BIG_INTS)


class Raw:
    """JSON text written as it is (NaN, Infinity, huge literals, duplicate keys)."""

    def __init__(self, text):
        self.text = text


def dump(value):
    """JSON text where Raw pieces are spliced in verbatim."""
    pieces = []

    def walk(v):
        if isinstance(v, Raw):
            pieces.append(v.text)
            return "\u0000%d\u0000" % (len(pieces) - 1)
        if isinstance(v, dict):
            return {k: walk(x) for k, x in v.items()}
        if isinstance(v, list):
            return [walk(x) for x in v]
        return v

    text = json.dumps(walk(value), indent=1)
    return re.sub(r'"\\u0000(\d+)\\u0000"', lambda m: pieces[int(m.group(1))], text)


RAW_NUMBERS = ["NaN", "Infinity", "-Infinity", "1e400", "-1e400", "99999999999999999999999999", "-0", "1E2", "0.1e1",
               "18446744073709551615", "9223372036854775808", "-9223372036854775809", "1.0", "2.5e0", "00",
               "0x10", "+1", ".5", "1.", "1e", "--1", "true", "null"]


def odd_value(rng, old):
    """A replacement for a JSON value: its type kept and its range stretched, or another type."""
    r = rng.random()
    if r < 0.15:
        return Raw(rng.choice(RAW_NUMBERS))
    if isinstance(old, bool) or old is None:
        return rng.choice(ODD_JSON + BIG_INTS)
    if isinstance(old, (int, float)):
        return odd_number(rng, old)
    if isinstance(old, str):
        if r < 0.6:
            return rng.choice(["", old * 2, old[:-1], old + "x", old.upper(), "\u0000", "-" + old, " " + old,
                               "a" * 70000, "../" + old, "-1", "18446744073709551616", "1e3", "0x1f", "１２"])
        return rng.choice(ODD_JSON + BIG_INTS)
    if isinstance(old, list):
        if r < 0.6 and old:
            out = list(old)
            m = rng.random()
            if m < 0.2:
                return out[::-1]
            if m < 0.4:
                return out + out
            if m < 0.6:
                out[rng.randrange(len(out))] = rng.choice(ODD_JSON + BIG_INTS)
                return out
            if m < 0.8:
                return out[:rng.randrange(len(out))]
            return [out]
        return rng.choice(ODD_JSON + BIG_INTS)
    if isinstance(old, dict):
        if r < 0.6 and old:
            out = dict(old)
            k = rng.choice(list(out))
            out[k] = odd_value(rng, out[k])
            return out
        return rng.choice(ODD_JSON)
    return rng.choice(ODD_JSON)


def mutate_json_file(rng, path, focus=None, combos=None):
    """One or two keys of a JSON object file (at any depth) at edges; `combos`: a list of changes that meet."""
    with open(path) as f:
        value = json.load(f)
    if combos and rng.random() < 0.5:
        combo = rng.choice(combos)
        value = combo(rng, value) if callable(combo) else dict(value, **combo)
    else:
        for _ in range(rng.choice([1, 1, 1, 2])):
            keys = [k for k in (focus or value) if k in value] or list(value)
            if not keys or not isinstance(value, dict):
                break
            key = rng.choice(keys)
            m = rng.random()
            if m < 0.1:
                del value[key]
            elif m < 0.2:
                value[key + rng.choice(["_x", " ", "\u0000"])] = value[key]
            else:
                value[key] = odd_value(rng, value[key])
    with open(path, "w") as f:
        f.write(dump(value))
    if rng.random() < 0.05:        # a duplicate key, the last one wins in Python
        text = open(path).read()
        if text.startswith("{\n") and focus:
            k = rng.choice(focus)
            write_bytes(path, ('{\n "%s": %s,' % (k, rng.choice(RAW_NUMBERS)) + text[1:]).encode())


# ---------------------------------------------------------------------------------------------------------------
# safetensors mutations

DTYPES = ["F32", "F16", "BF16", "F64", "I8", "U8", "I16", "U16", "I32", "U32", "I64", "U64", "BOOL", "F8_E4M3",
          "F8_E5M2", "C64", "f32", "", "F4", "Q4", None, 4]


def tensor_boundaries(path):
    """Interesting offsets of a safetensors file: the length field, the header's end, each tensor's ends."""
    raw = open(path, "rb").read()
    out = {0, 1, 7, 8, 9, len(raw) - 1, len(raw)}
    if len(raw) >= 8:
        (n,) = struct.unpack("<Q", raw[:8])
        if n < len(raw):
            out |= {8 + n - 1, 8 + n, 8 + n + 1, 8 + n // 2}
            try:
                header = json.loads(raw[8:8 + n])
                for k, v in header.items():
                    if k != "__metadata__" and isinstance(v, dict):
                        lo, hi = v["data_offsets"]
                        out |= {8 + n + lo, 8 + n + hi - 1, 8 + n + hi, 8 + n + hi + 1}
            except (ValueError, KeyError, TypeError):
                pass
    return sorted(o for o in out if 0 <= o <= len(raw)), raw


def mutate_safetensors(rng, path, other=None):
    header, data = st_read(path)
    names = [k for k in header if k != "__metadata__"]
    meta = header.get("__metadata__", {})
    m = rng.random()
    if m < 0.12 and names:
        header[rng.choice(names)]["dtype"] = rng.choice(DTYPES)
    elif m < 0.27 and names:
        k = rng.choice(names)
        shape = header[k]["shape"]
        header[k]["shape"] = rng.choice([
            [], [0], [0] + shape[1:], shape[::-1], shape + [1], [1] + shape, shape[:-1], [-1] + shape[1:],
            [2**32, 2**32], [2**62, 4], [2**63], [2**64 + 1], [1.5] + shape[1:], ["4"] + shape[1:], None, "x",
            [s * 2 for s in shape], [max(1, s // 2) for s in shape], [2**31] + shape[1:], [3**40]])
    elif m < 0.42 and names:
        k = rng.choice(names)
        lo, hi = header[k]["data_offsets"]
        header[k]["data_offsets"] = rng.choice([
            [hi, lo], [lo, lo], [lo, hi + 1], [lo - 1, hi - 1], [lo + 1, hi + 1], [0, hi - lo], [lo, 2**64 - 1],
            [2**63, 2**63 + hi - lo], [-1, hi], [lo], [lo, hi, hi], [lo, len(data) + 4], [lo * 1.0, hi], None,
            [str(lo), hi], [len(data), len(data)]])
    elif m < 0.55:
        # metadata: the optimizer's name and step counts, or PEFT's format
        key = rng.choice(list(meta) + ["optim", "steps", "format"]) if rng.random() < 0.8 else "__x"
        old = meta.get(key, "")
        if key == "steps" and rng.random() < 0.7 and old:
            try:
                steps = json.loads(old)
                if steps:
                    s = rng.choice(list(steps))
                    steps[s] = odd_value(rng, steps[s]) if rng.random() < 0.7 else steps[s]
                    if rng.random() < 0.3:
                        steps[s + rng.choice(["x", ".m", ""])] = 1
                    if rng.random() < 0.2:
                        steps = {("model.layers.%d.self_attn.q_proj.A" % rng.choice([2, 99, -1, 2**40])): 1}
                meta[key] = dump(steps)
            except ValueError:
                meta[key] = rng.choice(["", "{", "[]", "1", "null"])
        else:
            meta[key] = rng.choice(["", "adamw", "adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit", "sgd",
                                    old.upper(), old + " ", "{", "[1]", '{"a": -1}', "\u0000", "x" * 70000])
        if rng.random() < 0.1:
            meta = rng.choice([[], "x", 5, {"optim": 5}, {"steps": {"a": 1}}, None])
        header["__metadata__"] = meta
    elif m < 0.65 and names:
        k = rng.choice(names)
        r = rng.random()
        if r < 0.3:
            del header[k]
        elif r < 0.6:
            new = rng.choice([k + ".x", k.replace("lora_A", "lora_B"), k.replace("layers.0", "layers.1"),
                              k.replace("layers.0", "layers.9"), k.replace(".weight", ""), "", k.upper(),
                              k.replace("q_proj", "k_proj"), k.replace(".m", ".v"), "__metadata__x"])
            header[new] = header.pop(k)
        else:
            header[k + rng.choice(["", ".copy"])] = dict(header[k])
            header[rng.choice(names)] = dict(header[k])
    elif m < 0.75 and other:
        # a tensor of the other file, or the whole other file, in this one's place
        oh, od = st_read(other)
        onames = [k for k in oh if k != "__metadata__"]
        if rng.random() < 0.5 or not names or not onames:
            shutil.copy(other, path)
            return
        mine, theirs = rng.choice(names), rng.choice(onames)
        lo, hi = oh[theirs]["data_offsets"]
        entry = dict(oh[theirs])
        entry["data_offsets"] = [len(data), len(data) + hi - lo]
        data = data + od[lo:hi]
        header[mine] = entry
    elif m < 0.85:
        text = json.dumps(header, separators=(",", ":")).encode()
        bad = rng.choice([text[:-1], text + b"x", text.replace(b'"', b"'", 1), b" " * 8 + text, text + b"\x00" * 8,
                          text.replace(b"{", b"[", 1), b"null", b"[]", b'"x"', b"{}", b"\xff" + text,
                          text.replace(b'"dtype"', b'"dtype":"F32","dtype"', 1),
                          text.replace(b'"shape":[', b'"shape":[1e400,', 1),
                          text.replace(b'"data_offsets":[', b'"data_offsets":[-0,', 1)])
        write_bytes(path, st_bytes(None, data, header_text=bad))
        return
    else:
        raw = st_bytes(header, data)
        n = rng.choice([0, 1, 7, 2**63, 2**64 - 1, len(raw), len(raw) - 8, len(raw) - 7, 100 * 2**20 - 1,
                        struct.unpack("<Q", raw[:8])[0] + rng.choice([-8, -1, 1, 8])])
        write_bytes(path, struct.pack("<Q", n) + raw[8:])
        return
    write_bytes(path, st_bytes(header, data))


def replace_entry(rng, path, siblings):
    """The file or folder at `path` replaced by something that is no plain file."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.remove(path)
    r = rng.random()
    if r < 0.2:
        os.mkdir(path)
    elif r < 0.35:
        os.symlink(os.path.basename(path), path)                # a loop
    elif r < 0.45:
        a = path + ".loop"
        os.symlink(os.path.basename(path), a)
        os.symlink(os.path.basename(a), path)                  # a loop of two
    elif r < 0.6:
        os.symlink("/dev/zero", path)
    elif r < 0.7:
        os.symlink("/dev/null", path)
    elif r < 0.8 and siblings:
        os.symlink(rng.choice(siblings), path)                 # a link to another file of the folder
    elif r < 0.9:
        os.symlink("/nonexistent/" + os.path.basename(path), path)
    else:
        write_bytes(path, b"")


# ---------------------------------------------------------------------------------------------------------------
# The base: fuzz-structured.py's fixtures and two real training runs with checkpoints and validation


def build_base(runner, work):
    base = fs.build_base(runner, work)
    if os.path.exists(os.path.join(base, "ready-files")):
        return base
    model, data = os.path.join(base, "model"), os.path.join(base, "pretok.jsonl")
    common = ["train", "--model", model, "--data", data, "--max-steps", "2", "--save-steps", "1",
              "--batch-size", "2", "--max-seq-length", "16", "--eval-data", data, "--eval-steps", "1"]
    for argv in [common + ["--output-dir", os.path.join(base, "ck32"), "--lora-r", "4", "--target-modules",
                           "q_proj,v_proj", "--optim", "adamw", "--load-best-model-at-end"],
                 common + ["--output-dir", os.path.join(base, "ck8"), "--lora-r", "32", "--target-modules",
                           "q_proj", "--optim", "adamw_8bit", "--early-stopping-patience", "5"]]:
        shutil.rmtree(argv[argv.index("--output-dir") + 1], ignore_errors=True)
        rc, out, err, _ = runner.run(argv, base, timeout=600)
        if rc != 0:
            sys.exit("setting up the base failed: qlora %s\n%s%s" % (" ".join(argv), out, err[-3000:]))
    for name, kind in [("chat.jsonl", "chat"), ("qa.jsonl", "pc")]:
        with open(os.path.join(base, name), "w") as f:
            for i in range(8):
                a, b = "the river rose %d" % i, "by morning the fields %d" % i
                f.write(json.dumps({"messages": [{"role": "user", "content": a}, {"role": "assistant",
                                                                                    "content": b}]}
                                   if kind == "chat" else {"prompt": a, "completion": b}) + "\n")
    open(os.path.join(base, "ready-files"), "w").close()
    return base


RUN_FLAGS = {"ck32": ["--lora-r", "4", "--target-modules", "q_proj,v_proj", "--optim", "adamw"],
             "ck8": ["--lora-r", "32", "--target-modules", "q_proj", "--optim", "adamw_8bit"]}


def state_combos():
    """Changes of trainer_state.json that meet: each value passes alone, together they reach an edge."""
    big = 2**63 - 1

    def at_end(rng, s):
        s["data_position"] = len(s.get("data_order", []))
        s["epoch"] = rng.choice([big, big - 1, 2**62, 2**31 - 1])
        return s

    def counter(rng, s):
        s["best_metric"] = rng.choice([-1e308, -1.0, 0.0, -5e-324])
        s["best_global_step"] = rng.choice([0, -1, big, 2])
        s["early_stopping_patience_counter"] = rng.choice([big, big - 1, 2**31, 4])
        return s

    def steps(rng, s):
        s["global_step"] = rng.choice([big, big - 1, 2**31, 2**53 + 1, 1, 0])
        s["total_steps"] = rng.choice([big, 0, -1, 1, 3])
        return s

    def best(rng, s):
        s["best_metric"] = Raw(rng.choice(["NaN", "Infinity", "-Infinity", "1e400", "-1e400"]))
        s["best_global_step"] = rng.choice([0, -1, 2**63 - 1, 10**6])
        return s

    def order(rng, s):
        n = len(s.get("data_order", [])) or 8
        s["data_order"] = rng.choice([list(range(n))[::-1], [0] * n, list(range(1, n + 1)), [], list(range(n)) * 2,
                                      [2**63 - 1] + list(range(1, n)), [1.0 * i for i in range(n)],
                                      [str(i) for i in range(n)], list(range(n - 1)) + [-1]])
        s["data_position"] = rng.choice([0, n, n - 1, n + 1, -1])
        return s

    return [at_end, counter, steps, best, order]


def case_ckpt(rng, base, d):
    name = rng.choice(["ck32", "ck8"])
    other = "ck8" if name == "ck32" else "ck32"
    run = os.path.join(d, "run")
    copy_tree(os.path.join(base, name), run)
    step = rng.choice([1, 2])
    ckpt = os.path.join(run, "checkpoint-%d" % step)
    other_ckpt = os.path.join(base, other, "checkpoint-%d" % rng.choice([1, 2]))
    files = sorted(os.listdir(ckpt))
    target = rng.choice(files + ["trainer_state.json", "optimizer.safetensors"])
    path = os.path.join(ckpt, target)
    r = rng.random()
    if r < 0.05:
        replace_entry(rng, ckpt, [])
    elif r < 0.17:
        replace_entry(rng, path, [f for f in files if f != target])
    elif r < 0.3:
        offsets, raw = tensor_boundaries(path) if target.endswith(".safetensors") else \
            (None, open(path, "rb").read())
        cut = rng.choice(offsets) if offsets else rng.choice([0, 1, len(raw) // 2, len(raw) - 1, len(raw) - 2])
        write_bytes(path, raw[:cut])
    elif r < 0.36:
        src = rng.choice([os.path.join(other_ckpt, rng.choice(sorted(os.listdir(other_ckpt)))),
                          os.path.join(ckpt, rng.choice(files))])
        shutil.copy(src, path)       # a file of the other run, or another file of this checkpoint, in its place
    elif target == "trainer_state.json":
        mutate_json_file(rng, path, ["global_step", "total_steps", "rng_state", "epoch", "data_position",
                                     "data_order", "best_metric", "best_global_step",
                                     "early_stopping_patience_counter"], state_combos())
    elif target == "adapter_config.json":
        def patterns(rng, c):
            k = rng.choice(["rank_pattern", "alpha_pattern"])
            c[k] = {rng.choice(["q_proj", "model.layers.0.self_attn.q_proj", "v_proj", ".*", "x"]):
                    rng.choice([0, 1, 2, 64, -1, 2**31, 1.5, "4"])}
            return c

        def layers(rng, c):
            c["layers_to_transform"] = rng.choice([[0], [1], [5], [-1], 0, [], [2**63 - 1]])
            c["layers_pattern"] = rng.choice([None, "layers", "h", ""])
            return c

        def extras(rng, c):
            c[rng.choice(["use_dora", "fan_in_fan_out", "modules_to_save", "bias", "use_rslora", "lora_bias",
                          "target_parameters", "trainable_token_indices", "exclude_modules"])] = \
                rng.choice([True, ["lm_head"], ["q_proj"], "all", "lora_only", {"q_proj": [1]}, [0], "q_proj"])
            return c

        mutate_json_file(rng, path, ["r", "lora_alpha", "lora_dropout", "target_modules", "use_rslora",
                                     "peft_type", "task_type", "base_model_name_or_path", "fan_in_fan_out"],
                         [patterns, layers, extras])
    elif target.endswith(".safetensors"):
        mutate_safetensors(rng, path, os.path.join(other_ckpt, target) if rng.random() < 0.5 else
                           os.path.join(ckpt, "optimizer.safetensors" if "adapter" in target else
                                        "adapter_model.safetensors"))
    else:
        write_bytes(path, cli.mutate_bytes(rng, open(path, "rb").read()))
    model = os.path.join(base, "model")
    data = os.path.join(base, "pretok.jsonl")
    out = os.path.join(d, "out")
    c = rng.random()
    if c < 0.4:
        argv = ["train", "--model", model, "--data", data, "--output-dir", run, "--max-steps",
                rng.choice(["3", "3", "4", "2"]), "--save-steps", "1", "--batch-size", "2", "--max-seq-length", "16",
                "--resume-from-checkpoint", rng.choice([ckpt, ckpt, "latest"])] + RUN_FLAGS[name]
        if rng.random() < 0.6:
            argv += ["--eval-data", data, "--eval-steps", "1"]
            argv += rng.choice([[], ["--load-best-model-at-end"], ["--early-stopping-patience", "5"],
                                ["--early-stopping-patience", "1"], ["--load-best-model-at-end",
                                                                     "--early-stopping-patience", "3"]])
        if rng.random() < 0.2:
            argv += rng.choice([["--save-total-limit", "1"], ["--packing"], ["--gradient-accumulation-steps", "2"],
                                ["--no-shuffle"], ["--lr-scheduler", "cosine", "--warmup-steps", "2"]])
        # a failed resume leaves the run as it was; the checkpoints a successful one writes are new
        return argv, [], [os.path.join(run, "metrics.jsonl")] if r >= 0.05 else []
    if c < 0.5:
        argv = ["train", "--model", model, "--data", data, "--output-dir", out, "--max-steps", "1",
                "--batch-size", "2", "--max-seq-length", "16", "--init-adapter", ckpt]
    elif c < 0.62:
        argv = ["eval", "--model", model, "--adapter", ckpt, "--data", data, "--max-seq-length", "16"]
    elif c < 0.74:
        argv = ["generate", "--model", model, "--adapter", ckpt, "--prompt", "the river", "--max-new-tokens", "3"]
        argv += rng.choice([[], ["--chat"], ["--temperature", "0.7", "--seed", "3"]])
    elif c < 0.84:
        argv = ["merge", "--model", rng.choice([model, os.path.join(base, "bnb")]), "--adapter", ckpt,
                "--output", out] + rng.choice([[], ["--dtype", "f16"], ["--onto", "original"]])
    elif c < 0.94:
        argv = ["export", "--format", "gguf", "--model", model, "--adapter", ckpt, "--output",
                os.path.join(d, "a.gguf")] + rng.choice([["--adapter-only"], ["--adapter-only", "--type", "f16"],
                                                         ["--check", "never"], ["--adapter-only", "--type", "bf16"]])
    else:
        argv = ["info", model, "--adapter", ckpt] + rng.choice([[], ["--dot", os.path.join(d, "g.dot")]])
    return argv, [ckpt]


# ---------------------------------------------------------------------------------------------------------------
# Kind: modelfiles — tokenizer.json, tokenizer_config.json, config.json and generation_config.json


NORMALIZERS = [
    None, {"type": "NFC"}, {"type": "NFD"}, {"type": "NFKC"}, {"type": "NFKD"}, {"type": "Lowercase"},
    {"type": "Strip", "strip_left": True, "strip_right": True}, {"type": "StripAccents"},
    {"type": "Prepend", "prepend": "\u2581"}, {"type": "Prepend", "prepend": ""},
    {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"},
    {"type": "Replace", "pattern": {"Regex": "\\s+"}, "content": " "},
    {"type": "Replace", "pattern": {"Regex": "(?<=a)b"}, "content": "c"},
    {"type": "Replace", "pattern": {"Regex": "\\p{L}"}, "content": ""},
    {"type": "Replace", "pattern": {}, "content": "x"}, {"type": "Replace", "pattern": {"String": "x"}},
    {"type": "BertNormalizer", "clean_text": True, "handle_chinese_chars": True, "strip_accents": None,
     "lowercase": True}, {"type": "Precompiled", "precompiled_charsmap": "AAAA"},
    {"type": "Precompiled", "precompiled_charsmap": ""}, {"type": "Precompiled", "precompiled_charsmap": None},
    {"type": "Sequence", "normalizers": [{"type": "NFKC"}, {"type": "Lowercase"}]},
    {"type": "Sequence", "normalizers": None}, {"type": "Sequence"}, {"type": "NFKC", "x": 1}, {"type": 5},
    {"type": "ByteLevel"}]
PRETOKENIZERS = [
    None, {"type": "ByteLevel", "add_prefix_space": True, "use_regex": True},
    {"type": "ByteLevel", "add_prefix_space": False, "use_regex": False}, {"type": "ByteLevel"},
    {"type": "Whitespace"}, {"type": "WhitespaceSplit"}, {"type": "Punctuation", "behavior": "Isolated"},
    {"type": "Digits", "individual_digits": True}, {"type": "Digits", "individual_digits": False},
    {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "first", "split": True},
    {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "never", "split": False},
    {"type": "Metaspace", "replacement": "\u2581", "add_prefix_space": True},
    {"type": "Metaspace", "replacement": "ab", "prepend_scheme": "always"},
    {"type": "Split", "pattern": {"Regex": "\\d{1,3}"}, "behavior": "Isolated", "invert": False},
    {"type": "Split", "pattern": {"String": ""}, "behavior": "Removed"},
    {"type": "Split", "pattern": {"String": " "}, "behavior": "MergedWithPrevious"},
    {"type": "Split", "pattern": {"String": " "}, "behavior": "MergedWithNext"},
    {"type": "Split", "pattern": {"String": " "}, "behavior": "Contiguous"},
    {"type": "Split", "pattern": {"Regex": "."}, "behavior": "Isolated", "invert": True},
    {"type": "Split", "pattern": {"Regex": "(?i:'s|'t)|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+"}, "behavior": "x"},
    {"type": "Split", "pattern": {"Regex": "\\"}, "behavior": "Isolated"},
    {"type": "Split", "pattern": {"Regex": "[\\p{Xyz}]"}, "behavior": "Isolated"},
    {"type": "Split", "pattern": {"Regex": "(?<!a)b"}, "behavior": "Isolated"},
    {"type": "Split", "pattern": {"Regex": "a{100000}"}, "behavior": "Isolated"},
    {"type": "Split", "pattern": {"Regex": "a{2,1}"}, "behavior": "Isolated"},
    {"type": "Split", "pattern": {"Regex": "(((((((((((a)))))))))))*"}, "behavior": "Isolated"},
    {"type": "BertPreTokenizer"}, {"type": "CharDelimiterSplit", "delimiter": " "},
    {"type": "CharDelimiterSplit", "delimiter": ""}, {"type": "UnicodeScripts"},
    {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True},
                                           {"type": "ByteLevel", "add_prefix_space": False}]},
    {"type": "Sequence", "pretokenizers": None}, {"type": "Sequence", "pretokenizers": [None]}]
DECODERS = [
    None, {"type": "ByteLevel"}, {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "always"},
    {"type": "ByteFallback"}, {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1, "stop": 0},
    {"type": "Strip", "content": " ", "start": -1, "stop": 2**63}, {"type": "Strip", "content": "", "start": 5},
    {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "}, {"type": "WordPiece", "prefix": "##"},
    {"type": "BPEDecoder", "suffix": "</w>"}, {"type": "CTC"},
    {"type": "Sequence", "decoders": [{"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
                                      {"type": "ByteFallback"}, {"type": "Fuse"},
                                      {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
    {"type": "Sequence", "decoders": None}, {"type": "Nope"}]
POST = [
    None, {"type": "ByteLevel", "trim_offsets": True},
    {"type": "TemplateProcessing", "single": [{"Sequence": {"id": "A", "type_id": 0}},
                                              {"SpecialToken": {"id": "</s>", "type_id": 0}}],
     "special_tokens": {"</s>": {"id": "</s>", "ids": [2], "tokens": ["</s>"]}}},
    {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}],
     "special_tokens": {"<s>": {"id": "<s>", "ids": [], "tokens": []}}},
    {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}] * 3 +
     [{"Sequence": {"id": "A", "type_id": 0}}] * 2,
     "special_tokens": {"<s>": {"id": "<s>", "ids": [1, 1, 1], "tokens": ["<s>"] * 3}}},
    {"type": "TemplateProcessing", "single": "$A </s>", "special_tokens": {}},
    {"type": "BertProcessing", "sep": ["</s>", 2], "cls": ["<s>", 1]},
    {"type": "RobertaProcessing", "sep": ["</s>", 2], "cls": ["<s>", 1], "trim_offsets": True},
    {"type": "Sequence", "processors": [{"type": "ByteLevel"}, {"type": "TemplateProcessing", "single": [],
                                                                "special_tokens": {}}]}]


def mutate_tokenizer(rng, tok):
    r = rng.random()
    model = tok["model"]
    if r < 0.12:
        tok["normalizer"] = rng.choice(NORMALIZERS)
    elif r < 0.24:
        tok["pre_tokenizer"] = rng.choice(PRETOKENIZERS)
    elif r < 0.34:
        tok["decoder"] = rng.choice(DECODERS)
    elif r < 0.42:
        tok["post_processor"] = rng.choice(POST)
    elif r < 0.52:
        merges = model["merges"]
        if rng.random() < 0.5:
            merges = [m.split(" ") for m in merges]
        m = rng.random()
        if m < 0.3:
            merges.insert(rng.randrange(len(merges) + 1), rng.choice([
                ["a", "b", "c"], ["a"], [], ["", ""], [" ", " "], "a  b", " a b", "a b ", "\u0120 \u0120", [1, 2],
                ["the", "the"], "t", None, "x y", ["\u0000", "a"]]))
        elif m < 0.5:
            merges = merges + merges                      # every merge twice
        elif m < 0.6:
            merges = merges[::-1]
        elif m < 0.7:
            merges = [] if rng.random() < 0.5 else merges[:1]
        elif m < 0.8:
            merges = {"a": "b"}
        else:
            merges = [" ".join(x) if isinstance(x, list) else x.split(" ") for x in merges[:len(merges) // 2]] + \
                merges[len(merges) // 2:]               # both forms in one list
        model["merges"] = merges
    elif r < 0.64:
        added = tok["added_tokens"]
        new = {"id": rng.choice([-1, 0, 2, 383, 384, 385, 400, 1000, 2**31 - 1, 2**31, 2**32, 2**53 + 1,
                                 2**63 - 1, 2**64, 1.0, 1.5, "3", None]),
               "content": rng.choice(["<x>", "", " ", "<s>", "the", "\u0120the", "<|im_start|>", "a" * 70000,
                                      "\u0000", "\ud7ff", "<s><s>", "\n", "e\u0301"]),
               "special": rng.choice([True, False, None, 1]),
               "normalized": rng.choice([True, False]), "lstrip": rng.choice([True, False]),
               "rstrip": rng.choice([True, False]), "single_word": rng.choice([True, False])}
        if rng.random() < 0.2:
            del new[rng.choice(list(new))]
        m = rng.random()
        if m < 0.6:
            added.append(new)
        elif m < 0.8:
            added[rng.randrange(len(added))] = new
        else:
            tok["added_tokens"] = rng.choice([None, {}, [None], [1], "x", added * 2, added[::-1]])
    elif r < 0.74:
        k = rng.choice(["byte_fallback", "unk_token", "dropout", "continuing_subword_prefix", "end_of_word_suffix",
                        "fuse_unk", "ignore_merges", "type"])
        model[k] = rng.choice({
            "byte_fallback": [True, False, "yes", 1, None], "unk_token": [None, "", "<unk>", "<nope>", 0, "<s>"],
            "dropout": [0.0, 0.5, 1.0, -1, 2, "x", 1e308], "continuing_subword_prefix": ["##", "", None, 5],
            "end_of_word_suffix": ["</w>", "", None], "fuse_unk": [True, "x"], "ignore_merges": [True, 1],
            "type": ["BPE", "WordPiece", "Unigram", "WordLevel", "bpe", None, ""]}[k])
        if k == "byte_fallback" and rng.random() < 0.5:
            vocab = model["vocab"]
            for b in rng.sample(range(256), rng.choice([1, 8, 256])):
                vocab["<0x%02X>" % b] = rng.choice([len(vocab), 3 + b, 0, 2**31, -1])
    elif r < 0.84:
        vocab = model["vocab"]
        m = rng.random()
        key = rng.choice(list(vocab))
        if m < 0.3:
            vocab[key] = rng.choice([-1, 0, 1, 383, 384, 2**31, 2**32 + 5, 2**63 - 1, 2**63, 1.0, 2.5, "5", None])
        elif m < 0.5:
            vocab[rng.choice(["", "\u0000", " ", "a" * 70000, "<0xZZ>", "\ud7ff"])] = rng.choice([384, 0, 10**6])
        elif m < 0.7:
            model["vocab"] = rng.choice([[], {}, [[k, 0.0] for k in vocab], None, list(vocab)])
        else:
            vals = list(vocab.values())
            rng.shuffle(vals)
            model["vocab"] = dict(zip(vocab, vals))      # the same ids, shuffled among the pieces
    elif r < 0.92:
        # the padding and truncation sections, which the other fuzzers leave alone
        k = rng.choice(["padding", "truncation"])
        tok[k] = {"pad_id": rng.choice([-1, 0, 3, 383, 384, 100000, 2**63 - 1, "x", None, 1.5]),
                  "pad_token": rng.choice(["<pad>", "</s>", "", None]), "strategy": "BatchLongest",
                  "direction": rng.choice(["Right", "Left", "x"]), "pad_to_multiple_of": rng.choice([None, 0, 8, -1]),
                  "pad_type_id": 0} if k == "padding" else \
            {"max_length": rng.choice([0, 1, 2, -1, 2**63 - 1, None]), "strategy": "LongestFirst",
             "stride": rng.choice([0, 1, -1, 10**9]), "direction": rng.choice(["Right", "Left", None])}
        if rng.random() < 0.1:
            tok[k] = rng.choice([[], "x", 5, {}])
    else:
        tok = cli.mutate_tree(rng, tok)
    return tok


def mutate_tok_config(rng, cfg):
    r = rng.random()
    if r < 0.25:
        cfg["chat_template"] = rng.choice([
            [{"name": "default", "template": fs.CHAT_TEMPLATE}, {"name": "tool_use", "template": "{{ x }}"}],
            [{"name": "tool_use", "template": fs.CHAT_TEMPLATE}], [], [{"name": "default"}],
            [{"template": fs.CHAT_TEMPLATE}], [{"name": "default", "template": 5}],
            [{"name": "default", "template": fs.CHAT_TEMPLATE}] * 2, {"default": fs.CHAT_TEMPLATE}, None, 5, "",
            [fs.CHAT_TEMPLATE], [[]], [{"name": None, "template": None}]])
    elif r < 0.5:
        k = rng.choice(["bos_token", "eos_token", "pad_token", "unk_token"])
        cfg[k] = rng.choice([
            {"content": "<s>", "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
             "__type": "AddedToken"}, {"content": "</s>"}, {"content": ""}, {"content": None}, {}, {"x": 1},
            {"content": "<nope>"}, None, "", "<nope>", 5, ["<s>"], "</s>", "<s>", {"content": "a" * 70000}])
    elif r < 0.65:
        k = rng.choice(["add_bos_token", "add_eos_token", "model_max_length", "clean_up_tokenization_spaces",
                        "padding_side", "legacy", "tokenizer_class"])
        cfg[k] = rng.choice([True, False, None, 0, -1, 1e30, 2**63, "left", "x", 1])
    elif r < 0.75:
        cfg["added_tokens_decoder"] = rng.choice([
            {"0": {"content": "<unk>", "special": True}}, {"999": {"content": "<x>", "special": True}},
            {"-1": {"content": "<x>"}}, {"x": {"content": "<x>"}}, {"1": {"content": "</s>"}},
            {"18446744073709551616": {"content": "<x>"}}, {"3": None}, [], "x"])
    elif r < 0.85:
        cfg = rng.choice([{}, [], None, "x", 5, {"chat_template": fs.CHAT_TEMPLATE}])
    else:
        cfg = cli.mutate_tree(rng, cfg) if isinstance(cfg, dict) else cfg
    return cfg


CONFIG_NUMBERS = ["hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                  "num_key_value_heads", "vocab_size", "max_position_embeddings", "head_dim", "rms_norm_eps",
                  "bos_token_id", "eos_token_id", "pad_token_id", "rope_theta", "pretraining_tp",
                  "attention_dropout", "initializer_range"]


def mutate_config(rng, c):
    r = rng.random()
    if r < 0.5:
        k = rng.choice(CONFIG_NUMBERS)
        c[k] = rng.choice([0, 1, -1, 2**31, 2**31 - 1, 2**32, 2**63 - 1, 2**63, 1e308, -1e308, 1e-320, 0.5,
                           float(c.get(k) or 1) + 0.0, Raw("NaN"), Raw("Infinity"), Raw("1e400"), "nan", "32",
                           None, [1], True, (c.get(k) or 1) * 2 if isinstance(c.get(k), (int, float)) else 3,
                           (c.get(k) or 2) - 1 if isinstance(c.get(k), (int, float)) else 3])
    elif r < 0.6:
        c["eos_token_id"] = rng.choice([[2], [2, 1], [], [384], [-1], [2, 2**63], [None], "2", [[2]]])
    elif r < 0.72:
        rope = rng.choice([
            None, {"type": "linear", "factor": 2.0}, {"rope_type": "linear", "factor": 0.0},
            {"rope_type": "linear", "factor": -1}, {"rope_type": "dynamic", "factor": 4.0},
            {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64},
            {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 0, "beta_fast": 0,
             "beta_slow": 0}, {"rope_type": "longrope", "short_factor": [1.0], "long_factor": [1.0]},
            {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
             "original_max_position_embeddings": 8192},
            {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 4.0, "high_freq_factor": 4.0,
             "original_max_position_embeddings": 8192},
            {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
             "original_max_position_embeddings": 0},
            {"rope_type": "llama3", "factor": Raw("NaN")}, {"rope_type": "nope"}, {"factor": 2.0}, [], "linear",
            {"rope_type": "default", "rope_theta": 0.0}, {"rope_type": "default", "rope_theta": -1.0},
            {"rope_type": "default", "rope_theta": 1e308}, {"rope_type": "default", "rope_theta": Raw("1e400")},
            {"rope_type": "default"}, {"rope_type": "linear", "factor": 1e308}])
        c[rng.choice(["rope_scaling", "rope_parameters"])] = rope
    elif r < 0.8:
        c["tie_word_embeddings"] = rng.choice([True, "true", 1, None])
        if rng.random() < 0.4:
            c["head_dim"] = rng.choice([16, 64, 31, 33, 0])
    elif r < 0.88:
        c["num_key_value_heads"] = rng.choice([4, 5, 7, 12, 0, 3])
        if rng.random() < 0.5:
            c["num_attention_heads"] = rng.choice([4, 5, 7, 12, 8])
    elif r < 0.94:
        k = rng.choice(["model_type", "hidden_act", "architectures", "dtype", "torch_dtype", "attention_bias",
                        "mlp_bias", "quantization_config"])
        c[k] = rng.choice(["mistral", "qwen2", "gelu", "relu", "gelu_pytorch_tanh", "float8", "int4", [], {},
                           ["MistralForCausalLM"], True, "yes", None, {"quant_method": "bitsandbytes"},
                           {"load_in_4bit": True, "bnb_4bit_quant_type": "nf5"}])
    else:
        c = rng.choice([[], None, "x", {}, 5]) if rng.random() < 0.3 else cli.mutate_tree(rng, c)
    return c


def mutate_generation_config(rng, g):
    k = rng.choice(["eos_token_id", "bos_token_id", "pad_token_id", "max_new_tokens", "max_length", "temperature",
                    "top_p", "top_k", "do_sample", "repetition_penalty"])
    g[k] = rng.choice([0, -1, 2**31, 2**63, 1e308, Raw("NaN"), Raw("-Infinity"), [2, 1], [], [384], "2", None,
                       True, 0.0, -0.5, 1e-320, [2**63 - 1]])
    return g if rng.random() < 0.9 else rng.choice([[], None, "x"])


def case_modelfiles(rng, base, d):
    model = os.path.join(d, "model")
    copy_tree(os.path.join(base, rng.choice(["model", "model", "model", "bnb"])), model)
    which = rng.choice(["tokenizer.json", "tokenizer.json", "tokenizer.json", "tokenizer_config.json",
                        "tokenizer_config.json", "config.json", "config.json", "config.json",
                        "generation_config.json"])
    path = os.path.join(model, which)
    value = json.load(open(path)) if os.path.exists(path) else {}
    value = {"tokenizer.json": mutate_tokenizer, "tokenizer_config.json": mutate_tok_config,
             "config.json": mutate_config, "generation_config.json": mutate_generation_config}[which](rng, value)
    with open(path, "w") as f:
        f.write(dump(value))
    if rng.random() < 0.04:
        replace_entry(rng, path, ["config.json", "tokenizer.json"])
    data = os.path.join(base, rng.choice(["chat.jsonl", "pretok.jsonl", "qa.jsonl"]))
    out = os.path.join(d, "out")
    commands = [
        ["tokenize", "--tokenizer", rng.choice([model, os.path.join(model, "tokenizer.json")]), "--input",
         os.path.join(base, "tokenize.jsonl")] + rng.choice([[], ["--add-special-tokens"]]),
        ["info", model], ["plan", "--model", model, "--batch-size", "1", "--max-seq-length", "16"],
        ["generate", "--model", model, "--prompt", rng.choice(["the river", "", "<s>the", "é\u4e2d 123"]),
         "--max-new-tokens", "3"] + rng.choice([[], ["--chat"], ["--temperature", "0.8", "--top-p", "0.9"]]),
        ["eval", "--model", model, "--data", data, "--max-seq-length", "64", "--limit", "4"],
        ["train", "--model", model, "--data", data, "--output-dir", out, "--max-steps", "1", "--batch-size",
         "2", "--max-seq-length", "64", "--lora-r", "2"],
        ["merge", "--model", model, "--adapter", os.path.join(base, "adapter"), "--output", out],
        ["export", "--format", "gguf", "--model", model, "--output", os.path.join(d, "m.gguf"), "--check",
         rng.choice(["never", "always"])],
        ["quantize", "--model", model, "--output", out],
        ["bench", "--device", "cpu", "--model-config", os.path.join(model, "config.json"), "--steps", "1",
         "--warmup", "0", "--batch-size", "1", "--max-seq-length", "8"]]
    weights = [3, 1, 1, 3, 2, 2, 1, 1, 1, 1] if which.startswith("tokenizer") else [1, 2, 2, 2, 2, 2, 2, 2, 1, 1]
    argv = rng.choices(commands, weights)[0]
    if argv[0] == "generate" and rng.random() < 0.3:
        argv += ["--adapter", os.path.join(base, "adapter")]
    return argv, [os.path.join(base, "adapter")]


# ---------------------------------------------------------------------------------------------------------------
# Kind: options — every subcommand's options at their type edges


_HELP = {}


def subcommands(binary):
    if "" not in _HELP:
        text = subprocess.run([binary, "--help"], capture_output=True, text=True).stdout
        part = text.split("SUBCOMMANDS:")[-1]
        _HELP[""] = [m.group(1) for m in re.finditer(r"^  ([a-z][a-z0-9-]+)\s", part, re.M)]
    return _HELP[""]


def options_of(binary, sub):
    if sub not in _HELP:
        text = subprocess.run([binary, sub, "--help"], capture_output=True, text=True).stdout
        opts = {}
        for m in re.finditer(r"^  (?:-\w, )?(--[a-z0-9-]+)(?: <([^>]+)>)?", text, re.M):
            if m.group(1) not in ("--help", "--version"):
                opts[m.group(1)] = m.group(2)          # None: a flag without a value
        _HELP[sub] = opts
    return _HELP[sub]


def baseline(base, d, sub):
    """A valid, quick command line of each subcommand."""
    model, data = os.path.join(base, "model"), os.path.join(base, "pretok.jsonl")
    adapter = os.path.join(base, "adapter")
    out = os.path.join(d, "out")
    return {
        "train": ["--model", model, "--data", data, "--output-dir", out, "--max-steps", "1", "--batch-size", "2",
                  "--max-seq-length", "16", "--lora-r", "2"],
        "eval": ["--model", model, "--data", data, "--max-seq-length", "16", "--limit", "2"],
        "generate": ["--model", model, "--prompt", "the river", "--max-new-tokens", "2"],
        "merge": ["--model", model, "--adapter", adapter, "--output", out],
        "export": ["--format", "gguf", "--model", model, "--output", os.path.join(d, "m.gguf"), "--check", "never"],
        "quantize": ["--model", model, "--output", out],
        "info": [model],
        "tokenize": ["--tokenizer", model, "--input", os.path.join(base, "tokenize.jsonl")],
        "plot": [os.path.join(base, "ck32")],
        "plan": ["--model", model, "--batch-size", "1", "--max-seq-length", "16"],
        "bench": ["--device", "cpu", "--layers", "1", "--steps", "1", "--warmup", "0", "--max-seq-length", "8",
                  "--batch-size", "1", "--shape", "smollm2-135m"],
        "bench-gemm": ["--rows", "8", "--tokens", "8", "--rank", "4", "--rounds", "1", "--seconds", "0.01"],
        "bench-quantize": ["--rows", "64", "--cols", "64"],
    }.get(sub, [])


OUTPUT_FLAGS = ("--output", "--output-dir", "--dot", "--logging-dir")
# Counts of work a user may ask for in earnest: 2^63 steps run for ever as asked, which is no hang.
WORK_FLAGS = ("--max-steps", "--num-train-epochs", "--gradient-accumulation-steps", "--steps", "--max-new-tokens",
              "--warmup", "--repeats", "--rounds", "--seconds", "--generate", "--limit")
BIG = ("2147483648", "9223372036854775807", "9223372036854775808", "1e400", "inf", "1e3", "1_000", "١")


def edge_value(rng, d, flag):
    r = rng.random()
    if r < 0.7:
        return rng.choice([v for v in EDGE_FLAGS if flag not in WORK_FLAGS or v not in BIG])
    special = os.path.join(d, "fifo")
    if not os.path.exists(special):
        os.mkfifo(special)
    paths = [d, special, os.path.join(d, "missing"), os.path.join(d, "missing", "deeper"), "latest", "a" * 5000, "-h"]
    # Devices and the root only where the command reads: this machine's /dev/null or / is never written
    if flag not in OUTPUT_FLAGS:
        paths += ["/dev/zero", "/dev/null", "/proc/self/mem", "/"]
    return rng.choice(paths)


def case_options(rng, base, d, binary):
    # bench-quantize always times a SmolLM2-shaped model (seconds in a release build, minutes in a debug one)
    subs = [s for s in subcommands(binary) if s not in ("check-cuda", "help", "bench-quantize")]
    sub = rng.choice(subs)
    opts = options_of(binary, sub)
    argv = list(baseline(base, d, sub))
    if sub == "plot":
        run = os.path.join(d, "run")
        copy_tree(argv[0], run)
        argv = [run]
    if not opts:
        return None
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        flag = rng.choice(list(opts))
        meta = opts[flag]
        if meta is None:
            argv += [flag] * rng.choice([1, 1, 2])
            continue
        value = edge_value(rng, d, flag)
        form = rng.random()
        if flag in argv and form < 0.5:
            i = argv.index(flag)
            argv[i + 1] = value                        # the baseline's value replaced
        elif form < 0.7:
            argv += [flag, value]
        elif form < 0.85:
            argv += [flag + "=" + value]
        elif form < 0.92:
            argv += [flag, value, flag, rng.choice(EDGE_FLAGS)]   # repeated
        else:
            argv += [flag]                             # no value at the end
    if sub in ("bench", "generate", "train", "eval", "quantize") and "--device" not in argv:
        argv += ["--device", "cpu"]
    watched = [os.path.join(base, "model"), os.path.join(base, "adapter")]
    return [sub] + argv, watched


KINDS = ["ckpt", "modelfiles", "options"]


def fold(message):
    return re.sub(r"\d+", "N", re.sub(r"/\S+", "PATH", message))[:200]


def main():
    args = fs.parse_args(__doc__.split("\n")[0], "/tmp/qlora-fuzz5", 200, KINDS)
    runner = fs.Runner(args)
    os.makedirs(args.work, exist_ok=True)
    base = build_base(runner, args.work)
    findings = os.path.join(args.work, "findings")
    errors_seen = {}
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
        try:
            made = case_options(rng, base, d, runner.binary) if kind == "options" else \
                globals()["case_" + kind](rng, base, d)
        except (ValueError, KeyError, TypeError, IndexError, AttributeError, OSError) as e:
            made = None           # a mutation this script cannot write (a bug here, not in qlora)
            if args.verbose:
                print("%s-%d skipped: %s: %s" % (kind, n, type(e).__name__, e))
        if made is None:
            counts["skipped"] = counts.get("skipped", 0) + 1
            shutil.rmtree(d, ignore_errors=True)
            continue
        argv, watched = made[0], made[1]
        prior = made[2] if len(made) > 2 else []
        before, before_prior = fs.fingerprint(watched), fs.fingerprint(prior)
        rc, out, err, secs = runner.run(argv, d)
        result = fs.classify(rc, out, err)
        if result == "error" and not err.strip():
            result = "crash"      # a failure with nothing said
        if result != "hang" and fs.fingerprint(watched) != before:
            result = "lost"
        if result in ("error", "crash") and fs.fingerprint(prior) != before_prior:
            result = "lost"
        counts[result] = counts.get(result, 0) + 1
        tag = "%s-%d" % (kind, n)
        if result == "error":
            said = [l for l in err.splitlines() if l.startswith("Error")] or \
                [l for l in err.splitlines() if l.strip() and not l.startswith(("Usage", "  See", "See ", "Help"))]
            key = (kind, fold(said[-1] if said else ""))
            if key not in errors_seen:
                errors_seen[key] = tag
                with open(os.path.join(args.work, "errors.txt"), "a") as f:
                    f.write("%s\t%s\n" % (tag, said[-1][:400] if said else ""))
        if args.verbose or result in ("crash", "hang", "lost"):
            tail = (out + err).strip().splitlines()[-3:]
            if result == "crash":
                tail = [l for l in (out + err).splitlines() if "runtime failure" in l or "Fatal error" in l
                        or (" at /" in l and "<compiler-generated>" not in l)][:3] or tail
            print("%-14s %-6s rc=%s %.1fs qlora %s" % (tag, result, rc, secs,
                                                       " ".join(shlex.quote(a) for a in argv))[:500])
            for line in tail:
                print("    " + line[:300])
            sys.stdout.flush()
        if result in ("crash", "hang", "lost"):
            fs.keep_finding(os.path.join(findings, tag), d, result, rc, args.seed, runner.binary, argv, out, err)
        else:
            shutil.rmtree(d, ignore_errors=True)
    print("summary:", json.dumps(counts, sort_keys=True))
    return 1 if any(counts.get(k, 0) for k in ("crash", "hang", "lost")) else 0


if __name__ == "__main__":
    sys.exit(main())
