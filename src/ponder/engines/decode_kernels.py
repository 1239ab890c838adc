"""The native engine's compiled decode loops, built on first use with this machine's C
compiler and loaded through ctypes: attention as one loop (decode_attention.c); the
residual add with its RMSNorm and the MLP's SiLU gate (decode_glue.c), the steps between a
decode step's matmuls; the sampling statistics and the tempered draw of the decode loop
(sampling.c); on AVX-512 machines, the matmuls themselves, on weights packed into panels
(panel_matmul.c, used by lean.PanelLinear for every row count, prefills too); and, where
those are the matmuls, a whole decoder layer of a decode step as one call of them all
(decode_layer.c: layer_weights once, layer_step once a step, layer once a layer).

Why the attention: in a batched decode step the cached keys and values come from memory,
not cache (the weights streamed since have evicted them), and torch's batched matmuls, one
small product per (row, key/value head), read them at about a third of the memory's
bandwidth. On a 2-core AMD EPYC (2026-12-05; the bundled model's 3 key/value heads x 3
query heads, 64 dims, caches flushed first): 16 rows x 100 columns 75-86 against 176-180 us
a layer, 64 x 173 414-487 against 866-990 us; reading the same bytes with a sum took 75-84
and 354-446. See decode_attention.c for how. Why the others: see their files.

Where they are not used (`why_not` says why): no C compiler, a torch whose threads are not
GNU OpenMP's (the loops would bring a second thread pool), a build or self-check that
fails, `PONDER_ATTENTION_KERNEL=0` (which turns all of them off, the matmul too), or a
model whose head size is not 64 or 128, that has more than 8 query heads per key/value
head, or whose hidden or MLP width is not a multiple of 16. The lean forward then runs
torch's ops, as before.

The built library lives under ponder's cache (models.ponder_home()/kernels), named by a
hash of the sources, the flags, the compiler and this CPU, so a machine with another CPU or
compiler builds its own; it is written to a temporary file and renamed, so processes that
build at once do not see half a file.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import math
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import NamedTuple

import torch

from ponder.engines.cpu import cpu_info

SOURCES = tuple(Path(__file__).with_name(name) for name in (
    "decode_attention.c", "decode_glue.c", "sampling.c", "panel_matmul.c", "decode_layer.c"))
HEADERS = (Path(__file__).with_name("simd.h"),)  # included by the sources
FLAGS = ("-O3", "-march=native", "-fopenmp", "-shared", "-fPIC")
DIMS = frozenset({64, 128})
MAX_GROUPS = 8
SYMBOLS = ("ponder_decode_attention", "ponder_decode_step", "ponder_add_rms_norm",
           "ponder_silu_mul", "ponder_softmax_stats", "ponder_sample_tempered",
           "ponder_panel_matmul", "ponder_decode_layer")
PANEL = 32  # columns a panel of packed weights holds (panel_matmul.c)


class DecodeKernels:
    """The loaded functions, called with tensors they check first (a wrong layout must raise,
    not read outside them)."""

    def __init__(self, function, step_function, add_rms_norm_function, silu_mul_function,
                 softmax_stats_function, sample_tempered_function, panel_matmul_function,
                 layer_function):
        self.function, self.step_function = function, step_function
        self.panel_matmul_function, self.layer_function = panel_matmul_function, layer_function
        # panel_matmul.c has code only where the library was built for AVX-512
        self.has_matmul = panel_matmul_function(None, 0, None, None, None, 0, 0, 0, 0) == 0
        self.add_rms_norm_function = add_rms_norm_function
        self.silu_mul_function = silu_mul_function
        self.softmax_stats_function = softmax_stats_function
        self.sample_tempered_function = sample_tempered_function

    @staticmethod
    def supports(head_dim: int, groups: int) -> bool:
        """Whether the loop has code for this head size and number of query heads per
        key/value head."""
        return head_dim in DIMS and 1 <= groups <= MAX_GROUPS

    def __call__(self, queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                 scale: float, allowed: torch.Tensor | None = None,
                 prefix_row: torch.Tensor | None = None,
                 prefix_len: torch.Tensor | None = None) -> torch.Tensor:
        """queries [batch, heads * dim] (rows may be strided; heads contiguous), rotated; keys
        and values [batch, kv_heads, length, dim]; allowed: uint8 [batch, length] contiguous,
        0 = masked; prefix_row, prefix_len: int64 [batch], row b reads its first
        prefix_len[b] columns from row prefix_row[b]. Returns the attended values [batch,
        heads * dim]."""
        out, shape = self._checked(queries, keys, values, allowed, prefix_row, prefix_len)
        status = self.function(
            queries.data_ptr(), queries.stride(0), keys.data_ptr(), *keys.stride()[:3],
            values.data_ptr(), *values.stride()[:3], *_pointers(prefix_row, prefix_len, allowed),
            out.data_ptr(), *shape, scale)
        return _done(status, out)

    def step(self, queries: torch.Tensor, new_keys: torch.Tensor, new_values: torch.Tensor,
             cos: torch.Tensor, signed_sin: torch.Tensor, keys: torch.Tensor,
             values: torch.Tensor, scale: float, allowed: torch.Tensor | None = None,
             prefix_row: torch.Tensor | None = None,
             prefix_len: torch.Tensor | None = None) -> torch.Tensor:
        """The same, from a step's projections as they come: the queries and `new_keys`
        [batch, kv_heads * dim] (rows may be strided) are rotated here by `cos` and
        `signed_sin` [batch, dim] (lean.LeanForward._rotate's convention), and the rotated
        keys and `new_values` are written into the last column of `keys` and `values` (views
        that end at the step's column, not yet written) before attention reads them."""
        out, shape = self._checked(queries, keys, values, allowed, prefix_row, prefix_len)
        batch, kv_heads, _, dim = keys.shape
        if not (new_keys.shape == (batch, kv_heads * dim) and _rows_of(new_keys, kv_heads * dim)
                and new_values.shape == (batch, kv_heads * dim)
                and _rows_of(new_values, kv_heads * dim)
                and cos.shape == (batch, dim) and _floats(cos) and cos.is_contiguous()
                and signed_sin.shape == (batch, dim) and _floats(signed_sin)
                and signed_sin.is_contiguous()):
            raise ValueError("decode attention: new keys and values [batch, kv_heads*dim] and "
                             "cos, sin [batch, dim] in CPU fp32")
        status = self.step_function(
            queries.data_ptr(), queries.stride(0), new_keys.data_ptr(), new_keys.stride(0),
            new_values.data_ptr(), new_values.stride(0), cos.data_ptr(), signed_sin.data_ptr(),
            keys.data_ptr(), *keys.stride()[:3], values.data_ptr(), *values.stride()[:3],
            *_pointers(prefix_row, prefix_len, allowed), out.data_ptr(), *shape, scale)
        return _done(status, out)

    @staticmethod
    def supports_widths(*widths: int) -> bool:
        """Whether the glue loops have code for rows of these widths (multiples of 16)."""
        return all(width % 16 == 0 for width in widths)

    def add_rms_norm(self, x: torch.Tensor, delta: torch.Tensor | None, weight: torch.Tensor,
                     eps: float) -> torch.Tensor:
        """`x` += `delta` in place (None: nothing added), then torch.rms_norm(x, weight, eps)
        as a new tensor. x, delta: [rows, width] with contiguous rows; weight: [width]."""
        rows, width = x.shape if x.dim() == 2 else (0, 1)  # (0, 1): refused just below
        if not (rows and _rows_of(x, width) and (delta is None or (
                delta.shape == x.shape and _rows_of(delta, width)))
                and weight.shape == (width,) and _rows_of(weight, width)
                and width % 16 == 0):  # supports_widths, inline: this runs 61 times a step
            raise ValueError("add_rms_norm: x and delta [rows, width] with contiguous rows, "
                             f"weight [width], CPU fp32, width a multiple of 16; got x "
                             f"{tuple(x.shape)}, weight {tuple(weight.shape)}")
        out = x.new_empty(rows, width)
        status = self.add_rms_norm_function(
            x.data_ptr(), x.stride(0), None if delta is None else delta.data_ptr(),
            0 if delta is None else delta.stride(0), weight.data_ptr(), eps, out.data_ptr(),
            width, rows, width)
        return _done(status, out)

    def silu_mul(self, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        """F.silu(gate) * up as a new tensor; gate, up: [rows, width] with contiguous rows
        (views of one stacked projection, say)."""
        rows, width = gate.shape if gate.dim() == 2 else (0, 1)  # (0, 1): refused below
        if not (rows and up.shape == gate.shape and _rows_of(gate, width)
                and _rows_of(up, width)
                and width % 16 == 0):  # supports_widths, inline: this runs 30 times a step
            raise ValueError("silu_mul: gate and up [rows, width] with contiguous rows, CPU "
                             f"fp32, width a multiple of 16; got {tuple(gate.shape)}, "
                             f"{tuple(up.shape)}")
        out = gate.new_empty(rows, width)
        status = self.silu_mul_function(gate.data_ptr(), gate.stride(0), up.data_ptr(),
                                        up.stride(0), out.data_ptr(), width, rows, width)
        return _done(status, out)

    def softmax_stats(self, logits: torch.Tensor, floor: float
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """sampling.softmax_stats of [rows, vocab] CPU fp32 logits with contiguous rows: log
        Z, entropy and self-certainty per row; None for other logits, or when a row has a
        logit that is not finite or a token below `floor` (that function's
        CERTAINTY_LOGPROB_FLOOR; its torch path handles those)."""
        if not (logits.dim() == 2 and _rows_of(logits, logits.shape[1])):
            return None
        rows, vocab = logits.shape
        out = logits.new_empty(3, rows)
        refused = self.softmax_stats_function(
            logits.data_ptr(), logits.stride(0), rows, vocab, floor, out[0].data_ptr(),
            out[1].data_ptr(), out[2].data_ptr())
        return None if refused else (out[0], out[1], out[2])

    def sample_tempered(self, logits: torch.Tensor, temperature: torch.Tensor,
                        uniforms: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """sampling.sample_tempered of [rows, vocab] CPU fp32 logits with contiguous rows, a
        temperature (> 0) and a float64 uniform per row: the tokens and their log q. None for
        other inputs, or when a row has a logit that is not finite (that function's torch
        path, or the general one, handles those)."""
        if not (logits.dim() == 2 and _rows_of(logits, logits.shape[1])):
            return None
        rows, vocab = logits.shape
        temperature = temperature.to(torch.float32).reshape(-1).contiguous()
        uniforms = uniforms.to(torch.float64).reshape(-1).contiguous()
        if temperature.shape != (rows,) or uniforms.shape != (rows,) or not bool(
                (temperature > 0).all()):
            return None
        tokens = torch.empty(rows, dtype=torch.long)
        log_q = logits.new_empty(rows)
        refused = self.sample_tempered_function(
            logits.data_ptr(), logits.stride(0), rows, vocab, temperature.data_ptr(),
            uniforms.data_ptr(), tokens.data_ptr(), log_q.data_ptr())
        return None if refused else (tokens, log_q)

    @staticmethod
    def pack(weight: torch.Tensor) -> torch.Tensor:
        """A [cols, depth] weight as matmul's panels: [ceil(cols / 32), depth, 32], the last
        panel's missing columns zero."""
        cols, depth = weight.shape
        count = -(-cols // PANEL)
        padded = torch.nn.functional.pad(weight, (0, 0, 0, count * PANEL - cols))
        return padded.view(count, PANEL, depth).transpose(1, 2).contiguous()

    def matmul(self, x: torch.Tensor, panels: torch.Tensor, cols: int,
               bias: torch.Tensor | None = None) -> torch.Tensor:
        """x [rows, depth] (contiguous rows, any row stride) times the weight `panels` holds
        (pack), plus `bias` [cols]: F.linear(x, weight, bias), a new [rows, cols] tensor."""
        rows, depth = x.shape if x.dim() == 2 else (0, 0)
        count = -(-cols // PANEL)
        if not (x.dim() == 2 and _rows_of(x, depth) and _floats(panels)
                and panels.shape == (count, depth, PANEL) and panels.is_contiguous()
                and (bias is None or (bias.shape == (cols,) and _rows_of(bias, cols)))):
            raise ValueError(
                "panel matmul: x [rows, depth] with contiguous rows, panels [ceil(cols/32), "
                f"depth, 32] contiguous, bias [cols], CPU fp32; got x {tuple(x.shape)}, "
                f"panels {tuple(panels.shape)}, cols {cols}")
        out = x.new_empty(rows, cols)
        status = self.panel_matmul_function(
            x.data_ptr(), x.stride(0), panels.data_ptr(),
            None if bias is None else bias.data_ptr(), out.data_ptr(), cols, rows, cols, depth)
        if status != 0:
            raise ValueError("no compiled matmul here (it needs AVX-512): see has_matmul")
        return out

    def layer_weights(self, qkv: tuple[torch.Tensor, torch.Tensor | None],
                      o: tuple[torch.Tensor, torch.Tensor | None],
                      gate_up: tuple[torch.Tensor, torch.Tensor | None],
                      down: tuple[torch.Tensor, torch.Tensor | None],
                      norm: tuple[torch.Tensor, float], next_norm: tuple[torch.Tensor, float],
                      shape: LayerShape) -> LayerWeights:
        """A decoder layer's weights for `layer`: each projection as (panels, stacked bias or
        None), q/k/v stacked and gate/up stacked, as pack makes them; the norm after
        attention and the one after the MLP as (weight, epsilon). Checked here, once."""
        hidden, inter, q_width, kv_width = (shape.hidden, shape.inter, shape.q_width,
                                            shape.kv_width)
        wanted = ((qkv, q_width + 2 * kv_width, hidden), (o, hidden, q_width),
                  (gate_up, 2 * inter, hidden), (down, hidden, inter))
        for (panels, bias), cols, depth in wanted:
            if not (_floats(panels) and panels.is_contiguous()
                    and panels.shape == (-(-cols // PANEL), depth, PANEL)
                    and (bias is None or (bias.shape == (cols,) and _rows_of(bias, cols)))):
                raise ValueError(f"decode layer: panels for {cols} x {depth} weights expected, "
                                 f"got {tuple(panels.shape)}")
        for weight, _ in (norm, next_norm):
            if not (weight.shape == (hidden,) and _rows_of(weight, hidden)):
                raise ValueError("decode layer: norm weights [hidden] in CPU fp32")
        pointers = [t.data_ptr() if t is not None else None
                    for pair in (qkv, o, gate_up, down) for t in pair]
        struct = _Layer(*pointers, norm[0].data_ptr(), next_norm[0].data_ptr(), norm[1],
                        next_norm[1])
        return LayerWeights(struct, ctypes.addressof(struct),
                            (qkv, o, gate_up, down, norm, next_norm), shape)

    def layer_step(self, x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor,
                   length: int, scale: float, shape: LayerShape,
                   allowed: torch.Tensor | None = None, prefix_row: torch.Tensor | None = None,
                   prefix_len: torch.Tensor | None = None) -> LayerStep:
        """What every `layer` call of one decode step shares: the residual rows `x` [batch,
        hidden] (contiguous; updated in place), cos and sin [batch, dim] (as step takes
        them), the cache's length with the step's column, and scratch rows."""
        batch, hidden = x.shape if x.dim() == 2 else (0, 0)
        if not (hidden == shape.hidden and x.is_contiguous() and _floats(x)
                and cos.shape == signed_sin.shape == (batch, shape.dim) and _floats(cos)
                and cos.is_contiguous() and _floats(signed_sin) and signed_sin.is_contiguous()
                and _extras(allowed, prefix_row, prefix_len, batch, length)
                and self.supports(shape.dim, shape.groups)):
            raise ValueError(f"decode layer: x [batch, {shape.hidden}] contiguous, cos and sin "
                             f"[batch, {shape.dim}], uint8 mask [batch, length], int64 "
                             f"prefixes [batch], CPU fp32; got x {tuple(x.shape)}")
        scratch = [x.new_empty(batch, width) for width in (
            shape.q_width + 2 * shape.kv_width, shape.q_width, hidden, hidden, 2 * shape.inter,
            shape.inter)]
        struct = _Step(batch, hidden, shape.inter, shape.kv_heads, shape.groups, shape.dim,
                       length, scale, x.data_ptr(), cos.data_ptr(), signed_sin.data_ptr(),
                       *_pointers(prefix_row, prefix_len, allowed),
                       *(t.data_ptr() for t in scratch))
        return LayerStep(struct, ctypes.addressof(struct),
                         (x, cos, signed_sin, allowed, prefix_row, prefix_len, scratch), length)

    def layer(self, step: LayerStep, weights: LayerWeights, h: torch.Tensor,
              keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """One decoder layer of `step` on `h` (the normed residual [batch, hidden]): the
        attention writes the step's column of `keys` and `values` ([batch, kv_heads,
        length, dim] views ending at it), the residual is updated in place, and the next
        normed residual is returned (lean.LeanForward._fused_decode's loop body)."""
        shape, x = weights.shape, step.tensors[0]
        if not (h.shape == x.shape and h.is_contiguous() and _floats(h)
                and keys.shape == values.shape == (x.shape[0], shape.kv_heads, step.length,
                                                   shape.dim)
                and _floats(keys) and _floats(values)):
            raise ValueError(f"decode layer: h {tuple(x.shape)} contiguous and keys, values "
                             f"[batch, {shape.kv_heads}, {step.length}, {shape.dim}]; got h "
                             f"{tuple(h.shape)}, keys {tuple(keys.shape)}")
        out = h.new_empty(h.shape)
        status = self.layer_function(step.address, weights.address,
                                     h.data_ptr(), out.data_ptr(), keys.data_ptr(),
                                     *keys.stride()[:3], values.data_ptr(),
                                     *values.stride()[:3])
        if status != 0:
            raise ValueError("decode layer: no compiled code for this shape")
        return out

    def _checked(self, queries, keys, values, allowed, prefix_row, prefix_len):
        """The output tensor and (batch, kv_heads, groups, length, dim), or ValueError for
        tensors the loop would read wrongly or outside of."""
        batch, kv_heads, length, dim = keys.shape
        groups = queries.shape[-1] // (kv_heads * dim)
        # Spelled out, not looped over: this runs once a layer and decode step.
        if not (self.supports(dim, groups) and queries.shape[-1] == kv_heads * groups * dim
                and _rows_of(queries, queries.shape[-1]) and _floats(keys) and _floats(values)
                and values.shape == keys.shape and queries.shape[0] == batch
                and _extras(allowed, prefix_row, prefix_len, batch, length)):
            raise ValueError(
                "decode attention: queries [batch, heads*dim] and keys/values [batch, kv_heads, "
                "length, 64 or 128] in CPU fp32 with contiguous last dims, at most "
                f"{MAX_GROUPS} query heads per key/value head, uint8 mask [batch, length], "
                f"int64 prefixes [batch]; got queries {tuple(queries.shape)}, keys "
                f"{tuple(keys.shape)}")
        out = queries.new_empty(batch, kv_heads * groups * dim)
        return out, (batch, kv_heads, groups, length, dim)


class LayerShape(NamedTuple):
    """A decoder layer's widths: hidden, MLP, head size, key/value heads, query heads a
    key/value head."""

    hidden: int
    inter: int
    dim: int
    kv_heads: int
    groups: int

    @property
    def q_width(self) -> int:
        return self.kv_heads * self.groups * self.dim

    @property
    def kv_width(self) -> int:
        return self.kv_heads * self.dim


class _Layer(ctypes.Structure):  # decode_layer.c's struct layer
    _fields_ = [(name, ctypes.c_void_p) for name in (
        "qkv", "qkv_bias", "o", "o_bias", "gate_up", "gate_up_bias", "down", "down_bias",
        "norm", "next_norm")] + [("norm_eps", ctypes.c_float), ("next_eps", ctypes.c_float)]


class _Step(ctypes.Structure):  # decode_layer.c's struct step
    _fields_ = [("batch", ctypes.c_long), ("hidden", ctypes.c_long), ("inter", ctypes.c_long),
                ("kv_heads", ctypes.c_int), ("groups", ctypes.c_int), ("dim", ctypes.c_int),
                ("length", ctypes.c_int), ("scale", ctypes.c_float)] + [
        (name, ctypes.c_void_p) for name in (
            "x", "cos", "sin", "prefix_row", "prefix_len", "allowed", "qkv", "attended",
            "projected", "normed", "gate_up", "gated")]


class LayerWeights(NamedTuple):
    struct: _Layer
    address: int
    tensors: tuple  # what the struct points into, kept alive with it
    shape: LayerShape


class LayerStep(NamedTuple):
    struct: _Step
    address: int
    tensors: tuple  # what the struct points into, kept alive with it
    length: int


def _floats(t: torch.Tensor) -> bool:
    """t is CPU fp32 with a contiguous last dimension."""
    return t.dtype is torch.float32 and t.is_cpu and t.stride(-1) == 1


def _indices(t: torch.Tensor, batch: int) -> bool:
    """t is a contiguous CPU int64 vector of `batch` entries."""
    return t.dtype is torch.long and t.is_cpu and t.shape == (batch,) and t.is_contiguous()


def _extras(allowed: torch.Tensor | None, prefix_row: torch.Tensor | None,
            prefix_len: torch.Tensor | None, batch: int, length: int) -> bool:
    """The attention's optional inputs are as the loop reads them: a contiguous uint8 mask
    [batch, length], int64 shared-prompt rows and lengths [batch] (each may be None)."""
    return ((allowed is None or (allowed.dtype is torch.uint8 and allowed.is_cpu
                                 and allowed.shape == (batch, length)
                                 and allowed.is_contiguous()))
            and (prefix_row is None or _indices(prefix_row, batch))
            and (prefix_len is None or _indices(prefix_len, batch)))


def _rows_of(t: torch.Tensor, width: int) -> bool:
    """t is CPU fp32 with rows of `width` contiguous floats, a row stride at least that."""
    return _floats(t) and (t.dim() == 1 or t.stride(0) >= width)


def _pointers(*tensors: torch.Tensor | None) -> list[int | None]:
    return [None if t is None else t.data_ptr() for t in tensors]


def _done(status: int, out: torch.Tensor) -> torch.Tensor:
    if status != 0:  # supports() and supports_widths() agree with the C files (tested)
        raise ValueError("no compiled code for this head size, grouping or width")
    return out


_why_not: str | None = None


def why_not() -> str | None:
    """Why the decode step runs torch's ops instead of the compiled loops (None: it runs
    them)."""
    load()
    return _why_not


@functools.cache
def load() -> DecodeKernels | None:
    """The compiled loops, built (once per machine) and checked on first use; None where
    they cannot be had (why_not() says why)."""
    global _why_not
    try:
        kernel = _load()
    except _Unavailable as reason:
        _why_not = str(reason)
        return None
    _why_not = None
    return kernel


class _Unavailable(Exception):
    pass


def _load() -> DecodeKernels:
    if os.environ.get("PONDER_ATTENTION_KERNEL", "1") == "0":
        raise _Unavailable("turned off by PONDER_ATTENTION_KERNEL=0")
    if not _torch_runs_on_gnu_openmp():
        raise _Unavailable("torch here does not run its threads on GNU OpenMP (libgomp)")
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not compiler:
        raise _Unavailable("no C compiler (cc or gcc, or $CC) on this machine")
    library = _build(compiler)
    try:
        loaded = ctypes.CDLL(str(library))
        function, step_function, add_rms_norm, silu_mul, stats, tempered, matmul, layer = (
            getattr(loaded, name) for name in SYMBOLS)
    except (OSError, AttributeError) as error:
        raise _Unavailable(f"the built library did not load: {error}") from error
    p, i, n = ctypes.c_void_p, ctypes.c_int, ctypes.c_long
    cache = [p, n, n, n] * 2  # keys, values: pointer and three strides
    tail = [p, p, p, p, i, i, i, i, i, ctypes.c_float]  # prefixes, mask, out, shape, scale
    function.argtypes = [p, n, *cache, *tail]
    step_function.argtypes = [p, n, p, n, p, n, p, p, *cache, *tail]
    add_rms_norm.argtypes = [p, n, p, n, p, ctypes.c_float, p, n, n, i]
    silu_mul.argtypes = [p, n, p, n, p, n, n, i]
    stats.argtypes = [p, n, n, n, ctypes.c_float, p, p, p]
    tempered.argtypes = [p, n, n, n, p, p, p, p]
    matmul.argtypes = [p, n, p, p, p, n, n, n, n]
    layer.argtypes = [p, p, p, p, p, n, n, n, p, n, n, n]
    for f in (function, step_function, add_rms_norm, silu_mul, stats, tempered, matmul, layer):
        f.restype = ctypes.c_int
    kernel = DecodeKernels(function, step_function, add_rms_norm, silu_mul, stats, tempered,
                           matmul, layer)
    if not _agrees_with_torch(kernel):
        raise _Unavailable("the built loop's results differ from torch's")
    return kernel


def _torch_runs_on_gnu_openmp() -> bool:
    """torch's own libgomp is in this process (so the library's libgomp.so.1 is that one and
    its threads are torch's)."""
    try:
        with open("/proc/self/maps") as maps:
            return any("libgomp" in line for line in maps)
    except OSError:
        return False


def _build(compiler: str) -> Path:
    from ponder.models import ponder_home

    sources = b"\0".join(path.read_bytes() for path in (*SOURCES, *HEADERS))
    try:
        version = subprocess.run([compiler, "--version"], capture_output=True, text=True,
                                 timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as error:
        raise _Unavailable(f"the C compiler {compiler!r} did not run: {error}") from error
    key = hashlib.sha256(b"\0".join(s.encode() if isinstance(s, str) else s for s in (
        sources, " ".join(FLAGS), compiler, version, platform.machine(),
        cpu_info("model name"), cpu_info("flags")))).hexdigest()[:16]
    folder = ponder_home() / "kernels"
    names = " and ".join(path.name for path in SOURCES)
    library = folder / f"decode_kernels-{key}.so"
    if library.exists():
        return library
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(suffix=".so", dir=folder)
        os.close(handle)
    except OSError as error:
        raise _Unavailable(f"cannot write to {folder}: {error}") from error
    try:
        result = subprocess.run([compiler, *FLAGS, *map(str, SOURCES), "-o", temporary, "-lm"],
                                capture_output=True, text=True, timeout=300)
        if result.returncode != 0:
            first = (result.stderr.strip().splitlines() or ["(no message)"])[0]
            raise _Unavailable(f"the C compiler failed on {names}: {first}")
        os.replace(temporary, library)
    except (OSError, subprocess.SubprocessError) as error:
        raise _Unavailable(f"building {names} failed: {error}") from error
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return library


def reference(queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, scale: float,
              allowed: torch.Tensor | None = None, prefix_row: torch.Tensor | None = None,
              prefix_len: torch.Tensor | None = None) -> torch.Tensor:
    """What DecodeKernels.__call__ computes, with torch's ops (for checks and tests)."""
    batch, kv_heads, length, dim = keys.shape
    if prefix_row is not None:  # each row's first columns come from its prefix row
        columns = torch.arange(length)
        own = (columns[None, :] >= prefix_len[:, None])[:, None, :, None]
        keys = torch.where(own, keys, keys[prefix_row])
        values = torch.where(own, values, values[prefix_row])
    grouped = queries.reshape(batch, kv_heads, -1, dim) * scale
    scores = torch.matmul(grouped, keys.transpose(-1, -2))
    if allowed is not None:
        scores = scores.masked_fill(~allowed.bool()[:, None, None, :],
                                    torch.finfo(scores.dtype).min)
    return torch.matmul(torch.softmax(scores, dim=-1), values).reshape(batch, -1)


def reference_step(queries: torch.Tensor, new_keys: torch.Tensor, new_values: torch.Tensor,
                   cos: torch.Tensor, signed_sin: torch.Tensor, keys: torch.Tensor,
                   values: torch.Tensor, scale: float, allowed: torch.Tensor | None = None,
                   prefix_row: torch.Tensor | None = None,
                   prefix_len: torch.Tensor | None = None) -> torch.Tensor:
    """What DecodeKernels.step computes (writing the last column of keys and values, as it
    does), with torch's ops."""
    batch, kv_heads, _, dim = keys.shape

    def rotate(x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(batch, -1, dim)
        return x * cos[:, None] + x.roll(dim // 2, dims=-1) * signed_sin[:, None]

    keys[:, :, -1] = rotate(new_keys)
    values[:, :, -1] = new_values.reshape(batch, kv_heads, dim)
    return reference(rotate(queries).reshape(batch, -1), keys, values, scale, allowed,
                     prefix_row, prefix_len)


def _agrees_with_torch(kernel: DecodeKernels) -> bool:
    g = torch.Generator().manual_seed(0)
    keys, values = (torch.randn(3, 2, 150, 64, generator=g) for _ in range(2))
    queries = torch.randn(3, 2 * 3 * 64, generator=g)
    new_keys, new_values = (torch.randn(3, 2 * 64, generator=g) for _ in range(2))
    cos, sin = (torch.randn(3, 64, generator=g) for _ in range(2))
    allowed = torch.ones(3, 150, dtype=torch.uint8)
    allowed[1, :40] = 0
    with torch.inference_mode():
        plain = torch.allclose(kernel(queries, keys, values, 0.125, allowed),
                               reference(queries, keys, values, 0.125, allowed), atol=1e-5)
        ours = kernel.step(queries, new_keys, new_values, cos, sin, keys, values, 0.125, allowed)
        written = keys.clone(), values.clone()
        theirs = reference_step(queries, new_keys, new_values, cos, sin, keys, values, 0.125,
                                allowed)
        attention = (plain and torch.allclose(ours, theirs, atol=1e-5)
                     and all(torch.allclose(a, b, atol=1e-6)
                             for a, b in zip(written, (keys, values), strict=True)))
        return (attention and _glue_agrees_with_torch(kernel, g)
                and _stats_agree_with_torch(kernel, g) and _draws_agree_with_torch(kernel, g)
                and _matmul_agrees_with_torch(kernel, g))


def _glue_agrees_with_torch(kernel: DecodeKernels, g: torch.Generator) -> bool:
    """The norm and the gate on rows of several scales, and gate values from -100 to 100
    (where e^-|g| underflows)."""
    x = torch.randn(5, 96, generator=g) * torch.tensor([[1e-3], [1.0], [30.0], [1.0], [5.0]])
    delta, weight = torch.randn(5, 96, generator=g), torch.randn(96, generator=g)
    gate_up = torch.randn(5, 2 * 96, generator=g) * 8
    gate_up[0, :96] = torch.linspace(-100, 100, 96)
    gate, up = gate_up[:, :96], gate_up[:, 96:]
    with torch.inference_mode():
        want = torch.rms_norm(x + delta, (96,), weight, 1e-6)
        summed = x.clone()
        got = kernel.add_rms_norm(summed, delta, weight, 1e-6)
        gated = kernel.silu_mul(gate, up)
    return (torch.allclose(got, want, rtol=1e-5, atol=1e-6)
            and torch.allclose(summed, x + delta, rtol=0, atol=0)
            and torch.allclose(gated, torch.nn.functional.silu(gate) * up, rtol=1e-5,
                               atol=1e-6))


def _stats_agree_with_torch(kernel: DecodeKernels, g: torch.Generator) -> bool:
    """Log Z, entropy and self-certainty of rows of several scales, one not a multiple of 16
    wide, against their definitions from the log-softmax."""
    logits = torch.randn(4, 1003, generator=g) * torch.tensor([[0.01], [1.0], [5.0], [30.0]])
    with torch.inference_mode():
        stats = kernel.softmax_stats(logits, -1000.0)
        logprobs = logits.log_softmax(dim=-1)
    if stats is None:
        return False
    log_z, entropy, certainty = stats
    return (torch.allclose(log_z, logits.logsumexp(dim=-1), rtol=1e-5, atol=1e-5)
            and torch.allclose(entropy, -(logprobs.exp() * logprobs).sum(dim=-1), rtol=1e-4,
                               atol=1e-5)
            and torch.allclose(certainty, -logprobs.mean(dim=-1) - math.log(1003), rtol=1e-4,
                               atol=1e-4))


def _draws_agree_with_torch(kernel: DecodeKernels, g: torch.Generator) -> bool:
    """Tempered draws over rows of several scales, one not a multiple of 8 wide, against
    sampling.sample_tempered: the same tokens, log q within fp32 rounding."""
    from ponder.sampling import sample_tempered

    logits = torch.randn(6, 1003, generator=g) * torch.tensor([[0.01], [1.0], [5.0], [30.0],
                                                                [3.0], [3.0]])
    temperature = torch.tensor([1.0, 0.7, 1.3, 1.0, 0.05, 2.0])
    uniforms = torch.rand(6, generator=g, dtype=torch.float64)
    with torch.inference_mode():
        ours = kernel.sample_tempered(logits, temperature, uniforms)
        theirs = sample_tempered(logits, temperature, uniforms)
    return (ours is not None and torch.equal(ours[0], theirs[0])
            and torch.allclose(ours[1], theirs[1], rtol=1e-5, atol=1e-6))


def _matmul_agrees_with_torch(kernel: DecodeKernels, g: torch.Generator) -> bool:
    """The panel matmul against F.linear at 1-13 rows (every block size), strided rows, a
    bias, and a width that leaves the last panel part empty (where it has code)."""
    if not kernel.has_matmul:
        return True
    weight, bias = torch.randn(70, 100, generator=g), torch.randn(70, generator=g)
    panels = kernel.pack(weight)
    with torch.inference_mode():
        return all(
            torch.allclose(kernel.matmul(x, panels, 70, b),
                           torch.nn.functional.linear(x, weight, b), rtol=1e-5, atol=1e-5)
            for rows in (1, 2, 3, 13) for b in (None, bias)
            for x in [torch.randn(rows, 104, generator=g)[:, :100]])
