"""The verifier's training example: what the data stage produces and the trainer reads."""

from __future__ import annotations

from dataclasses import dataclass

from ponder.types import Prompt


@dataclass(frozen=True)
class Example:
    """One labelled sample: its prompt and response, and a label per position the verifier
    reads (one for outcome; one per step for process)."""

    problem_id: str
    prompt: Prompt
    response: str
    labels: tuple[float, ...]
