"""What is particular to the vLLM engine, on the real bundled model (fp32). The contract
suite (tests/engine_contract) checks what every engine promises; this checks the vLLM
engine's own mechanics: the scoring pass that gives log p, seeds, prefix reuse, the eval
harness and CLI on it, and what it rejects.

Runs in .venv-vllm (scripts/install_vllm.sh; CI: scripts/test_engines.sh). Skipped where
vLLM is not installed, as in the main venv.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

from ponder.types import GenerateRequest, SamplingParams, ScoreRequest

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None,
                       reason="vllm is not installed here (scripts/install_vllm.sh sets up "
                              ".venv-vllm; run these tests with .venv-vllm/bin/python)"),
]

PROMPT = [{"role": "user", "content": "What is 12 + 35? Answer with a number."}]


@pytest.fixture(scope="module")
def vllm_engine():
    from ponder.engines.vllm import VLLMEngine

    # The same arguments as the contract suite's factory: one vLLM load per session.
    return VLLMEngine.shared(model="smollm2-135m", dtype="float32")


def one(engine, prompt=PROMPT, **params):
    return engine.generate([GenerateRequest(prompt=prompt, params=SamplingParams(**params))])[0]


def test_greedy_self_consistency_eval_gives_the_native_engines_answers(engine, tmp_path):
    """The same greedy eval through the CLI on vLLM and through the harness on the native
    engine: identical answers (and texts) on every problem."""
    from ponder.eval.runner import make_spec, run_eval
    from ponder.eval.store import Store

    options = {"task": "arith:1", "limit": 6, "strategy": "self_consistency", "n": 2,
               "temperature": 0.0, "max_tokens": 64}
    spec = make_spec(options)
    with Store(tmp_path / "native.db") as store:
        run_eval(spec, engine, store, progress=False)
        native = store.problems(spec.run_id)
    cmd = [sys.executable, "-m", "ponder.cli", "eval", "--engine", "vllm", "--no-progress",
           "--out", str(tmp_path / "vllm.db"), "--task", "arith:1", "--limit", "6",
           "--strategy", "self_consistency", "--n", "2", "--temperature", "0",
           "--max-tokens", "64"]
    env = {**os.environ, "PONDER_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    with Store(tmp_path / "vllm.db", read_only=True) as store:  # the engine is in the run id
        served = store.problems(make_spec({**options, "engine": "vllm"}).run_id)
    assert len(native) == len(served) == 6
    assert [r.answer for r in served] == [r.answer for r in native]
    assert any(r.answer is not None for r in native)
    for ours, theirs in zip(served, native, strict=True):
        assert [s.text for s in ours.samples] == [s.text for s in theirs.samples]


def test_the_scoring_pass_for_log_p_is_counted_in_usage(vllm_engine):
    prompt_len = len(vllm_engine.tokenize(PROMPT))
    # T=1 without filters: q is the model's distribution, no scoring pass.
    (plain,) = one(vllm_engine, n=1, temperature=1.0, max_tokens=12, seed=4).completions
    assert plain.usage.forward_tokens == len(plain.token_ids) - 1
    assert plain.logprobs == plain.sampling_logprobs
    # T=0.5: q comes from vLLM's sampler, p from re-reading prompt + completion.
    gen = one(vllm_engine, n=2, temperature=0.5, max_tokens=12, seed=4)
    for c in gen.completions:
        n = len(c.token_ids)
        assert c.usage.forward_tokens == (n - 1) + (prompt_len + n)
        assert c.logprobs != c.sampling_logprobs
        (scored,) = vllm_engine.score([ScoreRequest(PROMPT, list(c.token_ids))])
        assert c.logprobs == pytest.approx(scored.logprobs, abs=1e-4)
    decode = sum(c.usage.forward_tokens for c in gen.completions)
    assert 0 < gen.usage.forward_tokens - decode <= 2 * prompt_len  # the prefills


def test_a_recorded_seed_reproduces_its_sample_alone(vllm_engine):
    gen = one(vllm_engine, n=4, temperature=0.8, max_tokens=16, seed=11)
    for c in gen.completions[1:]:
        (alone,) = one(vllm_engine, n=1, temperature=0.8, max_tokens=16, seed=c.seed).completions
        assert alone.token_ids == c.token_ids
    # Neighbouring request seeds do not share samples (vLLM's own n>1 seeds seed+index).
    nxt = one(vllm_engine, n=4, temperature=0.8, max_tokens=16, seed=12)
    assert not {c.token_ids for c in gen.completions} & {c.token_ids for c in nxt.completions}


def test_seeded_prompts_beyond_one_steps_token_budget_all_complete(vllm_engine):
    """More prompt tokens than one engine step takes: on a CPU a prefill split across steps
    made vLLM rewind the seeded generators and stop ("CPU Generator does not use offset"); the
    engine keeps prompts whole, so every request completes, each as its seed says."""
    budget = vllm_engine.llm.llm_engine.vllm_config.scheduler_config.max_num_batched_tokens
    story = "Once upon a time a fox counted the stars over the hill. " * 40

    def prompt(i):  # distinct from the first token on, so no prompt reads another's cache
        return [{"role": "user", "content": f"Story {i}. {story} What is 12 + 35?"}]

    prompt_len = len(vllm_engine.tokenize(prompt(0)))
    count = 2 * budget // prompt_len + 2
    reqs = [GenerateRequest(prompt=prompt(i), params=SamplingParams(
        n=2, temperature=0.8, max_tokens=8, seed=100 + i, ignore_eos=True)) for i in range(count)]
    gens = vllm_engine.generate(reqs)
    assert count * prompt_len > 2 * budget
    assert all(len(c.token_ids) == 8 for g in gens for c in g.completions)
    last = gens[-1].completions[0]
    (alone,) = one(vllm_engine, prompt(count - 1), n=1, temperature=0.8, max_tokens=8,
                   seed=last.seed, ignore_eos=True).completions
    assert alone.token_ids == last.token_ids


def test_continuing_a_state_reads_the_prefix_from_the_cache(vllm_engine):
    head = one(vllm_engine, temperature=0.0, max_tokens=60, ignore_eos=True).completions[0]
    state = head.state
    tail = vllm_engine.generate([GenerateRequest(state=state, params=SamplingParams(
        temperature=0.0, max_tokens=5, ignore_eos=True))])[0]
    prefill = tail.usage.forward_tokens - sum(c.usage.forward_tokens for c in tail.completions)
    assert tail.usage.prompt_tokens == len(state.token_ids)
    # Whole cached blocks are reused; at most one block's worth is computed again.
    assert 1 <= prefill <= vllm_engine.block_size
    assert tail.prompt_token_ids == state.token_ids


def test_top_logprobs_are_the_models_at_any_temperature(vllm_engine, engine):
    greedy = one(vllm_engine, temperature=0.0, max_tokens=4, logprobs=3).completions[0]
    native = one(engine, temperature=0.0, max_tokens=4, logprobs=3).completions[0]
    assert greedy.token_ids == native.token_ids
    for ours, theirs in zip(greedy.top_logprobs, native.top_logprobs, strict=True):
        assert set(ours) == set(theirs)
        assert max(abs(ours[t] - theirs[t]) for t in ours) < 0.05
    # The first step's distribution does not depend on how we sample from it.
    warm = one(vllm_engine, temperature=0.5, max_tokens=4, seed=1, logprobs=3).completions[0]
    assert warm.top_logprobs[0] == pytest.approx(greedy.top_logprobs[0], abs=1e-4)
    assert warm.sampling_logprobs[0] > warm.logprobs[0]  # q is sharper than p at T=0.5


def test_greedy_sampling_log_q_in_score_is_a_point_mass(vllm_engine):
    c = one(vllm_engine, temperature=0.0, max_tokens=6).completions[0]
    tokens = list(c.token_ids)
    other = tokens[:-1] + [(tokens[-1] + 1) % vllm_engine.vocab_size]
    greedy = SamplingParams(temperature=0.0)
    hit, miss = vllm_engine.score([ScoreRequest(PROMPT, tokens, params=greedy),
                                   ScoreRequest(PROMPT, other, params=greedy)])
    assert hit.sampling_logprobs == (0.0,) * len(tokens)
    assert miss.sampling_logprobs[:-1] == (0.0,) * (len(tokens) - 1)
    assert miss.sampling_logprobs[-1] == float("-inf")


def test_what_it_cannot_do_is_rejected_clearly(vllm_engine):
    caps = vllm_engine.capabilities
    assert not caps.early_stop and not caps.streaming
    with pytest.raises(ValueError, match="early_stop"):
        vllm_engine.generate([GenerateRequest(PROMPT, SamplingParams(max_tokens=4),
                                              should_stop=lambda _i, _s: True)])
    with pytest.raises(ValueError, match="streaming"):
        vllm_engine.generate([GenerateRequest(PROMPT, SamplingParams(max_tokens=4))],
                             on_token=lambda *_: None)
    with pytest.raises(ValueError, match="logprobs"):
        one(vllm_engine, max_tokens=2, logprobs=vllm_engine.max_logprobs + 1)
    with pytest.raises(ValueError, match="token ids"):
        vllm_engine.tokenize([0, vllm_engine.vocab_size])
    from ponder.engines.vllm import VLLMEngine

    with pytest.raises(ValueError, match="dtype"):
        VLLMEngine(dtype="int3")


def test_power_sampling_runs_on_vllm(vllm_engine):
    """Power sampling needs log p and log q of every token and states: the strategy that
    made the scoring pass necessary."""
    from ponder.strategies.registry import make_strategy
    from ponder.tasks.datasets import load_task

    (problem,) = load_task("arith:1", limit=1)
    power = make_strategy("power", max_tokens=16, block_size=8, mcmc_steps=1, seed=0)
    (result,) = power.run([problem], vllm_engine, None)
    assert result.usage.generated_tokens > 0
    assert result.usage.forward_tokens > result.usage.generated_tokens


# The PRM's scores through vLLM's kernels (fp32 on CPU here) against the same weights in
# transformers: the largest difference seen here was 4e-8; allowed 1e-4 in probability.
VLLM_PRM_TOLERANCE = 1e-4


def test_a_prm_served_by_vllm_gives_the_in_process_step_scores(engine, tmp_path):
    """vLLM's OpenAI server (its pooling API) serving a tiny random Qwen2 PRM built here, read
    by the http-prm scorer: the in-process qwen-prm scores of the same weights, step by step,
    and the same token counts."""
    import json
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from openai_servers import Served, free_port
    from test_scorer_http import RESPONSES, build_qwen_prm, items

    from ponder.engines.vllm import _env_defaults
    from ponder.scorers.registry import make_scorer

    folder, tag = build_qwen_prm(tmp_path / "prm", engine.tokenizer)
    port = free_port()
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", folder,
           "--served-model-name", "tiny-prm", "--host", "127.0.0.1", "--port", str(port),
           "--dtype", "float32", "--enforce-eager", "--seed", "0", "--max-model-len", "2048",
           "--pooler-config", json.dumps({"step_tag_id": tag})]
    env = {k: v for k, v in _env_defaults().items() if k not in os.environ}
    env.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)  # a server keeps its engine process
    server = Served(cmd, port, "/v1/models", "vllm-prm", env=env, timeout=300)
    remote = make_scorer(f"http-prm:{server.url}", model="tiny-prm", concurrency=8)
    try:
        batch = items(*RESPONSES * 2)
        ours = remote.score(batch)
    finally:
        remote.close()
        server.stop()
    theirs = make_scorer(f"qwen-prm:{folder}", device="cpu").score(batch)
    gap = max(abs(x - y) for a, b in zip(ours, theirs, strict=True)
              for x, y in zip(a.step_scores, b.step_scores, strict=False))
    print(f"vLLM vs in-process PRM step scores: largest difference {gap:.2e}")
    for a, b in zip(ours, theirs, strict=True):
        assert len(a.step_scores) == len(b.step_scores)
        assert a.step_scores == pytest.approx(b.step_scores, abs=VLLM_PRM_TOLERANCE)
        assert a.usage.scorer_tokens == b.usage.scorer_tokens
    assert sum(len(r.step_scores) for r in ours) == 2 * (1 + 3 + 4 + 0)
