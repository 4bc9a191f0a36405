#!/usr/bin/env python3
"""Makes the shipped example model folder and its corpus, and the tokenizer fixtures.

Writes, deterministically (seed 0):
- dsl-examples/models/tiny-llama/: a Llama-architecture model folder as Hugging Face lays it
  out: config.json, tokenizer.json (a byte-level BPE trained on the corpus),
  tokenizer_config.json (special tokens and a ChatML chat template), generation_config.json,
  and model.safetensors with random bf16 weights: linear layers N(0, 1/fan_in), embeddings
  N(0, 0.25) (with tied embeddings and frozen norms, transformers' std 0.02 would cap every
  logit near ±1.3, and no adapter on the linear layers could lower the loss much).
- dsl-examples/data/stories/{train,eval}.jsonl (`text` records), chat.jsonl (`messages`) and
  qa.jsonl (`prompt`/`completion`): a small synthetic corpus about a few people, things and
  places, generated from templates.
- tests/fixtures/tokenizer/expected.json: what Python's `tokenizers` (and jinja2, for the
  chat template) make of sample records, the oracle for graft's data pipeline.

Needs only `tokenizers`, `jinja2` and `numpy` (pinned in scripts/requirements-fixtures.txt):
    python3 scripts/make_tiny_model.py
"""

import json
import os
import random
import struct

import jinja2
import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.join(ROOT, "dsl-examples", "models", "tiny-llama")
DATA = os.path.join(ROOT, "dsl-examples", "data", "stories")
FIXTURE = os.path.join(ROOT, "tests", "fixtures", "tokenizer")

BOS, EOS, PAD = "<|begin_of_text|>", "<|end_of_text|>", "<|pad|>"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
SPECIAL = [BOS, EOS, PAD, IM_START, IM_END]
VOCAB = 512
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] | trim + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

PEOPLE = ["Mia", "Leo", "Ana", "Tom", "Ivy", "Sam", "Zoe", "Max"]
THINGS = ["cups", "books", "apples", "pens", "boxes", "shells", "keys", "lamps"]
COLORS = ["red", "blue", "green", "yellow", "white", "black"]
PLACES = ["kitchen", "garden", "market", "library", "harbor", "school"]
NUMBERS = ["two", "three", "four", "five", "six", "seven"]
VERBS = ["keeps", "finds", "counts", "paints", "carries", "hides"]


def story(rng):
    p, q = rng.sample(PEOPLE, 2)
    n, c, t, pl, v = (rng.choice(x) for x in (NUMBERS, COLORS, THINGS, PLACES, VERBS))
    forms = [
        f"{p} {v} {n} {c} {t} in the {pl}.",
        f"In the {pl}, {p} {v} {n} {c} {t} and gives them to {q}.",
        f"Every morning {p} walks to the {pl} with {q}. They count {n} {c} {t}.",
        f"{p} asks {q} where the {c} {t} are. {q} says they are in the {pl}.",
    ]
    return " ".join(rng.sample(forms, rng.randint(1, 3)))


def fact(rng):
    p = rng.choice(PEOPLE)
    n, c, t, pl = (rng.choice(x) for x in (NUMBERS, COLORS, THINGS, PLACES))
    return f"What does {p} keep in the {pl}?", f"{p} keeps {n} {c} {t} in the {pl}."


def train_tokenizer(texts):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    bos = tok.token_to_id(BOS)
    tok.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos)]
            ),
        ]
    )
    return tok


def bf16_bytes(x):
    """Round-to-nearest-even f32 → bf16, little-endian."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    return r.tobytes()


def write_safetensors(path, tensors):
    header, blobs, off = {}, [], 0
    for name, arr in tensors:
        b = bf16_bytes(arr)
        header[name] = {"dtype": "BF16", "shape": list(arr.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    header["__metadata__"] = {"format": "pt"}
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def write_jsonl(path, records):
    with open(path, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")


def assistant_spans(render, messages):
    """Character spans of each assistant turn: the text a turn adds after the prompt that
    precedes it (rendered with the generation prompt)."""
    full = render(messages, False)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = render(messages[:i], True)
        after = render(messages[: i + 1], False)
        assert full.startswith(before) and full.startswith(after)
        spans.append((len(before), len(after)))
    return full, spans


def main():
    rng = random.Random(0)
    train = [story(rng) for _ in range(1500)]
    evals = [story(rng) for _ in range(100)]
    facts = [fact(rng) for _ in range(300)]
    chats = [
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
        for q, a in facts[:200]
    ]
    qa = [{"prompt": f"Question: {q}\nAnswer:", "completion": f" {a}"} for q, a in facts[200:]]
    os.makedirs(DATA, exist_ok=True)
    write_jsonl(os.path.join(DATA, "train.jsonl"), [{"text": t} for t in train])
    write_jsonl(os.path.join(DATA, "eval.jsonl"), [{"text": t} for t in evals])
    write_jsonl(os.path.join(DATA, "chat.jsonl"), chats)
    write_jsonl(os.path.join(DATA, "qa.jsonl"), qa)

    corpus = train + [q + " " + a for q, a in facts]
    tok = train_tokenizer(corpus)
    os.makedirs(MODEL, exist_ok=True)
    tok.save(os.path.join(MODEL, "tokenizer.json"))
    tconf = {
        "bos_token": BOS,
        "eos_token": EOS,
        "pad_token": PAD,
        "add_bos_token": True,
        "model_max_length": 256,
        "chat_template": CHAT_TEMPLATE,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    with open(os.path.join(MODEL, "tokenizer_config.json"), "w") as f:
        json.dump(tconf, f, indent=2)
    ids = {s: tok.token_to_id(s) for s in SPECIAL}
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": VOCAB,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "hidden_act": "silu",
        "max_position_embeddings": 256,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "rope_scaling": None,
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": True,
        "bos_token_id": ids[BOS],
        "eos_token_id": ids[EOS],
        "pad_token_id": ids[PAD],
        "torch_dtype": "bfloat16",
    }
    with open(os.path.join(MODEL, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    with open(os.path.join(MODEL, "generation_config.json"), "w") as f:
        # Generation stops at the end of text and at the end of a chat turn, as chat models
        # list both (Llama 3 Instruct: [128001, 128009]).
        gen = {"bos_token_id": ids[BOS], "eos_token_id": [ids[EOS], ids[IM_END]], "pad_token_id": ids[PAD]}
        json.dump(gen, f, indent=2)

    g = np.random.default_rng(0)
    h, f_, kv, hd, L = 64, 128, 2, 16, 2
    w = lambda o, i: g.normal(0.0, i**-0.5, size=(o, i)).astype(np.float32)
    tensors = [("model.embed_tokens.weight", g.normal(0.0, 0.25, size=(VOCAB, h)).astype(np.float32))]
    for i in range(L):
        p = f"model.layers.{i}."
        tensors += [
            (p + "self_attn.q_proj.weight", w(4 * hd, h)),
            (p + "self_attn.k_proj.weight", w(kv * hd, h)),
            (p + "self_attn.v_proj.weight", w(kv * hd, h)),
            (p + "self_attn.o_proj.weight", w(h, 4 * hd)),
            (p + "mlp.gate_proj.weight", w(f_, h)),
            (p + "mlp.up_proj.weight", w(f_, h)),
            (p + "mlp.down_proj.weight", w(h, f_)),
            (p + "input_layernorm.weight", np.ones(h, np.float32)),
            (p + "post_attention_layernorm.weight", np.ones(h, np.float32)),
        ]
    tensors.append(("model.norm.weight", np.ones(h, np.float32)))
    write_safetensors(os.path.join(MODEL, "model.safetensors"), sorted(tensors))

    # The oracle for graft's tokenization, chat rendering and loss masks.
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
    template = env.from_string(CHAT_TEMPLATE)
    render = lambda msgs, gen: template.render(messages=msgs, add_generation_prompt=gen, bos_token=BOS, eos_token=EOS)
    samples = train[:3] + ["Unicode: café, naïve — 東京 🙂", "  leading spaces\tand\ttabs\n\nnew lines  "]
    expected = {"text": [], "chat": [], "prompt_completion": []}
    for t in samples:
        expected["text"].append({"text": t, "ids": tok.encode(t).ids})
    for c in chats[:3]:
        full, spans = assistant_spans(render, c["messages"])
        enc = tok.encode(full, add_special_tokens=False)
        mask = [int(any(a < e and s < b for a, b in spans)) for s, e in enc.offsets]
        expected["chat"].append(
            {"messages": c["messages"], "rendered": full, "ids": enc.ids, "assistant_mask": mask}
        )
    for r in qa[:3]:
        expected["prompt_completion"].append(
            {
                **r,
                "ids": tok.encode(r["prompt"] + r["completion"]).ids,
                "prompt_len": len(tok.encode(r["prompt"]).ids),
            }
        )
    os.makedirs(FIXTURE, exist_ok=True)
    with open(os.path.join(FIXTURE, "expected.json"), "w") as f:
        groups = [
            f'  "{k}": [\n' + ",\n".join("    " + json.dumps(r, ensure_ascii=False) for r in v) + "\n  ]"
            for k, v in expected.items()
        ]
        f.write("{\n" + ",\n".join(groups) + "\n}\n")
    print("wrote", MODEL, DATA, FIXTURE)


if __name__ == "__main__":
    main()
