#!/usr/bin/env python3
"""Fixtures for PEFT methods added after the first set, on the committed base model.

Run by hand after scripts/make_fixtures.py (which clears `peft_*`), with the same venv:

    /work/venv-fixtures/bin/python scripts/make_method_fixtures.py [--out tests/fixtures]

It loads the model and batch from tests/fixtures/base.safetensors (so the committed fixtures
are not regenerated) and, per method, writes `<case>.safetensors` (the randomized adapter,
logits, loss, gradients and the tensors after 3 AdamW steps, in make_fixtures.py's format)
and `peft_<case>/` (PEFT's saved adapter), and `methods.json` (saved keys and shapes).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import make_fixtures as mf  # noqa: E402  (sets the seeds, threads and PYTHONHASHSEED)
import torch
from peft import (
    AdaLoraConfig,
    BOFTConfig,
    HRAConfig,
    FourierFTConfig,
    LNTuningConfig,
    LoHaConfig,
    LoKrConfig,
    LoraConfig,
    OFTConfig,
    PeftModel,
    PrefixTuningConfig,
    VeraConfig,
    get_peft_model,
    get_peft_model_state_dict,
)
from peft.optimizers import create_loraplus_optimizer
from peft_cpu import butterfly_on_cpu
from safetensors.torch import load_file, save_file
from transformers import LlamaForCausalLM

CASES = {
    "loha": LoHaConfig(r=4, alpha=8, target_modules=["q_proj", "v_proj"]),
    # down_proj (64 × 128) gets the low-rank w2 (r = 4 < max(8, 16) / 2); q/v a full one.
    "lokr": LoKrConfig(r=4, alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]),
    "hra": HRAConfig(r=4, target_modules=["q_proj", "v_proj", "down_proj"]),
    # LoRA+ (Hayou et al., 2024): plain LoRA trained with PEFT's create_loraplus_optimizer,
    # lora_B at 16 times the learning rate.
    "loraplus": LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0),
    # OFT with PEFT's default Cayley-Neumann series (5 terms); 16-wide blocks: 4 on q/v, 8 on
    # down_proj. The shared variant: one block for all, and 3 terms.
    "oft": OFTConfig(r=0, oft_block_size=16, target_modules=["q_proj", "v_proj", "down_proj"]),
    "oft_shared": OFTConfig(
        r=0, oft_block_size=16, block_share=True, num_cayley_neumann_terms=3, target_modules=["q_proj", "down_proj"]
    ),
    # LN tuning: trainable copies of every RMSNorm (both per layer and the final one).
    "ln_tuning": LNTuningConfig(target_modules=["input_layernorm", "post_attention_layernorm", "norm"]),
    # VeRA: one frozen A/B pair for q (64 × 64) and v (32 × 64), drawn from PyTorch's generator
    # with PEFT's key; not saved (PEFT regenerates them), but recorded as `buffer.vera_A/B`.
    "vera": VeraConfig(r=8, target_modules=["q_proj", "v_proj"], save_projection=False),
    # PiSSA and OLoRA: LoRA initialized from the SVD / QR of the frozen weight, which becomes the
    # residual. Square (q), wide (v: 32 x 64, down: 64 x 128) and tall (up: 128 x 64) layers;
    # s = 16 / 4 = 4, so the residual's (s·B)·A order shows. PEFT's initial A/B and residual
    # weights are recorded as `buffer.init.<key>` and `buffer.residual.<path>`.
    "pissa": LoraConfig(
        r=4, lora_alpha=16, init_lora_weights="pissa", target_modules=["q_proj", "v_proj", "up_proj", "down_proj"]
    ),
    "olora": LoraConfig(
        r=4, lora_alpha=16, init_lora_weights="olora", target_modules=["q_proj", "v_proj", "up_proj", "down_proj"]
    ),
    # FourierFT: 64 spectral coefficients on q (64 × 64) and v (32 × 64) at PEFT's randperm
    # locations (seed 777), recorded as `buffer.indices.<path>` (row · in + column).
    "fourierft": FourierFTConfig(n_frequency=64, scaling=150.0, target_modules=["q_proj", "v_proj"]),
    # DoRA on an NF4 base (QDoRA): bitsandbytes Linear4bit (NF4, double quant, blocks of 64) on
    # every linear layer, as the qlora fixture; DoRA on q, v and down_proj, its magnitude the
    # row norms of the dequantized weight.
    "qdora": LoraConfig(r=4, lora_alpha=8, use_dora=True, target_modules=["q_proj", "v_proj", "down_proj"]),
    # OFT with the exact Cayley transform (PEFT's linear solve) instead of the series.
    "oft_exact": OFTConfig(
        r=0, oft_block_size=16, use_cayley_neumann=False, target_modules=["q_proj", "v_proj", "down_proj"]
    ),
    # BOFT: 4-wide blocks; one butterfly factor (what PEFT trains on a CPU), and three, with
    # PEFT's CUDA path emulated on the CPU (BUTTERFLY).
    "boft": BOFTConfig(boft_block_size=4, boft_n_butterfly_factor=1, target_modules=["q_proj", "v_proj"]),
    "boft_butterfly": BOFTConfig(
        boft_block_size=4, boft_n_butterfly_factor=3, target_modules=["q_proj", "v_proj", "down_proj"]
    ),
    # AdaLoRA: rank 6 on q/v of both layers (a budget of 24 triplets) pruned to 16 on the
    # schedule tinit = 1, T = total_step - tfinal = 4: no pruning after steps 0 and 1, budget
    # 18 after step 2 and 16 after step 3 (deltaT = 1), the final allocation after step 4 and
    # its fixed mask after step 5; the orthogonality penalty at PEFT's default weight 0.5.
    # Trained ADALORA_STEPS steps with update_and_allocate after each (see adalora_record).
    # The task type matters: only PeftModelForCausalLM's forward goes through AdaLoraModel's,
    # which adds the penalty (a bare PeftModel calls the base model and skips it).
    "adalora": AdaLoraConfig(
        init_r=6,
        target_r=4,
        lora_alpha=8,
        tinit=1,
        tfinal=2,
        deltaT=1,
        total_step=6,
        target_modules=["q_proj", "v_proj"],
        task_type="CAUSAL_LM",
    ),
    # Prefix tuning: 4 virtual keys and values in both layers, without the reparameterizing
    # MLP; the GQA base (2 KV heads of 16) makes PEFT's `prompt_embeddings` [4, 2 · 2 · 32].
    # The sequence's positions start at 4, after the prefix, as Hugging Face's cache puts them.
    "prefix_tuning": PrefixTuningConfig(num_virtual_tokens=4, task_type="CAUSAL_LM"),
}

# Steps of the AdaLoRA record: every phase of its schedule.
ADALORA_STEPS = 6

# Cases on an NF4-quantized base.
QUANTIZED = {"qdora"}


# PEFT's CUDA path for butterfly factors, emulated on the CPU (scripts/peft_cpu.py).
BUTTERFLY = {"boft_butterfly"}


# Optimizers other than make_fixtures.py's AdamW, per case.
ADAMW = torch.optim.AdamW
OPTIMIZERS = {
    "loraplus": lambda model: create_loraplus_optimizer(
        model,
        ADAMW,
        lr=mf.ADAMW["lr"],
        loraplus_lr_ratio=16.0,
        loraplus_weight_decay=mf.ADAMW["weight_decay"],
        betas=mf.ADAMW["betas"],
        eps=mf.ADAMW["eps"],
    ),
}


def train_record(model, input_ids, labels, key_of, make_optimizer):
    """make_fixtures.train_record with another optimizer."""
    original = torch.optim.AdamW
    torch.optim.AdamW = lambda params, **_: make_optimizer(model)
    try:
        return mf.train_record(model, input_ids, labels, key_of)
    finally:
        torch.optim.AdamW = original


def adalora_record(model, input_ids, labels, key_of):
    """make_fixtures.train_record for AdaLoRA, as PEFT documents its loop: after each AdamW
    step, update_and_allocate(step) (steps from 0), before the gradients are cleared. Adds
    `losses` (each step's loss before its update) and `step6.*` (after ADALORA_STEPS), and
    prints each allocation's budget and the triplets pruned."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert set(params) == set(key_of), (sorted(params), sorted(key_of))
    opt = torch.optim.AdamW(list(params.values()), **mf.ADAMW)
    alloc = model.base_model.rankallocator
    out, losses = {}, []
    for step in range(ADALORA_STEPS):
        opt.zero_grad(set_to_none=True)
        logits, loss = mf.forward(model, input_ids, labels)
        loss.backward()
        if step == 0:
            out["logits"] = mf.c(logits)
            out["loss"] = mf.c(loss)
            for n, p in params.items():
                out[f"grad.{key_of[n]}"] = mf.c(p.grad)
        losses.append(loss.item())
        opt.step()
        budget, mask = alloc.budget_schedule(step)
        model.base_model.update_and_allocate(step)
        if mask or step == 4:
            print(f"  step {step}: budget {budget}, pruned {(torch.cat([p.view(-1) for n, p in params.items() if 'lora_E' in n]) == 0).sum().item()}")
    for n, p in params.items():
        out[f"step{ADALORA_STEPS}.{key_of[n]}"] = mf.c(p)
    out["losses"] = torch.tensor(losses, dtype=torch.float32)
    return out


def orth_penalty(saved, weight):
    """AdaLoRA's documented regularizer: weight · mean over the A's and B's of ‖AAᵀ − I‖_F and
    ‖BᵀB − I‖_F."""
    norms = []
    for k, p in saved.items():
        if k.endswith("lora_A") or k.endswith("lora_B"):
            cov = p @ p.T if k.endswith("lora_A") else p.T @ p
            norms.append(torch.linalg.matrix_norm(cov - torch.eye(cov.shape[0])))
    return weight * torch.stack(norms).mean()


def committed_base(fixtures: Path):
    sd = load_file(str(fixtures / "base.safetensors"))
    model = LlamaForCausalLM(mf.llama_config())
    weights = {k: v for k, v in sd.items() if k in model.state_dict()}
    missing, unexpected = model.load_state_dict(weights, strict=False)
    assert not unexpected and all("rotary" in k for k in missing), (missing, unexpected)
    model.eval()
    return model, sd["input_ids"], sd["labels"], sd["logits"]


def base_for(case, base):
    """A fresh copy of the committed base, NF4-quantized for the QUANTIZED cases."""
    model = copy.deepcopy(base)
    if case in QUANTIZED:
        mf.replace_with_linear4bit(model)
    return model


def run_case(case, cfg, i, base, input_ids, labels, out, manifest):
    """One case's fixture, adapter folder and manifest entry."""
    torch.manual_seed(300 + i)
    model = get_peft_model(base_for(case, base), cfg)
    if case in BUTTERFLY:
        factors = {m.boft_P.shape[0] for m in model.modules() if hasattr(m, "boft_P")}
        assert factors == {cfg.boft_n_butterfly_factor}, factors
    buffers = {}
    if getattr(cfg, "init_lora_weights", True) in ("pissa", "olora"):
        init = {k: mf.c(v) for k, v in get_peft_model_state_dict(model).items()}
        buffers.update({f"buffer.init.{k}": v for k, v in init.items()})
        for n, p in model.named_parameters():
            if n.endswith("base_layer.weight"):
                path = n.removeprefix("base_model.model.").replace("base_layer.", "")
                buffers[f"buffer.residual.{path}"] = mf.c(p)
    mf.randomize_adapter(model, seed=3000 + i)
    saved = {k: mf.c(v) for k, v in get_peft_model_state_dict(model).items()}
    key_of = mf.peft_key_map(model, saved)
    mf.save_adapter_dir(model, out / f"peft_{case}", saved)
    model.train()  # no dropout is configured: train() == eval() numerically
    if case == "adalora":
        rec = adalora_record(model, input_ids, labels, key_of)
        # The trained adapter as PEFT saves it after the final allocation: each layer's
        # tensors cut to its kept triplets, and `rank_pattern` in the config; and its logits.
        pruned = {k: mf.c(v) for k, v in get_peft_model_state_dict(model).items()}
        mf.save_adapter_dir(model, out / "peft_adalora_pruned", pruned)
        with torch.no_grad():
            buffers["buffer.pruned_logits"] = mf.c(model(input_ids=input_ids).logits)
    elif case in OPTIMIZERS:
        rec = train_record(model, input_ids, labels, key_of, OPTIMIZERS[case])
    else:
        rec = mf.train_record(model, input_ids, labels, key_of)
    if case == "vera":
        buffers = {f"buffer.{n}": mf.c(getattr(model.base_model, n)["default"]) for n in ("vera_A", "vera_B")}
    if case == "fourierft":
        for n, m in model.named_modules():
            if hasattr(m, "indices") and "default" in getattr(m, "indices", {}):
                rows, cols = m.indices["default"]
                path = n.removeprefix("base_model.model.")
                buffers[f"buffer.indices.{path}"] = (rows * m.in_features + cols).contiguous()
    save_file({**saved, **rec, **buffers}, str(out / f"{case}.safetensors"))
    reloaded = PeftModel.from_pretrained(base_for(case, base), str(out / f"peft_{case}"))
    # Train mode, as the record: in eval mode bitsandbytes' CPU Linear4bit repacks its
    # weight for an inference kernel on the first forward, whose logits differ (0.92 on qdora).
    reloaded.train()
    with torch.no_grad():
        # A reloaded AdaLoRA (inference mode) fails on labels: its penalty needs a trainable
        # adapter. The logits are what this checks.
        again, _ = mf.forward(reloaded, input_ids, None if case == "adalora" else labels)
    assert torch.allclose(again, rec["logits"], rtol=0, atol=1e-5), (again - rec["logits"]).abs().max()
    penalty = orth_penalty(saved, cfg.orth_reg_weight) if case == "adalora" else 0.0
    mf.check_loss(rec["logits"], labels, rec["loss"] - penalty)
    manifest["cases"][case] = {"saved_keys": mf.describe(saved)}
    print(f"{case}: loss {rec['loss'].item():.6f}, {len(saved)} adapter tensors")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default=str(mf.REPO / "tests" / "fixtures"))
    args = ap.parse_args()
    out = Path(args.out)
    base, input_ids, labels, base_logits = committed_base(out)
    with torch.no_grad():
        logits, _ = mf.forward(base, input_ids, labels)
    assert torch.allclose(logits, base_logits, rtol=0, atol=1e-5), "not the committed base"
    manifest = {"peft": mf.peft.__version__, "torch": torch.__version__, "cases": {}}
    for i, (case, cfg) in enumerate(CASES.items()):
        with butterfly_on_cpu(case in BUTTERFLY):
            run_case(case, cfg, i, base, input_ids, labels, out, manifest)
    with open(out / "methods.json", "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
        f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
