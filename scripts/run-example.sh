#!/usr/bin/env bash
# Sets up what graft needs on Debian 12 (idempotently), builds graft, and runs the main job on
# the shipped example: a Hugging Face model folder (dsl-examples/models/tiny-llama: config.json,
# bf16 model.safetensors, tokenizer.json with a chat template) fine-tuned with LoRA on every
# linear layer, on a small text corpus (dsl-examples/data/stories/), with the compiled CPU
# backend. It prints a progress bar (plain lines when not on a terminal) and the held-out loss
# and perplexity every 25 steps, saves the adapter in PEFT's format with metrics.jsonl and
# loss.svg under target/example/adapter, evaluates it, exports a merged model that
# transformers loads, and generates a few lines with the adapter; then trains the chat example
# (assistant-only loss) and answers a question through the chat template.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --locked --release -p graft-cli -p graft-runner
graft=./target/release/graft
spec="${1:-dsl-examples/stories_lora.graft}"
out=target/example
$graft check "$spec"
$graft train "$spec" --epochs "${EPOCHS:-3}" --save "$out/adapter"
$graft eval "$spec" --adapter "$out/adapter"
$graft export "$spec" --adapter "$out/adapter" --merged "$out/merged"
for prompt in "Every morning" "In the garden," "Mia asks"; do
    $graft generate "$spec" --adapter "$out/adapter" --prompt "$prompt" --max-new-tokens 40
done
$graft generate "$spec" --adapter "$out/adapter" --prompt "Leo asks" --temperature 0.8 --top-p 0.9 --seed 1
# The same job as a standalone binary (no compiler at run time), a few steps of it.
$graft build "$spec" -o "$out/train-stories"
(cd "$out" && env -i ./train-stories --steps 10 --out binary-adapter)
# Chat: `messages` records through the chat template, the loss on the assistant's turns only.
chat=dsl-examples/stories_chat.graft
$graft train "$chat" --save "$out/chat-adapter"
$graft generate "$chat" --adapter "$out/chat-adapter" --chat --prompt "What does Mia keep in the garden?"
