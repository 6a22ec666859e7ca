#!/usr/bin/env python3
"""A seeded fuzzer of the qlora release binary aimed at what fuzz-cli.py, fuzz-structured.py and fuzz-commands.py
leave out: interruption, the file system, chat data, Jinja templates, recipes and the launchers.

  interrupt  train (checkpoints every step, TensorBoard sometimes), merge, quantize and export into folders that
             already hold a complete earlier output, stopped with SIGINT, SIGTERM or SIGKILL after a random delay;
             then the same command again (train: --resume-from-checkpoint latest). The earlier output must still be
             whole (each file the old one or the new one, complete), and the rerun must succeed.
  crashpoint with strace, the same commands stopped by SIGKILL exactly at the Nth call of unlink, rename, rmdir,
             openat or fsync (N from a seeded range): every point between two file-system steps, which a timed
             signal on a tiny model almost never hits. Checked as for interrupt.
  damaged    a run saved at every step, then its checkpoints damaged (a file removed, a truncated safetensors, bad
             or wrong-typed JSON in trainer_state.json, an empty folder, a file named like a checkpoint, odd step
             names) and resumed with 'latest': an error or a resume, never a crash, and metrics.jsonl kept.
  fs         output folders read-only, /dev/full, very long names, spaces/newlines/unicode in names, two runs at
             once into the same folder, an output folder removed mid-run, --logging-dir inside the run's folders.
  chat       chat `messages` / ShareGPT `conversations` with odd roles, system-only, empty or list content, tool
             calls, many turns, mixed record kinds, with --roles-to-train / --train-on-eos / --packing /
             --max-seq-length combinations and an --eval-data of another kind; pre-tokenized rows of unequal length.
  template   tokenizer_config.json chat templates from a small grammar of hostile constructs (recursive macros,
             huge ranges, string products, namespace(), loop.cycle, raise_exception, whitespace-only output).
  recipe     YAML recipes with anchors, aliases, merge keys, tags, several documents, keys twice, wrong types.
  launch     --devices / --nnodes / --node-rank / --rendezvous and RANK/WORLD_SIZE/MASTER_* on a CPU-only machine.

Outcome classes as in the other fuzzers: ok, error (exit 1..127), crash (a signal other than the one sent, exit
>= 128, or "Fatal error", "Segmentation", "Illegal instruction", "runtime failure" in the output), hang (timeout),
lost (an earlier complete output or an input changed or vanished). Reproducers under WORK/findings/KIND-N/.

Usage:
  python3 scripts/fuzz-interrupts.py [--binary .build/release/qlora] [--work /tmp/qlora-fuzz4] [--seed 1]
                                     [--cases 20] [--kinds interrupt,crashpoint,damaged,fs,chat,
                                     template,recipe,launch]
                                     [--timeout 60] [--memory-gib 8] [--only KIND-N] [--verbose]
Standard library only; reuses fuzz-structured.py's fixtures. One case at a time, under nice.
"""

import importlib.util
import json
import os
import random
import shlex
import shutil
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
_spec = importlib.util.spec_from_file_location("fuzz_structured", os.path.join(HERE, "fuzz-structured.py"))
fs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fs)

CRASH_MARKS = ("Fatal error", "Segmentation", "Illegal instruction", "Trace/breakpoint", "runtime failure")


def classify(rc, out, err, sent=None):
    text = out + err
    if rc is None:
        return "hang"
    if any(m in text for m in CRASH_MARKS):
        return "crash"
    if rc < 0 and -rc != sent:
        return "crash"
    if rc >= 128 and rc - 128 != sent:
        return "crash"
    if rc < 0 or rc >= 128:
        return "stopped"
    return "ok" if rc == 0 else "error"


def tree(path):
    """{relative path: sha or kind} of everything under path (the run lock left out)."""
    result = {}
    if not os.path.lexists(path):
        return result
    for root, dirs, files in os.walk(path):
        for name in files:
            p = os.path.join(root, name)
            rel = os.path.relpath(p, path)
            if name == ".qlora-run.lock":
                continue
            try:
                result[rel] = fs.hashlib.sha256(open(p, "rb").read()).hexdigest()
            except OSError as e:
                result[rel] = "error " + str(e)
    return result


class Case:
    def __init__(self, runner, d, base):
        self.runner, self.d, self.base = runner, d, base
        self.commands = []

    def run(self, argv, timeout=None, env=None):
        self.commands.append(argv)
        return self.runner.run(argv, self.d, timeout=timeout, extra_env=env)

    def run_killed(self, argv, delay, sig):
        """Starts argv, sends sig after delay seconds (to the process group); returns rc, out, err."""
        self.commands.append(["# killed with signal %d after %.2f s" % (sig, delay)] + argv)
        env = dict(os.environ, OPENBLAS_NUM_THREADS="1", QLORA_SHARED=fs.SHARED)

        def limits():
            fs.resource.setrlimit(fs.resource.RLIMIT_AS, (self.runner.memory, self.runner.memory))
            fs.resource.setrlimit(fs.resource.RLIMIT_CORE, (0, 0))
            os.setsid()
            os.nice(10)
        p = subprocess.Popen([self.runner.binary] + argv, cwd=self.d, stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=limits, env=env)
        try:
            out, err = p.communicate(timeout=delay)
            return p.returncode, out.decode(errors="replace"), err.decode(errors="replace")
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, sig)
        try:
            out, err = p.communicate(timeout=self.runner.timeout)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, 9)
            out, err = p.communicate()
            return None, out.decode(errors="replace"), err.decode(errors="replace")
        return p.returncode, out.decode(errors="replace"), err.decode(errors="replace")


def model_of(base):
    return os.path.join(base, "model")


# ---------------------------------------------------------------------------------------------------------------
# interrupt

def train_args(c, out, rng, steps):
    args = ["train", "--model", model_of(c.base), "--data", os.path.join(c.base, "plain.jsonl"), "--output-dir", out,
            "--max-steps", str(steps), "--save-steps", str(rng.choice([1, 1, 3])), "--logging-steps", "1"]
    if rng.random() < 0.5:
        args += ["--report-to", "tensorboard"]
    if rng.random() < 0.3:
        args += ["--save-total-limit", str(rng.choice([1, 2]))]
    if rng.random() < 0.3:
        args += ["--validation-split", "0.25", "--eval-steps", "1", "--load-best-model-at-end"]
    return args


def complete_checkpoints(out):
    good = {}
    for name in os.listdir(out) if os.path.isdir(out) else []:
        p = os.path.join(out, name)
        if name.startswith("checkpoint-") and ".tmp-" not in name:
            good[name] = tree(p)
    return good


def case_interrupt(rng, c):
    sig = rng.choice([signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
    what = rng.choice(["train", "train", "resume", "merge", "quantize", "export"])
    what = os.environ.get("FUZZ_INTERRUPT_WHAT", what)
    d = c.d
    if what in ("train", "resume"):
        out = os.path.join(d, "run")
        args = train_args(c, out, rng, rng.choice([60, 200, 400]))
        if what == "resume":
            rc, o, e, _ = c.run(args)
            if rc != 0:
                return "error", o + e
            before = tree(out)
            args = [a for a in args]
            args[args.index("--max-steps") + 1] = str(int(args[args.index("--max-steps") + 1]) + 200)
            args += ["--resume-from-checkpoint", "latest"]
        else:
            before = {}
        rc, o, e = c.run_killed(args, rng.uniform(0.05, 3.0), sig)
        kind = classify(rc, o, e, sig)
        if kind in ("crash", "hang"):
            return kind, o + e
        after = tree(out)
        # checkpoints complete before the kill must still be there, whole (unless rotated by the limit)
        for rel, h in before.items():
            if rel.startswith("checkpoint-") and rel in after and after[rel] != h and "--save-total-limit" not in args:
                pass  # rewritten by the resumed run: fine
        # resume from latest (or start again) must work
        again = [a for a in args if a != "--resume-from-checkpoint" and a != "latest"]
        has_ckpt = any(n.startswith("checkpoint-") and ".tmp-" not in n for n in
                       (os.listdir(out) if os.path.isdir(out) else []))
        metrics_before = open(os.path.join(out, "metrics.jsonl")).read() if os.path.exists(
            os.path.join(out, "metrics.jsonl")) else ""
        if has_ckpt:
            again += ["--resume-from-checkpoint", "latest"]
        elif metrics_before:
            again += ["--overwrite-output-dir"]
        rc2, o2, e2, _ = c.run(again)
        kind2 = classify(rc2, o2, e2)
        if kind2 != "ok":
            return ("lost" if kind2 == "error" else kind2), "rerun after the stop failed:\n" + o2 + e2
        left = [n for n in os.listdir(out) if ".tmp-" in n]
        if left:
            return "lost", "temporaries left after the rerun: %s\n%s" % (left, o2 + e2)
        return "ok", o2
    model = model_of(c.base)
    out = os.path.join(d, "out" + (".gguf" if what == "export" else ""))
    first_adapter = os.path.join(c.base, "adapter")
    if what == "merge":
        args1 = ["merge", "--model", model, "--adapter", first_adapter, "--output", out]
        args2 = args1 + ["--dtype", rng.choice(["bf16", "f16"])]
    elif what == "quantize":
        args1 = ["quantize", "--model", model, "--output", out]
        args2 = args1 + rng.choice([[], ["--quant-type", "fp4"]])
    else:
        args1 = ["export", "--model", model, "--output", out, "--check", "never"]
        args2 = args1 + ["--type", rng.choice(["q8_0", "f16"])]
    rc, o, e, _ = c.run(args1)
    if rc != 0:
        return "error", o + e
    old = tree(out) if os.path.isdir(out) else {"": fs.hashlib.sha256(open(out, "rb").read()).hexdigest()}
    new_out = os.path.join(d, "new" + (".gguf" if what == "export" else ""))
    rc, o, e, _ = c.run([new_out if a == out else a for a in args2])
    if rc != 0:
        return "error", o + e
    new = tree(new_out) if os.path.isdir(new_out) else {
        "": fs.hashlib.sha256(open(new_out, "rb").read()).hexdigest()}
    rc, o, e = c.run_killed(args2, rng.uniform(0.0, 0.12), sig)
    kind = classify(rc, o, e, sig)
    if kind in ("crash", "hang"):
        return kind, o + e
    now = tree(out) if os.path.isdir(out) else (
        {"": fs.hashlib.sha256(open(out, "rb").read()).hexdigest()} if os.path.exists(out) else {})
    now = {k: v for k, v in now.items() if ".tmp-" not in k}
    if now != old and now != new:
        mixed = sorted(k for k in set(now) | set(old) | set(new) if now.get(k) not in (old.get(k), new.get(k))
                       or (now.get(k) == new.get(k) != old.get(k)))
        return "lost", "after %s the output is neither the old nor the new one: %s\n%s" % (kind, mixed, o + e)
    return "ok", ""


# ---------------------------------------------------------------------------------------------------------------
# crash points: SIGKILL injected by strace at the Nth call of one file-system syscall

SYSCALLS = ["unlink"] * 3 + ["rename"] * 2 + ["rmdir", "openat", "fsync", "unlinkat", "renameat2"]


def checkpoint_complete(path):
    return all(os.path.exists(os.path.join(path, f)) for f in
               ["adapter_model.safetensors", "adapter_config.json", "optimizer.safetensors", "trainer_state.json"])


def crashpoint_output(rng, c):
    """quantize, merge or export into a new --output stopped at a file-system call: --output is then absent or
    whole (what an uninterrupted run writes), and the same command again succeeds or finds it whole."""
    model = model_of(c.base)
    what = rng.choice(["quantize", "merge", "export"])
    out = os.path.join(c.d, "out" + (".gguf" if what == "export" else "") + rng.choice(["", "", "/"]) * (
        what != "export"))
    args = {"quantize": ["quantize", "--model", model, "--output", out],
            "merge": ["merge", "--model", model, "--adapter", os.path.join(c.base, "adapter"), "--output", out],
            "export": ["export", "--model", model, "--output", out, "--check", "never"]}[what]
    reference = os.path.join(c.d, "reference" + (".gguf" if what == "export" else ""))
    rc, o, e, _ = c.run([reference if a == out else a for a in args])
    if rc != 0:
        return "error", o + e
    whole = sorted(tree(reference)) if os.path.isdir(reference) else None
    call, when = rng.choice(["rename", "rename", "unlink", "openat", "fsync", "mkdir", "rmdir"]), rng.randrange(1, 12)
    argv = ["strace", "-f", "-o", "/dev/null", "-e", "trace=" + call,
            "-e", "inject=%s:signal=KILL:when=%d" % (call, when), c.runner.binary] + args
    c.commands.append(argv)
    p = subprocess.run(argv, cwd=c.d, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=c.runner.timeout)
    o, e = p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace")
    if classify(p.returncode, o, e, signal.SIGKILL) == "crash":
        return "crash", o + e
    if os.path.isdir(out) and whole is not None:
        now = sorted(k for k in tree(out) if ".tmp-" not in k)
        if now and now != whole:
            return "lost", "%s %s=%d: --output holds a partial model %s (whole: %s)\n%s" % (what, call, when, now,
                                                                                        whole, o + e)
    rc, o2, e2, _ = c.run(args)
    if rc != 0 and not ("already holds" in o2 + e2 and os.path.isdir(out)):
        return ("lost" if classify(rc, o2, e2) == "error" else classify(rc, o2, e2)), \
            "%s %s=%d, then the rerun failed:\n%s" % (what, call, when, o2 + e2)
    return "ok", "%s %s=%d" % (what, call, when)


def case_crashpoint(rng, c):
    if not shutil.which("strace"):
        return "ok", "no strace"
    if rng.random() < 0.4:
        return crashpoint_output(rng, c)
    out = os.path.join(c.d, "run")
    data = os.path.join(c.base, "plain.jsonl")
    base = ["train", "--model", model_of(c.base), "--data", data, "--output-dir", out, "--save-steps", "1"]
    if rng.random() < 0.5:
        base += ["--report-to", "tensorboard"]
    limit = rng.random() < 0.3
    if limit:
        base += ["--save-total-limit", "2"]
    rc, o, e, _ = c.run(base + ["--max-steps", "4"])
    if rc != 0:
        return "error", o + e
    before = {n: tree(os.path.join(out, n)) for n in os.listdir(out) if n.startswith("checkpoint-")}
    resume_from = rng.choice(["checkpoint-2", "checkpoint-3"]) if not limit else "checkpoint-4"
    call, when = rng.choice(SYSCALLS), rng.randrange(1, 20)
    argv = ["strace", "-f", "-o", "/dev/null", "-e", "trace=" + call,
            "-e", "inject=%s:signal=KILL:when=%d" % (call, when), c.runner.binary]
    argv += base + ["--max-steps", "4", "--resume-from-checkpoint", os.path.join(out, resume_from)]
    c.commands.append(argv)
    p = subprocess.run(argv, cwd=c.d, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=c.runner.timeout)
    o, e = p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace")
    if classify(p.returncode, o, e, signal.SIGKILL) in ("crash",):
        return "crash", o + e
    # every checkpoint that was complete is still complete, or a complete replacement waits beside it
    for name in before:
        path = os.path.join(out, name)
        if not checkpoint_complete(path) and not limit:
            aside = [n for n in os.listdir(out) if n.startswith(name + ".") and
                     checkpoint_complete(os.path.join(out, n))]
            if not aside:
                return "lost", "%s=%d: %s is no longer complete, nothing complete beside it\n%s" % (
                    call, when, name, o + e)
    again = base + ["--max-steps", "6", "--resume-from-checkpoint", "latest"]
    rc, o2, e2, _ = c.run(again)
    if rc != 0:
        return ("lost" if classify(rc, o2, e2) == "error" else classify(rc, o2, e2)), \
            "%s=%d, then the latest resume failed:\n%s" % (call, when, o2 + e2)
    for name in before:
        if name != "checkpoint-4" and not limit and not checkpoint_complete(os.path.join(out, name)):
            return "lost", "%s=%d: %s incomplete after the rerun\n%s" % (call, when, name, o2 + e2)
    # checkpoint temporaries must be cleaned (a file's own temporary, metrics.jsonl.tmp-PID, is only ignored)
    left = [n for n in os.listdir(out) if n.startswith("checkpoint-") and (".tmp-" in n or ".old-" in n)]
    if left:
        return "lost", "%s=%d: left %s after the rerun\n%s" % (call, when, left, o2 + e2)
    return "ok", "%s=%d %s" % (call, when, (o + e).strip().splitlines()[-1:] if (o + e).strip() else "")


# ---------------------------------------------------------------------------------------------------------------
# damaged checkpoints

def damage(rng, out):
    names = sorted(n for n in os.listdir(out) if n.startswith("checkpoint-"))
    target = os.path.join(out, names[-1])
    how = rng.choice(["rm-adapter", "rm-optimizer", "rm-state", "rm-config", "trunc-adapter", "trunc-optimizer",
                      "bad-json", "state-types", "empty-dir", "file", "odd-name", "huge-step", "order"])
    state = os.path.join(target, "trainer_state.json")
    if how.startswith("rm-"):
        f = {"rm-adapter": "adapter_model.safetensors", "rm-optimizer": "optimizer.safetensors",
             "rm-state": "trainer_state.json", "rm-config": "adapter_config.json"}[how]
        os.remove(os.path.join(target, f))
    elif how.startswith("trunc-"):
        f = os.path.join(target, "adapter_model.safetensors" if how == "trunc-adapter" else "optimizer.safetensors")
        size = os.path.getsize(f)
        with open(f, "r+b") as h:
            h.truncate(rng.choice([0, 4, 8, 9, size // 2, size - 1]))
    elif how == "bad-json":
        text = open(state).read()
        open(state, "w").write(text[:rng.randrange(len(text))])
    elif how == "state-types":
        s = json.load(open(state))
        key = rng.choice(list(s))
        s[key] = rng.choice([None, "x", -1, 2**63, 1e308, [], {}, [-1], [2**40], True, 0.5])
        json.dump(s, open(state, "w"))
    elif how == "empty-dir":
        os.makedirs(os.path.join(out, "checkpoint-999"))
    elif how == "file":
        open(os.path.join(out, "checkpoint-999"), "w").write("x")
    elif how == "odd-name":
        shutil.copytree(target, os.path.join(out, rng.choice(["checkpoint-+99", "checkpoint--1", "checkpoint-0099",
                                                              "checkpoint-9223372036854775807"])))
    elif how == "huge-step":
        s = json.load(open(state))
        s["global_step"] = rng.choice([2**62, 10**6, 0, -3])
        json.dump(s, open(state, "w"))
    else:
        s = json.load(open(state))
        s["data_order"] = rng.choice([[], [0] * 100000, list(range(7, -1, -1)), [2**62]])
        json.dump(s, open(state, "w"))
    return how


def case_damaged(rng, c):
    out = os.path.join(c.d, "run")
    args = train_args(c, out, rng, 3)
    rc, o, e, _ = c.run(args)
    if rc != 0:
        return "error", o + e
    how = damage(rng, out)
    metrics = open(os.path.join(out, "metrics.jsonl")).read()
    args[args.index("--max-steps") + 1] = "5"
    rc, o, e, _ = c.run(args + ["--resume-from-checkpoint", "latest"])
    kind = classify(rc, o, e)
    if kind == "error" and open(os.path.join(out, "metrics.jsonl")).read() != metrics:
        return "lost", how + ": a failed resume changed metrics.jsonl\n" + o + e
    return kind, how + "\n" + o + e


# ---------------------------------------------------------------------------------------------------------------
# file system

def case_fs(rng, c):
    model, data = model_of(c.base), os.path.join(c.base, "plain.jsonl")
    how = rng.choice(["readonly", "devfull", "longname", "oddname", "twice", "readonly-ckpt", "gone", "logdir"]
                     if os.geteuid() else ["devfull", "longname", "oddname", "twice", "gone", "logdir", "logdir"])
    base = ["train", "--model", model, "--data", data, "--max-steps", "2", "--save-steps", "1"]
    if how == "readonly":
        out = os.path.join(c.d, "ro")
        os.makedirs(out)
        os.chmod(out, 0o555)
        rc, o, e, _ = c.run(base + ["--output-dir", out])
        os.chmod(out, 0o755)
        return classify(rc, o, e), o + e
    if how == "readonly-ckpt":
        out = os.path.join(c.d, "run")
        rc, o, e, _ = c.run(base + ["--output-dir", out])
        for n in os.listdir(out):
            os.chmod(os.path.join(out, n), 0o555 if os.path.isdir(os.path.join(out, n)) else 0o444)
        before = tree(out)
        rc, o, e, _ = c.run(base + ["--output-dir", out, "--max-steps", "4", "--resume-from-checkpoint", "latest"])
        for root, dirs, files in os.walk(out):
            for n in dirs:
                os.chmod(os.path.join(root, n), 0o755)
        return classify(rc, o, e), o + e
    if how == "logdir":
        out = os.path.join(c.d, "run")
        logs = rng.choice([os.path.join(out, "checkpoint-1"), os.path.join(out, "checkpoint-2", "x"),
                           os.path.join(out, "best"), out, os.path.join(out, "runs"), os.path.join(c.d, "logs")])
        extra = ["--validation-split", "0.25", "--eval-steps", "1", "--load-best-model-at-end"] * (
            rng.random() < 0.4) + ["--save-total-limit", "1"] * (rng.random() < 0.4)
        rc, o, e, _ = c.run(base + ["--output-dir", out, "--max-steps", "3", "--logging-steps", "1",
                                    "--report-to", "tensorboard", "--logging-dir", logs] + extra)
        kind = classify(rc, o, e)
        events = [f for root, _, files in os.walk(c.d) for f in files if f.startswith("events.out.tfevents")]
        if kind == "ok" and not events:
            return "lost", "the run succeeded, its TensorBoard events under %s are gone\n%s" % (logs, o + e)
        return kind, o + e
    if how == "devfull":
        cmd = rng.choice([["export", "--model", model, "--output", "/dev/full", "--check", "never"],
                          ["info", model, "--dot", "/dev/full"],
                          ["plot", "/dev/full"]])
        rc, o, e, _ = c.run(cmd)
        return classify(rc, o, e), o + e
    if how == "longname":
        out = c.d
        while len(out) < rng.choice([250, 4000, 5000]):
            out = os.path.join(out, "d" * rng.choice([200, 240, 250]))
        cmd = rng.choice([base + ["--output-dir", out],
                          ["merge", "--model", model, "--adapter", os.path.join(c.base, "adapter"), "--output", out],
                          ["quantize", "--model", model, "--output", out]])
        rc, o, e, _ = c.run(cmd)
        return classify(rc, o, e), o + e
    if how == "oddname":
        name = rng.choice(["a b", "new\nline", "\u00e9\u4e2d\U0001f600", "-dash", "tab\there", "%s%n", "..."])
        out = os.path.join(c.d, name)
        cmd = rng.choice([base + ["--output-dir", out, "--report-to", "tensorboard"],
                          ["merge", "--model", model, "--adapter", os.path.join(c.base, "adapter"), "--output", out],
                          ["export", "--model", model, "--output", out + ".gguf", "--check", "never"]])
        rc, o, e, _ = c.run(cmd)
        return classify(rc, o, e), o + e
    if how == "gone":
        out = os.path.join(c.d, "run")
        p = subprocess.Popen([c.runner.binary] + base[:-4] + ["--max-steps", "300", "--save-steps", "1",
                                                              "--output-dir", out],
                             cwd=c.d, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        c.commands.append(base + ["--output-dir", out, "# removed after a delay"])
        time.sleep(rng.uniform(1, 4))
        shutil.rmtree(out, ignore_errors=True)
        try:
            o, e = p.communicate(timeout=c.runner.timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            o, e = p.communicate()
            return "hang", ""
        return classify(p.returncode, o.decode(errors="replace"), e.decode(errors="replace")), e.decode()
    out = os.path.join(c.d, "run")
    args = base[:-4] + ["--max-steps", "300", "--save-steps", "2", "--output-dir", out]
    p1 = subprocess.Popen([c.runner.binary] + args, cwd=c.d, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(rng.uniform(0.2, 1))
    rc, o, e, _ = c.run(args + ["--overwrite-output-dir"])
    o1, e1 = p1.communicate(timeout=300)
    k1 = classify(p1.returncode, o1.decode(errors="replace"), e1.decode(errors="replace"))
    k2 = classify(rc, o, e)
    if "crash" in (k1, k2):
        return "crash", o + e + e1.decode()
    if k1 == "ok" and k2 == "ok":
        return "lost", "two runs into one folder both succeeded\n" + o + e
    return "ok", o + e


# ---------------------------------------------------------------------------------------------------------------
# chat data

ROLES = ["user", "assistant"] * 4 + ["system", "tool", "function", "ipython", "", "USER", "gpt", "human", "\u00e9"]


def message(rng):
    m = {"role": rng.choice(ROLES)}
    r = rng.random()
    if r < 0.9:
        m["content"] = rng.choice(["", " ", "the river", "x" * rng.choice([1, 50, 3000]), "</s>", "<s>"])
    elif r < 0.95:
        m["content"] = [{"type": "text", "text": "a"}, {"type": "image"}]
    elif r < 0.97:
        m["content"] = rng.choice([None, 3, {"a": 1}, [], True])
    if rng.random() < 0.15:
        m["tool_calls"] = [{"type": "function", "function": {"name": "f", "arguments": {"x": 1}}}]
    return m


def chat_record(rng):
    kind = rng.choice(["messages", "messages", "conversations", "text", "prompt", "pretok", "mixed-key"])
    n = rng.choice([0, 1, 2, 3, 7, 500])
    if kind == "messages":
        msgs = [message(rng) for _ in range(n)]
        if rng.random() < 0.2:
            msgs = [{"role": "system", "content": "only"}]
        return {"messages": msgs}
    if kind == "conversations":
        return {"conversations": [{"from": rng.choice(["human", "gpt", "system", "tool", "x"]),
                                   "value": rng.choice(["", "the river", None, 5])} for _ in range(n)]}
    if kind == "text":
        return {"text": rng.choice(["", "the river rose", "a" * 5000])}
    if kind == "prompt":
        return {"prompt": rng.choice(["", "q"]), "completion": rng.choice(["", "a", " b"])}
    if kind == "pretok":
        k = rng.choice([0, 1, 5, 40])
        ids = [rng.randrange(384) for _ in range(k)]
        labels = rng.choice([ids, [-100] * k, ids[:-1], ids + [1], [-100] * (k + 2), [400] * k])
        return {"input_ids": ids, "labels": labels}
    return {"messages": [message(rng)], "text": "both"}


def case_chat(rng, c):
    records = [chat_record(rng) for _ in range(rng.choice([1, 2, 4, 8]))]
    path = os.path.join(c.d, "data" + rng.choice([".jsonl", ".json", ".txt"]))
    if path.endswith(".json") and rng.random() < 0.7:
        fs.write_bytes(path, json.dumps(records).encode())
    else:
        fs.write_bytes(path, "".join(json.dumps(r) + "\n" for r in records).encode())
    args = ["train", "--model", model_of(c.base), "--data", path, "--output-dir", os.path.join(c.d, "run"),
            "--max-steps", "1"]
    if rng.random() < 0.4:
        args += ["--roles-to-train", rng.choice(["assistant", "user,assistant", "system", "tool", "", ",", "gpt"])]
    if rng.random() < 0.4:
        args += ["--train-on-eos", rng.choice(["turn", "last", "all", "none"])]
    if rng.random() < 0.3:
        args += ["--packing"]
    if rng.random() < 0.3:
        args += ["--padding-free"]
    if rng.random() < 0.5:
        args += ["--max-seq-length", str(rng.choice([1, 2, 3, 8, 64]))]
    if rng.random() < 0.3:
        args += ["--train-on-inputs"]
    if rng.random() < 0.3:
        args += ["--batch-size", str(rng.choice([1, 3, 16]))]
    if rng.random() < 0.3:
        ev = os.path.join(c.d, "eval.jsonl")
        fs.write_bytes(ev, "".join(json.dumps(chat_record(rng)) + "\n" for _ in range(2)).encode())
        args += ["--eval-data", ev]
    rc, o, e, _ = c.run(args)
    return classify(rc, o, e), o + e


# ---------------------------------------------------------------------------------------------------------------
# templates

TEMPLATE_PARTS = [
    "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
    "{% macro f(n) %}{% if n > 0 %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}x{% endmacro %}{{ f(40) }}",
    "{% for i in range(1000000) %}{% for j in range(1000000) %}{% endfor %}{% endfor %}",
    "{% for i in range(9223372036854775807) %}{% endfor %}",
    "{% for i in range(-9223372036854775807, 9223372036854775807, 3) %}{% endfor %}",
    "{{ 'x' * 9223372036854775807 }}", "{{ 'xy' * 4611686018427387904 }}", "{{ [1] * 100000000 }}",
    "{{ ('a' * 1000000) ~ ('a' * 1000000) }}",
    "{% set ns = namespace(a=[]) %}{% for m in messages %}{% set ns.a = ns.a + [m] %}{% endfor %}{{ ns.a|length }}",
    "{% for m in messages %}{{ loop.cycle('a', 'b') }}{{ loop.previtem }}{{ loop.nextitem }}{% endfor %}",
    "{{ raise_exception('no') }}", "{{ raise_exception() }}", "{{ raise_exception(messages) }}",
    "   \n\t ", "", "{{ '' }}", "{% if false %}x{% endif %}",
    "{{ messages|tojson(indent=100000) }}", "{{ messages|tojson(indent=-5) }}",
    "{{ 3|upper }}", "{{ none|length }}", "{{ messages|join(3) }}", "{{ 'a'|replace('', 'bb') }}",
    "{{ ('a' * 100000)|replace('a', 'aaaaaaaaaa') }}", "{{ ('a' * 100000)|replace('', 'aaaaaaaaaa') }}",
    "{{ messages[0]['content'][::-1] }}", "{{ messages[-9223372036854775807] }}",
    "{{ 'abc'[9223372036854775807:] }}", "{{ 'abc'[::-9223372036854775807] }}", "{{ 'abc'[::0] }}",
    "{{ (2 ** 62) * 4 }}", "{{ -9223372036854775807 - 1 }}", "{{ (-9223372036854775807 - 1) // -1 }}",
    "{{ (-9223372036854775807 - 1) % -1 }}", "{{ 9223372036854775807 + 1 }}", "{{ 1e308 * 10 }}",
    "{{ (1e308 * 10)|int }}", "{{ (0.0/1)|round(400) }}", "{{ 1.5|round(-400) }}",
    "{{ 'x'|center(9223372036854775807) }}", "{{ 'x'|indent(9223372036854775807) }}",
    "{{ range(5)|batch(0) }}", "{{ range(5)|slice(0) }}", "{{ 'a'|wordwrap(0) }}",
    "{{ 'a b'.split(' ', -9223372036854775807) }}", "{{ 'a'.ljust(9223372036854775807) }}",
    "{{ 'a'.zfill(9223372036854775807) }}", "{{ '%d'|format(1) }}", "{{ '%s%s%s'|format(1) }}",
    "{{ '{}'.format(1) }}", "{{ messages|map(attribute='role')|list }}", "{{ messages|selectattr('x', 'eq')|list }}",
    "{{ messages|sort(attribute='content')|list }}", "{{ [1, 'a', none]|sort }}", "{{ [1, 'a']|max }}",
    "{{ [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]] }}",
    "{{ " + "(" * 600 + "1" + ")" * 600 + " }}", "{% if x %}" * 300 + "{% endif %}" * 300,
    "{{ " + "not " * 5000 + "1 }}", "{{ " + "- " * 5000 + "1 }}", "{{ " + "1 + " * 3000 + "1 }}",
    "{{ " + "a." * 3000 + "b }}", "{{ " + "x|upper" + "|upper" * 5000 + " }}",
    "{% set x = [] %}{% for i in range(20) %}{% set x = x + x + [i] %}{% endfor %}{{ x|length }}",
    "{% set d = {} %}{% for i in range(100) %}{% set d = {'a': d} %}{% endfor %}{{ d }}",
    "{% set x = [] %}{% for i in range(100) %}{% set x = [x] %}{% endfor %}{{ x }}",
    "{{ messages|tojson }}{{ messages|items }}{{ {'a':1}|items|list }}{{ {'a':1}|dictsort }}",
    "{% for k, v in messages %}{% endfor %}", "{% for a, b in [[1]] %}{% endfor %}",
    "{% generation %}x{% endgeneration %}", "{% filter upper %}x{% endfilter %}", "{% call f() %}x{% endcall %}",
    "{{ bos_token * 300000 }}", "{{ eos_token }}{{ eos_token }}", "{{ '<s>' * 50000 }}",
    "{{ messages|first|attr('content') }}", "{{ strftime_now('%Y' * 10000) }}", "{{ strftime_now('%') }}",
    "{{ x.y.z }}", "{{ none.x }}", "{{ undefined_thing() }}", "{{ messages() }}", "{{ 'a'() }}",
    "{{ range(3)|unique|list }}", "{{ 'a'|truncate(-5) }}", "{{ 'a'|truncate(9223372036854775807) }}",
    "{{ [1,2]|random }}", "{{ 'aaa'.count('') }}", "{{ 'aaa'.find('', 9223372036854775807) }}",
    "{{ 'aaa'.startswith(('a', 3)) }}", "{{ 'é中😀'|list }}", "{{ 'é中😀'[1] }}", "{{ 'é中😀'|reverse }}",
]


def case_template(rng, c):
    model = os.path.join(c.d, "model")
    fs.copy_tree(model_of(c.base), model)
    tpl = "".join(rng.choice(TEMPLATE_PARTS) for _ in range(rng.choice([1, 1, 2, 3])))
    if rng.random() < 0.5:
        tpl = fs.CHAT_TEMPLATE + tpl
    fs.write_json(os.path.join(model, "tokenizer_config.json"),
                  {"bos_token": "<s>", "eos_token": "</s>", "chat_template": tpl})
    data = os.path.join(c.d, "chat.jsonl")
    msgs = [{"role": "user", "content": "the river"}, {"role": "assistant", "content": "rose"}]
    fs.write_bytes(data, (json.dumps({"messages": msgs}) + "\n").encode())
    args = rng.choice([
        ["train", "--model", model, "--data", data, "--output-dir", os.path.join(c.d, "run"), "--max-steps", "1"],
        ["generate", "--model", model, "--prompt", "the river", "--chat", "--max-new-tokens", "2"],
        ["eval", "--model", model, "--data", data],
    ])
    rc, o, e, _ = c.run(args)
    return classify(rc, o, e), o + e


# ---------------------------------------------------------------------------------------------------------------
# recipes

RECIPE_SNIPPETS = [
    "base: &b\n  learning_rate: 0.001\n  max_steps: 1\n<<: *b\n",
    "a: &a 1\nmax_steps: *a\n",
    "max_steps: !!int 1\n", "max_steps: !!str 1\n", "max_steps: !!float 1.5\n", "max_steps: !!binary aGk=\n",
    "max_steps: !custom 1\n", "max_steps: 1\n---\nmax_steps: 2\n", "---\n...\n", "max_steps: 1\nmax_steps: 2\n",
    "max_steps: [1, 2]\n", "max_steps: {a: 1}\n", "max_steps: ~\n", "max_steps: 1e400\n", "max_steps: .inf\n",
    "max_steps: 0x10\n", "max_steps: 9223372036854775808\n", "max_steps: -1\n",
    "learning_rate: .nan\n", "learning_rate: yes\n", "lora_r: 1e3\n", "lora_alpha: -.inf\n",
    "lora_target_modules: all-linear\n", "lora_target_modules: [q_proj, q_proj]\n", "lora_target_modules: []\n",
    "lora_target_modules: {q_proj: 1}\n", "target_modules: 5\n",
    "datasets:\n  - path: DATA\n    type: chat_template\n", "datasets: *x\n", "a: &x [*x]\n",
    "a: &a [1]\nb: &b [*a, *a]\nc: &c [*b, *b]\nd: &d [*c, *c]\ne: &e [*d, *d]\nf: &f [*e, *e]\n"
    "g: &g [*f, *f]\nh: &h [*g, *g]\ni: &i [*h, *h]\nj: [*i, *i, *i, *i, *i, *i, *i, *i, *i]\n",
    "save_steps: 0.5\n", "eval_steps: 0\n", "per_device_train_batch_size: 0\n", "gradient_accumulation_steps: 1e9\n",
    "warmup_ratio: 2\n", "max_seq_length: 1\n", "sequence_len: 0\n", "output_dir: ''\n", "output_dir: /dev/null\n",
    "resume_from_checkpoint: latest\n", "resume_from_checkpoint: true\n", "report_to: [tensorboard, wandb]\n",
    "report_to: 3\n", "seed: -1\n", "seed: 18446744073709551616\n", "num_train_epochs: 1e-300\n",
    "lr_scheduler_type: [cosine]\n", "optim: paged_adamw_8bit\n", "bf16: maybe\n", "\t max_steps: 1\n",
    "? [a, b]\n: 1\n", "'max_steps': 1\n", "max_steps: 1 # c\n", "{max_steps: 1}\n", "[1, 2]\n", "\"x\"\n",
    "\ufeffmax_steps: 1\n", "max_steps: |\n  1\n", "max_steps: >\n  1\n", "- a\n- b\n", "a: b: c\n", ":\n",
    "&a a: 1\n", "*a\n", "!!map {}\n", "max_steps: &a\n", "x: " + "[" * 3000 + "]" * 3000 + "\n",
    "x: " + "{a: " * 3000 + "1" + "}" * 3000 + "\n", "x:\n" + "".join("  " * i + "- \n" for i in range(2000)),
]


def case_recipe(rng, c):
    path = os.path.join(c.d, "recipe" + rng.choice([".yaml", ".yml", ".json"]))
    text = "".join(rng.choice(RECIPE_SNIPPETS) for _ in range(rng.choice([1, 2, 3])))
    text = text.replace("DATA", os.path.join(c.base, "plain.jsonl"))
    fs.write_bytes(path, text.encode())
    args = ["train", "--config", path, "--model", model_of(c.base), "--data", os.path.join(c.base, "plain.jsonl"),
            "--output-dir", os.path.join(c.d, "run")]
    if rng.random() < 0.7:
        args += ["--max-steps", "1"]
    rc, o, e, _ = c.run(args)
    return classify(rc, o, e), o + e


# ---------------------------------------------------------------------------------------------------------------
# launchers

def case_launch(rng, c):
    args = ["train", "--model", model_of(c.base), "--data", os.path.join(c.base, "plain.jsonl"), "--output-dir",
            os.path.join(c.d, "run"), "--max-steps", "1"]
    env = {}
    r = rng.random()
    if r < 0.5:
        args += ["--devices", rng.choice(["1", "2", "all", "65536"])]
        if rng.random() < 0.5:
            n = rng.choice([2, 3])
            args += ["--nnodes", str(n), "--node-rank", str(rng.randrange(n))]
        if rng.random() < 0.7:
            args += ["--rendezvous", rng.choice(["tcp:127.0.0.1:29511", "file:" + os.path.join(c.d, "rdv"),
                                                 "tcp:[::1]:29512", "tcp:nohost.invalid:1"])]
    else:
        w = rng.choice([2, 3])
        env = {"RANK": str(rng.randrange(w)), "WORLD_SIZE": str(w), "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": str(rng.choice([29513, 1]))}
        if rng.random() < 0.5:
            env = {"QLORA_RANK": env["RANK"], "QLORA_WORLD_SIZE": str(w),
                   "QLORA_RENDEZVOUS": rng.choice([os.path.join(c.d, "rdv"), "tcp:127.0.0.1:29514"])}
    if rng.random() < 0.3:
        args[0] = "bench"
        args = ["bench", "--model", model_of(c.base), "--steps", "1"] + args[args.index("--max-steps") + 2:]
    started = time.time()
    rc, o, e, _ = c.run(args, env=env)
    kind = classify(rc, o, e)
    if kind != "hang" and time.time() - started > 30:
        return "hang", "took %.0f s to fail\n" % (time.time() - started) + o + e
    return kind, o + e


KINDS = {"interrupt": case_interrupt, "crashpoint": case_crashpoint, "damaged": case_damaged, "fs": case_fs,
         "chat": case_chat,
         "template": case_template, "recipe": case_recipe, "launch": case_launch}


def main():
    args = fs.parse_args(__doc__.split("\n")[0], "/tmp/qlora-fuzz4", 20, KINDS)
    runner = fs.Runner(args)
    os.makedirs(args.work, exist_ok=True)
    base = fs.build_base(runner, args.work)
    plain = os.path.join(base, "plain.jsonl")
    if not os.path.exists(plain):
        words = fs.TEXT.split()
        fs.write_bytes(plain, "".join(json.dumps({"text": " ".join(words[i:i + 6])}) + "\n"
                                      for i in range(0, 48, 6)).encode())
    counts = {}
    for kind in args.kinds.split(","):
        for n in range(args.cases):
            name = "%s-%d" % (kind, n)
            if args.only and args.only != name:
                continue
            rng = random.Random("%d-%s" % (args.seed, name))
            d = os.path.join(args.work, "cases", name)
            shutil.rmtree(d, ignore_errors=True)
            os.makedirs(d)
            c = Case(runner, d, base)
            started = time.time()
            outcome, detail = KINDS[kind](rng, c)
            counts[outcome] = counts.get(outcome, 0) + 1
            line = "%-14s %-8s %5.1fs" % (name, outcome, time.time() - started)
            print(line + ("  " + detail.strip().splitlines()[-1][:150] if detail.strip() and
                          (args.verbose or outcome not in ("ok", "error")) else ""), flush=True)
            if outcome in ("crash", "hang", "lost"):
                keep = os.path.join(args.work, "findings", name)
                shutil.rmtree(keep, ignore_errors=True)
                shutil.copytree(d, keep, symlinks=True, ignore_dangling_symlinks=True)
                with open(os.path.join(keep, "cmd.sh"), "w") as f:
                    f.write("#!/bin/sh\n# %s\n" % outcome + "".join(
                        " ".join(shlex.quote(a) for a in cmd) + "\n" for cmd in c.commands))
                    f.write("# output tail:\n" + "".join("# " + l + "\n" for l in detail[-3000:].splitlines()))
            else:
                shutil.rmtree(d, ignore_errors=True)
    print(json.dumps(counts))
    return 1 if any(counts.get(k, 0) for k in ("crash", "hang", "lost")) else 0


if __name__ == "__main__":
    sys.exit(main())
