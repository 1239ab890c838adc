"""A lean forward pass for Llama-family models (Llama, Qwen2, Mistral without a sliding
window) in fp32 on a CPU: what `kv.forward` runs instead of the transformers model when it can.

Why. A decode step through transformers spent time this forward does not:
  - every Linear runs through ponder's own compiled matmul on weights packed once into
    panels (`PanelLinear`, panel_matmul.c) where the machine has AVX-512, else oneDNN's
    matmul (`torch.ops.mkldnn._linear_pointwise`) on weights reordered once into its own
    layout (`PackedOneDNNLinear`); either way each layer's q/k/v as one matmul, and gate/up
    as another, by their weights stacked; except on Intel CPUs,
    where aten's (MKL) is as fast or faster (`pick_linear`) and a decode step of 4-64 rows uses
    MKL on weights packed once (`PackedLinear`): on the 2-core AMD EPYC this project was first
    measured on, aten's fp32 GEMM took 18.8 ms for the lm_head at batch 16 where oneDNN's took
    10.0 ms;
  - RoPE's cos and sin are looked up in a table made once by the model's own rotary
    embedding (so every static RoPE variant, llama3 and yarn included, is exactly the model's);
  - at most one boolean attention mask is built per call (none for a decode step with no
    padding, where attention without a mask took 135 us a layer instead of 232 at batch 16)
    and no cache or mask objects; RMSNorm is torch's fused one;
  - a decode step runs compiled loops of ours where this machine can build them
    (decode_kernels.py): attention (decode_attention.c: about 2x torch's ops a layer at
    batch 16 and 64 on the AMD machine), and between the matmuls the residual add with its
    norm and the MLP's gate (decode_glue.c; `_fused_decode`), and where the matmuls are
    ponder's panels, each layer as one compiled call of all of these (decode_layer.c,
    `_layer_plan`); else it attends, batched, by grouped matmuls (`_decode_attention`).
The keys and values live in `kv`'s tensors, appended in place by the function `kv.forward`
passes in; logits equal transformers' within fp32 rounding (tests/test_lean_forward.py).

Anything else keeps transformers' forward: other families, a GPU, other dtypes, and a model
whose projections were replaced after the twin was made (peft's LoRA layers, say).
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable, Sequence
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from ponder.engines import decode_kernels, shared_prefix
from ponder.engines.cpu import cpu_vendor

FAMILIES = frozenset({"llama", "qwen2", "mistral"})
# RoPE variants whose frequencies change with the sequence length: a fixed table is wrong.
LENGTH_DEPENDENT_ROPE = frozenset({"dynamic", "longrope"})
PROJECTIONS = tuple(tuple(path.split(".")) for path in (
    "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
    "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"))

_TWINS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

LayerKV = tuple[torch.Tensor, torch.Tensor]  # keys, values: [batch, kv_heads, length, head_dim]
# append(layer, new keys, new values) -> the layer's keys and values with the new ones after.
Append = Callable[[int, torch.Tensor, torch.Tensor], LayerKV]


def lean_twin(model) -> LeanForward | None:
    """The model's lean forward, made on first use; None where it does not apply."""
    try:
        twin = _TWINS[model]
    except KeyError:
        twin = _TWINS[model] = LeanForward.build(model)
    return twin if twin is not None and twin.still_matches() else None


def why_not_lean(model) -> str | None:
    """Why `model` keeps transformers' forward (None: it gets the lean one)."""
    config = model.config
    if getattr(config, "model_type", None) not in FAMILIES:
        return f"model type {getattr(config, 'model_type', None)!r} is not one of {sorted(FAMILIES)}"
    inner = getattr(model, "model", None)
    if inner is None or not all(hasattr(inner, a) for a in ("embed_tokens", "layers", "norm",
                                                            "rotary_emb")):
        return "not the usual Llama-family module layout"
    weight = model.lm_head.weight
    if weight.device.type != "cpu" or weight.dtype != torch.float32:
        return f"runs on {weight.device.type} in {weight.dtype} (the lean forward is CPU fp32)"
    if getattr(config, "hidden_act", "silu") != "silu":
        return f"activation {config.hidden_act!r}"
    if getattr(config, "sliding_window", None) is not None and (
            config.model_type == "mistral" or getattr(config, "use_sliding_window", False)):
        return "sliding-window attention"
    if any(t != "full_attention" for t in getattr(config, "layer_types", None) or ()):
        return "layers other than full attention"
    if getattr(inner.rotary_emb, "rope_type", "default") in LENGTH_DEPENDENT_ROPE:
        return f"RoPE type {inner.rotary_emb.rope_type!r} depends on the sequence length"
    if not all(type(m) is nn.Linear for layer in inner.layers for m in _projections(layer)):
        return "its projections are not plain Linear layers"
    if "enable_gqa" not in (F.scaled_dot_product_attention.__doc__ or "") or not hasattr(
            F, "rms_norm"):
        return "this torch is older than 2.5 (no grouped-query attention or rms_norm)"
    return None


def _projections(layer) -> list[nn.Module]:
    return [getattr(_parent(layer, path), path[-1]) for path in PROJECTIONS]


def _parent(layer: nn.Module, path: tuple[str, ...]) -> nn.Module:
    for name in path[:-1]:
        layer = getattr(layer, name)
    return layer


def _norm_of(norm: nn.Module) -> tuple[torch.Tensor, float]:
    """An RMSNorm's weight (the parameter itself: in-place changes show through) and epsilon."""
    return norm.weight, norm.variance_epsilon


def weight_groups(model) -> list[tuple[torch.Tensor, ...]]:
    """The model's Linear weights as the lean forward multiplies by them where its kernel
    stacks weights (`many`): each layer's q/k/v together, gate/up together, the rest alone."""
    groups: list[tuple[torch.Tensor, ...]] = []
    for layer in model.model.layers:
        q, k, v, o, gate, up, down = (m.weight for m in _projections(layer))
        groups += [(q, k, v), (o,), (gate, up), (down,)]
    return [*groups, (model.lm_head.weight,)]


def _onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


def _one_by_one(linear: Callable, x: torch.Tensor, weights: Sequence[torch.Tensor],
                biases: Sequence[torch.Tensor | None]) -> list[torch.Tensor]:
    return [linear(x, w, b) for w, b in zip(weights, biases, strict=True)]


class PackedLinear:
    """MKL's sgemm on weights packed once into its own layout (`torch.ops.mkl`), for inputs of
    `rows` rows (batch x tokens); the plain call (`fallback`) for others and for weights made
    under inference_mode, F.linear where autograd is on (the packed op has no backward).
    Why: MKL's plain sgemm repacks the weight on every call, which at decode shapes cost about
    as much as the product itself on a 2-core Intel Xeon (the 1536->576 down projection at 16
    rows: 274 against 111 us; all of the bundled model's projections and its lm_head at 16
    rows: 34.7 against 19.2 ms; at 1-3 rows, and above ~100, the plain call is as fast or
    faster). The packed copies, made on first use, cost memory about the size of the weights
    (+1.0 GB of RSS for the bundled model). A copy is remade when its weight changes in place
    (load_state_dict moves the tensor's version counter). Results equal F.linear's within
    fp32 rounding (bit-equal from 16 rows on that Xeon)."""

    __name__ = "packed_mkl_linear"
    rows = (4, 64)  # a decode step of 4 to 64 samples; the packing's batch hint is the top

    def __init__(self):
        self.packed: dict = {}  # id(weight) (or the ids of stacked tensors) -> packed copy

    @staticmethod
    def fallback(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
        return F.linear(x, weight, bias)

    def pack(self, weight: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkl._mkl_reorder_linear_weight(weight, self.rows[1])

    def multiply(self, x: torch.Tensor, packed: torch.Tensor, weight: torch.Tensor,
                 bias: torch.Tensor | None) -> torch.Tensor:
        rows = x.numel() // x.shape[-1]
        out = torch.ops.mkl._mkl_linear(x.reshape(rows, x.shape[-1]), packed, weight, bias, rows)
        return out.view(*x.shape[:-1], weight.shape[0])

    def __call__(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None):
        rows = x.numel() // x.shape[-1]
        if torch.is_grad_enabled():  # neither packed op has a backward
            return F.linear(x, weight, bias)
        # An inference tensor has no version counter to tell a changed weight by.
        if not self.rows[0] <= rows <= self.rows[1] or weight.is_inference():
            return self.fallback(x, weight, bias)
        entry = self.packed.get(id(weight))
        if entry is None or entry[0] is not weight or entry[1] != weight._version:
            entry = (weight, weight._version, self.pack(weight))
            self.packed[id(weight)] = entry
        return self.multiply(x, entry[2], weight, bias)


class PackedOneDNNLinear(PackedLinear):
    """oneDNN's matmul on weights reordered once into its own blocked layout
    (`torch.ops.mkldnn._reorder_linear_weight`); given the plain weight, oneDNN reorders it on
    every call. Measured on a 2-core AMD EPYC (Zen 5, 2026-12-05), all of the bundled model's
    projections and its lm_head: 6.9 against 7.9 ms at 1 row, 13.0 against 18.7 at 16, 36.4
    against 43.0 at 64, 215 against 226 at 384, so every row count takes it. Reordering the
    bundled model's weights takes ~0.8 s, once, on first use. Same caching, conditions and
    memory cost as PackedLinear."""

    __name__ = "packed_onednn_linear"
    rows = (1, float("inf"))

    @staticmethod
    def fallback(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
        return _onednn_linear(x, weight, bias)

    def pack(self, weight: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._reorder_linear_weight(weight)

    def multiply(self, x: torch.Tensor, packed: torch.Tensor, weight: torch.Tensor,
                 bias: torch.Tensor | None) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")

    def many(self, x: torch.Tensor, weights: Sequence[torch.Tensor],
             biases: Sequence[torch.Tensor | None]) -> list[torch.Tensor]:
        """`x` times each of `weights` (which share their input size), as one matmul by the
        weights stacked and reordered once: one call instead of several, which paid on the
        AMD machine (q/k/v at 16 rows: 80 against 114 us a layer; at 1 row 52 against 78).
        Returns views of the one output. Remade when a weight or bias changes in place."""
        entry = self.stacked(weights, biases)
        if entry is None:
            return [self(x, w, b) for w, b in zip(weights, biases, strict=True)]
        return self.multiply(x, entry[2], None, entry[3]).split_with_sizes(entry[4], dim=-1)

    def stacked(self, weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor | None]
                ) -> tuple | None:
        """The entry for `weights` stacked (remade when one of them or of `biases` changed in
        place): (tensors, their versions, packed weights, stacked bias or None, each weight's
        rows); None where none can be kept (autograd on, or a tensor made under
        inference_mode)."""
        tensors = (*weights, *(b for b in biases if b is not None))
        # An entry holds its tensors, so no other live tensor has their ids: the same ids are
        # the same tensors, and only an in-place change (a new version) makes it stale. (An
        # inference tensor has no version; none ever gets an entry.)
        entry = self.packed.get(key := tuple(map(id, tensors)))
        if (entry is None or torch.is_grad_enabled()
                or entry[1] != tuple(t._version for t in tensors)):
            if torch.is_grad_enabled() or any(t.is_inference() for t in tensors):
                return None
            stacked_bias = None
            if any(b is not None for b in biases):
                stacked_bias = torch.cat([b if b is not None else w.new_zeros(w.shape[0])
                                          for w, b in zip(weights, biases, strict=True)])
            entry = (tensors, tuple(t._version for t in tensors),
                     self.pack(torch.cat(list(weights))), stacked_bias,
                     [w.shape[0] for w in weights])
            self.packed[key] = entry
        return entry


class PanelLinear(PackedOneDNNLinear):
    """ponder's own compiled matmul (decode_kernels, panel_matmul.c) on weights packed once
    into panels of 32 columns, where the library is built with it (AVX-512 machines); the
    stacked weights as PackedOneDNNLinear stacks them, oneDNN's plain call where a weight
    cannot be packed, F.linear where autograd is on. Why: in a decode step the weights
    stream from memory, and this loop overlaps that stream with its arithmetic better than
    oneDNN's does. Measured on a 2-core AMD EPYC (Zen 5, 2026-12-05), the bundled model's 30
    layers of projections with their weights cold: 16.9-18.5 against 20.4-21.2 ms at 32
    rows, 10.4-11.2 against 13.5-14.1 at 16, 5.6-6.8 against 7.7-8.7 at 1, 29.5-32.5 against
    36.5-37.0 at 64, 178-188 against 190-195 at 448 (a prefill). Same memory cost as
    PackedOneDNNLinear (the panels replace its copies); results equal F.linear's within fp32
    rounding."""

    __name__ = "panel_linear"

    def __init__(self, kernel: decode_kernels.DecodeKernels):
        super().__init__()
        self.kernel = kernel

    def __call__(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None):
        # A weight alone is a stack of one: a decode layer's plan (LeanForward._layer_plan)
        # and the calls of a prefill then share its panels.
        entry = self.stacked((weight,), (bias,))  # None with autograd on
        if entry is None:
            return super().__call__(x, weight, bias)
        return self.multiply(x, entry[2], None, entry[3])

    def pack(self, weight: torch.Tensor) -> tuple[torch.Tensor, int]:
        return self.kernel.pack(weight), weight.shape[0]

    def multiply(self, x: torch.Tensor, packed: tuple[torch.Tensor, int],
                 weight: torch.Tensor | None, bias: torch.Tensor | None) -> torch.Tensor:
        panels, cols = packed
        rows = x.reshape(-1, x.shape[-1])
        if rows.stride(-1) != 1:
            rows = rows.contiguous()
        return self.kernel.matmul(rows, panels, cols, bias).view(*x.shape[:-1], cols)


def panel_linear() -> PanelLinear | None:
    """PanelLinear, where the compiled loops load and have the matmul (see decode_kernels)."""
    kernel = decode_kernels.load()
    return PanelLinear(kernel) if kernel is not None and kernel.has_matmul else None


# Models whose Linear weights are larger keep the plain call: the packed copies double them.
PACKED_MAX_BYTES = 2 << 30


def linear_kernels() -> list[Callable]:
    """F.linear, then oneDNN's matmul, MKL's on packed weights, oneDNN's on packed weights and
    ponder's own on panels, each where this torch (or machine) has it and it agrees with
    F.linear (on inputs of 3 and of 16 rows)."""
    kernels: list[Callable] = [F.linear]
    g = torch.Generator().manual_seed(0)  # leaves the global RNG as it was
    w, b = torch.randn(5, 8, generator=g), torch.randn(5, generator=g)
    probes = [torch.randn(rows, 8, generator=g) for rows in (3, 16)]
    candidates = (_onednn_linear, PackedLinear(), PackedOneDNNLinear(), panel_linear())
    for kernel in filter(None, candidates):
        try:
            with torch.inference_mode():
                if all(torch.allclose(kernel(x, w, b), F.linear(x, w, b), atol=1e-5)
                       for x in probes):
                    kernels.append(kernel)
        except (AttributeError, RuntimeError):
            pass
    return kernels


def pick_linear(weight_bytes: int = 0) -> Callable:
    """On Intel CPUs MKL's matmul, elsewhere ponder's own (PanelLinear) or oneDNN's: on
    weights packed once into its own layout (PackedLinear, PanelLinear, PackedOneDNNLinear)
    where this torch or machine has it, the model's Linear
    weights (`weight_bytes`) are at most PACKED_MAX_BYTES and PONDER_PACKED_WEIGHTS is not 0,
    else its plain call (aten's for MKL). Measured: on a 2-core AMD EPYC oneDNN's took 10.0 ms
    for the bundled model's lm_head at batch 16 where aten's took 18.8 (MKL takes a generic
    path on CPUs that are not Intel's); on a 2-core Intel Xeon aten's took 5.6 ms and oneDNN's
    5.8, aten's was faster at batch 1 (14 vs 31 us for a 576x576 projection), and packed
    weights made a whole decode step 1.15-1.2x faster at batch 16 and 1.13x at 64. A fixed
    rule, not a timing at start-up: timed under load the choice flipped between processes,
    and a Ray worker then rounded differently from the local run and drew other samples."""
    kernels = linear_kernels()
    intel = cpu_vendor() == "GenuineIntel"
    if not intel and _onednn_linear not in kernels:
        return F.linear
    plain = F.linear if intel else _onednn_linear  # what each packed kind falls back to
    # Elsewhere ponder's panels where they are built, else oneDNN's packed weights. On Intel
    # CPUs MKL's stays: the panels were measured on the AMD machine only.
    wanted = (PackedLinear,) if intel else (PanelLinear, PackedOneDNNLinear)
    packed = next((k for kind in wanted for k in kernels if type(k) is kind), None)
    if (packed is not None and weight_bytes <= PACKED_MAX_BYTES
            and os.environ.get("PONDER_PACKED_WEIGHTS", "1") != "0"):
        return packed
    return plain


class LeanForward:
    def __init__(self, model):
        inner = model.model
        self.model, self.inner, self.layers = weakref.ref(model), inner, list(inner.layers)
        self.linears = [_projections(layer) for layer in self.layers]
        # Where each projection hangs: (its parent's module dict, its name, the module). A
        # swap (peft's LoRA layers) replaces the dict's entry; reading the dicts is a lookup
        # each, where walking the modules' attributes cost ~0.3 ms a decode step.
        self.slots = [(_parent(layer, path)._modules, path[-1], module)
                      for layer, linears in zip(self.layers, self.linears, strict=True)
                      for path, module in zip(PROJECTIONS, linears, strict=True)]
        # The parameters themselves, read once: in-place changes (load_state_dict, .to())
        # show through; a swapped module turns the twin off (still_matches).
        # Norms as (weight, epsilon): a module's attribute lookup per norm and step cost more
        # than the norm's arithmetic at small batches.
        self.params = [(_norm_of(layer.input_layernorm),
                        *(t for m in linears for t in (m.weight, m.bias)),
                        _norm_of(layer.post_attention_layernorm))
                       for layer, linears in zip(self.layers, self.linears, strict=True)]
        self.final_norm = _norm_of(inner.norm)
        attention = self.layers[0].self_attn
        self.heads = model.config.num_attention_heads
        self.kv_heads = model.config.num_key_value_heads
        self.head_dim = attention.head_dim
        self.scaling = attention.scaling
        self.widths = (model.config.hidden_size, model.config.intermediate_size)
        weights = {id(w): w for w in (model.lm_head.weight,
                                      *(m.weight for ms in self.linears for m in ms))}
        self.weight_bytes = sum(w.numel() * w.element_size() for w in weights.values())
        self.linear = pick_linear(self.weight_bytes)
        # the norm each layer's output goes into: the next layer's first, the final one last
        self.norms_after = [p[0] for p in self.params[1:]] + [self.final_norm]
        self.projection_tensors = [t for layer in self.params for t in layer[1:-1]
                                   if t is not None]  # every layer's weights and biases
        # (the matmul kernel's id and the weights' versions it was made at, the plan)
        self.plan: tuple[tuple[int, ...], list[decode_kernels.LayerWeights]] | None = None
        self.cos = self.sin = torch.empty(0, self.head_dim)

    @classmethod
    def build(cls, model) -> LeanForward | None:
        return None if why_not_lean(model) is not None else cls(model)

    def _many(self) -> Callable:
        """x times several weights that share it: one matmul where the kernel stacks them
        (read from self.linear on each call, which a test may swap)."""
        return getattr(self.linear, "many", None) or partial(_one_by_one, self.linear)

    def still_matches(self) -> bool:
        """The model still has the modules the twin reads (nobody swapped a projection for
        a LoRA layer or moved the model since)."""
        model = self.model()
        return (model is not None and model.lm_head.weight.dtype == torch.float32
                and model.lm_head.weight.device.type == "cpu"
                and all(modules.get(name) is module for modules, name, module in self.slots))

    def _rope(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin at `positions` [batch, n] -> [batch, 1, n, head_dim] each, from a table
        grown (doubling) by the model's own rotary embedding."""
        needed = int(positions.max()) + 1
        if needed > len(self.cos):
            size = max(needed, 2 * len(self.cos), 256)
            ids = torch.arange(size).unsqueeze(0)
            probe = torch.empty(1, dtype=torch.float32)
            cos, sin = self.inner.rotary_emb(probe, ids)
            half = self.head_dim // 2
            # rotate_half(x) * sin == x.roll(half) * sin with its first half negated.
            self.cos, self.sin = cos[0], torch.cat([-sin[0, :, :half], sin[0, :, half:]], dim=-1)
        return self.cos[positions].unsqueeze(1), self.sin[positions].unsqueeze(1)

    @staticmethod
    def _norm(x: torch.Tensor, norm: tuple[torch.Tensor, float]) -> torch.Tensor:
        weight, epsilon = norm
        return torch.rms_norm(x, weight.shape, weight, epsilon)

    @staticmethod
    def _rotate(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
        return x * cos + x.roll(x.shape[-1] // 2, dims=-1) * signed_sin

    def _decode_step(self, mask: torch.Tensor, padded: bool, shared: Sequence, cached: int
                     ) -> DecodeStep | None:
        """The compiled loop's inputs for this step, or None where it is not built or has no
        code for this model's head size and grouping (decode_kernels.supports)."""
        kernel = decode_kernels.load()
        if kernel is None or not kernel.supports(self.head_dim, self.heads // self.kv_heads):
            return None
        return DecodeStep.make(kernel, mask, padded, shared, cached)

    def _decode_attention(self, queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                          allowed: torch.Tensor | None, plan: shared_prefix.Plan | None
                          ) -> torch.Tensor:
        """Attention of one new query per sample [batch, heads, 1, dim] over the cache, each
        key/value head shared by its group of query heads through a reshape, not a copy;
        returns [batch, 1, heads * dim]. Used where the compiled loop is not (DecodeStep).
        Why: at decode shapes this beat scaled_dot_product_attention(enable_gqa=True) on a
        2-core Intel Xeon (SmolLM2-135M, 160 cached tokens: 600 vs 930 us a layer at batch 64,
        155 vs 210 at batch 16); at batch 1 SDPA was faster (22 vs 31 us), so it keeps that.
        With a plan, rows that share their first columns read them once (shared_prefix.py)."""
        batch, heads, _, dim = queries.shape
        grouped = (queries * self.scaling).reshape(batch, self.kv_heads, heads // self.kv_heads, dim)
        if plan is not None:
            out = shared_prefix.attend(grouped, keys, values, allowed, plan)
        else:
            scores = torch.matmul(grouped, keys.transpose(-1, -2))
            if allowed is not None:  # the finite minimum keeps a fully masked row finite
                scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
            out = torch.matmul(torch.softmax(scores, dim=-1), values)
        return out.view(batch, 1, heads * dim)

    def __call__(self, input_ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor,
                 append: Append, logits_to_keep: int, hidden: Sequence[int] = (),
                 shared: Sequence = (), grow: Callable[[int], LayerKV] | None = None
                 ) -> tuple[torch.Tensor, list[LayerKV], list[torch.Tensor]]:
        """Feed `input_ids` [batch, n] at `positions` after `mask`'s cached columns (`mask`
        covers cached and new columns, 1 = real token); `shared`: runs of rows whose first
        cached columns are equal (kv.SharedRun), read once per run in a decode step;
        `grow(layer)`: the layer's keys and values with the new columns after them, unwritten
        (None where there is no cache yet): a decode step through _fused_decode (where the
        compiled loops apply) has the attention loop rotate and write them itself
        (DecodeStep.fused), instead of `append`.
        Returns the logits of the last `logits_to_keep` positions, every layer's keys and
        values, and the hidden states `hidden` names, as transformers' output_hidden_states
        numbers them (0: the embeddings, i: after layer i, the last one after the final
        norm)."""
        batch, n = input_ids.shape
        old = mask.shape[1] - n
        padded = not bool(mask.all())
        allowed, causal = None, False
        # A decode step attends with the compiled loop where it is built (DecodeStep), else,
        # batched, by grouped matmuls (see _decode_attention), or, at batch 1, by SDPA.
        step = self._decode_step(mask, padded, shared, old) if n == 1 else None
        grouped = n == 1 and batch > 1 and step is None
        if n == 1:
            allowed = mask.bool()[:, None, None, :] if padded and step is None else None
        elif padded or old:  # a padding query sees itself, so no row is empty
            key = torch.arange(mask.shape[1])
            query = torch.arange(n).unsqueeze(1) + old
            allowed = (mask.bool()[:, None, None, :] & (key <= query)) | (key == query)
        else:
            causal = True
        cos, sin = self._rope(positions)
        if step is not None and grow is not None and self._glue(step.kernel):
            return self._fused_decode(input_ids, cos, sin, step, grow, hidden)
        plan = shared_prefix.plan(shared, batch, old, input_ids.device) if grouped else None
        linear, heads, kv_heads, dim = self.linear, self.heads, self.kv_heads, self.head_dim
        many = self._many()
        x = self.inner.embed_tokens(input_ids)
        caches, states = [], {0: x}
        for index, (norm1, q, qb, k, kb, v, vb, o, ob, gate, gb, up, ub, down, db, norm2) in (
                enumerate(self.params)):
            h = self._norm(x, norm1)
            queries, keys, values = many(h, (q, k, v), (qb, kb, vb))
            queries = queries.view(batch, n, heads, dim).transpose(1, 2)
            keys = keys.view(batch, n, kv_heads, dim).transpose(1, 2)
            values = values.view(batch, n, kv_heads, dim).transpose(1, 2)
            keys, values = append(index, self._rotate(keys, cos, sin), values)
            caches.append((keys, values))
            if step is not None:
                attended = step(self._rotate(queries, cos, sin), keys, values, self.scaling)
            elif grouped:
                attended = self._decode_attention(self._rotate(queries, cos, sin), keys,
                                                  values, allowed, plan)
            else:
                attended = F.scaled_dot_product_attention(
                    self._rotate(queries, cos, sin), keys, values, attn_mask=allowed,
                    is_causal=causal, scale=self.scaling, enable_gqa=True
                ).transpose(1, 2).reshape(batch, n, heads * dim)
            x = x + linear(attended, o, ob)
            h = self._norm(x, norm2)
            gated, upped = many(h, (gate, up), (gb, ub))
            x = x + linear(F.silu(gated) * upped, down, db)
            if index + 1 in hidden:
                states[index + 1] = x
        last = len(self.params)
        if last in hidden:
            states[last] = x = self._norm(x, self.final_norm)
        else:
            x = self._norm(x[:, -logits_to_keep:], self.final_norm)
        head = self.model().lm_head
        return (linear(x[:, -logits_to_keep:], head.weight, head.bias), caches,
                [states[i] for i in hidden])

    def _glue(self, kernel: decode_kernels.DecodeKernels) -> bool:
        """Whether a decode step can run as _fused_decode: the glue loops have code for this
        model's widths, and no gradient is wanted (they write in place, which autograd
        cannot follow)."""
        return not torch.is_grad_enabled() and kernel.supports_widths(*self.widths)

    def _fused_decode(self, input_ids: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                      step: DecodeStep, grow: Callable[[int], LayerKV], hidden: Sequence[int]
                      ) -> tuple[torch.Tensor, list[LayerKV], list[torch.Tensor]]:
        """A decode step (one new token a row) with the compiled loops between the matmuls:
        attention (rotating and writing the new column itself, DecodeStep.fused), the
        residual add with the next norm, and the MLP's gate; __call__'s result. Rows are
        [batch, width] throughout. Why: these replace seven torch calls a layer with three
        (see decode_glue.c)."""
        batch = input_ids.shape[0]
        kernel, linear, many, params = step.kernel, self.linear, self._many(), self.params
        cos, sin = cos.reshape(batch, -1), sin.reshape(batch, -1)  # one position a row
        x = self.inner.embed_tokens(input_ids).view(batch, -1)  # a new tensor: added to below
        states = {0: x.clone().view(batch, 1, -1)} if 0 in hidden else {}
        h = kernel.add_rms_norm(x, None, *params[0][0])
        caches = []
        plan = self._layer_plan(kernel)
        if plan is not None:  # each layer one compiled call (decode_layer.c)
            for index, weights in enumerate(plan):
                caches.append(cache := grow(index))
                if index == 0:
                    shared = kernel.layer_step(x, cos, sin, cache[0].shape[2], self.scaling,
                                               weights.shape, step.allowed, step.prefix_row,
                                               step.prefix_len)
                h = kernel.layer(shared, weights, h, *cache)
                if index + 1 in hidden:  # x changes in place in the next layer
                    states[index + 1] = x.clone().view(batch, 1, -1)
        for index, (_, q, qb, k, kb, v, vb, o, ob, gate, gb, up, ub, down, db, norm2) in (
                enumerate(params if plan is None else ())):
            queries, keys, values = many(h, (q, k, v), (qb, kb, vb))
            cache = grow(index)
            caches.append(cache)
            attended = step.fused(queries, keys, values, cos, sin, *cache, self.scaling)
            h = kernel.add_rms_norm(x, linear(attended, o, ob), *norm2)
            gated, upped = many(h, (gate, up), (gb, ub))
            h = kernel.add_rms_norm(x, linear(kernel.silu_mul(gated, upped), down, db),
                                    *self.norms_after[index])
            if index + 1 in hidden:  # x changes in place in the next layer
                states[index + 1] = x.clone().view(batch, 1, -1)
        if len(params) in hidden:  # after the final norm, as transformers numbers it
            states[len(params)] = h.view(batch, 1, -1)
        head = self.model().lm_head
        return (linear(h, head.weight, head.bias).view(batch, 1, -1), caches,
                [states[i] for i in hidden])

    def _layer_plan(self, kernel: decode_kernels.DecodeKernels
                    ) -> list[decode_kernels.LayerWeights] | None:
        """Each layer's weights for decode_kernels.layer (one call a layer), where the matmuls
        run on ponder's panels (PanelLinear) and the attention loop has code for this model;
        remade when a weight changed in place; None elsewhere (the layer then runs call by
        call)."""
        linear = self.linear
        if not (isinstance(linear, PanelLinear) and linear.kernel is kernel):
            return None
        # The panels are copies: a weight or bias changed in place makes them stale (the
        # norms are read where they live).
        versions = (id(linear), *(t._version for t in self.projection_tensors))
        if self.plan is not None and self.plan[0] == versions:
            return self.plan[1]
        shape = decode_kernels.LayerShape(*self.widths, self.head_dim, self.kv_heads,
                                          self.heads // self.kv_heads)
        plan = []
        for index, (_, q, qb, k, kb, v, vb, o, ob, gate, gb, up, ub, down, db, norm2) in (
                enumerate(self.params)):
            entries = [linear.stacked(ws, bs) for ws, bs in (
                ((q, k, v), (qb, kb, vb)), ((o,), (ob,)), ((gate, up), (gb, ub)),
                ((down,), (db,)))]
            if any(entry is None for entry in entries):  # weights made under inference_mode
                return None
            plan.append(kernel.layer_weights(
                *((entry[2][0], entry[3]) for entry in entries), norm2,
                self.norms_after[index], shape))
        self.plan = (versions, plan)
        return plan


class DecodeStep:
    """What one decode step hands the compiled attention loop (decode_kernels.py), made
    once per step for all layers: the mask as bytes (None without padding) and, for rows in
    a run that shares its first columns (kv.SharedRun), the run's first row and the number
    of those columns, so that the loop reads one copy of them (which then stays in cache)."""

    def __init__(self, kernel: decode_kernels.DecodeKernels, allowed: torch.Tensor | None,
                 prefix_row: torch.Tensor | None, prefix_len: torch.Tensor | None):
        self.kernel, self.allowed = kernel, allowed
        self.prefix_row, self.prefix_len = prefix_row, prefix_len

    @classmethod
    def make(cls, kernel: decode_kernels.DecodeKernels, mask: torch.Tensor, padded: bool,
             shared: Sequence, cached: int) -> DecodeStep:
        prefix_row = prefix_len = None
        if shared:
            batch = mask.shape[0]
            prefix_row = torch.arange(batch)
            prefix_len = torch.zeros(batch, dtype=torch.long)
            for run in shared:
                prefix_row[run.first:run.stop] = run.first
                prefix_len[run.first:run.stop] = min(run.columns, cached)
        return cls(kernel, mask.to(torch.uint8) if padded else None, prefix_row, prefix_len)

    def __call__(self, queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                 scale: float) -> torch.Tensor:
        """Rotated queries [batch, heads, 1, dim] over the cache with this step's column
        written -> attended [batch, 1, heads * dim]."""
        batch = queries.shape[0]
        out = self.kernel(queries.reshape(batch, -1), keys, values, scale, self.allowed,
                          self.prefix_row, self.prefix_len)
        return out.view(batch, 1, -1)

    def fused(self, queries: torch.Tensor, new_keys: torch.Tensor, new_values: torch.Tensor,
              cos: torch.Tensor, signed_sin: torch.Tensor, keys: torch.Tensor,
              values: torch.Tensor, scale: float) -> torch.Tensor:
        """The projections as they come ([batch, heads * dim], [batch, kv_heads * dim] twice),
        cos and sin [batch, dim], the cache ending at this step's column, unwritten ->
        attended [batch, heads * dim], the column written."""
        return self.kernel.step(queries, new_keys, new_values, cos, signed_sin, keys, values,
                                scale, self.allowed, self.prefix_row, self.prefix_len)
