"""Logit processors on hand-made distributions: each keeps exactly the tokens it should."""

import math

import pytest
import torch

from ponder.engines.core.decode import _draw
from ponder.sampling import (
    apply_temperature,
    min_p_filter,
    process_logits,
    sample_nucleus,
    sample_rows,
    sample_seed,
    sample_tempered,
    self_certainty,
    softmax_stats,
    top_k_filter,
    top_p_filter,
)
from ponder.types import SamplingParams

PROBS = [0.5, 0.3, 0.12, 0.06, 0.02]


def logits_of(probs):
    return torch.tensor([[math.log(p) for p in probs]])


def kept(logits):
    return set(torch.isfinite(logits[0]).nonzero().flatten().tolist())


@pytest.mark.parametrize("k, expected", [(1, {0}), (2, {0, 1}), (4, {0, 1, 2, 3}), (0, {0, 1, 2, 3, 4}),
                                         (99, {0, 1, 2, 3, 4})])
def test_top_k_keeps_the_k_likeliest(k, expected):
    assert kept(top_k_filter(logits_of(PROBS), k)) == expected


@pytest.mark.parametrize("p, expected", [
    (0.5, {0}),            # the top token alone reaches 0.5
    (0.51, {0, 1}),
    (0.8, {0, 1}),         # 0.5 + 0.3 reaches 0.8
    (0.81, {0, 1, 2}),
    (0.95, {0, 1, 2, 3}),
    (1.0, {0, 1, 2, 3, 4}),
    (0.01, {0}),           # the top token always survives
])
def test_top_p_keeps_the_smallest_nucleus(p, expected):
    assert kept(top_p_filter(logits_of(PROBS), p)) == expected


@pytest.mark.parametrize("min_p, expected", [
    (0.0, {0, 1, 2, 3, 4}),
    (0.1, {0, 1, 2, 3}),   # threshold 0.05: drops 0.02
    (0.2, {0, 1, 2}),      # threshold 0.10
    (0.7, {0}),            # threshold 0.35
])
def test_min_p_keeps_tokens_above_a_fraction_of_the_top(min_p, expected):
    assert kept(min_p_filter(logits_of(PROBS), min_p)) == expected


def test_temperature_zero_is_argmax_and_temperature_scales():
    logits = logits_of(PROBS)
    assert kept(apply_temperature(logits, 0.0)) == {0}
    halved = apply_temperature(logits, 0.5).softmax(-1)[0]
    expected = torch.tensor([p**2 for p in PROBS])
    assert torch.allclose(halved, expected / expected.sum(), atol=1e-6)


def test_per_row_settings_apply_row_by_row():
    logits = torch.cat([logits_of(PROBS)] * 3)
    out = process_logits(logits, temperature=torch.tensor([1.0, 0.0, 1.0]),
                         top_k=torch.tensor([2, 0, 0]), top_p=torch.tensor([1.0, 1.0, 0.8]))
    assert [kept(out[i : i + 1]) for i in range(3)] == [{0, 1}, {0}, {0, 1}]


def test_filters_compose_in_order_temperature_then_top_k_then_top_p():
    # At T=2 the distribution flattens, so top_p 0.8 needs more tokens than at T=1.
    cold = process_logits(logits_of(PROBS), temperature=1.0, top_p=0.8)
    hot = process_logits(logits_of(PROBS), temperature=2.0, top_p=0.8)
    assert kept(cold) == {0, 1}
    assert kept(hot) == {0, 1, 2}
    assert kept(process_logits(logits_of(PROBS), temperature=2.0, top_k=2, top_p=0.99)) == {0, 1}


def test_inverse_cdf_sampling_maps_uniforms_to_tokens():
    logits = torch.cat([logits_of(PROBS)] * 5)
    u = torch.tensor([0.0, 0.49, 0.51, 0.81, 0.999])
    tokens, log_q = sample_rows(logits, u)
    assert tokens.tolist() == [0, 0, 1, 2, 4]
    torch.testing.assert_close(log_q, torch.tensor(PROBS).log()[tokens])
    # Removed tokens are never chosen, whatever the uniform.
    filtered = top_k_filter(logits, 2)
    assert set(sample_rows(filtered, torch.linspace(0, 0.9999, 5))[0].tolist()) <= {0, 1}


def test_sampling_frequencies_match_the_distribution():
    gen = torch.Generator().manual_seed(0)
    n = 40_000
    logits = logits_of(PROBS).expand(n, -1)
    counts = torch.bincount(sample_rows(logits, torch.rand(n, generator=gen))[0], minlength=5)
    freq = counts.double() / n
    assert torch.allclose(freq, torch.tensor(PROBS, dtype=torch.double), atol=0.01)


def test_sample_seed_zero_index_is_the_request_seed():
    assert sample_seed(1234, 0) == 1234
    assert len({sample_seed(1234, j) for j in range(100)}) == 100


@pytest.mark.parametrize("kwargs, words", [
    ({"temperature": -0.1}, "temperature"),
    ({"top_p": 0.0}, "top_p"),
    ({"top_p": 1.5}, "top_p"),
    ({"n": 0}, "n must be"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"top_k": -1}, "top_k"),
    ({"min_p": 2.0}, "min_p"),
    ({"stop": ("",)}, "stop"),
    ({"seed": "x"}, "seed"),
    ({"temperature": float("nan")}, "temperature"),
])
def test_bad_sampling_params_raise_clear_errors(kwargs, words):
    with pytest.raises(ValueError, match=words):
        SamplingParams(**kwargs)


def nucleus_by_definition(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Kept tokens, from the definition: the mass strictly above a token is below p."""
    probs = logits.softmax(dim=-1)
    above = (probs.unsqueeze(-1) < probs.unsqueeze(-2)).float() @ probs.unsqueeze(-1)
    return above.squeeze(-1) < p


@pytest.mark.parametrize("scale,p", [(8.0, 0.9), (3.0, 0.95), (0.2, 0.95), (0.05, 0.5)])
def test_top_p_on_a_large_vocabulary_matches_the_definition(scale, p):
    # Peaked rows (scale 8) have their nucleus among the first top tokens looked at; flat
    # rows (scale 0.05) need the whole vocabulary sorted. Both must keep the same set.
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 3000, generator=g) * scale
    kept = top_p_filter(logits, p) > float("-inf")
    assert torch.equal(kept, nucleus_by_definition(logits, p))


def test_sampling_among_few_kept_tokens_equals_the_inverse_cdf_over_the_vocabulary():
    # After top-k/top-p only a few tokens remain and the sampler works on those alone; it
    # must pick, for every uniform, the token the inverse CDF over the whole row picks.
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 5000, generator=g) * 3
    processed = process_logits(logits, 0.7, torch.tensor([5, 0, 40, 1]), 0.8, 0.0)
    for _ in range(50):
        uniforms = torch.rand(4, generator=g, dtype=torch.float64)
        cdf = processed.double().softmax(dim=-1).cumsum(dim=-1)
        expected = torch.searchsorted(cdf, (uniforms[:, None] * cdf[:, -1:]).contiguous(),
                                      right=True).squeeze(1)
        tokens, log_q = sample_rows(processed, uniforms)
        assert torch.equal(tokens, expected)
        torch.testing.assert_close(
            log_q, processed.log_softmax(dim=-1).gather(1, expected[:, None]).squeeze(1))


def test_only_the_rows_whose_nucleus_is_wide_look_past_the_first_head():
    # One batch with a peaked row (nucleus among the first 64 top tokens), rows whose nuclei
    # need 256 and 1024 top tokens, and a flat row that needs its whole row sorted: every row
    # keeps exactly its own nucleus, whatever the others needed.
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(4, 3000, generator=g) * 3
    logits[0] *= 3
    for row, wide in ((1, 150), (2, 600)):
        logits[row, 1000:1000 + wide] = 12.0 + 0.1 * torch.randn(wide, generator=g)
    logits[3] = 0.01 * torch.randn(3000, generator=g)
    kept = top_p_filter(logits, 0.9) > float("-inf")
    assert torch.equal(kept, nucleus_by_definition(logits, 0.9))
    sizes = kept.sum(dim=-1).tolist()
    assert sizes[0] < 64 < sizes[1] < 256 < sizes[2] < 1024 < sizes[3]


@pytest.mark.parametrize("scale,wide", [(8.0, [0] * 6), (3.0, [0] * 6), (3.0, [300] * 6),
                                        (3.0, [0, 150, 600, 0, 80, 0])])
def test_nucleus_sampling_draws_what_the_general_path_draws(scale, wide):
    # The decode step's fast path for top-p-only rows works on the nucleus alone; for every
    # uniform it must draw the token the processed full row draws, with the same log q.
    # `wide` makes that many tokens of a row the likeliest, so that its nucleus passes the
    # first head of 64 (and the second, of 256).
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(6, 5000, generator=g) * scale
    for row, width in enumerate(wide):
        logits[row, 1000:1000 + width] = 12.0 + 0.1 * torch.randn(width, generator=g)
    temperature = torch.tensor([0.7, 1.0, 1.3, 0.5, 0.9, 1.0])
    top_p = torch.tensor([0.9, 0.95, 0.5, 0.99, 0.8, 0.3])
    processed = process_logits(logits, temperature, 0, top_p, 0.0)
    log_q = processed.log_softmax(dim=-1)
    for _ in range(40):
        uniforms = torch.rand(6, generator=g, dtype=torch.float64)
        tokens, token_log_q = sample_nucleus(logits, temperature, top_p, uniforms)
        expected, _ = sample_rows(processed, uniforms)
        assert torch.equal(tokens, expected)
        torch.testing.assert_close(token_log_q, log_q.gather(1, expected[:, None]).squeeze(1))


@pytest.mark.parametrize("temperature", [[1.0, 1.0, 1.0], [0.7, 1.0, 1.6]])
def test_temperature_only_sampling_draws_what_the_general_path_draws(temperature):
    # The decode step's path for rows with no filter skips the general path's mask of
    # removed tokens (and, at temperature 1, its copy): for every uniform it must draw the
    # token the processed row draws, with that row's log q.
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(3, 5000, generator=g) * torch.tensor([[0.1], [3.0], [8.0]])
    temperature = torch.tensor(temperature)
    processed = process_logits(logits, temperature)
    log_q = processed.log_softmax(dim=-1)
    for _ in range(40):
        uniforms = torch.rand(3, generator=g, dtype=torch.float64)
        tokens, token_log_q = sample_tempered(logits, temperature, uniforms)
        expected, _ = sample_rows(processed, uniforms)
        assert torch.equal(tokens, expected)
        torch.testing.assert_close(token_log_q, log_q.gather(1, expected[:, None]).squeeze(1))


def test_temperature_only_sampling_leaves_rows_with_removed_tokens_to_the_general_path():
    logits = torch.zeros(2, 100)
    logits[1, 5] = float("-inf")
    uniforms = torch.tensor([0.5, 0.5], dtype=torch.float64)
    assert sample_tempered(logits, 1.0, uniforms) is None
    logits[1, 5] = float("nan")
    assert sample_tempered(logits, 1.0, uniforms) is None


def test_nucleus_sampling_declines_a_nucleus_wider_than_its_head():
    flat = torch.zeros(2, 5000)  # every token equally likely: the nucleus is most of the row
    assert sample_nucleus(flat, torch.tensor([1.0, 1.0]), torch.tensor([0.9, 0.9]),
                          torch.tensor([0.5, 0.5], dtype=torch.float64)) is None


@pytest.mark.parametrize("scale", [0.01, 3.0, 30.0, 3000.0])
def test_softmax_stats_equal_their_definitions_from_the_log_softmax(scale):
    # log Z, entropy and self-certainty without a log-softmax of the row; at scale 3000 some
    # tokens fall below self-certainty's floor, and a row with a -inf logit (a token ruled
    # out) must still give finite figures, as from the log-softmax with 0 * -inf taken as 0.
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(5, 4000, generator=g) * scale
    logits[4, :7] = float("-inf")
    log_z, entropy, certainty = softmax_stats(logits)
    logprobs = logits.log_softmax(dim=-1)
    torch.testing.assert_close(logits - log_z[:, None], logprobs)
    torch.testing.assert_close(entropy, -(logprobs.exp() * logprobs).nan_to_num().sum(dim=-1),
                               atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(certainty, self_certainty(logprobs), atol=1e-4, rtol=1e-5)
    assert bool(entropy.isfinite().all()) and bool(certainty.isfinite().all())


@pytest.mark.parametrize("kinds", [
    [{"temperature": 0.0}] * 4,  # greedy: its argmax (ties included)
    [{"temperature": 1.0}, {"temperature": 0.7}, {"temperature": 1.0}, {"temperature": 1.4}],
    [{"temperature": 0.8, "top_p": 0.9}] * 4,  # top-p alone: the nucleus path
    [{"temperature": 0.0}, {"temperature": 1.0}, {"temperature": 0.8, "top_p": 0.9},
     {"temperature": 0.7, "top_k": 20}],  # mixed: the general path itself
])
def test_each_decode_path_draws_what_the_general_path_draws(kinds):
    # The decode step sends rows that all sample alike down their own path; the tokens and
    # log q must be the general path's (process_logits, then sample_rows), row for row.
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(4, 3000, generator=g) * 4
    logits[0, [7, 900]] = logits[0].max() + 1  # a tie for the top token: the first one wins
    params = [SamplingParams(**k) for k in kinds]
    processed = process_logits(
        logits, torch.tensor([p.temperature for p in params]),
        torch.tensor([p.top_k for p in params]), torch.tensor([p.top_p for p in params]),
        torch.tensor([p.min_p for p in params]))
    log_q = processed.log_softmax(dim=-1)
    for _ in range(20):
        uniforms = torch.rand(4, generator=g, dtype=torch.float64)
        tokens, _, chosen_sampling, *_ = _draw(logits, params, uniforms.tolist(), 0)
        expected, _ = sample_rows(processed, uniforms)
        assert torch.equal(tokens, expected)
        sampled = torch.tensor([not p.greedy for p in params])
        torch.testing.assert_close(chosen_sampling[sampled],
                                   log_q.gather(1, expected[:, None]).squeeze(1)[sampled])
    if params[0].greedy:
        assert tokens[0] == 7
