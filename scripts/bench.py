#!/usr/bin/env python3
"""Side-by-side training-step benchmark: graft vs. PyTorch + Hugging Face PEFT.

Both sides train the same Llama-style model (fp32, random weights, random token ids,
labels = input ids) with LoRA r=8, alpha=16, dropout 0 and AdamW (lr 2e-4, weight decay 0),
batch 4 x seq 128, on 2 CPU threads, and the script prints throughput, memory and ratios.
`--methods` benchmarks other PEFT methods on the same targets, one row each (METHODS below:
PEFT's config and graft's adapter call, with the same hyperparameters on both sides); the
FLOP model counts LoRA's and DoRA's factors, and only the base's work for the others, so
their %peak/%sgemm understate the work a little.

Shapes (`--sizes`):
    tiny   hidden 256,  4 layers,  4 heads (kv 4),  ffn 688,  vocab 2048
    small  hidden 512,  8 layers,  8 heads (kv 8),  ffn 1376, vocab 8192
    mid    hidden 1024, 8 layers, 16 heads (kv 16), ffn 2752, vocab 16384
Target sets (`--targets`):
    qv     LoRA on q_proj and v_proj
    all    LoRA on every linear layer of the decoder (PEFT's target_modules="all-linear",
           which leaves lm_head out; graft's `at "all-linear"`)

How each side is measured
    PyTorch: every (size, targets) runs in a fresh subprocess of this interpreter, so its peak
        RSS belongs to that configuration alone. The worker calls torch.set_num_threads(2)
        (OMP/MKL_NUM_THREADS=2 as well), builds LlamaForCausalLM(LlamaConfig(...,
        tie_word_embeddings=False, rms_norm_eps=1e-6, rope_theta=10000,
        attn_implementation="eager")), applies get_peft_model, runs 2 warm-up steps, then
        times `--steps` steps (forward with labels, backward, AdamW step, zero_grad).
        working set = peak RSS (getrusage(RUSAGE_SELF).ru_maxrss, KiB on Linux)
                      - RSS right after `import torch` (/proc/self/statm, or psutil).
        Importing transformers and peft adds a fixed few hundred MiB of library code and
        data on top of torch; `--torch-baseline imports` subtracts the RSS measured after
        those imports instead (both numbers are saved in the JSON either way).
        (ru_maxrss also counts what the process held when it was forked, so the parent
        process stays light: it never imports torch itself.)
    graft: for every configuration a .graft spec is written to a temp dir and
        `<graft> bench SPEC --steps N --warmup 2` runs with RAYON_NUM_THREADS=2 and
        GRAFT_THREADS=2, twice: the first run (1 step) optimizes and compiles the step and
        fills graft's on-disk cache (a fresh one in the temp dir, unless --graft-cache DIR),
        the second, measured run starts from that cache as every later run of a spec does.
        Each prints one JSON line on stdout:
            {"backend": str, "tokens_per_s": float, "step_seconds": float,
             "peak_rss_bytes": int, "baseline_rss_bytes": int, "steps": int,
             "arena_bytes": int, "bound_bytes": int, "optimize_seconds": float, "compile_seconds": float, ...}
        graft peak memory = peak_rss_bytes - baseline_rss_bytes of the measured run (the
        first run's, which includes the optimizer's and LLVM's memory, is saved in the JSON
        under "first_run" and shown on the progress line). If the binary or the command is
        missing or fails, the row says "graft: unavailable (<first stderr line>)".

    Pairing (`--mode paired`, the default when both sides run): after graft's first run, both
        sides start as servers (the PyTorch worker with `--_worker torch-serve`, graft with
        `bench SPEC --serve --warmup 2`), warm up, and then take turns: one timed step of
        one side, then one of the other (which side goes first alternates), --steps x
        --rounds pairs. This machine's speed drifts from second to second (other tenants'
        load), so adjacent steps see nearly the same machine. Each side reports its median
        step; the per-pair ratio (PyTorch's step time / graft's) is summarized by its median
        and quartiles under the table. `--mode rounds` runs whole measurements alternately
        instead and keeps each side's fastest.
    GEMM floor (paired mode): after every pair a third process (`--_worker floor-serve`)
        times PyTorch's torch.mm alone on every product of the step (`step_gemms`: each
        distinct [m, k] x [k, n] shape the best of 3 calls on contiguous operands, times how
        often the step computes it), then a 1024^3 sgemm. The floor is what the step's
        products alone take at PyTorch's own GEMM speed, with nothing else. Each side's
        step is reported as a multiple of the floor timed right after it (median over
        pairs), with the multiple a graft step needs for 1.5x PyTorch's tokens/s, and the
        floor's FLOP rate against that sgemm. graft then runs one extra step with its
        kernels timed (`profile` on its stdin; not counted in its step times), split into
        its GEMM kernels and the rest (packs of GEMM operands, elementwise kernels,
        reductions, softmax, the optimizer, launch overhead), each as a multiple of the floor. A needed multiple under 1 means 1.5x takes a
        whole graft step faster than PyTorch's GEMMs alone.

Formulas
    tokens/s            = batch * seq / median step seconds (paired), or
                          batch * seq * steps / (seconds for the timed steps) (rounds)
    forward FLOPs       = 2 * tokens * W_lin + 4 * batch * seq^2 * hidden * layers
        W_lin = elements of every linear weight on the path: per layer q, k, v, o
                (hidden*hidden, 2*hidden*kv_dim, hidden*hidden), gate/up/down (3*hidden*ffn),
                plus lm_head (vocab*hidden), plus the LoRA factors r*(in+out) per adapted
                linear; the attention term is QK^T and AV (2 * B*S^2*hidden each, per
                layer, without exploiting the causal mask). Embedding lookups, norms, RoPE,
                softmax, the loss and the optimizer are not counted.
    required FLOPs      = 2 * forward FLOPs + LoRA FLOPs + attention FLOPs: the forward, the
        input gradients (one product per linear, as many FLOPs as its forward; two per
        attention matmul, whose operands both need one: twice its forward), and the LoRA
        factors' weight gradients (as many as their forward part, 2 * tokens * r * (in +
        out) per adapted linear). Frozen base weights need no weight gradient. `step_gemms`
        lists these products one by one; required FLOPs is their sum. (Layer 0's input
        gradients are counted though no one needs them, < 1%.) This is the work any
        implementation must do, so "% of sgemm" on it is a true efficiency.
    training-step FLOPs = 3 * forward FLOPs, the usual forward + backward convention, which
        assumes every weight gets a gradient; kept in the JSON ("step_flops",
        "pct_sgemm_3x") for comparison with earlier runs. With frozen base weights it
        overstates the work by ~1.5x, so it can show more than 100% of sgemm.
    achieved FLOP/s     = required FLOPs / step seconds
    % of sgemm          = achieved FLOP/s / measured sgemm FLOP/s, where sgemm is the best
        of several 1024x1024x1024 fp32 torch.matmul runs (2 * 1024^3 FLOPs) on 2 threads,
        measured in a fresh process before and again after the configurations.
    % of peak           = achieved FLOP/s / the host's fp32 FMA peak, measured by
        `graft bench --peak` (a register-resident loop of FMAs on the widest vectors, on
        every thread) before and after the configurations: the limit that holds on every
        host, unlike a library's GEMM rate.
    ratios              = graft / PyTorch (tokens/s: > 1 means graft is faster;
                          memory: < 1 means graft uses less).

Run (from the repository root; PyTorch side needs torch, transformers, peft):
    python3 -m venv .venv && .venv/bin/pip install torch transformers peft
    cargo build --release
    .venv/bin/python scripts/bench.py                          # all sizes, both target sets
    .venv/bin/python scripts/bench.py --sizes tiny,small --targets qv --steps 5
    .venv/bin/python scripts/bench.py --sizes mid --steps 2 --json out.json
    .venv/bin/python scripts/bench.py --sizes tiny,small --targets qv --methods lora,dora,oft
    .venv/bin/python scripts/bench.py --steps 8 --rounds 2     # 16 paired steps per config
    .venv/bin/python scripts/bench.py --mode rounds --rounds 3  # whole runs, keep the fastest
    python3 scripts/bench.py --skip-torch --graft target/release/graft
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INSTALL_HINT = "python3 -m venv .venv && .venv/bin/pip install torch transformers peft"

BATCH = 4
SEQ = 128
LORA_R = 8
LORA_ALPHA = 16.0
LR = 2e-4
WARMUP = 2
# Training-step FLOPs = STEP_FACTOR x forward FLOPs (see the docstring: 3 is the usual
# convention; with frozen base weights the required work is nearer 2).
STEP_FACTOR = 3.0


@dataclass(frozen=True)
class Size:
    name: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    ffn: int
    vocab: int


SIZES = {
    "tiny": Size("tiny", hidden=256, layers=4, heads=4, kv_heads=4, ffn=688, vocab=2048),
    "small": Size("small", hidden=512, layers=8, heads=8, kv_heads=8, ffn=1376, vocab=8192),
    "mid": Size("mid", hidden=1024, layers=8, heads=16, kv_heads=16, ffn=2752, vocab=16384),
}

# method -> (PEFT config from the peft module and target_modules, graft `use` name, graft
# adapter call). The PyTorch worker builds the config; BOFT runs one butterfly factor, all
# PEFT computes without its CUDA extension.
METHODS = {
    "lora": (lambda p, t: p.LoraConfig(r=8, lora_alpha=16.0, lora_dropout=0.0, bias='none', target_modules=t),
             "lora", "lora(r: 8, alpha: 16.0)"),
    "dora": (lambda p, t: p.LoraConfig(r=8, lora_alpha=16.0, lora_dropout=0.0, use_dora=True, target_modules=t),
             "dora", "dora(r: 8, alpha: 16.0)"),
    "loha": (lambda p, t: p.LoHaConfig(r=8, alpha=16.0, target_modules=t), "loha", "loha(r: 8, alpha: 16.0)"),
    "lokr": (lambda p, t: p.LoKrConfig(r=8, alpha=16.0, target_modules=t), "lokr", "lokr(r: 8, alpha: 16.0)"),
    "hra": (lambda p, t: p.HRAConfig(r=8, target_modules=t), "hra", "hra(r: 8)"),
    "oft": (lambda p, t: p.OFTConfig(r=0, oft_block_size=32, target_modules=t), "oft", "oft(block_size: 32)"),
    "boft": (lambda p, t: p.BOFTConfig(boft_block_size=8, boft_n_butterfly_factor=1, target_modules=t),
             "boft", "boft(block_size: 8)"),
    "vera": (lambda p, t: p.VeraConfig(r=256, target_modules=t), "vera", "vera(r: 256)"),
    "fourierft": (lambda p, t: p.FourierFTConfig(n_frequency=1000, scaling=150.0, target_modules=t),
                  "fourierft", "fourierft(n_frequency: 1000, scaling: 150.0)"),
    "ia3": (lambda p, t: p.IA3Config(target_modules=t, feedforward_modules=[]), "ia3", "ia3()"),
    # AdaLoRA's budget schedule spans 20 steps; PyTorch calls update_and_allocate after each
    # optimizer step, as PEFT documents (past step 18 the fixed mask applies).
    "adalora": (lambda p, t: p.AdaLoraConfig(init_r=12, target_r=8, tinit=2, tfinal=2, total_step=20, target_modules=t),
                "adalora", "adalora(init_r: 12, target_r: 8, tinit: 2, tfinal: 2, total_step: 20)"),
    # Prefix tuning has no target modules: 16 virtual keys and values in every attention
    # (graft: on each attention's `kv`), whatever --targets says.
    "prefix_tuning": (lambda p, t: p.PrefixTuningConfig(num_virtual_tokens=16),
                      "prefix_tuning", "prefix_tuning(tokens: 16)"),
}

# Methods whose graft adapter goes on fixed modules rather than the --targets set.
FIXED_TARGETS = {"prefix_tuning": '["kv"]'}


def method() -> str:
    """The method of this process's rows (GRAFT_BENCH_METHOD, set per row by main)."""
    return os.environ.get("GRAFT_BENCH_METHOD", "lora")


def factor_rank() -> int:
    """The rank of the low-rank factors the FLOP model counts: LoRA's and DoRA's, else 0."""
    return LORA_R if method() in ("lora", "dora") else 0


# target set -> (PEFT target_modules, graft `at` clause, adapted projections per layer)
ALL_PROJ = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
TARGETS = {
    "qv": (["q_proj", "v_proj"], '["q_proj", "v_proj"]', ["q_proj", "v_proj"]),
    "all": ("all-linear", '"all-linear"', ALL_PROJ),
}


# ----------------------------------------------------------------------------- FLOP model

def proj_shapes(s: Size) -> dict[str, tuple[int, int]]:
    """(in, out) of every linear in one decoder layer."""
    kv_dim = s.kv_heads * (s.hidden // s.heads)
    return {
        "q_proj": (s.hidden, s.hidden),
        "k_proj": (s.hidden, kv_dim),
        "v_proj": (s.hidden, kv_dim),
        "o_proj": (s.hidden, s.hidden),
        "gate_proj": (s.hidden, s.ffn),
        "up_proj": (s.hidden, s.ffn),
        "down_proj": (s.ffn, s.hidden),
    }


def forward_flops(s: Size, targets: str) -> tuple[float, float]:
    """(forward FLOPs, of which LoRA's): see the module docstring."""
    shapes = proj_shapes(s)
    w_layer = sum(i * o for i, o in shapes.values())
    lora_layer = sum(factor_rank() * (shapes[p][0] + shapes[p][1]) for p in TARGETS[targets][2])
    w_lin = s.layers * (w_layer + lora_layer) + s.vocab * s.hidden  # + lm_head
    tokens = BATCH * SEQ
    forward = 2.0 * tokens * w_lin + 4.0 * BATCH * SEQ * SEQ * s.hidden * s.layers
    return forward, 2.0 * tokens * s.layers * lora_layer


def step_flops(s: Size, targets: str) -> float:
    """Training-step FLOPs = STEP_FACTOR x forward FLOPs (the convention; see the docstring)."""
    return STEP_FACTOR * forward_flops(s, targets)[0]


def step_gemms(s: Size, targets: str) -> list[tuple[int, int, int, int, str]]:
    """Every matrix product a LoRA training step must compute, as (m, k, n, count, what):
    an [m, k] x [k, n] product, count times per step. Forward: each linear (x W^T), the LoRA
    factors (x A^T, then (x A^T) B^T), attention's Q K^T and P V per batch row and head, the
    language-model head. Backward: one input gradient per linear and LoRA factor, two per
    attention product (both of its operands need one), and the LoRA factors' weight
    gradients. Frozen weights get none. Layer 0's input gradients are listed though nothing
    needs them (< 1%)."""
    tokens, r = BATCH * SEQ, factor_rank()
    out = []
    for p, (i, o) in proj_shapes(s).items():
        out += [(tokens, i, o, s.layers, f"{p} x.W^T"), (tokens, o, i, s.layers, f"{p} dy.W")]
        if p in TARGETS[targets][2] and r > 0:
            out += [(tokens, i, r, s.layers, f"{p} LoRA x.A^T"),
                    (tokens, r, o, s.layers, f"{p} LoRA (xA^T).B^T"),
                    (tokens, o, r, s.layers, f"{p} LoRA dy.B"),
                    (tokens, r, i, s.layers, f"{p} LoRA (dy.B).A"),
                    (r, tokens, o, s.layers, f"{p} LoRA dB"),
                    (r, tokens, i, s.layers, f"{p} LoRA dA")]
    hd, heads = s.hidden // s.heads, BATCH * s.heads * s.layers
    out += [(SEQ, hd, SEQ, heads, "Q.K^T"), (SEQ, SEQ, hd, heads, "P.V"),
            (SEQ, hd, SEQ, heads, "dP = dO.V^T"), (SEQ, SEQ, hd, heads, "dV = P^T.dO"),
            (SEQ, SEQ, hd, heads, "dQ = dS.K"), (SEQ, SEQ, hd, heads, "dK = dS^T.Q"),
            (tokens, s.hidden, s.vocab, 1, "lm_head x.W^T"),
            (tokens, s.vocab, s.hidden, 1, "lm_head dy.W")]
    return out


def required_flops(s: Size, targets: str) -> float:
    """The work a training step must do: the products of `step_gemms`."""
    return sum(2.0 * m * k * n * count for m, k, n, count, _ in step_gemms(s, targets))


# ----------------------------------------------------------------------------- helpers

def current_rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import psutil  # not Linux: fall back to psutil if it is installed

        return psutil.Process().memory_info().rss


def peak_rss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux


def thread_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    n = str(threads)
    env.update(OMP_NUM_THREADS=n, MKL_NUM_THREADS=n, RAYON_NUM_THREADS=n, GRAFT_THREADS=n)
    return env


def one_line(text: str, last: bool = False) -> str:
    """The first (or last) non-empty line of text."""
    lines = [l.strip() for l in text.splitlines() if l.strip()]
    if not lines:
        return "no output"
    return lines[-1] if last else lines[0]


def last_json_line(stdout: str) -> dict:
    for line in reversed(stdout.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            return json.loads(line)
    raise ValueError("no JSON line on stdout")


def have_torch_stack() -> list[str]:
    """Names of the missing Python packages (checked without importing them)."""
    return [m for m in ("torch", "transformers", "peft") if importlib.util.find_spec(m) is None]


# ----------------------------------------------------------------------------- workers
# These run in a fresh subprocess (`bench.py --_worker ...`) and print one JSON line.

def worker_sgemm(threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    n, reps = 1024, 4
    a = torch.randn(n, n, dtype=torch.float32)
    b = torch.randn(n, n, dtype=torch.float32)
    c = torch.empty(n, n, dtype=torch.float32)
    for _ in range(3):
        torch.matmul(a, b, out=c)
    best = float("inf")
    for _ in range(10):
        t0 = time.perf_counter()
        for _ in range(reps):
            torch.matmul(a, b, out=c)
        best = min(best, (time.perf_counter() - t0) / reps)
    return {"n": n, "seconds": best, "flops_per_s": 2.0 * n**3 / best,
            "torch": torch.__version__, "torch_threads": torch.get_num_threads()}


def torch_setup(size: str, targets: str, threads: int):
    """Builds the PEFT model; returns (step, summary): `step()` trains one step and returns
    the loss, `summary(step_times, loss)` the result dict."""
    import torch

    rss_after_torch = current_rss_bytes()
    import peft
    import transformers
    from peft import get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    rss_after_imports = current_rss_bytes()
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    s = SIZES[size]
    config = LlamaConfig(
        vocab_size=s.vocab, hidden_size=s.hidden, intermediate_size=s.ffn,
        num_hidden_layers=s.layers, num_attention_heads=s.heads,
        num_key_value_heads=s.kv_heads, max_position_embeddings=max(SEQ, 2048),
        rms_norm_eps=1e-6, rope_theta=10000.0, tie_word_embeddings=False,
        attn_implementation="eager",
    )
    model = LlamaForCausalLM(config).to(torch.float32)
    config = METHODS[method()][0](peft, TARGETS[targets][0])
    config.task_type = "CAUSAL_LM"
    model = get_peft_model(model, config)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=LR, weight_decay=0.0)
    ids = torch.randint(0, s.vocab, (BATCH, SEQ))

    # `--torch-compile`: the model's forward through torch.compile (inductor); the first
    # warm-up step compiles it, and its time is reported as `compile_seconds`.
    compiled = os.environ.get("GRAFT_BENCH_TORCH_COMPILE") == "1"
    forward = torch.compile(model) if compiled else model

    steps_done = [0]
    allocate = method() == "adalora"

    def step() -> float:
        loss = forward(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        if allocate:
            model.base_model.update_and_allocate(steps_done[0])
        steps_done[0] += 1
        opt.zero_grad(set_to_none=True)
        return loss.item()

    ru0 = [None]

    def start() -> None:
        ru0[0] = resource.getrusage(resource.RUSAGE_SELF)

    def summary(step_times: list[float], loss: float) -> dict:
        ru1 = resource.getrusage(resource.RUSAGE_SELF)
        cpu_seconds = (ru1.ru_utime - ru0[0].ru_utime) + (ru1.ru_stime - ru0[0].ru_stime)
        seconds = max(sum(step_times), 1e-9)
        steps = len(step_times)
        peak = peak_rss_bytes()
        return {
            "tokens_per_s": BATCH * SEQ * steps / seconds,
            "step_seconds": seconds / max(steps, 1),
            "steps": steps,
            "step_times": step_times,
            # CPU seconds / (step seconds * threads): well under 1 hints at a busy machine
            "cpu_utilization": cpu_seconds / (seconds * threads),
            "peak_rss_bytes": peak,
            "baseline_rss_bytes": rss_after_torch,
            "working_set_bytes": peak - rss_after_torch,
            "rss_after_imports_bytes": rss_after_imports,
            "working_set_after_imports_bytes": peak - rss_after_imports,
            "trainable_params": sum(p.numel() for p in trainable),
            "total_params": sum(p.numel() for p in model.parameters()),
            "final_loss": loss,
            "attn_implementation": model.config._attn_implementation,
            "torch_threads": torch.get_num_threads(),
            "torch_compile": compiled,
            "compile_seconds": warmup_seconds[0],
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                         "peft": peft.__version__},
        }

    warmup_seconds = []
    for _ in range(WARMUP):
        ts = time.perf_counter()
        step()
        warmup_seconds.append(time.perf_counter() - ts)
    return step, start, summary


def worker_torch(size: str, targets: str, steps: int, threads: int) -> dict:
    step, start, summary = torch_setup(size, targets, threads)
    step_times = []
    loss = float("nan")
    start()
    for _ in range(steps):
        ts = time.perf_counter()
        loss = step()
        step_times.append(time.perf_counter() - ts)
    return summary(step_times, loss)


def worker_torch_serve(size: str, targets: str, threads: int) -> dict:
    """The PyTorch side of a paired run: after the warm-up, prints {"ready": true} and times
    one step per `step` line on stdin (printing {"seconds": ...}) until `end`, then returns
    the summary (the same protocol as `graft bench --serve`)."""
    step, start, summary = torch_setup(size, targets, threads)
    print(json.dumps({"ready": True}), flush=True)
    step_times = []
    loss = float("nan")
    start()
    for line in sys.stdin:
        if line.strip() == "end":
            break
        ts = time.perf_counter()
        loss = step()
        step_times.append(time.perf_counter() - ts)
        print(json.dumps({"seconds": step_times[-1]}), flush=True)
    return summary(step_times, loss)


FLOOR_REPS = 3
SGEMM_N = 1024


def worker_floor_serve(size: str, targets: str, threads: int) -> dict:
    """A paired run's third process, the GEMM floor: per `step` line on stdin it times
    PyTorch's torch.mm alone on every product of `step_gemms` (each distinct shape the best
    of FLOOR_REPS calls, times its count) and then a SGEMM_N^3 sgemm, and prints
    {"seconds": floor, "sgemm_flops_per_s": ...}, until `end`. Contiguous operands, allocated
    once; nothing but the products is timed."""
    import torch

    torch.set_num_threads(threads)
    counts: dict[tuple[int, int, int], int] = {}
    for m, k, n, count, _ in step_gemms(SIZES[size], targets):
        counts[(m, k, n)] = counts.get((m, k, n), 0) + count
    operands = lambda m, k, n: (torch.randn(m, k), torch.randn(k, n), torch.empty(m, n))
    bufs = {shape: operands(*shape) for shape in counts}
    square = operands(SGEMM_N, SGEMM_N, SGEMM_N)

    def best(a, b, c) -> float:
        torch.mm(a, b, out=c)
        t = float("inf")
        for _ in range(FLOOR_REPS):
            t0 = time.perf_counter()
            torch.mm(a, b, out=c)
            t = min(t, time.perf_counter() - t0)
        return t

    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        if line.strip() == "end":
            break
        floor = sum(best(*bufs[shape]) * count for shape, count in counts.items())
        sgemm = 2.0 * SGEMM_N**3 / best(*square)
        print(json.dumps({"seconds": floor, "sgemm_flops_per_s": sgemm}), flush=True)
    return {"distinct_shapes": len(counts)}


class Server:
    """A side of a paired run: a process speaking the `step`/`end` protocol on its stdin and
    stdout (JSON lines)."""

    def __init__(self, cmd: list[str], env: dict, cwd: str | None = None):
        self.p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, env=env, cwd=cwd)

    def _read(self) -> dict:
        line = self.p.stdout.readline()
        if not line:
            self.p.wait()
            raise RuntimeError(one_line(self.p.stderr.read(), last=True) or "exited")
        return json.loads(line)

    def ready(self) -> None:
        if not self._read().get("ready"):
            raise RuntimeError("no ready line")

    def ask(self, command: str = "step") -> dict:
        """One `step` (or `profile`, for graft): its reply, which has at least `seconds`."""
        self.p.stdin.write(command + "\n")
        self.p.stdin.flush()
        r = self._read()
        if "seconds" not in r:
            raise RuntimeError(str(r))
        return r

    def step(self) -> float:
        return float(self.ask()["seconds"])

    def end(self) -> dict:
        self.p.stdin.write("end\n")
        self.p.stdin.flush()
        out, err = self.p.communicate()
        if self.p.returncode != 0:
            raise RuntimeError(one_line(err, last=True))
        return last_json_line(out)

    def kill(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait()


def median(xs: list[float]) -> float:
    ys = sorted(xs)
    n = len(ys)
    return (ys[(n - 1) // 2] + ys[n // 2]) / 2


def run_paired(graft: str, tmp: str, size: str, targets: str, pairs: int, threads: int,
               cache_dir: str) -> tuple[dict, dict, dict]:
    """Both sides as servers, one step each in turn (which side goes first alternates), so
    that both see the same machine from second to second; after each pair a third process
    times the GEMM floor (`worker_floor_serve`). Returns the PyTorch result, the graft result
    (each with its median step time as `step_seconds`) and the pairing."""
    env = thread_env(threads)
    spec = os.path.join(tmp, f"{size}_{targets}_{method()}.graft")
    with open(spec, "w") as f:
        f.write(graft_spec(SIZES[size], targets))
    genv = dict(env, GRAFT_CACHE_DIR=cache_dir)
    # The first graft run optimizes and compiles the step and fills the cache.
    first = subprocess.run([graft, "bench", spec, "--steps", "1", "--warmup", "0"],
                           capture_output=True, text=True, env=genv, cwd=REPO)
    if first.returncode != 0:
        err = {"error": one_line(first.stderr or first.stdout)}
        return {"error": "graft failed"}, err, {}
    first_run = last_json_line(first.stdout)
    first_run["working_set_bytes"] = (int(first_run["peak_rss_bytes"])
                                      - int(first_run["baseline_rss_bytes"]))
    servers = []
    worker = [sys.executable, os.path.abspath(__file__), "--_worker"]
    try:
        t = Server(worker + ["torch-serve", size, targets, str(threads)], env)
        servers.append(t)
        t.ready()
        g = Server([graft, "bench", spec, "--serve", "--warmup", str(WARMUP)], genv, REPO)
        servers.append(g)
        g.ready()
        fl = Server(worker + ["floor-serve", size, targets, str(threads)], env)
        servers.append(fl)
        fl.ready()
        times: dict[str, list[float]] = {"torch": [], "graft": [], "floor": []}
        sgemms: list[float] = []
        profiles: list[dict] = []
        for i in range(pairs):
            order = [("torch", t), ("graft", g)] if i % 2 == 0 else [("graft", g), ("torch", t)]
            for side, server in order:
                times[side].append(server.step())
            r = fl.ask()
            times["floor"].append(float(r["seconds"]))
            sgemms.append(float(r["sgemm_flops_per_s"]))
            profiles.append(g.ask("profile"))
        rt, rg = t.end(), g.end()
        fl.end()
    except (RuntimeError, ValueError, OSError) as e:
        for s_ in servers:
            s_.kill()
        return {"error": str(e)}, {"error": str(e)}, {}
    rg["working_set_bytes"] = int(rg["peak_rss_bytes"]) - int(rg["baseline_rss_bytes"])
    rg["first_run"] = first_run
    for r, side in ((rt, "torch"), (rg, "graft")):
        r["step_times"] = times[side]
        r["step_seconds"] = median(times[side])
        r["tokens_per_s"] = BATCH * SEQ / r["step_seconds"]
    per_pair = lambda num, den: sorted(a / b for a, b in zip(times[num], times[den]))
    ratios = per_pair("torch", "graft")
    q = lambda f: ratios[min(len(ratios) - 1, int(f * len(ratios)))]
    flops = required_flops(SIZES[size], targets)
    pairing = {"pairs": pairs, "ratio_median": median(ratios), "ratio_q1": q(0.25),
               "ratio_q3": q(0.75),
               # The GEMM floor, and each side's step as a multiple of the floor timed
               # right after it.
               "floor_times": times["floor"], "floor_seconds": median(times["floor"]),
               "floor_sgemm_flops_per_s": sgemms,
               "floor_pct_sgemm": 100 * median([flops / f / sg for f, sg
                                                in zip(times["floor"], sgemms)]),
               "torch_over_floor": median(per_pair("torch", "floor")),
               "graft_over_floor": median(per_pair("graft", "floor")),
               # graft's extra profiled step after each floor: its kernels by kind.
               "graft_profiles": profiles}
    if profiles and all("gemm_seconds" in p for p in profiles):
        over = lambda key: median([p[key] / f for p, f in zip(profiles, times["floor"])])
        pairing["graft_gemm_over_floor"] = over("gemm_seconds")
        pairing["graft_rest_over_floor"] = median(
            [(p["seconds"] - p["gemm_seconds"]) / f for p, f in zip(profiles, times["floor"])])
        pairing["graft_pack_over_floor"] = over("pack_seconds")
    return rt, rg, pairing


def run_worker(args: list[str], threads: int, timeout: float) -> dict:
    """Run this script as a worker in a fresh interpreter; returns its JSON or {"error": ...}."""
    cmd = [sys.executable, os.path.abspath(__file__), "--_worker", *args]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, env=thread_env(threads),
                           timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if p.returncode != 0:
        return {"error": one_line(p.stderr, last=True)}  # a traceback's last line
    try:
        return last_json_line(p.stdout)
    except ValueError as e:
        return {"error": str(e)}


# ----------------------------------------------------------------------------- graft side

def graft_spec(s: Size, targets: str) -> str:
    _, use, call = METHODS[method()]
    return (
        f"// Written by scripts/bench.py: {s.name}, {method()} on {targets}\n"
        "use models.llama\n"
        f"use peft.{use}\n\n"
        f"model base = llama(vocab: {s.vocab}, hidden: {s.hidden}, layers: {s.layers}, "
        f"heads: {s.heads}, ffn: {s.ffn})\n\n"
        "adapt base {\n"
        f"    {call} at {FIXED_TARGETS.get(method(), TARGETS[targets][1])}\n"
        "}\n\n"
        "train {\n"
        f"    optimizer adamw(lr: {LR}, weight_decay: 0.0)\n"
        f"    batch {BATCH}  seq {SEQ}\n"
        "}\n"
    )


def run_graft(graft: str, tmp: str, size: str, targets: str, steps: int, threads: int,
              timeout: float, cache_dir: str | None = None) -> dict:
    if not (os.path.isfile(graft) and os.access(graft, os.X_OK)):
        return {"error": f"binary not found: {graft}"}
    spec = os.path.join(tmp, f"{size}_{targets}_{method()}.graft")
    with open(spec, "w") as f:
        f.write(graft_spec(SIZES[size], targets))
    env = thread_env(threads)
    if cache_dir is not None:
        env["GRAFT_CACHE_DIR"] = cache_dir

    def once(n: int) -> dict:
        cmd = [graft, "bench", spec, "--steps", str(n), "--warmup", str(WARMUP)]
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO,
                               timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {timeout:.0f} s"}
        except OSError as e:
            return {"error": str(e)}
        if p.returncode != 0:
            return {"error": one_line(p.stderr or p.stdout)}
        try:
            r = last_json_line(p.stdout)
            r["working_set_bytes"] = int(r["peak_rss_bytes"]) - int(r["baseline_rss_bytes"])
            float(r["tokens_per_s"]), float(r["step_seconds"])
        except (ValueError, KeyError, TypeError) as e:
            return {"error": f"bad output: {e}: {one_line(p.stdout)}"}
        return r

    # The first run of a spec optimizes and compiles it and fills graft's cache; the measured
    # run starts from the cache, as every later run of the spec does. The first run's
    # figures (optimize/compile seconds, its peak memory) are kept under "first_run".
    first = once(1)
    if "error" in first:
        return first
    r = once(steps)
    if "error" not in r:
        r["first_run"] = first
    return r


# ----------------------------------------------------------------------------- report

def mib(n: float) -> str:
    return f"{n / 2**20:.0f} MiB"


def progress(r: dict) -> str:
    if "error" in r:
        return f"error: {r['error']}"
    backend = f" ({r['backend']})" if "backend" in r else ""
    first = r.get("first_run")
    prepared = ""
    if first:
        prepared = (f"; first run: optimized in {first.get('optimize_seconds', 0):.1f} s, "
                    f"compiled in {first.get('compile_seconds', 0):.1f} s, "
                    f"{mib(first['working_set_bytes'])}")
    if r.get("torch_compile"):
        prepared = f"; torch.compile: first step (compiling) {r.get('compile_seconds', 0):.1f} s"
    return (f"{r['tokens_per_s']:.0f} tokens/s, {r['step_seconds']:.2f} s/step, "
            f"{mib(r['working_set_bytes'])}{backend}{prepared}")


def fma_peak(graft: str, threads: int) -> float | None:
    """The host's fp32 FMA peak in FLOP/s (`graft bench --peak`: a register-resident FMA loop
    on every thread), or None when graft cannot run."""
    try:
        out = subprocess.run([graft, "bench", "--peak", "--threads", str(threads)],
                             capture_output=True, text=True, timeout=120, check=True)
        return float(json.loads(out.stdout.strip().splitlines()[-1])["fma_peak_flops_per_s"])
    except (OSError, subprocess.SubprocessError, ValueError, KeyError, IndexError):
        return None


def fmt_row(row: dict, sgemm: float | None, torch_mem_key: str,
            peak: float | None = None) -> list[str]:
    t, g = row.get("torch"), row.get("graft")
    ok_t = t is not None and "error" not in t
    ok_g = g is not None and "error" not in g

    def frac(r: dict, of: float | None = sgemm) -> str:
        if of is None:
            return "n/a"
        return f"{row['required_flops'] / r['step_seconds'] / of * 100:.1f}%"

    def ratio(a: float, b: float) -> str:
        return f"{a / b:.2f}x" if b > 0 else "n/a"

    return [
        row["size"], row["targets"],
        f"{t['tokens_per_s']:.0f}" if ok_t else "-",
        f"{g['tokens_per_s']:.0f}" if ok_g else "-",
        ratio(g["tokens_per_s"], t["tokens_per_s"]) if ok_t and ok_g else "-",
        frac(t) if ok_t else "-",
        frac(g) if ok_g else "-",
        frac(t, peak) if ok_t else "-",
        frac(g, peak) if ok_g else "-",
        mib(t[torch_mem_key]) if ok_t else "-",
        mib(g["working_set_bytes"]) if ok_g else "-",
        ratio(g["working_set_bytes"], t[torch_mem_key]) if ok_t and ok_g else "-",
        # What a step running at the sgemm rate on the required FLOPs would reach.
        ratio(t["step_seconds"], row["required_flops"] / sgemm) if ok_t and sgemm else "-",
    ]


def print_floor(rows: list[dict]) -> None:
    """The GEMM floor of paired rows: what the step's products alone take at PyTorch's own
    GEMM speed, and each side's step as a multiple of it."""
    print("\nGEMM floor: the step's products alone (step_gemms) at PyTorch's own GEMM speed "
          f"(torch.mm, each distinct shape best of {FLOOR_REPS}), timed after every pair; "
          "steps as multiples of it (medians over pairs);\nneeded = the multiple a graft step "
          "must reach for 1.5x PyTorch's tokens/s; %sgemm = the floor's rate against the "
          "sgemm timed with it;\ngraft GEMMs / rest (packs) = an extra profiled graft step "
          "after each floor: its GEMM kernels' time, and everything else (of which packing "
          "GEMM operands).")
    head = ["size", "targets", "floor", "floor %sgemm", "torch", "graft", "graft GEMMs",
            "graft rest", "(packs)", "needed"]
    body = []
    for r in rows:
        p = r["pairing"]
        split = lambda key: f"{p[key]:.2f}x" if key in p else "n/a"
        body.append([r["size"], r["targets"], f"{p['floor_seconds'] * 1e3:.1f} ms",
                     f"{p['floor_pct_sgemm']:.1f}%", f"{p['torch_over_floor']:.2f}x",
                     f"{p['graft_over_floor']:.2f}x", split("graft_gemm_over_floor"),
                     split("graft_rest_over_floor"), split("graft_pack_over_floor"),
                     f"{p['torch_over_floor'] / 1.5:.2f}x"])
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    for cells in [head, ["-" * w for w in widths]] + body:
        print("  ".join(c.rjust(w) if i > 1 else c.ljust(w)
                        for i, (c, w) in enumerate(zip(cells, widths))))


def print_table(rows: list[dict], sgemm: float | None, torch_baseline: str,
                peak: float | None = None) -> None:
    torch_mem_key = ("working_set_after_imports_bytes" if torch_baseline == "imports"
                     else "working_set_bytes")
    head = ["size", "targets", "torch tok/s", "graft tok/s", "graft/torch",
            "torch %sgemm", "graft %sgemm", "torch %peak", "graft %peak", "torch mem",
            "graft mem", "mem graft/torch",
            "ceiling"]
    body = [fmt_row(r, sgemm, torch_mem_key, peak) for r in rows]
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    line = lambda cells: "  ".join(c.rjust(w) if i > 1 else c.ljust(w)
                                   for i, (c, w) in enumerate(zip(cells, widths)))
    print(line(head))
    print(line(["-" * w for w in widths]))
    for cells in body:
        print(line(cells))
    notes = []
    for r in rows:
        for side in ("torch", "graft"):
            res = r.get(side)
            if res is not None and "error" in res:
                what = "unavailable" if side == "graft" else "failed"
                notes.append(f"{r['size']}/{r['targets']}: {side}: {what} ({res['error']})")
            elif res is not None and res.get("cpu_utilization", 1.0) < 0.8:
                notes.append(f"{r['size']}/{r['targets']}: {side}: used only "
                             f"{res['cpu_utilization']:.0%} of {r.get('threads', 'its')} "
                             "threads' CPU time; the machine was busy, timing unreliable")
    paired = [r for r in rows if r.get("pairing")]
    if paired:
        print("\npaired steps (graft/torch tokens/s per pair of adjacent steps): " + "; ".join(
            f"{r['size']}/{r['targets']} median {r['pairing']['ratio_median']:.2f}x "
            f"(quartiles {r['pairing']['ratio_q1']:.2f}-{r['pairing']['ratio_q3']:.2f}, "
            f"{r['pairing']['pairs']} pairs)" for r in paired))
    floored = [r for r in paired if "floor_seconds" in r["pairing"]]
    if floored:
        print_floor(floored)
    if notes:
        print()
        print("\n".join(notes))
    backends = sorted({str(r["graft"].get("backend")) for r in rows
                       if r.get("graft") and "error" not in r["graft"]})
    if backends:
        print(f"\ngraft backend: {', '.join(backends)}", end="")
    after = ("`import torch, transformers, peft`" if torch_baseline == "imports"
             else "`import torch`")
    print("\n%sgemm = required FLOPs (the step's products: forward, input gradients, LoRA "
          "weight gradients) / step time / sgemm;"
          "\nceiling = the graft/torch tokens/s a step at the sgemm rate on those FLOPs would "
          "reach", end="")
    print(f"\nmem = torch: peak RSS - RSS after {after}; "
          "graft: peak_rss_bytes - baseline_rss_bytes")
    extra = [r["torch"]["rss_after_imports_bytes"] - r["torch"]["baseline_rss_bytes"]
             for r in rows if r.get("torch") and "error" not in r["torch"]]
    if extra and torch_baseline == "torch":
        print(f"      (of the torch figure, importing transformers + peft accounts for "
              f"{mib(max(extra))}; see --torch-baseline imports)")


# ----------------------------------------------------------------------------- main

def keep_faster(row: dict, side: str, r: dict) -> None:
    """Keeps the faster of `row[side]` and `r` (an error only if every round failed); every
    round's step time is listed under `row[side]["round_step_seconds"]`."""
    old = row.get(side)
    times = (old or {}).get("round_step_seconds", [])
    if "error" not in r:
        times = times + [r["step_seconds"]]
    if old is None or "error" in old or ("error" not in r
                                         and r["step_seconds"] < old["step_seconds"]):
        if old is not None and "first_run" in old:
            # graft's first run (optimize + compile) happens in round 1; later rounds start
            # from the cache it filled.
            r["first_run"] = old["first_run"]
        row[side] = r
    row[side]["round_step_seconds"] = times


def parse_list(value: str, allowed: dict) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    bad = [v for v in items if v not in allowed]
    if bad or not items:
        raise argparse.ArgumentTypeError(f"expected a comma list of {', '.join(allowed)}")
    return items


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=lambda v: parse_list(v, SIZES), default=list(SIZES),
                    help="comma list of tiny,small,mid (default: all)")
    ap.add_argument("--targets", type=lambda v: parse_list(v, TARGETS), default=list(TARGETS),
                    help="comma list of qv,all (default: both)")
    ap.add_argument("--methods", type=lambda v: parse_list(v, METHODS), default=["lora"],
                    help=f"comma-separated PEFT methods, one row each: {','.join(METHODS)} "
                         "(default lora)")
    ap.add_argument("--steps", type=int, default=5, help="timed steps (after 2 warm-up steps)")
    ap.add_argument("--graft", default=os.path.join(REPO, "target", "release", "graft"),
                    help="graft binary (default: target/release/graft)")
    ap.add_argument("--threads", type=int, default=2, help="threads for both sides (default 2)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="run both sides alternately this many times per configuration and "
                         "keep each side's fastest run (default 1)")
    ap.add_argument("--mode", choices=["paired", "rounds"], default="paired",
                    help="paired (default): both sides run as servers and take turns, one "
                         "step each, --steps x --rounds pairs, each side's median step "
                         "reported; rounds: whole runs alternate --rounds times, each side's "
                         "fastest run kept")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per configuration")
    ap.add_argument("--torch-baseline", choices=["torch", "imports"], default="torch",
                    help="subtract the RSS after `import torch` (default) or after also "
                         "importing transformers and peft")
    ap.add_argument("--skip-torch", action="store_true", help="do not run PyTorch + PEFT")
    ap.add_argument("--torch-compile", action="store_true",
                    help="run the PyTorch side's model through torch.compile (inductor); its "
                         "first step's time is reported as the compile time")
    ap.add_argument("--skip-graft", action="store_true", help="do not run graft")
    ap.add_argument("--json", metavar="PATH", help="also save the results as JSON")
    ap.add_argument("--graft-cache", metavar="DIR",
                    help="graft's cache directory (default: a fresh one in the temp dir)")
    ap.add_argument("--_worker", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args._worker:  # internal: one measurement in a fresh process
        kind, *rest = args._worker
        if kind == "sgemm":
            out = worker_sgemm(int(rest[0]))
        elif kind == "torch-serve":
            size, targets, threads = rest
            out = worker_torch_serve(size, targets, int(threads))
        elif kind == "floor-serve":
            size, targets, threads = rest
            out = worker_floor_serve(size, targets, int(threads))
        else:
            size, targets, steps, threads = rest
            out = worker_torch(size, targets, int(steps), int(threads))
        print(json.dumps(out), flush=True)
        return 0
    if args.steps < 1:
        ap.error("--steps must be at least 1")
    if args.torch_compile:
        os.environ["GRAFT_BENCH_TORCH_COMPILE"] = "1"  # inherited by the torch workers

    missing = have_torch_stack()
    torch_ok = not missing
    if missing and not args.skip_torch:
        print(f"PyTorch side skipped: missing {', '.join(missing)} in {sys.executable}.\n"
              f"Install with:  {INSTALL_HINT}\n"
              f"then run:      .venv/bin/python scripts/bench.py ...", file=sys.stderr)
    run_torch = torch_ok and not args.skip_torch
    if not run_torch and args.skip_graft:
        print("nothing to run", file=sys.stderr)
        return 1

    # The host's own limit, measured before and after the runs (the better figure is kept).
    peak = fma_peak(args.graft, args.threads) if not args.skip_graft else None
    sgemm = None
    sgemm_info: dict = {"error": "torch not installed"}
    if torch_ok:
        sgemm_info = run_worker(["sgemm", str(args.threads)], args.threads, args.timeout)
        sgemm = sgemm_info.get("flops_per_s")
    what = (f"LoRA r={LORA_R} alpha={LORA_ALPHA:g}" if args.methods == ["lora"]
            else "methods " + ", ".join(f"{m} ({METHODS[m][2]})" for m in args.methods))
    print(f"batch {BATCH} x seq {SEQ}, fp32, {what}, "
          f"{args.threads} threads, {args.steps} timed steps after {WARMUP} warm-up")
    if not args.skip_graft:
        print(f"graft: {args.graft}")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if load > 0.5:
        print(f"warning: 1-minute load average is {load:.1f} on {os.cpu_count()} CPUs before "
              "the run; other work skews the timings")
    print(flush=True)

    rows = []
    with tempfile.TemporaryDirectory(prefix="graft-bench-") as tmp:
        for size, targets, m in [(s, t, m) for m in args.methods for s in args.sizes
                                 for t in args.targets]:
            os.environ["GRAFT_BENCH_METHOD"] = m  # read by this process and the workers
            label = targets if args.methods == ["lora"] else f"{targets} {m}"
            row = {"size": size, "targets": label, "method": m, "threads": args.threads,
                   "step_flops": step_flops(SIZES[size], targets),
                   "required_flops": required_flops(SIZES[size], targets)}
            # With --rounds N the two sides run alternately N times and each keeps its
            # fastest run: the machine's speed drifts over minutes, and alternating
            # exposes both sides to the same drift.
            paired = args.mode == "paired" and run_torch and not args.skip_graft
            if paired:
                print(f"[{size}/{label}] paired, {args.steps * args.rounds} steps "
                      "each ... ", end="", file=sys.stderr, flush=True)
                rt, rg, pairing = run_paired(
                    args.graft, tmp, size, targets, args.steps * args.rounds,
                    args.threads, args.graft_cache or os.path.join(tmp, "cache"))
                row["torch"], row["graft"], row["pairing"] = rt, rg, pairing
                if pairing:
                    print(f"PyTorch {progress(rt)}; graft {progress(rg)}; per-step "
                          f"ratio median {pairing['ratio_median']:.2f}", file=sys.stderr,
                          flush=True)
                else:
                    print(progress(rg if "error" in rg else rt), file=sys.stderr,
                          flush=True)
            for rnd in range(0 if paired else args.rounds):
                tag = f" (round {rnd + 1}/{args.rounds})" if args.rounds > 1 else ""
                if run_torch:
                    print(f"[{size}/{label}] PyTorch + PEFT{tag} ... ", end="",
                          file=sys.stderr, flush=True)
                    r = run_worker(
                        ["torch", size, targets, str(args.steps), str(args.threads)],
                        args.threads, args.timeout)
                    print(progress(r), file=sys.stderr, flush=True)
                    keep_faster(row, "torch", r)
                if not args.skip_graft:
                    print(f"[{size}/{label}] graft{tag} ... ", end="", file=sys.stderr,
                          flush=True)
                    r = run_graft(args.graft, tmp, size, targets, args.steps,
                                  args.threads, args.timeout,
                                  args.graft_cache or os.path.join(tmp, "cache"))
                    print(progress(r), file=sys.stderr, flush=True)
                    keep_faster(row, "graft", r)
            rows.append(row)
        if torch_ok:  # once more at the end; keep the better figure (less disturbed)
            again = run_worker(["sgemm", str(args.threads)], args.threads, args.timeout)
            if again.get("flops_per_s", 0) > (sgemm or 0):
                sgemm_info, sgemm = again, again["flops_per_s"]

    if not args.skip_graft:
        again = fma_peak(args.graft, args.threads)
        if again and (peak is None or again > peak):
            peak = again
    if peak:
        print(f"fp32 FMA peak ({args.threads} threads, `graft bench --peak`, best of the runs "
              f"before and after): {peak / 1e9:.1f} GFLOP/s; %peak = required FLOPs / step "
              "time / peak")
    if sgemm:
        print(f"sgemm ({sgemm_info['n']}^3 fp32, torch {sgemm_info['torch']}, best of the runs "
              f"before and after): {sgemm / 1e9:.1f} GFLOP/s\n")
    else:
        print(f"sgemm: unavailable ({sgemm_info.get('error')}); %sgemm columns are n/a\n")
    print_table(rows, sgemm, args.torch_baseline, peak)
    for row in rows:
        for side in ("torch", "graft"):
            r = row.get(side)
            if sgemm and r and "error" not in r:
                r["pct_sgemm"] = 100 * row["required_flops"] / r["step_seconds"] / sgemm
                r["pct_sgemm_3x"] = 100 * row["step_flops"] / r["step_seconds"] / sgemm

    if args.json:
        doc = {
            "config": {"batch": BATCH, "seq": SEQ, "dtype": "fp32", "lora_r": LORA_R,
                       "lora_alpha": LORA_ALPHA, "lr": LR, "warmup": WARMUP,
                       "steps": args.steps, "rounds": args.rounds, "mode": args.mode,
                       "threads": args.threads,
                       "torch_baseline": args.torch_baseline,
                       "sizes": {k: SIZES[k].__dict__ for k in args.sizes}},
            "machine": {"platform": platform.platform(), "processor": platform.processor(),
                        "cpus": os.cpu_count(), "python": platform.python_version(),
                        "loadavg_before": load},
            "sgemm": sgemm_info,
            "fma_peak_flops_per_s": peak,
            "results": rows,
        }
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=2)
        print(f"\nsaved {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
