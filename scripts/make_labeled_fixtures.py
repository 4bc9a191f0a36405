#!/usr/bin/env python3
"""Labeled example data, tiny tokenizers for the BERT and T5 stand-ins, and what
transformers makes of the data: the oracle graft's labeled-data loader is tested against.

Run by hand (never from cargo):

    /work/venv-fixtures/bin/python scripts/make_labeled_fixtures.py

Writes only files that do not exist yet.

- dsl-examples/models/tiny-wordpiece/: a BERT-style WordPiece tokenizer of 96 tokens (the
  vocabulary of tests/fixtures/bert_classifier.safetensors): [PAD] [UNK] [CLS] [SEP]
  [MASK], letters, ##letters, common words; lowercasing; `[CLS] A [SEP] (B [SEP])`.
- dsl-examples/models/tiny-t5-wordpiece/: the same kind for the T5 stand-in's 64 tokens:
  <pad> </s> <unk>, letters, ##letters, a few words; `A </s>`.
- dsl-examples/data/sentiment_tiny.jsonl: 24 `{"text", "label"}` records (3 classes).
- dsl-examples/data/sentiment_eval_tiny.jsonl: 8 held-out sentences of those classes.
- dsl-examples/data/squad_tiny.jsonl: 12 SQuAD records (`question`, `context`, `answers`).
- dsl-examples/data/seq2seq_tiny.jsonl: 16 `{"source", "target"}` records.
- dsl-examples/data/dpo_tiny.jsonl: 8 `{"prompt", "chosen", "rejected"}` records, in the
  tiny-llama tokenizer's alphabet.
- dsl-examples/data/images_tiny.safetensors: 16 images `pixel_values` [16, 3, 16, 16]
  (each class a different mean colour plus N(0, 1) noise) and `labels` [16].
- dsl-examples/data/clip_pairs_tiny.safetensors: 12 image–text pairs for the tiny CLIP,
  `pixel_values` [12, 3, 16, 16] (a colour per class plus noise) and `input_ids` [12, 7]
  (bos, two words of the class, eos, padding).
- tests/fixtures/labeled_oracle.json: for the first records of the sentiment, SQuAD and
  seq2seq files, the `input_ids`, `token_type_ids`, `attention_mask` and labels
  transformers' tokenizers give at graft's lengths, the QA spans found as transformers'
  examples/pytorch/question-answering/run_qa.py finds them, and the decoder inputs as
  T5ForConditionalGeneration shifts its labels.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import WordPiece
from transformers import PreTrainedTokenizerFast, T5Config, T5ForConditionalGeneration

REPO = Path(__file__).resolve().parent.parent
EX = REPO / "dsl-examples"
LETTERS = [chr(c) for c in range(ord("a"), ord("z") + 1)]

BERT_WORDS = (
    "the a is was movie film good bad great awful fine okay plot acting story where "
    "who what did go went city park river paris rome cat dog sat on mat in of and "
    "to it this very not"
).split()
T5_WORDS = "the a is cat dog big small red blue".split()

# Sentiment: class 0 negative, 1 neutral, 2 positive.
SENTIMENT = [
    ("the movie was great", 2), ("the film was awful", 0), ("the plot was okay", 1),
    ("the acting was good", 2), ("the story was bad", 0), ("the film was fine", 1),
    ("a great movie", 2), ("a bad film", 0), ("an okay story", 1),
    ("very good acting", 2), ("very bad plot", 0), ("the movie is okay", 1),
    ("this film is great", 2), ("this movie is awful", 0), ("this plot is fine", 1),
    ("good story and great acting", 2), ("bad plot and awful acting", 0),
    ("the story is not bad", 1), ("it was very good", 2), ("it was very bad", 0),
    ("it was okay", 1), ("great great film", 2), ("awful awful movie", 0),
    ("fine fine story", 1),
]

# Held-out sentences for the sentiment example's evaluation.
SENTIMENT_EVAL = [
    ("a good story", 2), ("the plot was awful", 0), ("the acting is fine", 1),
    ("this film was great", 2), ("a bad movie", 0), ("it is okay", 1),
    ("very great acting", 2), ("the story was very bad", 0),
]

SQUAD = [
    ("where did the cat sit", "the cat sat on the mat in the park", "on the mat"),
    ("where did the dog go", "the dog went to the river", "to the river"),
    ("what is in paris", "a park is in paris and a river is in rome", "a park"),
    ("who went to rome", "the cat went to rome", "the cat"),
    ("where is the river", "the river is in the city", "in the city"),
    ("what sat on the mat", "the dog sat on the mat", "the dog"),
    ("where did the cat go", "the cat went to the park", "to the park"),
    ("what is in rome", "a river is in rome", "a river"),
    ("who sat in the park", "the dog sat in the park and the cat sat on the mat", "the dog"),
    ("where is paris", "paris is a city on a river", "a city"),
    ("what went to the city", "the cat went to the city", "the cat"),
    ("where did the dog sit", "the dog sat on the mat in rome", "on the mat"),
]

T5_PAIRS = [
    ("the cat is big", "a big cat"), ("the dog is small", "a small dog"),
    ("the cat is red", "a red cat"), ("the dog is blue", "a blue dog"),
    ("the cat is small", "a small cat"), ("the dog is big", "a big dog"),
    ("the cat is blue", "a blue cat"), ("the dog is red", "a red dog"),
] * 2

DPO = [
    ("Q: is the sky blue? A:", " yes, the sky is blue.", " no."),
    ("Q: do cats purr? A:", " yes, cats purr.", " no."),
    ("Q: is fire cold? A:", " no, fire is hot.", " yes."),
    ("Q: can fish swim? A:", " yes, fish swim.", " no."),
    ("Q: is ice hot? A:", " no, ice is cold.", " yes."),
    ("Q: do dogs bark? A:", " yes, dogs bark.", " no."),
    ("Q: is the sun dark? A:", " no, the sun is bright.", " yes."),
    ("Q: can birds fly? A:", " yes, birds fly.", " no."),
]


def wordpiece(specials: list[str], words: list[str], size: int, template: str, pair: str | None):
    vocab = specials + LETTERS + ["##" + c for c in LETTERS] + words
    assert len(vocab) <= size, len(vocab)
    vocab += [f"[unused{i}]" for i in range(size - len(vocab))]
    unk = next(s for s in specials if "unk" in s.lower())
    tok = Tokenizer(WordPiece({t: i for i, t in enumerate(vocab)}, unk_token=unk))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    ids = {t: i for i, t in enumerate(vocab)}
    special = [(s, ids[s]) for s in specials if s in template or (pair and s in pair)]
    tok.post_processor = processors.TemplateProcessing(single=template, pair=pair, special_tokens=special)
    # Registered as special, so decoding leaves them out (their ids stay the vocabulary's).
    tok.add_special_tokens(specials)
    return tok


def write_tokenizer(folder: Path, tok: Tokenizer, config: dict) -> None:
    if (folder / "tokenizer.json").exists():
        print(f"{folder} exists; kept")
        return
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    print(f"wrote {folder}")


def write_jsonl(path: Path, records: list[dict]) -> None:
    if path.exists():
        print(f"{path} exists; kept")
        return
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    print(f"wrote {path}")


def squad_records() -> list[dict]:
    out = []
    for q, c, a in SQUAD:
        start = c.index(a)
        out.append({"question": q, "context": c, "answers": {"text": [a], "answer_start": [start]}})
    return out


def run_qa_span(tok, rec: dict, max_len: int) -> dict:
    """transformers' run_qa.py prepare_train_features, for the first window."""
    enc = tok(rec["question"], rec["context"], truncation="only_second", max_length=max_len,
              return_offsets_mapping=True, padding="max_length", return_token_type_ids=True)
    offsets = enc["offset_mapping"]
    seq_ids = enc.sequence_ids()
    cls_index = enc["input_ids"].index(tok.cls_token_id)
    start_char = rec["answers"]["answer_start"][0]
    end_char = start_char + len(rec["answers"]["text"][0])
    token_start_index = 0
    while seq_ids[token_start_index] != 1:
        token_start_index += 1
    token_end_index = len(enc["input_ids"]) - 1
    while seq_ids[token_end_index] != 1:
        token_end_index -= 1
    if not (offsets[token_start_index][0] <= start_char and offsets[token_end_index][1] >= end_char):
        start, end = cls_index, cls_index
    else:
        while token_start_index < len(offsets) and offsets[token_start_index][0] <= start_char:
            token_start_index += 1
        start = token_start_index - 1
        while offsets[token_end_index][1] >= end_char:
            token_end_index -= 1
        end = token_end_index + 1
    return {
        "input_ids": enc["input_ids"],
        "token_type_ids": enc["token_type_ids"],
        "attention_mask": enc["attention_mask"],
        "labels": [start, end],
    }


def main() -> int:
    bert_dir = EX / "models" / "tiny-wordpiece"
    t5_dir = EX / "models" / "tiny-t5-wordpiece"
    write_tokenizer(
        bert_dir,
        wordpiece(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"], BERT_WORDS, 96,
                  "[CLS] $A [SEP]", "[CLS] $A [SEP] $B:1 [SEP]:1"),
        {"tokenizer_class": "BertTokenizerFast", "pad_token": "[PAD]", "unk_token": "[UNK]",
         "cls_token": "[CLS]", "sep_token": "[SEP]", "mask_token": "[MASK]",
         "model_max_length": 40},
    )
    write_tokenizer(
        t5_dir,
        wordpiece(["<pad>", "</s>", "<unk>"], T5_WORDS, 64, "$A </s>", None),
        {"tokenizer_class": "PreTrainedTokenizerFast", "pad_token": "<pad>", "eos_token": "</s>",
         "unk_token": "<unk>", "model_max_length": 32},
    )
    data = EX / "data"
    write_jsonl(data / "sentiment_tiny.jsonl", [{"text": t, "label": l} for t, l in SENTIMENT])
    write_jsonl(data / "sentiment_eval_tiny.jsonl", [{"text": t, "label": l} for t, l in SENTIMENT_EVAL])
    write_jsonl(data / "squad_tiny.jsonl", squad_records())
    write_jsonl(data / "seq2seq_tiny.jsonl", [{"source": s, "target": t} for s, t in T5_PAIRS])
    write_jsonl(data / "dpo_tiny.jsonl", [{"prompt": p, "chosen": c, "rejected": r} for p, c, r in DPO])

    images = data / "images_tiny.safetensors"
    if images.exists():
        print(f"{images} exists; kept")
    else:
        g = torch.Generator().manual_seed(0)
        labels = torch.tensor([i % 3 for i in range(16)], dtype=torch.int64)
        colours = torch.tensor([[1.0, -1.0, 0.0], [-1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
        pixels = colours[labels][:, :, None, None] + torch.randn(16, 3, 16, 16, generator=g)
        save_file({"pixel_values": pixels.contiguous(), "labels": labels}, str(images))
        print(f"wrote {images}")

    pairs = data / "clip_pairs_tiny.safetensors"
    if pairs.exists():
        print(f"{pairs} exists; kept")
    else:
        # Image–text pairs for the tiny CLIP (vocabulary 64, bos 0, eos 1, pad 3): class c
        # is a colour and a two-word text of its own.
        g = torch.Generator().manual_seed(1)
        classes = torch.tensor([i % 3 for i in range(12)], dtype=torch.int64)
        colours = torch.tensor([[1.0, -1.0, 0.0], [-1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
        pixels = colours[classes][:, :, None, None] + torch.randn(12, 3, 16, 16, generator=g)
        ids = torch.full((12, 7), 3, dtype=torch.int64)
        ids[:, 0] = 0
        ids[:, 1] = 4 + classes
        ids[:, 2] = 10 + classes
        ids[:, 3] = 1
        save_file({"pixel_values": pixels.contiguous(), "input_ids": ids}, str(pairs))
        print(f"wrote {pairs}")

    oracle_path = REPO / "tests" / "fixtures" / "labeled_oracle.json"
    if oracle_path.exists():
        print(f"{oracle_path} exists; kept")
        return 0
    bert = PreTrainedTokenizerFast.from_pretrained(str(bert_dir))
    t5 = PreTrainedTokenizerFast.from_pretrained(str(t5_dir))
    sentiment = []
    for t, l in SENTIMENT[:4]:
        enc = bert(t, truncation=True, max_length=9, padding="max_length", return_token_type_ids=True)
        sentiment.append({k: enc[k] for k in ["input_ids", "token_type_ids", "attention_mask"]} | {"labels": l})
    # The first two answers lie past a 12-token cut: their spans are the CLS token's.
    squad = [run_qa_span(bert, r, 12) for r in squad_records()[:4]]
    t5_model = T5ForConditionalGeneration(T5Config(vocab_size=64, d_model=8, d_kv=4, d_ff=8,
                                                   num_layers=1, num_heads=2,
                                                   decoder_start_token_id=0, pad_token_id=0))
    seq2seq = []
    for s, t in T5_PAIRS[:4]:
        enc = t5(s, truncation=True, max_length=9, padding="max_length")
        lab = t5(text_target=t, truncation=True, max_length=6, padding="max_length")["input_ids"]
        lab = [x if x != t5.pad_token_id else -100 for x in lab]
        dec = t5_model._shift_right(torch.tensor([lab]))[0].tolist()
        seq2seq.append({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
                        "labels": lab, "decoder_input_ids": dec})
    oracle = {"sentiment": sentiment, "squad": squad, "seq2seq": seq2seq}
    oracle_path.write_text(json.dumps(oracle, indent=1) + "\n")
    print(f"wrote {oracle_path}")
    return 0


if __name__ == "__main__":
    random.seed(0)
    sys.exit(main())
