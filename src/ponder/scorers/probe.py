"""A trained verifier's head: logistic regression on standardized backbone features,
stored as four tensors (see ponder.train.probe for how it is fitted)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Probe:
    """score(x) = sigmoid((((x - mean) / std) . weight + bias) / temperature)."""

    mean: torch.Tensor
    std: torch.Tensor
    weight: torch.Tensor
    bias: float
    temperature: float = 1.0

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return (((x - self.mean) / self.std) @ self.weight + self.bias) / self.temperature

    def probs(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(x))

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"mean": self.mean, "std": self.std, "weight": self.weight,
                "bias": torch.tensor([self.bias]), "temperature": torch.tensor([self.temperature])}

    @classmethod
    def from_tensors(cls, t: dict[str, torch.Tensor]) -> Probe:
        return cls(t["mean"].float(), t["std"].float(), t["weight"].float(),
                   float(t["bias"][0]), float(t["temperature"][0]))
