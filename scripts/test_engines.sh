#!/usr/bin/env bash
# CI step for the slow engines: the engine contract suite and the vLLM engine's own tests,
# run in .venv-vllm (scripts/install_vllm.sh; run here if vLLM is not there yet).
#
# One pytest session, so vLLM loads once (~25 s with enforce_eager) and the native engine
# once. A few minutes on 2 CPU cores. Extra pytest arguments are passed on (e.g. -x).
set -euo pipefail
cd "$(dirname "$0")/.."
VPY=.venv-vllm/bin/python
"$VPY" -c "import vllm" 2>/dev/null || bash scripts/install_vllm.sh
# Two cores are shared with other jobs: one torch thread, OpenMP threads that sleep.
export PONDER_THREADS=${PONDER_THREADS:-1} OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
# The main suite already ran the native engine and the openai engine on vLLM's server.
exec "$VPY" -m pytest -q -p no:cacheprovider -k "vllm and not openai" \
  tests/engine_contract tests/test_engine_vllm.py "$@"
