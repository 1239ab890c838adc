#!/usr/bin/env bash
# The GPU check (scripts/gpu_check.py): random-weight models of Qwen2.5-1.5B's and
# Qwen2.5-Math-PRM's shapes through the native engine, in-process vLLM and a served PRM on one
# GPU. The last line of stdout is one JSON object; a failure exits non-zero.
#
#   bash scripts/gpu_check.sh            # on a GPU machine, a few minutes
#   bash scripts/gpu_check.sh --tiny     # CPU-sized models (the test suite runs this)
#
# Python: $PONDER_PYTHON, else .venv/bin/python (scripts/install.sh), else python3. vLLM runs
# in .venv-vllm (scripts/install_vllm.sh) where it exists, except with --tiny; pass
# --vllm-python PATH to choose. Other flags: python scripts/gpu_check.py --help.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PONDER_PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
tiny=0 chosen=0
for arg in "$@"; do
  case $arg in
    --tiny) tiny=1 ;;
    --vllm-python|--vllm-python=*) chosen=1 ;;
  esac
done
extra=()
if [ "$tiny" = 0 ] && [ "$chosen" = 0 ] && [ -x .venv-vllm/bin/python ]; then
  extra=(--vllm-python .venv-vllm/bin/python)
fi
exec "$PY" scripts/gpu_check.py "${extra[@]}" "$@"
