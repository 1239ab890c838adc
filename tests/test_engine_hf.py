"""The native engine on the real bundled model (fp32, CPU)."""

import subprocess
import sys
from unittest.mock import patch

import pytest
import torch

from ponder.engines import kv as kvlib
from ponder.sampling import process_logits
from ponder.types import GenerateRequest, SamplingParams, ScoreRequest, SequenceState, Usage

Q1 = [{"role": "user", "content": "What is 12 + 35?"}]
Q2 = [{"role": "user", "content": "Name a color. Explain why you like it in detail please."}]
RAW = "The capital of France is"


def ids(generation):
    return [c.token_ids for c in generation.completions]


def generated_together_and_alone(engine, reqs):
    """The requests' generations in one batch and one at a time, checked to be the same
    samples (tokens, and log-probabilities within fp32 noise)."""
    together = engine.generate(reqs)
    alone = [engine.generate([r])[0] for r in reqs]
    for t, a in zip(together, alone, strict=True):
        assert ids(t) == ids(a)
        for ct, ca in zip(t.completions, a.completions, strict=True):
            assert ct.logprobs == pytest.approx(ca.logprobs, abs=1e-4)
    return together, alone


def test_batched_sampling_equals_per_request_sampling(engine):
    reqs = [
        GenerateRequest(Q1, SamplingParams(n=3, temperature=0.9, max_tokens=24, seed=5)),
        GenerateRequest(Q2, SamplingParams(n=2, temperature=0.7, top_k=40, max_tokens=16, seed=7)),
        GenerateRequest(RAW, SamplingParams(n=2, temperature=1.0, top_p=0.9, min_p=0.05,
                                            max_tokens=12, seed=11)),
    ]
    together = generated_together_and_alone(engine, reqs)[0]
    # Different samples of one request differ (the seeds are per sample).
    assert len(set(ids(together[0]))) > 1


def test_same_seed_same_tokens_whatever_the_batch_size(engine):
    params = SamplingParams(n=1, temperature=1.0, max_tokens=20, seed=42)
    alone = engine.generate([GenerateRequest(Q1, params)])[0]
    crowded = engine.generate([GenerateRequest(Q2, SamplingParams(n=5, max_tokens=30, seed=1)),
                               GenerateRequest(Q1, params)])[1]
    assert ids(alone) == ids(crowded)


def test_greedy_batched_equals_greedy_alone(engine):
    greedy = SamplingParams(temperature=0, max_tokens=20)
    prompts = [Q1, Q2, RAW]
    together = engine.generate([GenerateRequest(p, greedy) for p in prompts])
    for p, t in zip(prompts, together, strict=True):
        assert ids(engine.generate([GenerateRequest(p, greedy)])[0]) == ids(t)
        assert all(lp == 0.0 for lp in t.completions[0].sampling_logprobs)


def test_prompts_that_start_alike_share_one_prefill_of_their_common_start(engine):
    """Chat prompts share the template's system prompt; fed once, it gives the same samples
    as feeding each prompt whole, and each request's Usage is what it is alone."""
    chats = [Q1, Q2, [{"role": "user", "content": "What is 7 + 8?"}]]
    reqs = [GenerateRequest(p, SamplingParams(n=2, temperature=0.8, max_tokens=12, seed=3))
            for p in (chats[0], RAW, chats[1], chats[2])]
    for t, a in zip(*generated_together_and_alone(engine, reqs), strict=True):
        assert t.usage.forward_tokens == a.usage.forward_tokens
    tokens = [engine.tokenize(p) for p in chats]
    start = next(i for i in range(len(tokens[0])) if len({tuple(t[:i + 1]) for t in tokens}) > 1)
    assert start >= 16  # the system prompt and the user turn's opening
    # The start went through the model once for the three chats: one forward call of its
    # own (batch 1, `start` positions), then every prompt's rest.
    engine.start_cache.clear()  # the batches above fed this start: it is kept for reuse
    fed = fed_to_the_model(engine, [GenerateRequest(p, SamplingParams(temperature=0,
                                                                       max_tokens=1))
                                    for p in (chats[0], RAW, chats[1], chats[2])])
    raw = len(engine.tokenize(RAW))
    assert fed[0] == (1, start)
    assert fed[1] == (4, raw + sum(len(t) - start for t in tokens))


def fed_to_the_model(engine, requests) -> list[tuple[int, int]]:
    """(rows, tokens fed) of each forward call the engine makes for `requests`."""
    fed = []
    forward = kvlib.forward
    with patch.object(kvlib, "forward", lambda model, batch, ids, mask, *a, **k: (
            fed.append((batch.size, int(mask.sum()))) or forward(model, batch, ids, mask, *a, **k))):
        engine.generate(requests)
    return fed


def test_a_later_batch_with_the_same_start_takes_it_from_the_start_cache(engine):
    """The common start one batch fed is not fed again by the next batch that shares
    exactly it, and the samples are the same, bit for bit, as with it fed again."""
    topics = ["the sea", "a robot", "bread", "chess", "winter"]
    def batch(seed):
        return [GenerateRequest([{"role": "user", "content": f"Write a poem about {t}."}],
                                SamplingParams(n=2, temperature=0.8, max_tokens=8, seed=seed))
                for t in topics]
    engine.start_cache.clear()
    fed_first = fed_to_the_model(engine, batch(1))
    hits = engine.start_cache.hits
    fed_again = fed_to_the_model(engine, batch(2))
    assert engine.start_cache.hits == hits + 1
    assert fed_first[0][0] == 1  # the start's forward of its own, then what the rows feed
    assert fed_again == fed_first[1:]
    from_cache = engine.generate(batch(3))
    engine.start_cache.clear()
    fed_anew = engine.generate(batch(3))
    for c, f in zip(from_cache, fed_anew, strict=True):
        assert ids(c) == ids(f)
        assert [x.logprobs for x in c.completions] == [x.logprobs for x in f.completions]
        assert c.usage.forward_tokens == f.usage.forward_tokens


def test_the_start_cache_is_bounded_and_forgets_when_the_weights_change():
    from ponder.engines.start_cache import StartCache

    model = torch.nn.Linear(2, 2)
    layers = ((torch.zeros(3, 10, 4), torch.zeros(3, 10, 4)),)  # 960 bytes
    cache = StartCache(max_bytes=2000)
    cache.put(model, [1, 2], layers)
    cache.put(model, [1, 3], layers)
    assert cache.get(model, [1, 2]) is layers  # now the most recently used
    cache.put(model, [1, 4], layers)  # over the bound: the least recently used leaves
    assert cache.get(model, [1, 3]) is None and len(cache) == 2 and cache.bytes == 1920
    assert cache.get(model, [1]) is None  # exactly the start, never a shorter one
    with torch.no_grad():
        model.weight.add_(1.0)
    assert cache.get(model, [1, 2]) is None and len(cache) == 0
    cache.put(model, [1, 2], layers)
    model.double()  # moved: new tensors
    assert cache.get(model, [1, 2]) is None


def test_score_alone_equals_score_in_a_mixed_batch(engine):
    reqs = [ScoreRequest(Q1, " 12 + 35 = 47."), ScoreRequest(RAW, " Paris, a city on the Seine."),
            ScoreRequest(Q2, "Blue.")]
    batch = engine.score(reqs)
    for r, b in zip(reqs, batch, strict=True):
        [alone] = engine.score([r])
        assert alone.token_ids == b.token_ids
        assert alone.logprobs == pytest.approx(b.logprobs, abs=1e-4)
    assert all(lp < 0 for lp in batch[0].logprobs)


def test_generation_logprobs_equal_score_and_sampling_logprobs_recompute(engine):
    params = SamplingParams(n=2, temperature=0.7, top_k=30, top_p=0.9, max_tokens=20, seed=3)
    [gen] = engine.generate([GenerateRequest(Q1, params)])
    prompt_ids = engine.tokenize(Q1)
    for c in gen.completions:
        [scored] = engine.score([ScoreRequest(prompt_ids, c.token_ids, params)])
        assert scored.logprobs == pytest.approx(c.logprobs, abs=1e-4)
        assert scored.sampling_logprobs == pytest.approx(c.sampling_logprobs, abs=1e-4)
        # Recompute q(token) by hand from the model's logits at each position.
        full = torch.tensor([prompt_ids + list(c.token_ids)])
        with torch.inference_mode():
            logits = engine.model(full).logits[0, len(prompt_ids) - 1 : -1].float()
        processed = process_logits(logits, 0.7, 30, 0.9, 0.0)
        manual = processed.log_softmax(-1).gather(1, torch.tensor(c.token_ids)[:, None])
        assert manual.squeeze(1).tolist() == pytest.approx(c.sampling_logprobs, abs=1e-4)
        # Sampling from a sharpened, truncated distribution makes q(token) >= p(token).
        assert sum(c.sampling_logprobs) >= sum(c.logprobs)


def test_continuing_from_a_state_matches_recomputing_and_saves_forward_tokens(engine):
    first = engine.generate([GenerateRequest(Q2, SamplingParams(temperature=0, max_tokens=12),
                                             keep_state=True)])[0].completions[0]
    assert first.state.cached == len(first.state) - 1
    cont = SamplingParams(temperature=0, max_tokens=10, logprobs=3)
    with_cache = engine.generate([GenerateRequest(state=first.state, params=cont)])[0]
    bare = SequenceState(first.state.token_ids)
    recomputed = engine.generate([GenerateRequest(state=bare, params=cont)])[0]
    a, b = with_cache.completions[0], recomputed.completions[0]
    assert a.token_ids == b.token_ids
    assert a.logprobs == pytest.approx(b.logprobs, abs=1e-4)
    # With the cache only the last token is re-fed; without it the whole prefix is.
    assert with_cache.usage.forward_tokens - a.usage.forward_tokens == 1
    assert recomputed.usage.forward_tokens - b.usage.forward_tokens == len(first.state)
    # Truncating shares the cache and still continues exactly.
    m = len(engine.tokenize(Q2)) + 5
    cut = first.state.truncate(m)
    [from_cut] = engine.generate([GenerateRequest(state=cut, params=cont)])
    [from_scratch] = engine.generate([GenerateRequest(state=SequenceState(cut.token_ids),
                                                      params=cont)])
    assert from_cut.completions[0].token_ids == from_scratch.completions[0].token_ids
    assert from_cut.usage.forward_tokens < from_scratch.usage.forward_tokens
    assert from_cut.completions[0].top_logprobs[0].keys() == from_scratch.completions[0].top_logprobs[0].keys()


def test_mixed_cached_and_fresh_requests_in_one_batch(engine):
    base = engine.generate([GenerateRequest(Q1, SamplingParams(temperature=0, max_tokens=8),
                                            keep_state=True)])[0].completions[0]
    extended = base.state.extend(engine.tokenize(" So"))
    greedy = SamplingParams(temperature=0, max_tokens=8)
    mixed = engine.generate([GenerateRequest(RAW, greedy), GenerateRequest(state=extended, params=greedy)])
    alone = engine.generate([GenerateRequest(state=SequenceState(extended.token_ids), params=greedy)])
    assert ids(mixed[1]) == ids(alone[0])
    assert ids(mixed[0]) == ids(engine.generate([GenerateRequest(RAW, greedy)])[0])


def test_stop_strings_finish_reasons_and_max_tokens(engine):
    [gen] = engine.generate([
        GenerateRequest("Q: What is 2 + 3?\nA: 2 + 3 = 5.\nQ: What is 4 + 1?\nA:",
                        SamplingParams(temperature=0, max_tokens=40, stop=("\n",)))])
    c = gen.completions[0]
    assert c.finish_reason == "stop" and "\n" not in c.text and c.text.strip()
    [gen] = engine.generate([GenerateRequest(Q2, SamplingParams(n=3, max_tokens=5, seed=0))])
    assert all(len(c.token_ids) == 5 and c.finish_reason == "length" for c in gen.completions)


def test_eos_ends_a_completion_and_ignore_eos_runs_on(engine):
    short = [{"role": "user", "content": "Say OK."}]
    [gen] = engine.generate([GenerateRequest(short, SamplingParams(temperature=0, max_tokens=60))])
    c = gen.completions[0]
    assert c.finish_reason == "eos" and c.token_ids[-1] in engine.eos_ids
    [gen] = engine.generate([GenerateRequest(short, SamplingParams(temperature=0, max_tokens=60,
                                                                   ignore_eos=True))])
    assert len(gen.completions[0].token_ids) == 60


def test_streamed_deltas_rebuild_the_text(engine):
    pieces = {}
    [gen] = engine.generate(
        [GenerateRequest(Q2, SamplingParams(n=2, max_tokens=25, seed=9))],
        on_token=lambda r, s, tok, delta: pieces.setdefault(s, []).append(delta))
    for j, c in enumerate(gen.completions):
        assert "".join(pieces[j]) == c.text


def test_usage_adds_up(engine):
    reqs = [GenerateRequest(Q1, SamplingParams(n=4, max_tokens=10, seed=1)),
            GenerateRequest(RAW, SamplingParams(n=1, max_tokens=7, seed=1))]
    gens = engine.generate(reqs)
    for r, g in zip(reqs, gens, strict=True):
        prompt_len = len(engine.tokenize(r.prompt))
        generated = sum(len(c.token_ids) for c in g.completions)
        assert g.usage.prompt_tokens == prompt_len
        assert g.usage.generated_tokens == generated
        # The prompt is fed once for all n samples; each sample feeds all but its last token.
        assert g.usage.forward_tokens == prompt_len + generated - len(g.completions)
        parts = Usage(prompt_tokens=prompt_len, forward_tokens=prompt_len, calls=1) + Usage.sum(
            c.usage for c in g.completions)
        assert g.usage.forward_tokens == parts.forward_tokens
        assert g.usage.calls == 1


def test_small_batch_limit_queues_samples_without_changing_them(engine):
    from ponder.engines.hf import HFEngine

    small = HFEngine.from_model(engine.model, engine.tokenizer, max_batch_size=2)
    reqs = [GenerateRequest(q, SamplingParams(n=2, max_tokens=10, seed=4)) for q in (Q1, Q2, RAW)]
    assert [ids(g) for g in small.generate(reqs)] == [ids(g) for g in engine.generate(reqs)]


def test_bad_requests_raise_clear_errors(engine):
    with pytest.raises(ValueError, match="empty"):
        GenerateRequest("", SamplingParams())
    with pytest.raises(ValueError, match="exactly one"):
        GenerateRequest(None, SamplingParams())
    with pytest.raises(ValueError, match="token ids"):
        engine.generate([GenerateRequest([10**9], SamplingParams())])
    with pytest.raises(ValueError, match="message 0 has role None"):
        engine.generate([GenerateRequest([{"text": "no role"}], SamplingParams())])
    with pytest.raises(ValueError, match="unknown model 'no-such-model'.*smollm2-135m"):
        from ponder.models import resolve

        resolve("no-such-model")


@pytest.mark.parametrize("argv, message", [
    (["generate", "hi", "--temperature", "-1"], "temperature"),
    (["generate", "hi", "--top-p", "0"], "top_p"),
    (["generate", "hi", "--model", "no-such-model"], "Known names"),
    (["generate", "   "], "empty"),
])
def test_cli_rejects_bad_input_with_a_message(argv, message):
    proc = subprocess.run([sys.executable, "-m", "ponder.cli", *argv], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode != 0
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_generate_prints_completions_with_logprobs():
    proc = subprocess.run(
        [sys.executable, "-m", "ponder.cli", "generate", "What is 2 + 2?", "--n", "2",
         "--max-tokens", "8", "--seed", "1", "--json"],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    import json

    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["index"] for r in rows] == [0, 1]
    assert all(r["sum_logprob"] < 0 and r["tokens"] == 8 for r in rows)


def test_should_stop_ends_a_sample_inside_the_decode_loop(engine):
    seen = {}

    def stop_after_five(sample_index, step):
        seen.setdefault(sample_index, []).append(step)
        return step.generated >= 5 and sample_index == 1

    params = SamplingParams(n=2, max_tokens=12, seed=2, logprobs=3, ignore_eos=True)
    [gen] = engine.generate([GenerateRequest(Q2, params, should_stop=stop_after_five)])
    free, stopped = gen.completions
    assert stopped.finish_reason == "stopped" and len(stopped.token_ids) == 5
    assert free.finish_reason == "length" and len(free.token_ids) == 12
    # The callback saw each token as the completion records it.
    assert [s.token_id for s in seen[0]] == list(free.token_ids)
    assert [s.logprob for s in seen[0]] == pytest.approx(list(free.logprobs))
    assert all(len(s.top_logprobs) == 3 for s in seen[0])
    # Entropies are those of the model's next-token distribution: non-negative, and a
    # sampled token's surprise -log p can exceed it but the top-1 never has -log p above it
    # when the distribution is peaked (entropy >= -log p_max always holds).
    for step in seen[0]:
        assert step.entropy >= -max(step.top_logprobs.values()) - 1e-5
    assert free.entropies == pytest.approx([s.entropy for s in seen[0]])
    # The unaffected sample is the one it would have been without the hook.
    [plain] = engine.generate([GenerateRequest(Q2, params)])
    assert plain.completions[0].token_ids == free.token_ids


def test_follow_ups_join_the_running_decode_loop(engine):
    """A request returned by follow_up starts decoding while a longer one is still running,
    continues from the finished request's cache, and samples what it would alone."""
    long = GenerateRequest(prompt=Q2, params=SamplingParams(temperature=0.0, max_tokens=40,
                                                            ignore_eos=True))
    short = GenerateRequest(prompt=Q1, keep_state=True, params=SamplingParams(
        temperature=0.0, max_tokens=3, ignore_eos=True))
    more = SamplingParams(temperature=1.0, max_tokens=4, seed=11, ignore_eos=True)
    order = []

    def follow_up(index, generation):
        if index != 1:
            return []
        return [GenerateRequest(state=generation.completions[0].state, params=more)]

    out = engine.generate([long, short], follow_up=follow_up,
                          on_token=lambda r, _s, _t, _d: order.append(r))
    assert len(out) == 3
    assert order.index(2) < len(order) - 1 - order[::-1].index(0), "follow-up waited"
    assert out[2].usage.forward_tokens == 1 + 3  # its last prefix token, then 3 of 4 sampled
    alone = engine.generate([GenerateRequest(state=SequenceState(
        out[1].completions[0].state.token_ids), params=more)])[0]
    assert ids(out[2]) == ids(alone)
    assert ids(out[0]) == ids(engine.generate([long])[0])


def test_generate_chained_gives_the_same_generations_with_or_without_follow_ups(engine):
    from dataclasses import replace

    from ponder.engines.base import generate_chained

    class Rounds:  # the same engine, advertising no follow-ups: chains step in rounds
        name, capabilities = "rounds", replace(engine.capabilities, follow_ups=False)

        def generate(self, requests):
            return engine.generate(requests)

    def chain_of_three(index, generation):
        c = generation.completions[0]
        if len(c.state.token_ids) - len(generation.prompt_token_ids) >= 9 or index > 20:
            return []
        return [GenerateRequest(state=c.state, keep_state=True, params=SamplingParams(
            temperature=1.0, max_tokens=3, seed=index, ignore_eos=True))]

    first = [GenerateRequest(prompt=q, keep_state=True, params=SamplingParams(
        temperature=1.0, max_tokens=3 + i, seed=i, ignore_eos=True)) for i, q in enumerate((Q1, Q2))]
    joined = generate_chained(engine, first, chain_of_three)
    rounds = generate_chained(Rounds(), first, chain_of_three)
    as_sets = lambda gens: sorted(g.completions[0].state.token_ids for g in gens)  # noqa: E731
    assert len(joined) == len(rounds) > 2
    assert as_sets(joined) == as_sets(rounds)
