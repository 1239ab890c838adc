"""The compiled decode loops (engines/decode_kernels.py, decode_attention.c, decode_glue.c,
sampling.c, panel_matmul.c, decode_layer.c): the same attention as torch's ops for every head size and grouping it has code
for, with masks, rows that read a shared prompt through another row, and cache views with
room after them; the residual add with RMSNorm, the SiLU gate, the sampling statistics and
a tempered draw as torch computes them; the panel matmul as F.linear; whole compiled layers
as the layer's calls one by one, following weights changed in place; a clear error for
tensors they have no code for; torch's path where they cannot be built; a decode step
through them equal to torch's path, hidden states included; and the engine samples the same
tokens with them as without."""

import os
import shutil
import subprocess
import sys

import pytest
import torch

from ponder import sampling
from ponder.engines import decode_kernels, lean
from ponder.engines import kv as kvlib
from ponder.types import GenerateRequest, SamplingParams

kernel = decode_kernels.load()
needs_kernel = pytest.mark.skipif(kernel is None, reason=f"not built: {decode_kernels.why_not()}")


def case(batch, kv_heads, groups, length, dim, seed=0, room=7):
    """Queries with strided rows (a slice of a wider projection, as the engine's are), and keys
    and values as views of buffers with `room` free columns after them."""
    g = torch.Generator().manual_seed(seed)
    wide = torch.randn(batch, (kv_heads * groups + 2 * kv_heads) * dim, generator=g)
    queries = wide[:, :kv_heads * groups * dim]
    keys, values = (torch.randn(batch, kv_heads, length + room, dim, generator=g)[:, :, :length]
                    for _ in range(2))
    return queries, keys, values


@needs_kernel
@pytest.mark.parametrize("dim", [64, 128])
@pytest.mark.parametrize("groups", [1, 3, 7, 8])
@pytest.mark.parametrize("length", [1, 15, 64, 100, 257])  # tails, one tile, several tiles
def test_the_loop_equals_torch_s_attention(dim, groups, length):
    queries, keys, values = case(5, 2, groups, length, dim, seed=length)
    with torch.inference_mode():
        got = kernel(queries, keys, values, dim ** -0.5)
        want = decode_kernels.reference(queries, keys, values, dim ** -0.5)
    torch.testing.assert_close(got, want, atol=2e-6, rtol=1e-5)


@needs_kernel
@pytest.mark.parametrize("dim, groups", [(64, 3), (128, 7)])
def test_the_step_rotates_and_writes_the_new_column_then_attends_as_torch_does(dim, groups):
    queries, keys, values = case(4, 2, groups, 70, dim, seed=dim)
    g = torch.Generator().manual_seed(1)
    new_keys, new_values = (torch.randn(4, 3 * 2 * dim, generator=g)[:, :2 * dim]
                            for _ in range(2))  # strided rows, as views of the projection
    cos, sin = (torch.randn(4, dim, generator=g) for _ in range(2))
    allowed = torch.ones(4, 70, dtype=torch.uint8)
    allowed[2, :9] = 0
    prefix_row, prefix_len = torch.tensor([0, 0, 2, 2]), torch.tensor([30, 30, 0, 0])
    ours_k, ours_v = keys.clone(), values.clone()
    with torch.inference_mode():
        got = kernel.step(queries, new_keys, new_values, cos, sin, ours_k, ours_v, 0.1, allowed,
                          prefix_row, prefix_len)
        want = decode_kernels.reference_step(queries, new_keys, new_values, cos, sin, keys,
                                               values, 0.1, allowed, prefix_row, prefix_len)
    torch.testing.assert_close(got, want, atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(ours_k, keys, atol=1e-6, rtol=1e-6)  # the column it wrote
    torch.testing.assert_close(ours_v, values, atol=0, rtol=0)
    assert not torch.equal(ours_k[:, :, -1], case(4, 2, groups, 70, dim, seed=dim)[1][:, :, -1])


@needs_kernel
def test_masked_columns_get_no_weight_and_a_fully_masked_row_stays_finite():
    queries, keys, values = case(4, 3, 3, 90, 64)
    allowed = torch.ones(4, 90, dtype=torch.uint8)
    allowed[0, :30] = 0  # left padding
    allowed[1, 40:70] = 0  # a hole
    allowed[2] = 0  # nothing to attend to: torch's path averages every column, finitely
    with torch.inference_mode():
        got = kernel(queries, keys, values, 0.125, allowed)
        want = decode_kernels.reference(queries, keys, values, 0.125, allowed)
        # what row 0 attends to without the masked columns at all
        alone = decode_kernels.reference(queries[:1], keys[:1, :, 30:], values[:1, :, 30:],
                                           0.125)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, want, atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(got[:1], alone, atol=2e-6, rtol=1e-5)


@needs_kernel
def test_rows_read_their_shared_prompt_through_their_run_s_first_row():
    queries, keys, values = case(6, 3, 3, 80, 64)
    # Rows 1-3 share their first 50 columns with row 1, rows 4-5 their first 20 with row 4;
    # their own copies hold garbage there, which the loop must not read.
    prefix_row = torch.tensor([0, 1, 1, 1, 4, 4])
    prefix_len = torch.tensor([0, 50, 50, 50, 20, 20])
    for row, columns in ((2, 50), (3, 50), (5, 20)):
        keys[row, :, :columns] = float("nan")
        values[row, :, :columns] = float("nan")
    allowed = torch.ones(6, 80, dtype=torch.uint8)
    allowed[4:, :5] = 0  # the second run's rows are left-padded alike
    with torch.inference_mode():
        got = kernel(queries, keys, values, 0.125, allowed, prefix_row, prefix_len)
        want = decode_kernels.reference(queries, keys, values, 0.125, allowed, prefix_row,
                                          prefix_len)
    assert torch.isfinite(want).all()
    torch.testing.assert_close(got, want, atol=2e-6, rtol=1e-5)


@needs_kernel
def test_supports_matches_the_c_file_and_other_layouts_are_refused_with_a_clear_error():
    for dim in (32, 64, 80, 128, 256):
        for groups in range(1, 11):
            queries, keys, values = case(2, 1, groups, 3, dim)
            out = torch.empty(2, groups * dim)
            status = kernel.function(
                queries.data_ptr(), queries.stride(0), keys.data_ptr(), *keys.stride()[:3],
                values.data_ptr(), *values.stride()[:3], None, None, None, out.data_ptr(), 2, 1,
                groups, 3, dim, 1.0)
            assert (status == 0) == kernel.supports(dim, groups), (dim, groups)
    queries, keys, values = case(2, 2, 3, 10, 64)
    for bad in ((queries, keys.double(), values),  # not fp32
                (queries, keys.transpose(-1, -2).contiguous().transpose(-1, -2), values),  # strided dims
                (queries[:, :64 * 5], keys, values),  # queries that are not heads x dim
                # rows that overlap (a row stride shorter than a row): the last would read
                # past the tensor
                (torch.randn(2 * 64 * 6).as_strided((2, 64 * 6), (64, 1)), keys, values)):
        with pytest.raises(ValueError, match="decode attention"):
            kernel(*bad, 0.125)
    with pytest.raises(ValueError, match="uint8 mask"):
        kernel(queries, keys, values, 0.125, torch.ones(2, 9, dtype=torch.uint8))


@needs_kernel
@pytest.mark.parametrize("rows", [1, 3, 64])  # 64 x 1536 floats run on the thread pool
@pytest.mark.parametrize("width", [16, 576, 1536])
def test_the_glue_adds_normalises_and_gates_as_torch_does(rows, width):
    g = torch.Generator().manual_seed(rows * width)
    x = torch.randn(rows, width, generator=g) * torch.logspace(-3, 2, rows).unsqueeze(1)
    wide = torch.randn(rows, 3 * width, generator=g) * 8  # strided rows, as views of a matmul
    delta, gate, up = wide[:, :width], wide[:, width:2 * width], wide[:, 2 * width:]
    gate[0, :16] = torch.tensor([-1e4, -100, -88, -87, -20, -1, -1e-30, 0, 1e-30, 1, 20, 87,
                                 88, 100, 1e4, -0.0])  # where e^-|g| underflows, and signs
    weight = torch.randn(width, generator=g)
    with torch.inference_mode():
        summed = x.clone()
        normed = kernel.add_rms_norm(summed, delta, weight, 1e-5)
        torch.testing.assert_close(summed, x + delta, rtol=0, atol=0)  # in place, exactly
        torch.testing.assert_close(normed, torch.rms_norm(x + delta, (width,), weight, 1e-5),
                                   rtol=1e-5, atol=1e-6)
        alone = x.clone()
        torch.testing.assert_close(kernel.add_rms_norm(alone, None, weight, 1e-5),
                                   torch.rms_norm(x, (width,), weight, 1e-5),
                                   rtol=1e-5, atol=1e-6)
        assert torch.equal(alone, x)  # nothing added
        torch.testing.assert_close(kernel.silu_mul(gate, up), torch.nn.functional.silu(gate) * up,
                                   rtol=1e-5, atol=1e-6)


@needs_kernel
def test_the_glue_refuses_widths_and_layouts_it_has_no_code_for():
    assert kernel.supports_widths(576, 1536) and not kernel.supports_widths(576, 1500)
    for width in (8, 24, 100):  # the C functions agree with supports_widths
        x, out = torch.randn(2, width), torch.empty(2, width)
        status = kernel.add_rms_norm_function(x.data_ptr(), width, None, 0,
                                              torch.ones(width).data_ptr(), 1e-5,
                                              out.data_ptr(), width, 2, width)
        assert status == -1
        assert kernel.silu_mul_function(x.data_ptr(), width, x.data_ptr(), width,
                                        out.data_ptr(), width, 2, width) == -1
    x = torch.randn(4, 32)
    for bad in ((x, torch.randn(4, 16)), (x.double(), None), (x.t().contiguous().t(), None),
                (torch.randn(4, 24), None), (torch.randn(4, 1, 32), None)):
        with pytest.raises(ValueError, match="add_rms_norm"):
            kernel.add_rms_norm(bad[0], bad[1], torch.ones(bad[0].shape[1]), 1e-5)
    with pytest.raises(ValueError, match="silu_mul"):
        kernel.silu_mul(x, torch.randn(4, 16))
    with pytest.raises(ValueError, match="silu_mul"):
        kernel.silu_mul(x[:, :8], x[:, 8:16])
    with pytest.raises(ValueError, match="silu_mul"):
        kernel.silu_mul(x.view(4, 1, 32), x.view(4, 1, 32))


needs_matmul = pytest.mark.skipif(kernel is None or not kernel.has_matmul,
                                  reason="no compiled matmul here (it needs AVX-512)")


@needs_matmul
@pytest.mark.parametrize("cols", [1, 31, 32, 33, 70, 960])  # a part-empty last panel
@pytest.mark.parametrize("bias", [False, True])
def test_the_panel_matmul_multiplies_as_f_linear_does(cols, bias):
    g = torch.Generator().manual_seed(cols)
    weight = torch.randn(cols, 100, generator=g)
    b = torch.randn(cols, generator=g) if bias else None
    panels = kernel.pack(weight)
    assert panels.shape == (-(-cols // 32), 100, 32)
    # Every block of 8, 4, 2 and 1 rows and their mixes, down the panel (1-8 rows, 161 on)
    # and by chunks (9-160: 96 of the depth of 100, then 4; groups of 64 rows, then the rest).
    for rows in [*range(1, 20), 64, 77, 160, 161]:
        x = torch.randn(rows, 103, generator=g)[:, :100]  # rows 103 floats apart
        torch.testing.assert_close(kernel.matmul(x, panels, cols, b),
                                   torch.nn.functional.linear(x, weight, b))
    empty = kernel.matmul(torch.empty(0, 100), panels, cols, b)
    assert empty.shape == (0, cols)


@needs_matmul
def test_a_row_of_the_panel_matmul_is_the_same_whatever_rows_share_the_call():
    """Bit for bit, down the panel or by chunks: a sample's numbers (and so its draws) must
    not depend on how many other samples share its decode step."""
    g = torch.Generator().manual_seed(7)
    weight, bias = torch.randn(70, 300, generator=g), torch.randn(70, generator=g)
    panels = kernel.pack(weight)
    x = torch.randn(200, 300, generator=g)
    alone = torch.cat([kernel.matmul(x[i:i + 1], panels, 70, bias) for i in range(200)])
    for rows in (2, 8, 9, 13, 32, 36, 64, 100, 160, 161, 200):
        assert torch.equal(kernel.matmul(x[:rows], panels, 70, bias), alone[:rows]), rows


@needs_matmul
def test_the_panel_matmul_refuses_layouts_it_has_no_code_for():
    weight = torch.randn(40, 16)
    panels, x = kernel.pack(weight), torch.randn(3, 16)
    wrong = [
        (x.t().contiguous().t(), panels, 40, None),  # columns not contiguous
        (x.double(), panels, 40, None),
        (x, panels, 70, None),  # the panels hold 40 columns, not 70
        (x, panels.transpose(1, 2), 40, None),
        (x, panels, 40, torch.randn(39)),
        (torch.randn(3, 17), panels, 40, None),  # depth differs from the panels'
        (x[None], panels, 40, None),
    ]
    for args in wrong:
        with pytest.raises(ValueError, match="panel matmul"):
            kernel.matmul(*args)


@needs_kernel
@pytest.mark.parametrize("scale", [0.01, 3.0, 30.0])
@pytest.mark.parametrize("vocab", [16, 1003, 49152])  # a tail after the last 16 columns
def test_the_compiled_softmax_stats_equal_torch_s(scale, vocab):
    g = torch.Generator().manual_seed(vocab)
    wide = torch.randn(5, vocab + 9, generator=g) * scale
    logits = wide[:, :vocab]  # rows that are not next to each other
    logits[0, 3] += 40  # a row with one token far above the rest
    with torch.inference_mode():
        got = kernel.softmax_stats(logits, sampling.CERTAINTY_LOGPROB_FLOOR)
        want = sampling.softmax_stats(logits)
    assert got is not None
    for ours, theirs in zip(got, want, strict=True):
        torch.testing.assert_close(ours, theirs, atol=2e-5, rtol=1e-5)


@needs_kernel
def test_the_compiled_softmax_stats_leave_other_rows_to_torch_s_path():
    """A NaN, an infinity, a token ruled out or below the floor in any row, other dtypes
    and strided columns: None (the caller then takes sampling.softmax_stats)."""
    floor = sampling.CERTAINTY_LOGPROB_FLOOR
    for value in (float("nan"), float("inf"), float("-inf"), -3000.0):
        logits = torch.randn(3, 100)
        logits[2, 40] = value
        assert kernel.softmax_stats(logits, floor) is None, value
    logits = torch.randn(3, 100)
    assert kernel.softmax_stats(logits.double(), floor) is None
    assert kernel.softmax_stats(logits.t().contiguous().t(), floor) is None
    assert kernel.softmax_stats(logits[0], floor) is None
    assert kernel.softmax_stats(logits, floor) is not None


@needs_kernel
@pytest.mark.parametrize("vocab", [7, 1003, 49152])  # within one block, tails, the model's
def test_the_compiled_tempered_draw_draws_what_torch_s_draws(vocab):
    """Every uniform of a fine grid and temperatures from near-greedy to flat: the same
    token (the float64 inverse CDF) and log q within fp32 rounding."""
    g = torch.Generator().manual_seed(vocab)
    logits = torch.randn(8, vocab + 5, generator=g)[:, :vocab] * 4  # strided rows
    logits[:, :3] += 10
    temperature = torch.tensor([0.05, 0.3, 0.7, 0.8, 1.0, 1.0, 1.5, 4.0])
    for step in range(40):
        uniforms = (torch.arange(8, dtype=torch.float64) + step / 40) / 8
        uniforms[0] = 1 - 2 ** -40 if step == 0 else uniforms[0]  # the float edge
        with torch.inference_mode():
            got = kernel.sample_tempered(logits, temperature, uniforms)
            want = sampling.sample_tempered(logits, temperature, uniforms)
        assert got is not None
        assert torch.equal(got[0], want[0]), step
        torch.testing.assert_close(got[1], want[1], rtol=1e-5, atol=1e-6)


@needs_kernel
def test_the_compiled_tempered_draw_leaves_other_rows_to_torch_s_path():
    uniforms = torch.full((3,), 0.5, dtype=torch.float64)
    temperature = torch.ones(3)
    for value in (float("nan"), float("inf"), float("-inf")):
        logits = torch.randn(3, 100)
        logits[1, 50] = value
        assert kernel.sample_tempered(logits, temperature, uniforms) is None, value
    logits = torch.randn(3, 100)
    assert kernel.sample_tempered(logits, torch.tensor([1.0, 0.0, 1.0]), uniforms) is None
    assert kernel.sample_tempered(logits.double(), temperature, uniforms) is None
    assert kernel.sample_tempered(logits.t().contiguous().t(), temperature, uniforms) is None
    assert kernel.sample_tempered(logits, torch.ones(2), uniforms) is None
    assert kernel.sample_tempered(logits, temperature, uniforms) is not None


def test_the_loop_is_built_where_a_c_compiler_and_gnu_openmp_are():
    """A loop that fails its own check falls back to torch silently; here that is a failure."""
    if not (shutil.which("cc") or shutil.which("gcc")) or not (
            decode_kernels._torch_runs_on_gnu_openmp()):
        pytest.skip("no C compiler or no GNU OpenMP here")
    if os.environ.get("PONDER_ATTENTION_KERNEL") == "0":
        pytest.skip("turned off by PONDER_ATTENTION_KERNEL=0")
    assert kernel is not None, decode_kernels.why_not()


def run_fresh(code, env):
    """`code` in a new interpreter (load() is cached per process)."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=120)


WHY = ("import torch\nfrom ponder.engines import decode_kernels as a\n"
       "print(a.load() is None, a.why_not())")


def test_torch_s_path_is_kept_where_the_loop_cannot_be_built(tmp_path):
    base = {**os.environ, "PONDER_HOME": str(tmp_path)}
    off = run_fresh(WHY, {**base, "PONDER_ATTENTION_KERNEL": "0"})
    assert off.stdout.strip() == "True turned off by PONDER_ATTENTION_KERNEL=0", off.stderr
    failing = run_fresh(WHY, {**base, "CC": "false"})
    assert failing.stdout.startswith("True the C compiler"), failing.stdout + failing.stderr
    assert not list(tmp_path.glob("kernels/*")), "a failed build leaves no file behind"


@needs_kernel
def test_the_library_is_built_once_and_reused(tmp_path):
    env = {**os.environ, "PONDER_HOME": str(tmp_path)}
    first = run_fresh(WHY, env)
    assert first.stdout.strip() == "False None", first.stderr
    [library] = tmp_path.glob("kernels/decode_kernels-*.so")
    built = library.stat().st_mtime_ns
    assert run_fresh(WHY, env).stdout.strip() == "False None"
    assert [library] == list(tmp_path.glob("kernels/*")) and library.stat().st_mtime_ns == built


def two_prompts(engine) -> kvlib.KVBatch:
    """Two prompts of different lengths prefilled side by side, left-padded."""
    prompts = [engine.tokenize("What is 3 + 4?"), engine.tokenize("Name a colour, please")]
    width = max(map(len, prompts))
    ids = torch.zeros(2, width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, p in enumerate(prompts):
        ids[row, width - len(p):], mask[row, width - len(p):] = torch.tensor(p), 1
    return kvlib.forward(engine.model, kvlib.KVBatch.empty(2, "cpu"), ids, mask)[1]


@needs_kernel
def test_decode_steps_with_the_loop_equal_torch_s_path_on_the_bundled_model(engine, monkeypatch):
    """Padded rows of two prompts, their samples sharing each prompt (kv.SharedRun)."""
    start = two_prompts(engine)

    def decode(load):
        monkeypatch.setattr(decode_kernels, "load", load)
        batch = start.select(torch.tensor([0, 0, 0, 1, 1]))
        assert batch.shared and not bool(batch.mask.all())
        out = []
        for token in (11, 12, 13):
            column = torch.full((batch.size, 1), token)
            logits, batch = kvlib.forward(engine.model, batch, column, torch.ones_like(column))
            out.append(logits)
        return torch.stack(out)

    used = []  # the compiled attention, called alone or inside a whole compiled layer
    real_step, real_layer = lean.DecodeStep.fused, decode_kernels.DecodeKernels.layer
    monkeypatch.setattr(lean.DecodeStep, "fused", lambda *a: used.append(1) or real_step(*a))
    monkeypatch.setattr(decode_kernels.DecodeKernels, "layer",
                        lambda *a: used.append(1) or real_layer(*a))
    with_loop = decode(lambda: kernel)
    assert used
    torch.testing.assert_close(with_loop, decode(lambda: None), atol=1e-4, rtol=1e-4)


@needs_kernel
@pytest.mark.parametrize("whole_layers", [True, False])
def test_a_decode_step_through_the_glue_equals_the_step_without_it_hidden_states_too(
        engine, monkeypatch, whole_layers):
    """The glue's path (lean._fused_decode: each layer one compiled call where the matmuls
    are ponder's panels, else call by call) against the lean forward's general loop with the
    same attention loop, on padded rows sharing prompts: logits, the new keys and values, and
    the hidden states of the embeddings, a middle layer and the last (after the final norm:
    x is added to in place there, so a kept state must be a copy)."""
    if whole_layers and lean.LeanForward._layer_plan(lean.lean_twin(engine.model),
                                                     kernel) is None:
        pytest.skip("the matmuls here are not ponder's panels (no AVX-512, or an Intel CPU)")
    if not whole_layers:
        monkeypatch.setattr(lean.LeanForward, "_layer_plan", lambda self, kernel: None)
    start = two_prompts(engine)
    layers = engine.model.config.num_hidden_layers
    real_call, states = lean.LeanForward.__call__, []

    def with_hidden(self, *args, **kwargs):
        logits, caches, hidden = real_call(self, *args, **kwargs, hidden=(0, 7, layers))
        states.append(hidden)
        return logits, caches, hidden

    monkeypatch.setattr(lean.LeanForward, "__call__", with_hidden)

    def decode(glue):
        monkeypatch.setattr(lean.LeanForward, "_glue", lambda self, kernel: glue)
        batch = start.select(torch.tensor([0, 0, 1]))
        column = torch.full((batch.size, 1), 11)
        logits, batch = kvlib.forward(engine.model, batch, column, torch.ones_like(column))
        return logits, [t[:, :, -1].clone() for layer in batch.kv for t in layer], states[-1]

    used, real_fused = [], lean.LeanForward._fused_decode
    monkeypatch.setattr(lean.LeanForward, "_fused_decode",
                        lambda *a: used.append(1) or real_fused(*a))
    glued, plain = decode(True), decode(False)
    assert used == [1]
    for ours, theirs in zip((glued[0], *glued[1], *glued[2]), (plain[0], *plain[1], *plain[2]),
                            strict=True):
        torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)


@needs_kernel
def test_the_engine_samples_the_same_tokens_with_the_loop_as_without(engine, monkeypatch):
    requests = [GenerateRequest([{"role": "user", "content": p}],
                                SamplingParams(n=n, temperature=0.8, top_p=0.95, max_tokens=24,
                                               seed=5))
                for p, n in (("What is 17 + 26? Think step by step.", 5), ("Say hello.", 1))]
    with_loop = engine.generate(requests)
    monkeypatch.setattr(decode_kernels, "load", lambda: None)
    without = engine.generate(requests)
    for a, b in zip(with_loop, without, strict=True):
        assert [c.token_ids for c in a.completions] == [c.token_ids for c in b.completions]


def tiny_qwen2():
    """A random Qwen2 (q/k/v biases, 64 dims a head, 2 query heads a key/value head)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(
        vocab_size=101, hidden_size=256, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        tie_word_embeddings=False)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.5)
    return model


def panel_twin():
    """tiny_qwen2 and its lean twin, where the twin's matmuls are ponder's panels."""
    model = tiny_qwen2()
    twin = lean.lean_twin(model)
    if not isinstance(twin.linear, lean.PanelLinear):
        pytest.skip("the matmuls here are not ponder's panels (an Intel CPU)")
    return model, twin


@needs_matmul
def test_whole_compiled_layers_follow_weights_changed_in_place():
    model, twin = panel_twin()
    ids = torch.randint(3, 101, (3, 6), generator=torch.Generator().manual_seed(0))

    def step():
        _, batch = kvlib.forward(model, kvlib.KVBatch.empty(3, "cpu"), ids, torch.ones_like(ids))
        column = torch.full((3, 1), 7)
        return kvlib.forward(model, batch, column, torch.ones_like(column))[0]

    with torch.inference_mode():
        before = step()
    first_plan = twin.plan[1]
    with torch.no_grad():  # in place, as load_state_dict writes
        model.model.layers[1].mlp.down_proj.weight.mul_(3)
        model.model.layers[0].self_attn.q_proj.bias.add_(1)
    with torch.inference_mode():
        after = step()
        assert twin.plan[1] is not first_plan  # remade from the changed weights
        lean._TWINS[model] = None  # transformers' forward, for the reference
        want = step()
    assert not torch.allclose(before, after, atol=1e-3)
    torch.testing.assert_close(after, want, atol=1e-4, rtol=1e-4)


@needs_matmul
def test_a_compiled_layer_refuses_shapes_it_was_not_planned_for():
    _, twin = panel_twin()
    with torch.inference_mode():
        plan = twin._layer_plan(kernel)
    weights, shape = plan[0], plan[0].shape
    qkv, o, gate_up, down, norm, next_norm = weights.tensors
    with pytest.raises(ValueError, match="decode layer"):  # o's panels where q/k/v's belong
        kernel.layer_weights(o, o, gate_up, down, norm, next_norm, shape)
    with pytest.raises(ValueError, match="decode layer"):
        kernel.layer_weights(qkv, o, gate_up, down, (torch.ones(3), 1e-6), next_norm, shape)
    x, rotary = torch.randn(2, 256), torch.randn(2, 64)
    with pytest.raises(ValueError, match="decode layer"):  # rows not contiguous
        kernel.layer_step(x.t().contiguous().t(), rotary, rotary, 5, 0.125, shape)
    with pytest.raises(ValueError, match="decode layer"):  # a mask of another length
        kernel.layer_step(x, rotary, rotary, 5, 0.125, shape, torch.ones(2, 4, dtype=torch.uint8))
    step = kernel.layer_step(x, rotary, rotary, 5, 0.125, shape)
    keys = torch.zeros(2, 2, 6, 64)
    with pytest.raises(ValueError, match="decode layer"):  # 6 columns, not the step's 5
        kernel.layer(step, weights, torch.randn(2, 256), keys, keys.clone())
    with pytest.raises(ValueError, match="decode layer"):
        kernel.layer(step, weights, torch.randn(3, 256), keys[:, :, :5], keys[:, :, :5])
