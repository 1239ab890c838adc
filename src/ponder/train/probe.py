"""A probe: logistic regression on standardized verifier features, trained with class
balance and early stopping on a held-out validation split.

Full-batch Adam on the weighted logistic loss plus an L2 penalty; each L2 strength in a small
grid is trained until the validation loss stops improving, and the strength with the best
validation AUROC is kept. Then the probabilities are calibrated on the validation split by
Platt scaling, sigmoid(a * logit + b): class-balanced training moves the base rate, which a
temperature alone cannot undo. a > 0, so the ranking, and AUROC, are unchanged; the result
is stored as a temperature (1 / a) and a shifted bias, so a probe is always the same four
tensors.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ponder.scorers.probe import Probe

L2_GRID = (1e-4, 1e-3, 1e-2, 1e-1)


@dataclass(frozen=True)
class Fit:
    probe: Probe
    l2: float
    epochs: int
    train_loss: list[float]  # per epoch of the kept fit
    val_auroc: float
    val_ece: float
    val_accuracy: float


def auroc(labels: Sequence[int], scores: Sequence[float]) -> float:
    """Probability that a random positive outscores a random negative (ties count half):
    the Mann-Whitney statistic from average ranks. NaN when a class is missing."""
    pairs = sorted(zip(scores, labels, strict=True))
    pos = sum(1 for _, y in pairs if y)
    neg = len(pairs) - pos
    if not pos or not neg:
        return float("nan")
    rank_sum, i = 0.0, 0
    while i < len(pairs):
        j = i
        while j < len(pairs) and pairs[j][0] == pairs[i][0]:
            j += 1
        average = (i + j + 1) / 2  # ranks i+1..j
        rank_sum += average * sum(1 for k in range(i, j) if pairs[k][1])
        i = j
    return (rank_sum - pos * (pos + 1) / 2) / (pos * neg)


def expected_calibration_error(labels: Sequence[int], probs: Sequence[float],
                               bins: int = 10) -> float:
    """Mean |accuracy - confidence| over equal-width probability bins, weighted by count."""
    total, error = len(labels), 0.0
    for b in range(bins):
        low, high = b / bins, (b + 1) / bins
        members = [(y, p) for y, p in zip(labels, probs, strict=True)
                   if low <= p < high or (b == bins - 1 and p == 1.0)]
        if members:
            accuracy = sum(y for y, _ in members) / len(members)
            confidence = sum(p for _, p in members) / len(members)
            error += len(members) / total * abs(accuracy - confidence)
    return error


def train_probe(x_train: torch.Tensor, y_train: torch.Tensor, x_val: torch.Tensor,
                y_val: torch.Tensor, l2_grid: Sequence[float] = L2_GRID, max_epochs: int = 2000,
                patience: int = 50, lr: float = 0.01, seed: int = 0) -> Fit:
    """Fit the probe; labels are 0/1 (float targets in between are soft labels)."""
    _check(x_train, y_train, "training")
    _check(x_val, y_val, "validation")
    mean = x_train.mean(0)
    std = x_train.std(0).clamp(min=1e-6)
    best: Fit | None = None
    for l2 in l2_grid:
        fit = _fit(x_train, y_train, x_val, y_val, mean, std, l2, max_epochs, patience, lr, seed)
        if best is None or fit.val_auroc > best.val_auroc:
            best = fit
    return best


def _check(x: torch.Tensor, y: torch.Tensor, what: str) -> None:
    if x.ndim != 2 or y.ndim != 1 or len(x) != len(y):
        raise ValueError(f"the {what} features must be [N, D] with N labels")
    hard = (y > 0.5).float()
    if hard.sum() == 0 or hard.sum() == len(hard):
        raise ValueError(f"the {what} split has only {'incorrect' if hard.sum() == 0 else 'correct'}"
                         " samples: a verifier needs both; sample more problems or more per "
                         "problem, or use a task the policy sometimes solves")


def _fit(x_train, y_train, x_val, y_val, mean, std, l2, max_epochs, patience, lr, seed) -> Fit:
    torch.manual_seed(seed)
    xt, xv = (x_train - mean) / std, (x_val - mean) / std
    # Class balance: each class carries half the loss, whatever its share of the samples.
    positive = (y_train > 0.5).float().mean().item()
    weights = torch.where(y_train > 0.5, 0.5 / positive, 0.5 / (1 - positive))
    weight = torch.zeros(xt.shape[1], requires_grad=True)
    bias = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.Adam([weight, bias], lr=lr)
    loss_fn = torch.nn.functional.binary_cross_entropy_with_logits
    best_val, best_state, waited, losses = math.inf, None, 0, []
    for epoch in range(max_epochs):
        optimizer.zero_grad()
        loss = (loss_fn(xt @ weight + bias, y_train, reduction="none") * weights).mean() \
            + l2 * weight.pow(2).sum()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        with torch.no_grad():
            val = loss_fn(xv @ weight + bias, y_val).item()
        if val < best_val - 1e-5:
            best_val, best_state, waited = val, (weight.detach().clone(), bias.item(), epoch), 0
        else:
            waited += 1
            if waited >= patience:
                break
    w, b, kept_epoch = best_state
    probe = Probe(mean, std, w, b)
    with torch.no_grad():
        scale, shift = platt(probe.logits(x_val), y_val)
    # sigmoid(scale * (z + bias) + shift) = sigmoid((z + bias + shift / scale) / (1 / scale))
    probe = Probe(mean, std, w, b + shift / scale, 1.0 / scale)
    with torch.no_grad():
        probs = probe.probs(x_val).tolist()
    hard = [int(y > 0.5) for y in y_val.tolist()]
    return Fit(probe, l2, kept_epoch + 1, losses[:kept_epoch + 1], auroc(hard, probs),
               expected_calibration_error(hard, probs),
               sum((p > 0.5) == bool(y) for p, y in zip(probs, hard, strict=True)) / len(hard))


def platt(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """(a, b) minimizing the log loss of sigmoid(a * logit + b) on the validation split,
    with a kept positive (so the order of the scores never changes)."""
    log_a = torch.zeros(1, requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_a, b], lr=0.5, max_iter=200)
    loss_fn = torch.nn.functional.binary_cross_entropy_with_logits

    def closure():
        optimizer.zero_grad()
        loss = loss_fn(log_a.exp() * logits + b, labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_a.detach().exp()), float(b.detach())
