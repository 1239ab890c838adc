"""The engine contract suite: the same tests over every engine available here.

Each engine has a factory file `engine_<name>.py` in this folder defining
`start(stack: contextlib.ExitStack) -> Engine`. It calls `pytest.skip(reason)` when the
engine cannot run in this environment (package missing, no server binary) and registers any
cleanup (server processes) on `stack`. Each engine is started once per session.
"""

from __future__ import annotations

import contextlib
import importlib.util
from pathlib import Path

import pytest

HERE = Path(__file__).parent
ENGINE_NAMES = ["hf", "hf-cuda", "llamacpp", "vllm", "openai-ponder", "openai-llamacpp",
                "openai-vllm"]


def start_engine(name: str, stack: contextlib.ExitStack):
    path = HERE / f"engine_{name.replace('-', '_')}.py"
    if not path.exists():
        pytest.skip(f"no factory for engine {name!r} ({path.name})")
    spec = importlib.util.spec_from_file_location(f"engine_contract_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.start(stack)


@pytest.fixture(scope="session")
def _engine_stack():
    with contextlib.ExitStack() as stack:
        yield stack


@pytest.fixture(scope="session")
def _started(_engine_stack):
    """Engines started so far, by name; a failed start is remembered as its skip reason."""
    return {}


@pytest.fixture(scope="session", params=ENGINE_NAMES)
def any_engine(request, _engine_stack, _started):
    name = request.param
    if name not in _started:
        try:
            _started[name] = start_engine(name, _engine_stack)
        except pytest.skip.Exception as skip:
            _started[name] = skip
    engine = _started[name]
    if isinstance(engine, pytest.skip.Exception):
        pytest.skip(str(engine))
    return engine
