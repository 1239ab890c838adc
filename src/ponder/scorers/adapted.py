"""A verifier head that fine-tunes the backbone's top layers with LoRA (Hu et al., 2021).

The probe (scorers.probe) reads frozen hidden states; this head lets the top `top` decoder
layers change too, by low-rank updates W + scale * B @ A to every linear map in them, and
reads a linear head on the final norm's output at the verdict positions. The lower layers
stay the policy's own, shared and untouched: the scorer runs them once per response, and
runs its own copies of the top layers, so the policy the engine serves never changes.

Only the adapters (A, B), the head and the calibration are stored: for the bundled model,
rank 8 on the top 6 layers is ~0.5M numbers (2 MB).

Supported: decoder stacks laid out as Llama's (model.model.layers, .norm, .rotary_emb),
which covers Llama, Qwen2/3, Mistral and SmolLM. Other models train a probe.
"""

from __future__ import annotations

import copy
import math

import torch


class LowRank(torch.nn.Module):
    """A frozen linear map plus a trainable low-rank update, B starting at zero so training
    begins at the frozen model."""

    def __init__(self, base: torch.nn.Linear, rank: int, scale: float):
        super().__init__()
        self.base, self.scale = base, scale
        like = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.a = torch.nn.Parameter(torch.randn(rank, base.in_features, **like)
                                    / math.sqrt(base.in_features))
        self.b = torch.nn.Parameter(torch.zeros(base.out_features, rank, **like))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.a.T @ self.b.T) * self.scale


def check_layout(model) -> None:
    inner = getattr(model, "model", None)
    if not all(hasattr(inner, name) for name in ("layers", "norm", "rotary_emb")):
        raise ValueError(f"a LoRA head needs a Llama-style decoder (model.model.layers, .norm, "
                         f".rotary_emb); {type(model).__name__} is not one: use --head probe")


class AdaptedTop(torch.nn.Module):
    """The policy's lower layers (shared, frozen) and adapted copies of its top layers, with
    a logistic head: logit(h) at each verdict position, divided by `temperature` and shifted
    by `bias_shift` once calibrated."""

    def __init__(self, model, top: int, rank: int, alpha: float = 16.0):
        super().__init__()
        check_layout(model)
        count = len(model.model.layers)
        if not 1 <= top <= count:
            raise ValueError(f"the LoRA head adapts 1..{count} top layers, got {top}")
        if rank < 1:
            raise ValueError(f"the LoRA rank must be >= 1, got {rank}")
        object.__setattr__(self, "policy", model)  # shared, not a submodule: never stored
        self.top, self.rank = top, rank
        self.upper = copy.deepcopy(model.model.layers[count - top:])
        self.norm = copy.deepcopy(model.model.norm)
        for p in [*self.upper.parameters(), *self.norm.parameters()]:
            p.requires_grad_(False)
        for layer in self.upper:
            for parent in layer.children():
                for name, child in list(parent.named_children()):
                    if isinstance(child, torch.nn.Linear):
                        setattr(parent, name, LowRank(child, rank, alpha / rank))
        weight = model.model.norm.weight
        self.head = torch.nn.Linear(model.config.hidden_size, 1, device=weight.device,
                                    dtype=weight.dtype)
        torch.nn.init.zeros_(self.head.weight)
        torch.nn.init.zeros_(self.head.bias)
        self.temperature, self.bias_shift = 1.0, 0.0

    @property
    def split(self) -> int:
        """hidden_states index the adapted layers start from."""
        return len(self.policy.model.layers) - self.top

    def trainable(self) -> list[torch.nn.Parameter]:
        return [p for n, p in self.named_parameters() if _stored(n)]

    @torch.no_grad()
    def lower_states(self, ids: list[int]) -> torch.Tensor:
        """The frozen layers' output for one sequence: [len(ids), hidden]."""
        inner = self.policy.model
        device = next(self.policy.parameters()).device
        x = inner.embed_tokens(torch.tensor([ids], device=device))
        return _run(inner.layers[: self.split], inner.rotary_emb, x)[0].float()

    def logits(self, lower: torch.Tensor, positions: list[int]) -> torch.Tensor:
        """Uncalibrated logits at `positions` of one sequence, from its lower states."""
        x = _run(self.upper, self.policy.model.rotary_emb, lower[None].to(self.head.weight.dtype))
        return self.head(self.norm(x[0, positions]))[:, 0].float()

    @torch.no_grad()
    def probs(self, ids: list[int], positions: list[int]) -> torch.Tensor:
        z = self.logits(self.lower_states(ids), positions)
        return torch.sigmoid((z + self.bias_shift) / self.temperature).float().cpu()

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {n: p.detach().cpu().contiguous() for n, p in self.named_parameters() if _stored(n)}
        out["calibration"] = torch.tensor([self.temperature, self.bias_shift])
        return out

    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> AdaptedTop:
        tensors = dict(tensors)
        self.temperature, self.bias_shift = (float(v) for v in tensors.pop("calibration"))
        missing = set(self.tensors()) - {"calibration"} - set(tensors)
        if missing:
            raise ValueError(f"the LoRA head's tensors lack {sorted(missing)[:3]}: the folder "
                             "does not match its card (top layers, rank); retrain it")
        self.load_state_dict(tensors, strict=False)
        return self


def _stored(name: str) -> bool:
    return name.startswith("head.") or name.endswith((".a", ".b"))


def _run(layers, rotary, x: torch.Tensor) -> torch.Tensor:
    """Decoder layers over one unpadded sequence; no mask is needed: attention is causal
    (checked against the model's own forward in the tests)."""
    positions = torch.arange(x.shape[1], device=x.device)[None]
    embeddings = rotary(x, positions)
    for layer in layers:
        x = layer(x, attention_mask=None, position_ids=positions, position_embeddings=embeddings)
        x = x[0] if isinstance(x, tuple) else x
    return x
