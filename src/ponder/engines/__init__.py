"""Engines: the native torch engine and optional backends, imported only when used."""

from __future__ import annotations

from ponder.engines.base import Capabilities, Engine, require

ENGINES = {
    "hf": "the native torch + transformers engine (CPU or CUDA)",
}


def load_engine(kind: str = "hf", **options) -> Engine:
    """Build an engine by name. Optional backends import their packages only here."""
    if kind == "hf":
        from ponder.engines.hf import HFEngine

        return HFEngine(**options)
    raise ValueError(f"unknown engine {kind!r}; known engines: {', '.join(sorted(ENGINES))}")


__all__ = ["Capabilities", "Engine", "ENGINES", "load_engine", "require"]
