#!/usr/bin/env python3
"""Generate graft's reference fixtures with PyTorch + transformers + PEFT + bitsandbytes.

Run by hand (never from cargo):

    /work/venv-fixtures/bin/python scripts/make_fixtures.py [--out tests/fixtures]

Everything is fp32 on the CPU with fixed seeds and one torch thread, so a rerun on the same
machine reproduces the files bit for bit. See tests/fixtures/README.md for the format.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import sys
import warnings
from pathlib import Path

if os.environ.get("PYTHONHASHSEED") != "0":
    # PEFT serialises target_modules from a set: pin string hashing so adapter_config.json is stable.
    os.environ["PYTHONHASHSEED"] = "0"
    os.execv(sys.executable, [sys.executable, *sys.argv])

import torch  # noqa: E402

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)
warnings.filterwarnings("ignore")

import bitsandbytes  # noqa: E402
import bitsandbytes.functional as bnbF  # noqa: E402
import peft  # noqa: E402
import safetensors  # noqa: E402
import transformers  # noqa: E402
from peft import (  # noqa: E402
    IA3Config,
    LoraConfig,
    PeftModel,
    PromptTuningConfig,
    get_peft_model,
    get_peft_model_state_dict,
)
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
VOCAB, HIDDEN, INTER, LAYERS, HEADS, KV_HEADS = 256, 64, 128, 2, 4, 2
BATCH, SEQ = 2, 8
NF4_BLOCK, NESTED_BLOCK = 64, 256
ADAMW = dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
STEPS = 3
LINEAR_NAMES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def llama_config() -> LlamaConfig:
    return LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=INTER,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        max_position_embeddings=128,
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        attention_bias=False,
        mlp_bias=False,
    )


def build_base() -> LlamaForCausalLM:
    """A tiny Llama whose weights are drawn from one seeded generator.

    HF's default init (std 0.02) gives logits near zero, which makes a poor test; here every
    weight is O(1)-preserving so logits, losses and gradients are all well away from zero, and
    the RMSNorm weights are not all ones (so a missing norm weight shows up).
    """
    torch.manual_seed(0)
    model = LlamaForCausalLM._from_config(llama_config(), attn_implementation="eager")
    model = model.float().eval()
    g = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            elif name == "model.embed_tokens.weight":
                p.copy_(torch.randn(p.shape, generator=g))
            else:  # [out, in] linear weights, including lm_head
                p.copy_(torch.randn(p.shape, generator=g) / (p.shape[1] ** 0.5))
    return model


def make_batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(42)
    input_ids = torch.randint(0, VOCAB, (BATCH, SEQ), generator=g, dtype=torch.int64)
    labels = input_ids.clone()
    labels[0, 0] = -100  # a target only under prompt tuning (the last virtual token predicts it)
    labels[0, 5] = -100
    labels[1, 3] = -100
    return input_ids, labels


def c(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to("cpu").contiguous().clone()


def forward(model, input_ids, labels):
    out = model(input_ids=input_ids, labels=labels)
    return out.logits, out.loss


def train_record(model, input_ids, labels, key_of: dict[str, str]) -> dict[str, torch.Tensor]:
    """logits/loss/grad at the initial parameters, then AdamW STEPS times; step3.* after.

    key_of maps a trainable parameter's module path (named_parameters name) to the key the
    fixture uses for it (PEFT's saved key, or the HF name for full fine-tuning).
    """
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert set(params) == set(key_of), (sorted(params), sorted(key_of))
    opt = torch.optim.AdamW(list(params.values()), **ADAMW)
    out: dict[str, torch.Tensor] = {}
    for step in range(STEPS):
        opt.zero_grad(set_to_none=True)
        logits, loss = forward(model, input_ids, labels)
        loss.backward()
        if step == 0:
            out["logits"] = c(logits)
            out["loss"] = c(loss)
            for n, p in params.items():
                out[f"grad.{key_of[n]}"] = c(p.grad)
        opt.step()
    for n, p in params.items():
        out[f"step3.{key_of[n]}"] = c(p)
    return out


def peft_key_map(model, saved: dict[str, torch.Tensor]) -> dict[str, str]:
    """Map each trainable named_parameter to the key get_peft_model_state_dict saved it under."""
    by_value: dict[str, str] = {}
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    for n, p in params.items():
        hits = [k for k, v in saved.items() if v.shape == p.shape and torch.equal(v, p.detach())]
        # Resolve by name: PEFT drops the adapter name ("default") and, for DoRA, ".weight".
        stripped = n.replace(".default", "")
        exact = [k for k in hits if k == stripped or k + ".weight" == stripped or k == stripped.removesuffix(".weight")]
        cand = exact or hits
        assert len(cand) == 1, (n, hits)
        by_value[n] = cand[0]
    assert sorted(by_value.values()) == sorted(saved), (sorted(by_value.values()), sorted(saved))
    return by_value


def randomize_adapter(model, seed: int) -> None:
    """Give every trainable adapter tensor deterministic, small, non-zero values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if not p.requires_grad:
                continue
            r = torch.randn(p.shape, generator=g)
            if "lora_magnitude_vector" in n or "ln_tuning_layers" in n:
                p.copy_(p * (1.0 + 0.1 * r))  # keep PEFT's init (row norms of W, a norm's weight) and perturb it
            elif "ia3_l" in n:
                p.copy_(1.0 + 0.2 * r)
            elif "prompt_embeddings" in n or "embedding" in n:
                p.copy_(r)
            else:  # lora_A / lora_B
                p.copy_(0.1 * r)


def check_loss(logits: torch.Tensor, labels: torch.Tensor, loss: torch.Tensor, virtual: int = 0) -> None:
    """The documented rule: prefix `virtual` labels of -100, shift by one, mean CE over the rest."""
    if virtual:
        labels = torch.cat([torch.full((labels.shape[0], virtual), -100), labels], dim=1)
    assert logits.shape[1] == labels.shape[1], (logits.shape, labels.shape)
    ref = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100)
    assert torch.allclose(ref, loss, rtol=1e-6, atol=1e-6), (ref.item(), loss.item())


def save_adapter_dir(model, path: Path, saved: dict[str, torch.Tensor]) -> None:
    """model.save_pretrained(path), minus the boilerplate model card; checks it wrote `saved`."""
    model.save_pretrained(str(path))
    card = path / "README.md"
    if card.exists():
        card.unlink()
    written = load_file(str(path / "adapter_model.safetensors"))
    assert sorted(written) == sorted(saved), (sorted(written), sorted(saved))
    assert all(torch.equal(written[k], saved[k]) for k in saved)


def describe(sd: dict[str, torch.Tensor]) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in sorted(sd.items())}


# ----------------------------------------------------------------------------------------------
# NF4 (bitsandbytes) reference data
# ----------------------------------------------------------------------------------------------


def nf4_record(name: str, w: torch.Tensor) -> dict[str, torch.Tensor]:
    """Raw bitsandbytes outputs for one tensor, with and without double quantization."""
    w = w.detach().float().contiguous()
    out: dict[str, torch.Tensor] = {}
    q, st = bnbF.quantize_4bit(w, blocksize=NF4_BLOCK, quant_type="nf4", compress_statistics=False)
    out[f"{name}.packed"] = c(q.reshape(-1))
    out[f"{name}.absmax"] = c(st.absmax)
    out[f"{name}.dequant"] = c(bnbF.dequantize_4bit(q, st).reshape(-1))
    q2, st2 = bnbF.quantize_4bit(w, blocksize=NF4_BLOCK, quant_type="nf4", compress_statistics=True)
    assert torch.equal(q2, q), "packed codes must not depend on compress_statistics"
    assert st2.state2.blocksize == NESTED_BLOCK
    out[f"{name}.dq.packed"] = c(q2.reshape(-1))
    out[f"{name}.dq.absmax_u8"] = c(st2.absmax)
    out[f"{name}.dq.offset"] = c(st2.offset.reshape(1))
    out[f"{name}.dq.absmax2"] = c(st2.state2.absmax)
    out[f"{name}.dq.absmax_deq"] = c(bnbF.dequantize_blockwise(st2.absmax, st2.state2) + st2.offset)
    out[f"{name}.dq.dequant"] = c(bnbF.dequantize_4bit(q2, st2).reshape(-1))
    return out


def scale_rounding_case(g: torch.Generator) -> torch.Tensor:
    """Blocks whose codes depend on how the scale is applied.

    bitsandbytes' CPU kernel scales full blocks by `x * (1 / absmax)` but the partial last
    block by `x / absmax`; the two roundings differ in the last bit now and then. Each block
    here holds its absmax and then values (found by search) for which the two roundings land
    on different sides of an NF4 midpoint, so an implementation that scales the wrong way
    gets a different code.
    """
    code = bnbF.get_4bit_type("nf4", device="cpu")
    bounds = (code[:-1] + code[1:]) / 2
    steps = torch.arange(-6, 7, dtype=torch.int32)
    blocks = []
    for b in range(4):
        found = torch.empty(0)
        while found.numel() < 8:
            am = torch.rand(1, generator=g)[0] * 5 + 0.1
            xs = ((bounds * am).view(torch.int32)[:, None] + steps[None, :]).view(torch.float32).reshape(-1)
            by_mul = torch.bucketize(torch.clamp(xs * (1.0 / am), -1, 1), bounds)
            by_div = torch.bucketize(torch.clamp(xs / am, -1, 1), bounds)
            found = xs[by_mul != by_div]
        n = NF4_BLOCK if b < 3 else 40  # the last block is partial
        blk = torch.cat([am.reshape(1), found[: n - 1]])
        blk = torch.cat([blk, (torch.rand(n - blk.numel(), generator=g) - 0.5) * am])
        blocks.append(blk)
    return torch.cat(blocks)


def nf4_edge_inputs() -> dict[str, torch.Tensor]:
    """Inputs that exercise boundaries: ties, zero blocks, odd lengths, partial blocks."""
    g = torch.Generator().manual_seed(7)
    code = bnbF.get_4bit_type("nf4", device="cpu")
    mids = (code[:-1] + code[1:]) / 2
    ties = []
    for _ in range(4):  # each block: absmax exactly 1 (scale 1), then every midpoint and code value
        blk = torch.cat([torch.tensor([1.0]), mids, -mids, code, torch.nextafter(mids, torch.tensor(2.0)),
                         torch.nextafter(mids, torch.tensor(-2.0))])
        blk = torch.cat([blk, torch.zeros(NF4_BLOCK * 2 - blk.numel())])
        ties.append(blk)
    ties = torch.cat(ties)
    ties = ties[torch.randperm(ties.numel(), generator=g)]
    # make each 64-block contain +-1.0 so the scale is exactly 1 and midpoints stay midpoints
    ties = ties.reshape(-1, NF4_BLOCK)
    ties[:, 0] = torch.where(torch.arange(ties.shape[0]) % 2 == 0, 1.0, -1.0)
    ties = ties.reshape(-1)
    zeros_mixed = torch.cat([torch.randn(NF4_BLOCK, generator=g), torch.zeros(NF4_BLOCK),
                             torch.randn(NF4_BLOCK, generator=g) * 1e-3])
    return {
        "edge.ties": ties,
        "edge.zero_block": zeros_mixed,
        "edge.odd_999": torch.randn(999, generator=g) * 3.0,  # odd length, partial last block of 39
        "edge.tiny_5": torch.randn(5, generator=g),  # shorter than one block
        "edge.scale_rounding": scale_rounding_case(g),
        # an all-zero partial last block: bnb's CPU path stores absmax clamped to 1e-38 for it
        "edge.zero_tail": torch.cat([torch.randn(NF4_BLOCK, generator=g), torch.zeros(10)]),
        # 603 absmax values: three nested 256-blocks, last one partial (91) and not a multiple of 8
        "edge.many_blocks": torch.randn(603 * NF4_BLOCK, generator=g)
        * torch.exp(torch.randn(603, generator=g)).repeat_interleave(NF4_BLOCK),
    }


def blockwise8_edge() -> dict[str, torch.Tensor]:
    """bnb's 8-bit blockwise (dynamic signed map) on its own, including exact midpoints."""
    g = torch.Generator().manual_seed(8)
    code = bnbF.create_dynamic_map(signed=True)
    mids = (code[:-1] + code[1:]) * 0.5
    x = torch.cat([torch.tensor([1.0]), mids, code, torch.randn(700, generator=g)])
    x = torch.cat([x, torch.randn(NESTED_BLOCK * 6 + 13 - x.numel(), generator=g) * 0.01])
    q, st = bnbF.quantize_blockwise(x, blocksize=NESTED_BLOCK)
    return {
        "q8.input": c(x),
        "q8.codes": c(q),
        "q8.absmax": c(st.absmax),
        "q8.dequant": c(bnbF.dequantize_blockwise(q, st)),
    }


def mean_cases() -> dict[str, torch.Tensor]:
    """torch's CPU float mean (the double-quantization offset) on awkward lengths."""
    g = torch.Generator().manual_seed(9)
    out = {}
    for n in [1, 5, 8, 13, 64, 100, 603, 4099]:
        x = torch.rand(n, generator=g) * 3.0
        out[f"mean.{n}.input"] = x
        out[f"mean.{n}.mean"] = x.mean().reshape(1)
    return out


# ----------------------------------------------------------------------------------------------


def replace_with_linear4bit(model) -> None:
    for layer in model.model.layers:
        for parent in (layer.self_attn, layer.mlp):
            for attr in LINEAR_NAMES:
                lin = getattr(parent, attr, None)
                if lin is None:
                    continue
                new = bitsandbytes.nn.Linear4bit(
                    lin.in_features, lin.out_features, bias=False, compute_dtype=torch.float32,
                    compress_statistics=True, quant_type="nf4", quant_storage=torch.uint8,
                )
                new.weight = bitsandbytes.nn.Params4bit(
                    lin.weight.detach().clone(), requires_grad=False, compress_statistics=True,
                    quant_type="nf4", blocksize=NF4_BLOCK,
                )
                new = new.to("cpu")
                assert new.weight.bnb_quantized
                setattr(parent, attr, new)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default=str(REPO / "tests" / "fixtures"))
    args = ap.parse_args()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("peft_*"):
        shutil.rmtree(old)
    for old in out_dir.glob("*.safetensors"):
        old.unlink()

    versions = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "bitsandbytes": bitsandbytes.__version__,
        "safetensors": safetensors.__version__,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }
    manifest: dict = {"versions": versions, "cases": {}}
    # No safetensors metadata: its header map is written in hash order, so files would differ
    # byte-wise from run to run. Versions and block sizes live in manifest.json instead.
    meta = None

    base = build_base()
    input_ids, labels = make_batch()
    with torch.no_grad():
        logits, loss = forward(base, input_ids, labels)
    check_loss(logits, labels, loss)
    base_sd = {k: c(v) for k, v in base.state_dict().items()}
    save_file({**base_sd, "input_ids": input_ids, "labels": labels, "logits": c(logits), "loss": c(loss)},
              str(out_dir / "base.safetensors"), metadata=meta)
    manifest["base"] = describe(base_sd)
    # The same model as a Hugging Face folder (`model base = llama from "..."`): transformers'
    # config.json beside a link to base.safetensors (whose extra tensors graft ignores).
    hf_dir = out_dir / "tiny-llama-hf"
    hf_dir.mkdir(exist_ok=True)
    base.config.to_json_file(str(hf_dir / "config.json"))
    link = hf_dir / "model.safetensors"
    if not link.exists():
        link.symlink_to("../base.safetensors")

    lora_qv = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
    cases = {
        "lora_qv": lora_qv,
        "lora_all": LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.0),
        "dora": LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0, use_dora=True),
        "ia3": IA3Config(target_modules=["k_proj", "v_proj", "down_proj"], feedforward_modules=["down_proj"]),
        "prompt_tuning": PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4),
    }
    for i, (case, cfg) in enumerate(cases.items()):
        torch.manual_seed(100 + i)
        model = get_peft_model(copy.deepcopy(base), cfg)
        randomize_adapter(model, seed=1000 + i)
        saved = {k: c(v) for k, v in get_peft_model_state_dict(model).items()}
        key_of = peft_key_map(model, saved)
        # the adapter directory holds the initial (randomized) adapter, i.e. the values whose
        # logits/loss/grads are recorded; loading it onto base.safetensors reproduces `logits`
        save_adapter_dir(model, out_dir / f"peft_{case}", saved)
        model.train()  # dropout is 0 everywhere, so train() == eval() numerically
        rec = train_record(model, input_ids, labels, key_of)
        save_file({**saved, **rec}, str(out_dir / f"{case}.safetensors"), metadata=meta)
        reloaded = PeftModel.from_pretrained(copy.deepcopy(base), str(out_dir / f"peft_{case}"))
        with torch.no_grad():
            again, _ = forward(reloaded, input_ids, labels)
        assert torch.allclose(again, rec["logits"], rtol=0, atol=1e-5), (again - rec["logits"]).abs().max()
        check_loss(rec["logits"], labels, rec["loss"], virtual=cfg.num_virtual_tokens if case == "prompt_tuning" else 0)
        manifest["cases"][case] = {
            "saved_keys": describe(saved),
            "named_parameters": {n: k for n, k in sorted(key_of.items())},
            "logits_shape": list(rec["logits"].shape),
        }
        print(f"{case}: loss {rec['loss'].item():.6f}, {len(saved)} adapter tensors")

    # full fine-tuning of one weight, no PEFT
    model = copy.deepcopy(base)
    target = "model.layers.1.mlp.down_proj.weight"
    for n, p in model.named_parameters():
        p.requires_grad_(n == target)
    model.train()
    rec = train_record(model, input_ids, labels, {target: target})
    save_file({target: base_sd[target], **rec}, str(out_dir / "full_ft.safetensors"), metadata=meta)
    check_loss(rec["logits"], labels, rec["loss"])
    manifest["cases"]["full_ft"] = {"saved_keys": {target: list(base_sd[target].shape)},
                                    "logits_shape": list(rec["logits"].shape)}
    print(f"full_ft: loss {rec['loss'].item():.6f}")

    # NF4 raw data for every decoder linear weight, plus edge cases
    nf4: dict[str, torch.Tensor] = {}
    for name, w in base_sd.items():
        if ".layers." in name and any(f".{l}." in name for l in LINEAR_NAMES):
            nf4.update(nf4_record(name, w))
    for name, x in nf4_edge_inputs().items():
        nf4[f"{name}.input"] = c(x)
        nf4.update(nf4_record(name, x))
    nf4.update(blockwise8_edge())
    nf4.update(mean_cases())
    nf4["nf4.code"] = c(bnbF.get_4bit_type("nf4", device="cpu"))
    nf4["dynamic.code"] = c(bnbF.create_dynamic_map(signed=True))
    save_file(nf4, str(out_dir / "nf4.safetensors"),
              metadata=meta)
    manifest["nf4"] = {"blocksize": NF4_BLOCK, "nested_blocksize": NESTED_BLOCK, "quant_type": "nf4",
                       "keys": describe(nf4)}

    # QLoRA: LoRA q/v over bnb Linear4bit (NF4, double quant) layers, run on the CPU
    qbase = copy.deepcopy(base)
    replace_with_linear4bit(qbase)
    torch.manual_seed(200)
    model = get_peft_model(qbase, copy.deepcopy(lora_qv))
    randomize_adapter(model, seed=2000)
    saved = {k: c(v) for k, v in get_peft_model_state_dict(model).items()}
    key_of = peft_key_map(model, saved)
    save_adapter_dir(model, out_dir / "peft_qlora", saved)
    model.train()
    rec = train_record(model, input_ids, labels, key_of)
    # cross-check: a plain fp32 model with bnb's dequantized weights gives the same logits
    plain = copy.deepcopy(base)
    with torch.no_grad():
        for name, p in plain.named_parameters():
            if f"{name}.dq.dequant" in nf4:
                p.copy_(nf4[f"{name}.dq.dequant"].reshape(p.shape))
    plain = get_peft_model(plain, copy.deepcopy(lora_qv))
    with torch.no_grad():
        for n, p in plain.named_parameters():
            if p.requires_grad:
                p.copy_(saved[key_of[n]])
        plogits, ploss = forward(plain, input_ids, labels)
    qlora_diff = (plogits - rec["logits"]).abs().max().item()
    save_file({**saved, **rec}, str(out_dir / "qlora.safetensors"), metadata=meta)
    check_loss(rec["logits"], labels, rec["loss"])
    manifest["cases"]["qlora"] = {
        "saved_keys": describe(saved),
        "named_parameters": {n: k for n, k in sorted(key_of.items())},
        "base_layer_type": type(model.base_model.model.model.layers[0].self_attn.q_proj.base_layer).__module__
        + "." + type(model.base_model.model.model.layers[0].self_attn.q_proj.base_layer).__name__,
        "logits_shape": list(rec["logits"].shape),
        "max_abs_logit_diff_vs_plain_linear_with_dequantized_weights": qlora_diff,
    }
    print(f"qlora: loss {rec['loss'].item():.6f} (plain-linear cross-check max |dlogit| = {qlora_diff:g})")

    with open(out_dir / "manifest.json", "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
        f.write("\n")
    for f in out_dir.rglob("*"):
        if f.is_file():
            f.chmod(0o644)
    total = sum(p.stat().st_size for p in out_dir.rglob("*") if p.is_file())
    print(f"wrote {out_dir} ({total / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
