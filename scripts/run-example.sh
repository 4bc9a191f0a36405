#!/usr/bin/env bash
# Sets up what graft needs on Debian 12 (idempotently), builds graft, and runs the main job on
# a shipped example: check the tiny Llama + LoRA spec against its weights, then train it on the
# shipped token stream with the compiled CPU backend (printing the loss at each step) and save
# the adapter in PEFT's format.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --locked --release -p graft-cli
spec="${1:-dsl-examples/tiny_lora.graft}"
./target/release/graft check "$spec"
./target/release/graft run "$spec" --save target/example-adapter
