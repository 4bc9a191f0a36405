#!/usr/bin/env bash
# Sets up what graft needs on Debian 12 (idempotently), builds graft, and runs the main job on
# a shipped example: check the tiny Llama + LoRA spec against its weights, then train it on the
# shipped token stream with the compiled CPU backend (printing the loss at each step, the
# held-out loss every 10 steps), save the adapter in PEFT's format with a metrics file, and
# evaluate the saved adapter.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --locked --release -p graft-cli
spec="${1:-dsl-examples/tiny_lora.graft}"
./target/release/graft check "$spec"
eval_data=dsl-examples/data/tiny_eval_tokens.jsonl
./target/release/graft train "$spec" --save target/example-adapter --eval "$eval_data" --eval-every 10
./target/release/graft eval "$spec" --adapter target/example-adapter --data "$eval_data"
