"""Fit a LoRA verifier head (scorers.adapted): class-balanced logistic loss at the verdict
positions, Adam on the adapters and the head, one validation pass per epoch, the epoch with
the best validation AUROC kept (early stopping), then Platt calibration on the validation
split, as for the probe.

The frozen lower layers' states are computed once per response and reused every epoch, so
an epoch costs only the top layers' forward and backward passes.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm import tqdm

from ponder.train.probe import auroc, expected_calibration_error, platt


@dataclass(frozen=True)
class Item:
    """One response as the head trains on it: token ids, the positions read, a label each."""

    ids: list[int]
    positions: list[int]
    labels: list[float]


@dataclass(frozen=True)
class LoraFit:
    epochs: int  # the kept epoch (1-based)
    train_loss: list[float]  # mean loss per epoch run
    val_auroc: float
    val_ece: float
    val_accuracy: float


def train_lora(adapted, train: Sequence[Item], val: Sequence[Item], epochs: int = 4,
               lr: float = 5e-4, batch: int = 8, patience: int = 1, seed: int = 0,
               progress: bool = False) -> LoraFit:
    hard = [y > 0.5 for item in train for y in item.labels]
    val_hard = [y > 0.5 for item in val for y in item.labels]
    for what, labels in (("training", hard), ("validation", val_hard)):
        if all(labels) or not any(labels):
            raise ValueError(f"the {what} split has only {'correct' if all(labels) else 'incorrect'}"
                             " samples: a verifier needs both; sample more problems or more "
                             "per problem, or use a task the policy sometimes solves")
    torch.manual_seed(seed)
    states = [adapted.lower_states(item.ids) for item in
              tqdm([*train, *val], desc="frozen layers", disable=not progress, leave=False)]
    train_states, val_states = states[:len(train)], states[len(train):]
    positive = sum(hard) / len(hard)
    weight = {True: 0.5 / positive, False: 0.5 / (1 - positive)}
    optimizer = torch.optim.Adam(adapted.trainable(), lr=lr)
    loss_fn = torch.nn.functional.binary_cross_entropy_with_logits
    order, losses = list(range(len(train))), []
    best, best_state, waited = -1.0, None, 0
    for epoch in range(epochs):
        random.Random(seed + epoch).shuffle(order)
        total = 0.0
        for start in tqdm(range(0, len(order), batch), desc=f"LoRA epoch {epoch + 1}",
                          disable=not progress, leave=False):
            optimizer.zero_grad()
            loss = 0.0
            for i in order[start:start + batch]:
                item = train[i]
                z = adapted.logits(train_states[i], item.positions)
                target = torch.tensor(item.labels, device=z.device)
                w = torch.tensor([weight[y > 0.5] for y in item.labels], device=z.device)
                loss = loss + (loss_fn(z, target, reduction="none") * w).mean()
            (loss / len(order[start:start + batch])).backward()
            optimizer.step()
            total += loss.item()
        losses.append(total / len(order))
        score = auroc(val_hard, _val_logits(adapted, val, val_states).tolist())
        if score > best:
            best, best_state, waited = score, (epoch, adapted.tensors()), 0
        else:
            waited += 1
            if waited >= patience:
                break
    kept, tensors = best_state
    adapted.load_tensors(tensors)
    logits = _val_logits(adapted, val, val_states)
    scale, shift = platt(logits, torch.tensor([y for item in val for y in item.labels]))
    # sigmoid(scale * z + shift) = sigmoid((z + shift / scale) / (1 / scale))
    adapted.temperature, adapted.bias_shift = 1.0 / scale, shift / scale
    probs = torch.sigmoid((logits + adapted.bias_shift) / adapted.temperature).tolist()
    labels = [int(y) for y in val_hard]
    return LoraFit(kept + 1, losses, auroc(labels, probs),
                   expected_calibration_error(labels, probs),
                   sum((p > 0.5) == bool(y) for p, y in zip(probs, labels, strict=True))
                   / len(labels))


@torch.no_grad()
def _val_logits(adapted, val: Sequence[Item], states) -> torch.Tensor:
    return torch.cat([adapted.logits(s, item.positions) for item, s in zip(val, states,
                                                                            strict=True)]).cpu()
