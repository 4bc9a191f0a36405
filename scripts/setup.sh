#!/usr/bin/env bash
# Installs what graft needs on Debian 12, idempotently: the LLVM/MLIR 22 packages that the
# codegen crate links, binutils (nm and objcopy, for `graft build`), and nothing when
# everything is already there.
set -euo pipefail

PKGS=(llvm-22-dev libmlir-22-dev libpolly-22-dev libclang1-22 libclang-common-22-dev zlib1g-dev libzstd-dev g++ binutils mlir-22-tools)

missing=()
for p in "${PKGS[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${missing[*]}" >&2
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo not found; install Rust with rustup first (https://rustup.rs)" >&2
  exit 1
fi
if [ ! -x /usr/lib/llvm-22/bin/llvm-config ]; then
  echo "setup: /usr/lib/llvm-22/bin/llvm-config is missing after install" >&2
  exit 1
fi

# ptxas and libdevice for the PTX checks (no GPU or CUDA toolkit needed): from NVIDIA's PyPI
# wheel, into target/cuda-tools (GRAFT_CUDA_TOOLS overrides where the tests look).
root="$(cd "$(dirname "$0")/.." && pwd)"
tools="${GRAFT_CUDA_TOOLS:-$root/target/cuda-tools}"
if [ ! -x "$tools/bin/ptxas" ] || [ ! -f "$tools/libdevice.10.bc" ]; then
  if ! command -v python3 >/dev/null 2>&1; then
    echo "setup: python3 is needed to fetch ptxas (apt-get install python3)" >&2
    exit 1
  fi
  python3 "$root/scripts/fetch_cuda_tools.py" "$tools"
fi
