#!/usr/bin/env bash
# Sets up what graft needs on Debian 12 (idempotently: LLVM/MLIR 22 packages) and runs the
# whole test suite. This is the README's test command; .ci/run runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Compiled kernels are cached on disk (keyed by a hash of the code); keep the tests' cache
# inside target/ rather than in ~/.cache.
export GRAFT_CACHE_DIR="${GRAFT_CACHE_DIR:-$PWD/target/kernel-cache}"
cargo test --workspace --locked "$@"
