"""The options that choose and configure an engine, in one validated value.

    config = EngineConfig(engine="hf", dtype="bfloat16", threads=4)
    engine = build_engine(config)

EngineConfig is the single source of these options' defaults: the CLI's engine flags
(`ponder.commands._common.add_engine_args`) take theirs from its fields, and a Ray worker
builds its engine from one. Each backend gets only the options it takes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from ponder.models import DEFAULT_MODEL, dtype_name


@dataclass(frozen=True)
class EngineConfig:
    """Which engine to build and how. Invalid values raise ValueError on construction.

    engine: backend name (see `ponder.engines.ENGINES`).
    model: bundled name, HF folder, .gguf file or hub id; for `openai`, the default model
        stands for "the model the server names".
    base_url: `openai`: server base URL(s), comma-separated (`URL[,URL...]`).
    api_key: `openai`: bearer token for the server(s) (None: $OPENAI_API_KEY).
    concurrency: `openai`: requests in flight per server.
    tokenizer: `openai`: the served model's tokenizer (None: the model name the server gives).
    tensor_parallel_size: `vllm`: GPUs per model.
    dtype: weights dtype (a name of `ponder.models.DTYPE_NAMES`, or its short alias).
    device: `hf`: cpu or cuda (None: cuda when available).
    max_batch_size: `hf`: samples decoded together.
    threads: `hf`, `llamacpp`: CPU threads (None: $PONDER_THREADS, else one per core).
    """

    engine: str = "hf"
    model: str = DEFAULT_MODEL
    base_url: str | None = None
    api_key: str | None = None
    concurrency: int = 16
    tokenizer: str | None = None
    tensor_parallel_size: int = 1
    dtype: str = "float32"
    device: str | None = None
    max_batch_size: int = 64
    threads: int | None = None

    def __post_init__(self) -> None:
        from ponder.engines import ENGINES

        if self.engine not in ENGINES:
            raise ValueError(f"unknown engine {self.engine!r}; known: {', '.join(ENGINES)}")
        object.__setattr__(self, "dtype", dtype_name(self.dtype))
        for name in ("max_batch_size", "threads", "concurrency", "tensor_parallel_size"):
            value = getattr(self, name)
            if value is None and name == "threads":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value!r}")
        if self.device is not None:
            _check_device(self.device)
        if self.engine == "openai" and not self.base_urls:
            raise ValueError("--engine openai needs --base-url URL[,URL...], e.g. "
                             "--base-url http://127.0.0.1:8000/v1 (start one with `ponder serve`)")

    @property
    def base_urls(self) -> list[str]:
        """`base_url` split at its commas."""
        return [u.strip() for u in (self.base_url or "").split(",") if u.strip()]

    @classmethod
    def from_mapping(cls, options: Mapping[str, Any] | None) -> EngineConfig:
        """From plain options named as the fields are; a None value means the default,
        an unknown name is a ValueError."""
        options = dict(options or {})
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise ValueError(f"unknown engine option(s) {unknown}; known: {', '.join(known)}")
        return cls(**{k: v for k, v in options.items() if v is not None})


def _check_device(device: str) -> None:
    """A clear error for a device this torch cannot use, before any model loads."""
    import torch

    kind = device.split(":")[0]
    if kind not in ("cpu", "cuda"):
        raise ValueError(f"--device must be cpu or cuda (cuda:N for one GPU), got {device!r}")
    if kind == "cuda" and not torch.cuda.is_available():
        why = ("this torch is a CPU build" if torch.version.cuda is None
               else "torch sees no CUDA GPU here")
        raise ValueError(f"--device {device}: {why}; use --device cpu, or on a machine with an "
                         "NVIDIA GPU install a CUDA build of torch (scripts/install.sh does)")


def build_engine(config: EngineConfig):
    """The engine `config` names, built with the options its backend takes."""
    from ponder.engines import load_engine

    kind = config.engine
    if kind == "hf":
        return load_engine(kind, model=config.model, dtype=config.dtype, device=config.device,
                           max_batch_size=config.max_batch_size, threads=config.threads)
    if kind == "vllm":
        return load_engine(kind, model=config.model, dtype=config.dtype,
                           tensor_parallel_size=config.tensor_parallel_size)
    if kind == "llamacpp":
        return load_engine(kind, model=config.model, threads=config.threads)
    # openai (__post_init__ admits only known engines)
    model = None if config.model == DEFAULT_MODEL else config.model
    return load_engine(kind, base_urls=config.base_urls, model=model, api_key=config.api_key,
                       concurrency=config.concurrency, tokenizer=config.tokenizer)
