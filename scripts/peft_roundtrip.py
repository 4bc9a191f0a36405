#!/usr/bin/env python3
"""Adapters and merged models between graft and Hugging Face, checked on logits.

Runs where the Python reference venv exists (scripts/requirements-fixtures.txt):
    /work/venv-fixtures/bin/python scripts/peft_roundtrip.py [--graft target/release/graft]

On the shipped example (dsl-examples/stories_lora.graft: LoRA r=16 on every linear layer of
dsl-examples/models/tiny-llama), in f32 on the CPU:
1. graft → PEFT: graft trains an adapter; `PeftModel.from_pretrained` on it gives graft's
   logits (from `graft eval --logits`) within 1e-4.
2. PEFT → graft: PEFT trains an adapter of the same shape for 3 AdamW steps and saves it;
   `graft eval --adapter` on it gives PEFT's logits within 1e-4.
3. Merged: `graft export --merged` writes a folder that `AutoModelForCausalLM` loads as a
   plain model and whose logits match graft's within 1e-4.
4. Tokenizer: transformers' `AutoTokenizer` on the folder gives the ids and chat renderings
   of tests/fixtures/tokenizer/expected.json (what graft's tests check graft against).
5. Every method with a PEFT form on the tiny fixture model (tiny_lora, tiny_dora, tiny_ia3,
   tiny_loha, tiny_lokr, tiny_hra, tiny_oft, tiny_ln_tuning, tiny_vera, tiny_pissa,
   tiny_olora, tiny_fourierft, tiny_boft, tiny_adalora, tiny_prefix_tuning): an adapter graft trained for 5 steps gives graft's logits in
   PEFT (PiSSA and OLoRA: on the original weights, from which PEFT makes the residual)
   within 1e-4.
Prints the largest difference of each and exits non-zero if one is over the tolerance. With
`--fixture`, also writes PEFT's adapter of step 2 and its logits (first row) to
tests/fixtures/stories-peft-adapter/, which runtime/tests/peft_interop.rs checks graft against in CI.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from peft_cpu import butterfly_on_cpu

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPEC = os.path.join(ROOT, "dsl-examples", "stories_lora.graft")
MODEL = os.path.join(ROOT, "dsl-examples", "models", "tiny-llama")
TOL = 1e-4


def graft(exe, *args):
    env = dict(os.environ, GRAFT_STDLIB=os.path.join(ROOT, "stdlib"))
    subprocess.run([exe, *args], check=True, cwd=ROOT, env=env)


def base_model():
    m = AutoModelForCausalLM.from_pretrained(MODEL, torch_dtype=torch.float32)
    return m.eval()


def logits_of(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def report(name, a, b):
    d = (a - b).abs().max().item()
    ok = d <= TOL
    print(f"{name}: max |Δlogit| = {d:.3e} ({'ok' if ok else 'OVER'} the tolerance {TOL})")
    return ok


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--graft", default=os.path.join(ROOT, "target", "release", "graft"))
    ap.add_argument("--fixture", action="store_true")
    args = ap.parse_args()
    torch.manual_seed(0)
    ok = True
    with tempfile.TemporaryDirectory() as w:
        # 1. graft → PEFT.
        ours = os.path.join(w, "graft_adapter")
        graft(args.graft, "train", SPEC, "--steps", "30", "--save", ours)
        dump = os.path.join(w, "graft_logits.safetensors")
        graft(args.graft, "eval", SPEC, "--adapter", ours, "--logits", dump)
        g = load_file(dump)
        ids, want = g["input_ids"], g["logits"]
        peft_model = PeftModel.from_pretrained(base_model(), ours).eval()
        ok &= report("graft adapter in PEFT", logits_of(peft_model, ids), want)

        # 3. Merged (needs only graft's adapter).
        merged = os.path.join(w, "merged")
        graft(args.graft, "export", SPEC, "--adapter", ours, "--merged", merged)
        plain = AutoModelForCausalLM.from_pretrained(merged, torch_dtype=torch.float32).eval()
        ok &= report("graft's merged model in transformers", logits_of(plain, ids), want)

        # 2. PEFT → graft: the spec's shape (r=16, alpha=32, every linear layer).
        cfg = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear")
        trained = get_peft_model(base_model(), cfg)
        opt = torch.optim.AdamW([p for p in trained.parameters() if p.requires_grad], lr=1e-2)
        trained.train()
        for _ in range(3):
            loss = trained(input_ids=ids, labels=ids).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
        trained.eval()
        theirs = os.path.join(w, "peft_adapter")
        trained.save_pretrained(theirs)
        peft_logits = logits_of(trained, ids)
        if args.fixture:
            # Not named peft_*: make_fixtures.py clears those.
            fx = os.path.join(ROOT, "tests", "fixtures", "stories-peft-adapter")
            trained.save_pretrained(fx)
            for extra in ("README.md",):
                if os.path.exists(os.path.join(fx, extra)):
                    os.remove(os.path.join(fx, extra))
            save_file(
                {"input_ids": ids.contiguous(), "logits_row0": peft_logits[:1].contiguous()},
                os.path.join(fx, "logits.safetensors"),
            )
        dump2 = os.path.join(w, "graft_from_peft.safetensors")
        graft(args.graft, "eval", SPEC, "--adapter", theirs, "--logits", dump2)
        g2 = load_file(dump2)
        assert torch.equal(g2["input_ids"], ids)
        ok &= report("PEFT adapter in graft", g2["logits"], peft_logits)

    # 4. The tokenizer fixtures, through transformers.
    tok = AutoTokenizer.from_pretrained(MODEL)
    with open(os.path.join(ROOT, "tests", "fixtures", "tokenizer", "expected.json")) as f:
        exp = json.load(f)
    same = all(tok(r["text"])["input_ids"] == r["ids"] for r in exp["text"])
    for r in exp["chat"]:
        text = tok.apply_chat_template(r["messages"], tokenize=False)
        same &= text == r["rendered"]
        same &= tok(text, add_special_tokens=False)["input_ids"] == r["ids"]
    print(f"tokenizer fixtures through transformers: {'identical' if same else 'DIFFERENT'}")
    ok &= same
    # 5. Each method's graft-trained adapter in PEFT, on the fixture model.
    fixture_model = os.path.join(ROOT, "tests", "fixtures", "tiny-llama-hf")
    methods = ("lora", "dora", "ia3", "loha", "lokr", "hra", "oft", "ln_tuning", "vera", "pissa", "olora", "fourierft",
               "boft", "adalora", "prefix_tuning")
    for method in methods:
        spec = os.path.join(ROOT, "dsl-examples", f"tiny_{method}.graft")
        with tempfile.TemporaryDirectory() as w:
            graft(args.graft, "train", spec, "--steps", "5", "--save", w)
            dump = os.path.join(w, "logits.safetensors")
            graft(args.graft, "eval", spec, "--adapter", w, "--logits", dump)
            g = load_file(dump)
            base = AutoModelForCausalLM.from_pretrained(fixture_model, torch_dtype=torch.float32)
            # tiny_boft has two butterfly factors, which PEFT computes only on its CUDA path.
            with butterfly_on_cpu(method == "boft"):
                m = PeftModel.from_pretrained(base.eval(), w).eval()
                ok &= report(f"graft {method} adapter in PEFT", logits_of(m, g["input_ids"]), g["logits"])
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
