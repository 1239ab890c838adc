"""The lean forward (engines/lean.py) against transformers' own forward on the same weights:
small random Llama, Qwen2 and Mistral models (grouped-query attention, biases, scaled RoPE),
batches with left padding and cached prefixes, forks of one batch, and whole generations
through the engine on the same seeds. Models it cannot run fall back to transformers."""

import pytest
import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from ponder.engines import kv as kvlib
from ponder.engines.hf import HFEngine
from ponder.engines.lean import LeanModel, unsupported
from ponder.types import GenerateRequest, SamplingParams

VOCAB = 49152  # the bundled tokenizer's, so prompts can be text
SMALL = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)


def build(cls, config_cls, **extra):
    torch.manual_seed(0)
    model = cls(config_cls(**SMALL, **extra)).eval()
    # Random init leaves norms at 1 and biases at 0; perturb them so both paths must use them.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "bias" in name:
                p.add_(torch.randn_like(p) * 0.1)
        # Peaked next-token distributions, like a trained model's: on a flat one over 49k
        # tokens, fp32 rounding alone moves inverse-CDF boundaries across a uniform draw.
        model.lm_head.weight.mul_(50)
    return model


MODELS = {
    "llama-gqa-llama3-rope": lambda: build(
        LlamaForCausalLM, LlamaConfig, attention_bias=True, mlp_bias=True,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 64}),
    "qwen2-qkv-bias": lambda: build(Qwen2ForCausalLM, Qwen2Config),
    "mistral-no-window": lambda: build(MistralForCausalLM, MistralConfig, sliding_window=None),
}


@pytest.fixture(scope="module", params=sorted(MODELS))
def pair(request):
    """(name, transformers model, lean model, the model the lean one fused), the two models
    with the same weights."""
    reference = MODELS[request.param]()
    fused = MODELS[request.param]()
    lean = LeanModel.build(fused)
    assert lean is not None, unsupported(fused)
    return request.param, reference, lean, fused


def feed(runner, batch, rows: list[list[int]]):
    """Left-pad rows of new tokens and feed them after `batch`."""
    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        if r:
            ids[i, width - len(r):] = torch.tensor(r)
            mask[i, width - len(r):] = 1
    return kvlib.forward(runner, batch, ids, mask, logits_to_keep=width)


def test_lean_logits_equal_transformers_on_padded_batches_steps_and_forks(pair):
    _, reference, lean, _ = pair
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, VOCAB, (n,), generator=g).tolist() for n in (7, 3, 12)]
    empty = kvlib.KVBatch.empty(3, "cpu")
    ref_logits, ref_batch = feed(reference, empty, prompts)
    lean_logits, lean_batch = feed(lean, kvlib.KVBatch.empty(3, "cpu"), prompts)
    real = ref_batch.mask[:, -12:].bool()  # padding positions' logits mean nothing
    torch.testing.assert_close(lean_logits[real], ref_logits[real], atol=1e-5, rtol=1e-5)
    # Cached prefix + padding + new tokens: rows get 1, 4 and 2 new tokens.
    more = [[5], [6, 7, 8, 9], [10, 11]]
    ref_logits, ref_after = feed(reference, ref_batch, more)
    lean_logits, lean_after = feed(lean, lean_batch, more)
    torch.testing.assert_close(lean_logits[:, -1], ref_logits[:, -1], atol=1e-5, rtol=1e-5)
    # Decode steps; at step 1 also a fork of the batch before it, which must copy rather
    # than overwrite the columns the step just wrote (step 2 reads them).
    ref_state, lean_state = ref_after, lean_after
    for step in range(3):
        tokens = [[100 + step]] * 3
        ref_logits, ref_next = feed(reference, ref_state, tokens)
        lean_logits, lean_next = feed(lean, lean_state, tokens)
        torch.testing.assert_close(lean_logits, ref_logits, atol=1e-5, rtol=1e-5)
        if step == 1:
            lean_fork, _ = feed(lean, lean_state, [[7]] * 3)
            ref_fork, _ = feed(reference, ref_state, [[7]] * 3)
            torch.testing.assert_close(lean_fork, ref_fork, atol=1e-5, rtol=1e-5)
        ref_state, lean_state = ref_next, lean_next


def test_fused_weights_are_views_and_transformers_forward_still_works(pair):
    _, reference, lean, fused = pair
    attention = fused.model.layers[0].self_attn
    storage = lean.layers[0].qkv.untyped_storage().data_ptr()
    for proj in (attention.q_proj, attention.k_proj, attention.v_proj):
        assert proj.weight.untyped_storage().data_ptr() == storage
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.inference_mode():
        torch.testing.assert_close(fused(input_ids=ids).logits, reference(input_ids=ids).logits)


def test_engine_generations_match_the_transformers_path(pair, engine):
    name, reference, _, _ = pair
    slow = HFEngine.from_model(reference, engine.tokenizer, lean=False)
    fast = HFEngine.from_model(MODELS[name](), engine.tokenizer)
    assert (slow.forward_path, fast.forward_path) == ("transformers", "lean")
    requests = [
        GenerateRequest("Once upon a time", SamplingParams(n=3, temperature=0.9, top_p=0.9,
                                                           max_tokens=12, seed=3)),
        GenerateRequest("The answer", SamplingParams(n=2, temperature=1.0, max_tokens=12,
                                                     seed=4), keep_state=True),
    ]
    slow_gens, fast_gens = slow.generate(requests), fast.generate(requests)
    # Continue each path's kept states (its own cached keys and values) for a second round.
    follow = SamplingParams(n=2, temperature=0.7, max_tokens=8, seed=5)
    slow_gens += slow.generate([GenerateRequest(state=c.state, params=follow)
                                for c in slow_gens[1].completions])
    fast_gens += fast.generate([GenerateRequest(state=c.state, params=follow)
                                for c in fast_gens[1].completions])
    for a, b in zip(slow_gens, fast_gens, strict=True):
        for ca, cb in zip(a.completions, b.completions, strict=True):
            assert ca.token_ids == cb.token_ids
            assert ca.logprobs == pytest.approx(cb.logprobs, abs=1e-4)
            assert ca.sampling_logprobs == pytest.approx(cb.sampling_logprobs, abs=1e-4)
        assert a.usage.forward_tokens == b.usage.forward_tokens


def test_models_the_lean_path_cannot_run_keep_the_transformers_path(engine):
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=1, n_head=2)).eval()
    windowed = MistralForCausalLM(MistralConfig(**SMALL, sliding_window=16)).eval()
    dynamic = LlamaForCausalLM(LlamaConfig(**SMALL, rope_scaling={
        "rope_type": "dynamic", "factor": 2.0})).eval()
    assert "GPT2LMHeadModel is not one of" in unsupported(gpt2)
    assert unsupported(windowed) == "a sliding window"
    assert "changes with the sequence length" in unsupported(dynamic)
    for model in (gpt2, windowed, dynamic):
        fallback = HFEngine.from_model(model, engine.tokenizer)
        assert fallback.forward_path == "transformers"
        [gen] = fallback.generate([GenerateRequest("Hi", SamplingParams(max_tokens=3,
                                                                        ignore_eos=True))])
        assert len(gen.completions[0].token_ids) == 3


def test_bundled_model_runs_the_lean_path_with_the_transformers_paths_results(engine):
    assert engine.forward_path == "lean"
    slow = HFEngine.from_model(engine.model, engine.tokenizer, lean=False)
    request = GenerateRequest([{"role": "user", "content": "What is 2 + 3?"}],
                              SamplingParams(n=4, temperature=0.8, top_p=0.95, max_tokens=24,
                                             seed=11))
    [a], [b] = slow.generate([request]), engine.generate([request])
    for ca, cb in zip(a.completions, b.completions, strict=True):
        assert ca.token_ids == cb.token_ids
        assert ca.logprobs == pytest.approx(cb.logprobs, abs=1e-4)
