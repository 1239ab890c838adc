"""Logit processors as pure tensor functions, and inverse-CDF sampling with per-row generators.

Every function takes logits of shape [batch, vocab] and per-row settings (a scalar applies to
every row; a 1-D tensor gives one value per row), and returns new logits where removed tokens
are -inf. The order is the one vLLM and transformers use: temperature first, then top-k,
top-p and min-p on the tempered distribution.
"""

from __future__ import annotations

import math

import torch

NEG_INF = float("-inf")
HEAD_TOKENS = (64, 256, 1024)  # top-p looks at this many top tokens before sorting a whole row


def _per_row(value, logits: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(value, dtype=logits.dtype, device=logits.device).reshape(-1, 1)


def apply_temperature(logits: torch.Tensor, temperature) -> torch.Tensor:
    """Divide by temperature. Rows with temperature 0 (greedy) keep only their argmax."""
    t = _per_row(temperature, logits).expand(logits.shape[0], 1)
    if (t < 0).any():
        raise ValueError("temperature must be >= 0 (0 means greedy)")
    greedy = t == 0
    out = logits / torch.where(greedy, torch.ones_like(t), t)
    if greedy.any():
        argmax_only = torch.full_like(logits, NEG_INF)
        # max's indices are argmax's (the first maximal column), and 3x faster on a CPU.
        argmax_only.scatter_(1, logits.max(dim=-1, keepdim=True).indices, 0.0)
        out = torch.where(greedy, argmax_only, out)
    return out


def top_k_filter(logits: torch.Tensor, k) -> torch.Tensor:
    """Keep the k highest logits per row (k = 0 keeps all). Ties at the k-th value are kept."""
    k = torch.as_tensor(k, device=logits.device).reshape(-1).expand(logits.shape[0])
    if (k < 0).any():
        raise ValueError("top_k must be >= 0 (0 turns it off)")
    vocab = logits.shape[-1]
    k = torch.where((k == 0) | (k > vocab), torch.full_like(k, vocab), k)
    sorted_logits = logits.sort(dim=-1, descending=True).values
    kth = sorted_logits.gather(1, (k - 1).reshape(-1, 1).long())
    return logits.masked_fill(logits < kth, NEG_INF)


def _nucleus_head(probs: torch.Tensor, p: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """Each row's top tokens (probabilities descending, their ids, the running mass), the
    first HEAD_TOKENS[0] of them, and more (the next size in HEAD_TOKENS) only for the rows
    whose mass there is still below p; None when some row's nucleus is longer than
    HEAD_TOKENS[-1] tokens. Rows that stopped early are padded with probability 0 (ids
    repeated): their mass already reaches p there, so the padding is never in a nucleus.

    Sorting a 50k vocabulary per row was a third of a decode step. The nucleus almost
    always lies among the top few dozen tokens, so look there first (topk is a partial
    sort). Tokens beyond the head have at least the head's whole mass above them, so when
    that mass reaches p they are removed, exactly as a full sort would remove them. Only the
    rows that need it look further: a topk of 1024 over 16 rows cost five times one of 64,
    and at batch 64 a few rows in every 16 at T = 0.8 needed more than 64 tokens."""
    rows, vocab = probs.shape
    if HEAD_TOKENS[0] >= vocab:
        return None
    sorted_probs, order = probs.topk(HEAD_TOKENS[0], dim=-1)
    mass = sorted_probs.cumsum(dim=-1)
    for head in HEAD_TOKENS[1:]:
        short = (mass[:, -1:] < p).reshape(-1).nonzero().reshape(-1)
        if not len(short):
            break
        if head >= vocab:
            return None
        wider_probs, wider_order = probs.index_select(0, short).topk(head, dim=-1)
        extra = head - sorted_probs.shape[1]
        sorted_probs = torch.cat([sorted_probs, sorted_probs.new_zeros(rows, extra)], dim=1)
        order = torch.cat([order, order[:, -1:].expand(rows, extra)], dim=1)
        sorted_probs[short], order[short] = wider_probs, wider_order
        mass = sorted_probs.cumsum(dim=-1)
    if not bool((mass[:, -1:] >= p).all()):
        return None
    return sorted_probs, order, mass


def top_p_filter(logits: torch.Tensor, p) -> torch.Tensor:
    """Nucleus: keep the smallest set of top tokens whose probability reaches p (p = 1 keeps
    all). A token is kept when the mass strictly above it is below p, so the top token
    always survives."""
    p = _per_row(p, logits)
    if ((p <= 0) | (p > 1)).any():
        raise ValueError("top_p must be in (0, 1]")
    probs = logits.softmax(dim=-1)
    head = _nucleus_head(probs, p)
    if head is None:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        mass = sorted_probs.cumsum(dim=-1)
    else:
        sorted_probs, order, mass = head
    # Removed tokens go to a spare column: a head's padding repeats ids that may be kept.
    vocab = probs.shape[-1]
    kept = order.masked_fill(mass - sorted_probs >= p, vocab)
    keep = torch.zeros(probs.shape[0], vocab + 1, dtype=torch.bool, device=probs.device)
    keep = keep.scatter_(1, kept, True)[:, :vocab]
    return logits.masked_fill(~keep, NEG_INF)


def min_p_filter(logits: torch.Tensor, min_p) -> torch.Tensor:
    """Keep tokens whose probability is at least min_p times the top token's (0 keeps all)."""
    min_p = _per_row(min_p, logits)
    if ((min_p < 0) | (min_p > 1)).any():
        raise ValueError("min_p must be in [0, 1]")
    probs = logits.softmax(dim=-1)
    threshold = min_p * probs.max(dim=-1, keepdim=True).values
    return logits.masked_fill(probs < threshold, NEG_INF)


def process_logits(logits: torch.Tensor, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0):
    """The distribution actually sampled from, as logits (removed tokens are -inf).

    Filters whose settings are off for every row are skipped: sorting a 50k vocabulary
    each step is the costliest part of sampling.
    """
    out = apply_temperature(logits.float(), temperature)
    if torch.as_tensor(top_k).ne(0).any():
        out = top_k_filter(out, top_k)
    if torch.as_tensor(top_p).lt(1).any():
        out = top_p_filter(out, top_p)
    if torch.as_tensor(min_p).gt(0).any():
        out = min_p_filter(out, min_p)
    return out


def _inverse_cdf(logits: torch.Tensor, uniforms: torch.Tensor, last: int | torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's first column whose cumulative probability (the float64 softmax of its
    logits) exceeds uniforms[i] times the row's total, at most `last` (an int or one per
    row: guards the float edge where the target equals the total mass), and its log
    probability under that softmax. The log q comes from the probabilities the draw used,
    so no second pass over the row (a log-softmax) is needed for it."""
    probs = logits.double().softmax(dim=-1)
    cdf = probs.cumsum(dim=-1)
    targets = (uniforms.double().reshape(-1, 1) * cdf[:, -1:]).contiguous()
    columns = torch.searchsorted(cdf, targets, right=True).reshape(-1)
    columns = columns.clamp(max=last)
    return columns, probs.gather(1, columns.unsqueeze(1)).squeeze(1).log().to(logits.dtype)


def sample_rows(processed_logits: torch.Tensor, uniforms: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse-CDF sampling: row i takes the first token whose cumulative probability
    exceeds uniforms[i] in [0, 1). Drawing the uniforms from per-row generators makes a
    row's token independent of what else is in the batch. Returns the tokens and their
    log q (log-probability under the processed distribution)."""
    vocab = processed_logits.shape[-1]
    kept = processed_logits > NEG_INF
    counts = kept.sum(dim=-1)
    widest = int(counts.max())
    if widest * 8 > vocab:
        return _inverse_cdf(processed_logits, uniforms, vocab - 1)
    # Filters left few tokens: the same inverse CDF over just those, in vocabulary order
    # (removed tokens have probability 0 and add nothing to the sums), instead of a float64
    # softmax and cumsum over the whole vocabulary.
    rows, cols = kept.nonzero(as_tuple=True)  # row-major: columns ascend within a row
    slots = torch.arange(len(rows), device=rows.device) - (counts.cumsum(0) - counts)[rows]
    logits = processed_logits.new_full((len(counts), widest), NEG_INF)
    logits[rows, slots] = processed_logits[rows, cols]
    columns = torch.zeros(len(counts), widest, dtype=torch.long, device=rows.device)
    columns[rows, slots] = cols
    slot, log_q = _inverse_cdf(logits, uniforms, counts - 1)
    return columns.gather(1, slot.unsqueeze(1)).squeeze(1), log_q


def sample_tempered(logits: torch.Tensor, temperature, uniforms: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor] | None:
    """For rows with temperature > 0 and no filter (no top-k, top-p or min-p): what
    sample_rows(process_logits(logits, temperature), uniforms) draws, tokens and log q,
    without that path's mask and count of removed tokens (a filter-free row has none) nor
    its copy of the logits at temperature 1. None when some logit is -inf or NaN (then take
    the general path, which handles removed tokens).

    Why: at batch 64 those passes over the vocabulary (and the general path's second
    log-softmax for log q) were a quarter of the sampling in a decode step at the default
    settings (temperature 1, no filter): 14.2 against 10.8 ms (2-core Intel Xeon)."""
    if not bool(logits.amin() > NEG_INF):
        return None
    temperature = _per_row(temperature, logits)
    tempered = logits if bool((temperature == 1).all()) else logits / temperature
    return _inverse_cdf(tempered, uniforms, logits.shape[-1] - 1)


def sample_nucleus(logits: torch.Tensor, temperature, top_p, uniforms: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor] | None:
    """For rows with temperature > 0 and top-p alone (no top-k, no min-p): the tokens that
    sample_rows(process_logits(logits, temperature, top_p=top_p), uniforms) draws, and
    their log q under that processed distribution, without building the processed
    [rows, vocab] logits. None when some row's nucleus reaches past HEAD_TOKENS[-1] tokens
    (then take the general path).

    Why: at batch 64 the general path's passes over the vocabulary (the mask of removed
    tokens, its count, the kept positions, a second log-softmax) were a sixth of a decode
    step. Here the nucleus comes from top_p_filter's head, and everything after works on
    its few dozen tokens: the same tokens in the same (vocabulary) order, so the same
    float64 inverse CDF and the same token for the same uniform."""
    tempered = logits / _per_row(temperature, logits)
    p = _per_row(top_p, logits)
    probs = tempered.softmax(dim=-1)
    head = _nucleus_head(probs, p)
    if head is None:
        return None
    sorted_probs, order, mass = head
    keep = (mass - sorted_probs) < p
    vocab = logits.shape[-1]
    # The nucleus in vocabulary order, removed slots (id = vocab) after it.
    ids = order.masked_fill(~keep, vocab).sort(dim=-1).values
    kept = ids < vocab
    nucleus = tempered.gather(1, ids.clamp(max=vocab - 1)).masked_fill(~kept, NEG_INF)
    slots, log_q = _inverse_cdf(nucleus, uniforms, kept.sum(dim=-1) - 1)
    return ids.gather(1, slots.unsqueeze(1)).squeeze(1), log_q


# A token the model rules out (log p = -inf) counts as this unlikely in self-certainty, so one
# masked token cannot make a step's value infinite.
CERTAINTY_LOGPROB_FLOOR = -1000.0


def self_certainty(logprobs: torch.Tensor) -> torch.Tensor:
    """Self-certainty of each row of log-probabilities over the vocabulary (Kang et al.,
    2025): KL(U || p) = -log V - (1/V) sum_v log p(v), in nats; 0 for the uniform
    distribution, larger the more peaked. Log-probabilities below
    CERTAINTY_LOGPROB_FLOOR (masked tokens) are raised to it."""
    # In the rows' own dtype: a float64 copy of a [rows, vocab] block would cost more than
    # the sum itself in the decode step.
    floored = logprobs.clamp(min=CERTAINTY_LOGPROB_FLOOR)
    return -floored.mean(dim=-1) - math.log(logprobs.shape[-1])


def softmax_stats(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per row of logits: log Z (so log_softmax = logits - log Z), and the entropy and the
    self-certainty of softmax(logits), in nats.

    Why not from logits.log_softmax(): that path made three [rows, vocab] tensors more (the
    log-probabilities, their exp, the product) and a floored copy for self-certainty; at
    batch 64 it was a quarter of the sampling in a decode step. Here, with d = logits - max
    and e = exp(d): log Z = max + log sum(e), entropy = log sum(e) - sum(e d) / sum(e), and
    the mean log-probability is mean(d) - log sum(e). When a row has a non-finite logit, or a
    token below CERTAINTY_LOGPROB_FLOOR (where self-certainty floors it), all rows take the
    log_softmax path."""
    top = logits.amax(dim=-1, keepdim=True)
    shifted = logits - top
    weights = shifted.exp()
    total = weights.sum(dim=-1, keepdim=True)
    log_total = total.log()
    if not (bool(top.isfinite().all()) and bool(
            (shifted.amin(dim=-1, keepdim=True) - log_total >= CERTAINTY_LOGPROB_FLOOR).all())):
        logprobs = logits.log_softmax(dim=-1)
        entropy = -(logprobs.exp() * logprobs).nan_to_num().sum(dim=-1)  # 0 * -inf
        return logits.logsumexp(dim=-1), entropy, self_certainty(logprobs)
    entropy = log_total - weights.mul_(shifted).sum(dim=-1, keepdim=True) / total
    certainty = log_total - shifted.mean(dim=-1, keepdim=True) - math.log(logits.shape[-1])
    return (top + log_total).squeeze(1), entropy.squeeze(1), certainty.squeeze(1)


SEED_STRIDE = 0x9E3779B97F4A7C15  # odd, so distinct sample indices give distinct seeds
SEED_MOD = 2**63


def sample_seed(request_seed: int, index: int) -> int:
    """Seed of sample `index` of a request. Sample 0 uses the request seed itself, so a
    recorded per-sample seed reproduces that sample with n=1."""
    return (request_seed + index * SEED_STRIDE) % SEED_MOD
