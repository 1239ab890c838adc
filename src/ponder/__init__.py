"""ponder: inference-time scaling for LLM reasoning."""

from ponder.types import (
    Completion,
    GenerateRequest,
    Generation,
    Result,
    SamplingParams,
    Scored,
    ScoreRequest,
    SequenceState,
    Usage,
)

__version__ = "0.1.0"

__all__ = [
    "Completion",
    "GenerateRequest",
    "Generation",
    "Result",
    "SamplingParams",
    "ScoreRequest",
    "Scored",
    "SequenceState",
    "Usage",
    "__version__",
]
