#!/usr/bin/env python3
"""A built training binary against `graft train` on the same spec, data and seed, paired.

For each spec: the time `graft build` takes with a cold cache (the optimizer and every kernel
compiled) and a warm one (the optimized step cached), the binary's size (and stripped), the
time from starting a process to its first step's line, and the median step time; the start-up
and step figures alternate the binary and `graft train` (with its kernel cache warm) over
`--rounds` rounds, so drift in the machine's speed hits both alike.

    python3 scripts/bench_build.py [--graft target/release/graft] [--rounds 5] [--steps 30]

Needs a release build of graft and of the runner library beside it:
    cargo build --release -p graft-cli -p graft-runner
Only Python's standard library is used.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(REPO, "dsl-examples/data/tiny_tokens.jsonl")
SPECS = {
    "tiny": "dsl-examples/tiny_lora.graft",
    "small": "dsl-examples/small_lora.graft",
}


def env(cache):
    e = dict(os.environ)
    e["GRAFT_STDLIB"] = os.path.join(REPO, "stdlib")
    e["GRAFT_CACHE_DIR"] = cache
    return e


def timed(cmd, cache):
    start = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, env=env(cache), check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def first_step_and_steps(cmd, cache, metrics):
    """Seconds from spawning `cmd` to its first `step` line; the run's step seconds."""
    if os.path.exists(metrics):
        os.remove(metrics)
    start = time.perf_counter()
    p = subprocess.Popen(cmd, cwd=REPO, env=env(cache), stdout=subprocess.PIPE, text=True)
    first = None
    for line in p.stdout:
        if first is None and line.startswith("step "):
            first = time.perf_counter() - start
    if p.wait() != 0:
        sys.exit(f"{cmd[0]} failed")
    steps = [
        r["seconds"]
        for r in map(json.loads, open(metrics))
        if r.get("kind") == "train"
    ]
    return first, steps[1:]  # the first step pays for page faults and packing


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--graft", default=os.path.join(REPO, "target/release/graft"))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--specs", default="tiny,small")
    a = ap.parse_args()
    graft = os.path.abspath(a.graft)
    rows = []
    for name in a.specs.split(","):
        work = tempfile.mkdtemp(prefix=f"bench-build-{name}-")
        spec = spec_with_data(SPECS[name], work)
        cache = os.path.join(work, "cache")
        binary = os.path.join(work, "train")
        cold = timed([graft, "build", spec, "-o", binary], cache)
        warm = timed([graft, "build", spec, "-o", binary], cache)
        size = os.path.getsize(binary)
        stripped = os.path.join(work, "stripped")
        subprocess.run(["strip", "-o", stripped, binary], check=True)
        common = ["--steps", str(a.steps), "--seed", "1"]
        # Warm graft train's kernel cache once, outside the measurement.
        subprocess.run(
            [graft, "train", spec, "--steps", "1"],
            cwd=REPO, env=env(cache), check=True, stdout=subprocess.DEVNULL,
        )
        sides = {"binary": ([], []), "graft train": ([], [])}
        for r in range(a.rounds):
            order = ["binary", "graft train"] if r % 2 == 0 else ["graft train", "binary"]
            for side in order:
                m = os.path.join(work, "m.jsonl")
                if side == "binary":
                    cmd = [binary, "--metrics", m] + common
                else:
                    cmd = [graft, "train", spec, "--metrics", m] + common
                first, steps = first_step_and_steps(cmd, cache, m)
                sides[side][0].append(first)
                sides[side][1].extend(steps)
        bf, bs = sides["binary"]
        gf, gs = sides["graft train"]
        rows.append({
            "spec": name,
            "build_cold_s": round(cold, 2),
            "build_warm_s": round(warm, 2),
            "binary_mb": round(size / 1e6, 1),
            "stripped_mb": round(os.path.getsize(stripped) / 1e6, 1),
            "first_step_s_binary": round(statistics.median(bf), 3),
            "first_step_s_graft_train": round(statistics.median(gf), 3),
            "step_ms_binary": round(1e3 * statistics.median(bs), 3),
            "step_ms_graft_train": round(1e3 * statistics.median(gs), 3),
            "step_ratio": round(statistics.median(bs) / statistics.median(gs), 3),
        })
        print(json.dumps(rows[-1]), flush=True)
        shutil.rmtree(work, ignore_errors=True)


def spec_with_data(spec, work):
    """`spec` copied into `work`, its weights path absolute and its `train` block reading
    the benchmark's data (small_lora names none)."""
    out = os.path.join(work, "spec.graft")
    if not os.path.exists(out):
        text = open(os.path.join(REPO, spec)).read()
        text = text.replace('"../tests/fixtures/', '"' + os.path.join(REPO, "tests/fixtures/"))
        if "data " in text:
            lines = [l for l in text.splitlines() if not l.strip().startswith("data ")]
            text = "\n".join(lines) + "\n"
        text = text.replace("train {", "train {\n    data " + json.dumps(DATA), 1)
        open(out, "w").write(text)
    return out


if __name__ == "__main__":
    main()
