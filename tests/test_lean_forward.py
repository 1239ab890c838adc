"""The lean forward (engines/lean.py) gives transformers' logits within fp32 rounding, on the
bundled model and on random Qwen2 (q/k/v biases) and Llama-3-RoPE models, for every shape the
engine feeds: left-padded prefills, a cached prefix with a hole, decode steps, several logits
kept. Models it does not cover keep transformers' forward, and so does a model whose
projections are swapped after its twin was made."""

import pytest
import torch
import torch.nn.functional as F
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from ponder.engines import kv as kvlib
from ponder.engines import lean
from ponder.types import GenerateRequest, SamplingParams

TINY = dict(vocab_size=101, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)


def random_model(cls, config):
    torch.manual_seed(0)
    model = cls(config).eval()
    with torch.no_grad():  # biases start at zero: make them count
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.5)
    return model


def qwen2(**sizes):
    return random_model(Qwen2ForCausalLM, Qwen2Config(**{**TINY, **sizes},
                                                      tie_word_embeddings=False))


def llama3(**sizes):
    rope = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 32}
    # transformers 5 takes rope_parameters; 4.x took rope_scaling (and rope_theta apart).
    if "rope_parameters" in LlamaConfig().to_dict():
        config = LlamaConfig(**{**TINY, **sizes}, rope_parameters=rope)
    else:
        config = LlamaConfig(**{**TINY, **sizes}, rope_scaling=rope, rope_theta=rope["rope_theta"])
    return random_model(LlamaForCausalLM, config)


def both_ways(model, steps, kernel=None):
    """Run `steps` (functions batch -> (ids, mask)) through kv.forward with the lean twin
    (with matmul `kernel`, else the one it picks) and with transformers' forward; the two
    lists of logits."""
    out = []
    for use_lean in (True, False):
        lean._TWINS.pop(model, None)
        if not use_lean:
            lean._TWINS[model] = None  # as for a model the twin does not cover
        elif kernel is not None:
            lean.lean_twin(model).linear = kernel
        batch, logits = kvlib.KVBatch.empty(steps[0][0].shape[0], "cpu"), []
        for ids, mask, keep in steps:
            step_logits, batch = kvlib.forward(model, batch, ids, mask, logits_to_keep=keep)
            logits.append(step_logits)
        out.append(logits)
    lean._TWINS.pop(model, None)
    if isinstance(kernel, lean.PackedLinear):
        kernel.packed.clear()  # the packed copies of a model's weights: ~1 GB for the bundled one
    return out


def a_workload(vocab, batch=3):
    """A left-padded prefill keeping 4 logits, a second feed whose rows have padding between
    their cached tokens and their new ones (the hole a joined request leaves), then decode
    steps (a batch of one has no padding)."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, vocab, (batch, 9), generator=g)
    mask = torch.ones_like(ids)
    more = torch.randint(3, vocab, (batch, 3), generator=g)
    more_mask = torch.ones_like(more)
    if batch >= 3:
        mask[0, :4] = 0
        mask[2, :2] = 0
        more_mask[1, :2] = 0
    steps = [(ids, mask, 4)]
    steps.append((more, more_mask, 1))
    for _ in range(4):
        token = torch.randint(3, vocab, (batch, 1), generator=g)
        steps.append((token, torch.ones_like(token), 1))
    return steps


# Every matmul kernel the twin may pick on some CPU is tested on every CPU.
KERNELS = {k.__name__: k for k in lean.linear_kernels()}


@pytest.mark.parametrize("kernel", sorted(KERNELS))
@pytest.mark.parametrize("batch", [1, 3])  # decode attention differs at batch 1 and above
@pytest.mark.parametrize("build", [qwen2, llama3])
# 16 dims a head: torch's decode attention; 64 and 128: the compiled loop's where it is built
@pytest.mark.parametrize("hidden", [64, 256, 512])
def test_lean_forward_equals_transformers_on_random_models(build, batch, kernel, hidden):
    model = build(hidden_size=hidden)
    assert lean.why_not_lean(model) is None
    fast, slow = both_ways(model, a_workload(model.config.vocab_size, batch), KERNELS[kernel])
    for a, b in zip(fast, slow, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kernel", sorted(KERNELS))
def test_lean_forward_equals_transformers_on_the_bundled_model(engine, kernel):
    assert lean.why_not_lean(engine.model) is None
    fast, slow = both_ways(engine.model, a_workload(engine.model.config.vocab_size),
                           KERNELS[kernel])
    # Logits of size ~30 in fp32 through 30 layers: on this workload transformers' own eager
    # and sdpa attention differ by up to 1.8e-3, and oneDNN's matmul against MKL's by up to
    # 3.1e-3 (2-core Intel Xeon); a real error (a wrong position, mask or head) is ~1.
    for a, b in zip(fast, slow, strict=True):
        torch.testing.assert_close(a, b, atol=5e-3, rtol=0)


def test_the_kernel_is_chosen_by_cpu_vendor_and_size_not_by_a_timing(monkeypatch):
    monkeypatch.delenv("PONDER_PACKED_WEIGHTS", raising=False)  # whatever the shell has set
    linear, onednn = torch.nn.functional.linear, lean._onednn_linear
    mkl_packed, onednn_packed = lean.PackedLinear(), lean.PackedOneDNNLinear()
    monkeypatch.setattr(lean, "linear_kernels",
                        lambda: [linear, onednn, mkl_packed, onednn_packed])
    monkeypatch.setattr(lean, "cpu_vendor", lambda: "GenuineIntel")
    assert lean.pick_linear(lean.PACKED_MAX_BYTES) is mkl_packed
    assert lean.pick_linear(lean.PACKED_MAX_BYTES + 1) is linear
    monkeypatch.setattr(lean, "cpu_vendor", lambda: "AuthenticAMD")
    assert lean.pick_linear(lean.PACKED_MAX_BYTES) is onednn_packed
    assert lean.pick_linear(lean.PACKED_MAX_BYTES + 1) is onednn
    monkeypatch.setenv("PONDER_PACKED_WEIGHTS", "0")
    assert lean.pick_linear(1) is onednn
    monkeypatch.setattr(lean, "cpu_vendor", lambda: "GenuineIntel")
    assert lean.pick_linear(1) is linear
    monkeypatch.delenv("PONDER_PACKED_WEIGHTS")
    # ponder's panels where the machine has them, but not on Intel CPUs (not measured there)
    panel = lean.PanelLinear(None)
    monkeypatch.setattr(lean, "linear_kernels",
                        lambda: [linear, onednn, mkl_packed, onednn_packed, panel])
    assert lean.pick_linear(1) is mkl_packed
    monkeypatch.setattr(lean, "cpu_vendor", lambda: "AuthenticAMD")
    assert lean.pick_linear(1) is panel
    assert lean.pick_linear(lean.PACKED_MAX_BYTES + 1) is onednn
    monkeypatch.setattr(lean, "cpu_vendor", lambda: "GenuineIntel")
    monkeypatch.setattr(lean, "linear_kernels", lambda: [linear, onednn])  # no packing here
    assert lean.pick_linear(1) is linear
    monkeypatch.setattr(lean, "cpu_vendor", lambda: "AuthenticAMD")
    assert lean.pick_linear(1) is onednn
    monkeypatch.setattr(lean, "linear_kernels", lambda: [linear])
    assert lean.pick_linear(1) is linear
    monkeypatch.setattr(lean, "cpu_vendor", lambda: "GenuineIntel")
    assert lean.pick_linear(1) is linear


@pytest.mark.parametrize("name", ["packed_mkl_linear", "packed_onednn_linear", "panel_linear"])
def test_packed_weights_give_f_linear_results_and_follow_in_place_changes(name):
    if name not in KERNELS:
        pytest.skip(f"this torch has no {name}")
    packed = KERNELS[name]
    g = torch.Generator().manual_seed(3)
    weight, bias = torch.randn(48, 32, generator=g), torch.randn(48, generator=g)
    x = torch.randn(16, 32, generator=g)
    with torch.inference_mode():
        for rows in (1, 2, 3, 4, 16, 17, 64, 65, 200, 512, 600):
            y = torch.randn(1, rows, 32, generator=g)
            torch.testing.assert_close(packed(y, weight, bias), F.linear(y, weight, bias))
        # Inside the window the packed copy is used; it must follow the weight's changes.
        before = packed(x, weight, None)
        # (keyed by the weight, or by the weights of a stack: one alone for the panels)
        assert {id(weight), (id(weight),)} & packed.packed.keys()
    with torch.no_grad():
        weight.mul_(2)  # in place, as load_state_dict writes
    with torch.inference_mode():
        torch.testing.assert_close(packed(x, weight, None), 2 * before)
    # With autograd on, the plain call (the packed op has no backward).
    w = weight.clone().requires_grad_()
    packed(x, w, None).sum().backward()
    torch.testing.assert_close(w.grad, x.sum(0).expand_as(w))
    # A weight made under inference_mode has no version counter: the plain call, every time.
    with torch.inference_mode():
        made_here = weight.clone()
        torch.testing.assert_close(packed(x, made_here, None), F.linear(x, made_here))
        made_here.mul_(2)
        torch.testing.assert_close(packed(x, made_here, None), F.linear(x, made_here))


def test_generation_through_the_lean_forward_samples_what_transformers_does(engine, monkeypatch):
    requests = [GenerateRequest([{"role": "user", "content": "What is 12 + 35?"}],
                                SamplingParams(n=3, temperature=0.8, max_tokens=24, seed=4)),
                GenerateRequest("The capital of France is",
                                SamplingParams(temperature=0, max_tokens=16))]
    fast = engine.generate(requests)
    monkeypatch.setattr(kvlib, "lean_twin", lambda model: None)
    slow = engine.generate(requests)
    for f, s in zip(fast, slow, strict=True):
        for cf, cs in zip(f.completions, s.completions, strict=True):
            assert cf.token_ids == cs.token_ids
            assert cf.logprobs == pytest.approx(cs.logprobs, abs=1e-4)


def test_models_the_lean_forward_does_not_cover_keep_transformers():
    sliding = random_model(MistralForCausalLM, MistralConfig(**TINY, sliding_window=16))
    assert "sliding-window" in lean.why_not_lean(sliding)
    assert lean.lean_twin(sliding) is None
    half = qwen2().to(torch.bfloat16)
    assert "fp32" in lean.why_not_lean(half)


class Wrapped(torch.nn.Module):
    """What peft's LoRA does to a projection: the Linear inside something else."""

    def __init__(self, base):
        super().__init__()
        self.base = base

    def forward(self, x):
        return self.base(x) + 1.0


def test_a_projection_swapped_after_the_twin_was_made_turns_the_twin_off():
    model = qwen2()
    steps = a_workload(model.config.vocab_size)[:1]
    assert lean.lean_twin(model) is not None
    attention = model.model.layers[1].self_attn
    attention.v_proj = Wrapped(attention.v_proj)
    assert lean.lean_twin(model) is None
    fast, slow = both_ways(model, steps)  # both now go through transformers (and the wrapper)
    torch.testing.assert_close(fast[0], slow[0], atol=0, rtol=0)


def test_verifier_features_through_the_lean_forward_equal_transformers(engine, monkeypatch):
    """The trained verifiers read hidden states (layers 15, 22 and the last, after the final
    norm) and the response's log-probabilities; the lean forward gives what transformers
    gives, so a head trained on either scores the same."""
    from ponder.scorers import backbone as backbone_module

    backbone = backbone_module.Backbone(engine.model, engine.tokenizer, "smollm2-135m",
                                        layers=[0, 15, 22, 30], reads="answer")
    items = [([{"role": "user", "content": "What is 3 + 4?"}], "3 + 4 = 7.\nThe answer is 7."),
             ([{"role": "user", "content": "What is 12 + 5?"}], "12 + 5 is 17"),
             ("Count to three:", "one, two, three")]
    fast = backbone.features(items, steps=True)
    monkeypatch.setattr(backbone_module, "lean_twin", lambda model: None)
    slow = backbone.features(items, steps=True)
    for a, b in zip(fast, slow, strict=True):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, atol=2e-3, rtol=1e-4)


def test_making_the_twin_leaves_the_global_random_state_alone():
    model = qwen2()
    lean._TWINS.pop(model, None)
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    assert lean.lean_twin(model) is not None
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("name", ["packed_onednn_linear", "panel_linear"])
def test_stacked_weights_give_each_weights_product_and_follow_in_place_changes(name):
    if name not in KERNELS:
        pytest.skip(f"this torch or machine has no {name}")
    packed = type(KERNELS[name])(*([KERNELS[name].kernel] if name == "panel_linear" else []))
    g = torch.Generator().manual_seed(5)
    weights = [torch.randn(rows, 32, generator=g) for rows in (48, 16, 16)]
    biases = [torch.randn(48, generator=g), None, torch.randn(16, generator=g)]
    x = torch.randn(2, 3, 32, generator=g)
    with torch.inference_mode():
        outs = packed.many(x, weights, biases)
        for out, w, b in zip(outs, weights, biases, strict=True):
            torch.testing.assert_close(out, F.linear(x, w, b))
    with torch.no_grad():
        weights[1].mul_(2)  # in place, as load_state_dict writes
        biases[2].add_(1)
    with torch.inference_mode():
        outs = packed.many(x, weights, biases)
        for out, w, b in zip(outs, weights, biases, strict=True):
            torch.testing.assert_close(out, F.linear(x, w, b))
    # With autograd on, each weight alone through the plain call (no packed op has a backward).
    w = weights[0].clone().requires_grad_()
    first, _ = packed.many(x, [w, weights[1]], [None, None])
    first.sum().backward()
    torch.testing.assert_close(w.grad, x.sum((0, 1)).expand_as(w))
