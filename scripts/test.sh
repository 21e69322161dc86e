#!/usr/bin/env bash
# The project's test command (the README's second command; CI runs exactly this).
# Formatting, lints, then every test of the workspace. The LLaMA-3 tokenizer conformance test needs
# Meta's tokenizer.model, which is under the Llama 3 Community License and therefore not committed:
# it is fetched from its PyPI package into target/ (pip, sha256-checked) unless already present.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${BITNET_LLAMA3_TOKENIZER:-}" ]; then
  dir=target/llama3-tokenizer
  if [ ! -f "$dir/tokenizer.model" ]; then
    bash fixtures/tokenizer-llama3/fetch.sh "$dir" || echo "warning: could not fetch the LLaMA-3 tokenizer; its test will skip" >&2
  fi
  if [ -f "$dir/tokenizer.model" ]; then
    export BITNET_LLAMA3_TOKENIZER="$PWD/$dir/tokenizer.model"
  fi
fi

# The official openai Python client against `bitnet serve` (crates/bitnet-cli/tests/serve_openai.rs),
# from a venv under target/ with the pinned package from PyPI.
if [ -z "${BITNET_TEST_PYTHON:-}" ]; then
  if py=$(bash scripts/python-test-env.sh | tail -n 1); then
    export BITNET_TEST_PYTHON="$py"
  else
    echo "warning: could not set up the openai Python client; its test will skip" >&2
  fi
fi

# NVRTC for the CUDA kernels' compile test (no GPU needed; the other GPU tests skip without one).
if [ "$(uname -m)" = x86_64 ] && lib=$(bash scripts/nvrtc-env.sh | tail -n 1); then
  export LD_LIBRARY_PATH="$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
else
  echo "warning: NVRTC unavailable; the CUDA kernels' compile test will skip" >&2
fi

# One build per run: no incremental caches (about 1 GB of target/ that a test run never reuses).
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace
