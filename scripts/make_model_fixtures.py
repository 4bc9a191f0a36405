#!/usr/bin/env python3
"""Fixtures for graft's models beyond Llama: tiny random Hugging Face models, their weights
under Hugging Face's names, a batch and the model's outputs, computed by transformers.

Run by hand (never from cargo):

    /work/venv-fixtures/bin/python scripts/make_model_fixtures.py [--out tests/fixtures]

fp32 on the CPU, fixed seeds, one torch thread, eager attention. Writes only files that do
not exist yet (fixtures are not byte-reproducible across CPUs; an existing one stays).

- bert_classifier.safetensors: BertForSequenceClassification (vocab 96, hidden 32, 2 layers,
  4 heads, ffn 64, 40 positions, 3 labels): every weight, `input_ids`, `token_type_ids`,
  `attention_mask` (the second sequence padded after 7 tokens) and `logits`. Weights are
  drawn N(0, 0.2) (LayerNorm gains 1 + N(0, 0.1)) so that every term matters.
- vit_classifier.safetensors: ViTForImageClassification (hidden 32, 2 layers, 4 heads, ffn
  64, 16×16 images of 3 channels in 4×4 patches, 3 labels), weights drawn likewise, under
  the names `save_pretrained` writes (a checkpoint's: `vit.encoder.layer.0.attention.
  attention.query.weight`, which transformers 5 renames only in memory), `pixel_values`
  [2, 3, 16, 16] N(0, 1) and `logits`.
- bert_qa.safetensors: BertForQuestionAnswering on bert_classifier's config and batch
  (weights drawn likewise, seed 7), `logits` [2, 2, 9] (start and end logits stacked, as
  graft's head returns them), `start_positions`, `end_positions` and transformers' `loss`.
- t5_seq2seq.safetensors: a Flan-T5-style T5ForConditionalGeneration (vocab 64, d_model 32,
  d_kv 8, d_ff 48, 2 + 2 layers, 4 heads, 8 buckets up to distance 16, gated-GELU, untied
  lm_head, decoder outputs not scaled), weights drawn likewise; the encoder's and decoder's
  `embed_tokens` are `shared` (as every T5 checkpoint has them; transformers 5 unties them
  with the lm_head, so they are set equal and left out), `input_ids` [2, 9],
  `attention_mask` [2, 9] (the second source padded after 6 tokens), `decoder_input_ids`
  [2, 6] and `logits` [2, 6, 64].
- clip.safetensors: CLIPModel (vocab 64, text and vision towers of hidden 32, 2 layers, 4
  heads, ffn 64, 16 text positions, 16×16 images in 4×4 patches, projection 24, eos id 1,
  logit_scale 2.0), weights drawn likewise (norm gains 1 + N(0, 0.1)), three texts of 7 tokens (bos, words, eos at 4, 6
  and 3, then padding), three images, `logits` (`logits_per_image`) and transformers' CLIP
  `loss`.
- t5_generated.safetensors: transformers' greedy `generate` on t5_seq2seq's model for its
  first source: `input_ids` [1, 9], `attention_mask`, and `generated` [1, 6] (the decoder
  start token 0 and 5 tokens).
- peft_bert_seqcls/: PEFT's save of LoRA (r 4, alpha 8, query and value, task SEQ_CLS, so
  the classifier is a `modules_to_save`) on bert_classifier's model, its B matrices and
  classifier moved off their start, and `logits.safetensors`: its logits on that batch.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import torch

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)
warnings.filterwarnings("ignore")

from safetensors.torch import save_file  # noqa: E402
import tempfile  # noqa: E402

from safetensors.torch import load_file  # noqa: E402
from transformers import (  # noqa: E402
    BertConfig,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    T5Config,
    T5ForConditionalGeneration,
    ViTConfig,
    ViTForImageClassification,
)

REPO = Path(__file__).resolve().parent.parent


def randomize(model: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if "LayerNorm.weight" in name:
                p.copy_(1.0 + 0.1 * noise)
            else:
                p.copy_(0.2 * noise)


def bert_config(num_labels: int = 3) -> BertConfig:
    return BertConfig(
        vocab_size=96,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=40,
        type_vocab_size=2,
        num_labels=num_labels,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        attn_implementation="eager",
    )


def bert_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    batch, seq = 2, 9
    input_ids = torch.randint(0, 96, (batch, seq), generator=g)
    token_type_ids = torch.zeros(batch, seq, dtype=torch.long)
    token_type_ids[:, 5:] = 1
    attention_mask = torch.ones(batch, seq, dtype=torch.long)
    attention_mask[1, 7:] = 0
    return input_ids, token_type_ids, attention_mask


def bert_classifier() -> dict[str, torch.Tensor]:
    cfg = bert_config()
    torch.manual_seed(0)
    model = BertForSequenceClassification(cfg).eval()
    randomize(model, 1)
    input_ids, token_type_ids, attention_mask = bert_batch()
    with torch.no_grad():
        logits = model(
            input_ids=input_ids,
            token_type_ids=token_type_ids,
            attention_mask=attention_mask,
        ).logits
    out = {k: v.contiguous() for k, v in model.state_dict().items()}
    out.pop("bert.embeddings.position_ids", None)
    out.pop("bert.embeddings.token_type_ids", None)
    out.update(
        input_ids=input_ids,
        token_type_ids=token_type_ids,
        attention_mask=attention_mask,
        logits=logits.contiguous(),
    )
    return out


def bert_qa() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = BertForQuestionAnswering(bert_config(num_labels=2)).eval()
    randomize(model, 7)
    input_ids, token_type_ids, attention_mask = bert_batch()
    start_positions = torch.tensor([1, 3])
    end_positions = torch.tensor([4, 6])
    with torch.no_grad():
        out = model(
            input_ids=input_ids,
            token_type_ids=token_type_ids,
            attention_mask=attention_mask,
            start_positions=start_positions,
            end_positions=end_positions,
        )
    tensors = checkpoint_tensors(model)
    tensors.update(
        input_ids=input_ids,
        token_type_ids=token_type_ids,
        attention_mask=attention_mask,
        logits=torch.stack([out.start_logits, out.end_logits], dim=1).contiguous(),
        start_positions=start_positions,
        end_positions=end_positions,
        loss=out.loss.reshape([]),
    )
    return tensors


def checkpoint_tensors(model) -> dict[str, torch.Tensor]:
    """The tensors `save_pretrained` writes, under a checkpoint's names."""
    with tempfile.TemporaryDirectory() as d:
        model.save_pretrained(d)
        return {k: v.contiguous() for k, v in load_file(str(Path(d) / "model.safetensors")).items()}


def vit_classifier() -> dict[str, torch.Tensor]:
    cfg = ViTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        image_size=16,
        patch_size=4,
        num_channels=3,
        num_labels=3,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        attn_implementation="eager",
    )
    torch.manual_seed(0)
    model = ViTForImageClassification(cfg).eval()
    randomize(model, 3)
    g = torch.Generator().manual_seed(4)
    pixel_values = torch.randn(2, 3, 16, 16, generator=g)
    with torch.no_grad():
        logits = model(pixel_values=pixel_values).logits
    out = checkpoint_tensors(model)
    out.update(pixel_values=pixel_values, logits=logits.contiguous())
    return out


def t5_config(**extra) -> T5Config:
    """The tiny Flan-T5-style config of t5_seq2seq (untied lm_head), with `extra` set."""
    cfg = T5Config(
        vocab_size=64,
        d_model=32,
        d_kv=8,
        d_ff=48,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=16,
        feed_forward_proj="gated-gelu",
        dropout_rate=0.0,
        scale_decoder_outputs=False,
        attn_implementation="eager",
        **extra,
    )
    # transformers 5 ignores it as a constructor argument.
    cfg.tie_word_embeddings = False
    return cfg


def t5_seq2seq() -> dict[str, torch.Tensor]:
    cfg = t5_config()
    torch.manual_seed(0)
    model = T5ForConditionalGeneration(cfg).eval()
    randomize(model, 5)
    with torch.no_grad():
        model.encoder.embed_tokens.weight.copy_(model.shared.weight)
        model.decoder.embed_tokens.weight.copy_(model.shared.weight)
    g = torch.Generator().manual_seed(6)
    input_ids = torch.randint(0, 64, (2, 9), generator=g)
    decoder_input_ids = torch.randint(0, 64, (2, 6), generator=g)
    # The second source is padded after 6 tokens.
    attention_mask = torch.ones(2, 9, dtype=torch.long)
    attention_mask[1, 6:] = 0
    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=attention_mask,
                       decoder_input_ids=decoder_input_ids).logits
    out = checkpoint_tensors(model)
    for alias in ["encoder.embed_tokens.weight", "decoder.embed_tokens.weight"]:
        t = out.pop(alias, None)
        assert t is None or torch.equal(t, out["shared.weight"]), alias
    out.update(
        input_ids=input_ids,
        attention_mask=attention_mask,
        decoder_input_ids=decoder_input_ids,
        logits=logits.contiguous(),
    )
    return out


def t5_generated(out: Path) -> dict[str, torch.Tensor]:
    """Greedy decoding by transformers' `generate` on t5_seq2seq's model: the first source
    of its batch, 5 new tokens after the decoder start token (0), no early stop."""
    fixture = load_file(str(out / "t5_seq2seq.safetensors"))
    cfg = t5_config(decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    model = T5ForConditionalGeneration(cfg).eval()
    state = {k: v for k, v in fixture.items() if "." in k}
    state["encoder.embed_tokens.weight"] = state["shared.weight"]
    state["decoder.embed_tokens.weight"] = state["shared.weight"]
    model.load_state_dict(state, strict=False)
    ids = fixture["input_ids"][:1]
    mask = fixture["attention_mask"][:1]
    with torch.no_grad():
        out_ids = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=5,
                                 min_new_tokens=5, do_sample=False, num_beams=1)
    return {"input_ids": ids.contiguous(), "attention_mask": mask.contiguous(),
            "generated": out_ids.contiguous()}


def clip() -> dict[str, torch.Tensor]:
    from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPVisionConfig

    text = CLIPTextConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
                          num_hidden_layers=2, num_attention_heads=4,
                          max_position_embeddings=16, bos_token_id=0, eos_token_id=1,
                          pad_token_id=3)
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=4, image_size=16, patch_size=4)
    cfg = CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(),
                     projection_dim=24)
    cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    model = CLIPModel(cfg).eval()
    randomize(model, 5)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        model.logit_scale.fill_(2.0)
        # CLIP's norms are named unlike BERT's: gains 1 + N(0, 0.1) here.
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
    g = torch.Generator().manual_seed(6)
    # Three texts: bos, words, eos, then padding (eos at 4, 6 and 3).
    input_ids = torch.randint(4, 64, (3, 7), generator=g)
    input_ids[:, 0] = 0
    for row, end in enumerate([4, 6, 3]):
        input_ids[row, end] = 1
        input_ids[row, end + 1:] = 3
    pixel_values = torch.randn(3, 3, 16, 16, generator=g)
    with torch.no_grad():
        out = model(input_ids=input_ids, pixel_values=pixel_values, return_loss=True)
    tensors = checkpoint_tensors(model)
    tensors.pop("text_model.embeddings.position_ids", None)
    tensors.pop("vision_model.embeddings.position_ids", None)
    tensors.update(input_ids=input_ids, pixel_values=pixel_values,
                   logits=out.logits_per_image.contiguous(), loss=out.loss.reshape(()))
    return tensors


def peft_bert_seqcls(out: Path) -> None:
    """PEFT's own save of LoRA (r 4, alpha 8) on query and value of bert_classifier's model,
    task SEQ_CLS (the classifier trained in full, as `modules_to_save`), with every LoRA B and
    the classifier's copy moved off their start (N(0, 0.1) added), and the logits of
    bert_classifier's batch under it (`logits.safetensors`)."""
    from peft import LoraConfig, get_peft_model

    fixture = load_file(str(out / "bert_classifier.safetensors"))
    model = BertForSequenceClassification(bert_config()).eval()
    model.load_state_dict({k: v for k, v in fixture.items() if "." in k}, strict=False)
    peft = get_peft_model(model, LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8,
                                            target_modules=["query", "value"]))
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if p.requires_grad and "lora_A" not in name:
                p.add_(0.1 * torch.randn(p.shape, generator=g))
    peft.eval()
    folder = out / "peft_bert_seqcls"
    peft.save_pretrained(str(folder))
    with torch.no_grad():
        logits = peft(input_ids=fixture["input_ids"], token_type_ids=fixture["token_type_ids"],
                      attention_mask=fixture["attention_mask"]).logits
    save_file({"logits": logits.contiguous()}, str(folder / "logits.safetensors"))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=REPO / "tests" / "fixtures")
    args = ap.parse_args()
    for name, make in [
        ("bert_classifier", bert_classifier),
        ("vit_classifier", vit_classifier),
        ("bert_qa", bert_qa),
        ("t5_seq2seq", t5_seq2seq),
        ("clip", clip),
    ]:
        path = args.out / f"{name}.safetensors"
        if path.exists():
            print(f"{path} exists; kept")
            continue
        save_file(make(), str(path))
        print(f"wrote {path}")
    generated = args.out / "t5_generated.safetensors"
    if generated.exists():
        print(f"{generated} exists; kept")
    else:
        save_file(t5_generated(args.out), str(generated))
        print(f"wrote {generated}")
    folder = args.out / "peft_bert_seqcls"
    if folder.exists():
        print(f"{folder} exists; kept")
    else:
        peft_bert_seqcls(args.out)
        print(f"wrote {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
