"""A lean forward pass for the Llama family (Llama, Qwen2, Mistral), over ponder's own KV tensors.

Why: a decode step of a small model on CPU is mostly not matmul. transformers rebuilds the
attention mask, the rotary tables and a cache object every step and goes through ~10 module
calls per layer; at batch 16 that overhead was as large as the attention itself. Here a layer
is four matmuls (fused q/k/v, output, fused gate/up, down), two RMSNorms, RoPE from a table
computed once, and one attention call, writing keys and values straight into the room
`kv.forward` made after each row's cache.

The arithmetic is the one transformers does (RMSNorm in float32, the same rotary products,
the same attention); only the order of some float sums differs, so logits agree with the
transformers path to fp32 tolerance (tests check this on random Llama, Qwen2 and Mistral).

Fused weights do not double memory: the model's own q/k/v and gate/up weights become views
into the fused tensors, so the transformers module (used for scoring elsewhere) still works.

Anything else (other architectures, sliding windows, RoPE that changes with length) keeps
the transformers path: `LeanModel.build` returns None and says why in `unsupported`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

ARCHITECTURES = ("LlamaForCausalLM", "Qwen2ForCausalLM", "MistralForCausalLM")
# RoPE types whose frequencies and scaling are fixed at load time.
STATIC_ROPE = ("default", "linear", "llama3", "yarn")


def unsupported(model) -> str | None:
    """Why `model` cannot take the lean path, or None when it can."""
    name = type(model).__name__
    if name not in ARCHITECTURES:
        return f"{name} is not one of {', '.join(ARCHITECTURES)}"
    config = model.config
    if getattr(config, "hidden_act", "silu") != "silu":
        return f"activation {config.hidden_act!r} (only silu)"
    layer_types = getattr(config, "layer_types", None) or []
    if any(t != "full_attention" for t in layer_types):
        return "sliding-window layers"
    if name == "MistralForCausalLM" and getattr(config, "sliding_window", None):
        return "a sliding window"
    rope = getattr(model.model.rotary_emb, "rope_type", "default")
    if rope not in STATIC_ROPE:
        return f"RoPE type {rope!r} changes with the sequence length"
    return None


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """transformers' LlamaRMSNorm: normalise in float32, scale in the model's dtype."""
    dtype = x.dtype
    x = x.float()
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x.to(dtype)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def fuse(linears: list[torch.nn.Linear]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One weight (and bias) holding the given linears' rows; each linear's own parameters
    become views into it, so the fused copy is the only copy."""
    weight = torch.cat([m.weight.detach() for m in linears])
    has_bias = [m.bias is not None for m in linears]
    bias = None
    if any(has_bias):
        bias = torch.cat([m.bias.detach() if m.bias is not None
                          else m.weight.new_zeros(m.weight.shape[0]) for m in linears])
    start = 0
    for m in linears:
        rows = m.weight.shape[0]
        m.weight = torch.nn.Parameter(weight[start:start + rows], requires_grad=False)
        if m.bias is not None:
            m.bias = torch.nn.Parameter(bias[start:start + rows], requires_grad=False)
        start += rows
    return weight, bias


@dataclass
class _Layer:
    input_norm: torch.Tensor
    qkv: torch.Tensor
    qkv_bias: torch.Tensor | None
    out: torch.Tensor
    out_bias: torch.Tensor | None
    post_norm: torch.Tensor
    gate_up: torch.Tensor
    gate_up_bias: torch.Tensor | None
    down: torch.Tensor
    down_bias: torch.Tensor | None


class LeanModel:
    """The decoder of a Llama-family model as plain tensors; see the module docstring."""

    def __init__(self, model):
        config = model.config
        self.heads = config.num_attention_heads
        self.kv_heads = getattr(config, "num_key_value_heads", None) or self.heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.eps = config.rms_norm_eps
        inner = model.model
        self.embed = inner.embed_tokens.weight
        self.final_norm = inner.norm.weight
        self.lm_head = model.lm_head.weight
        self.layers = []
        with torch.no_grad():
            for layer in inner.layers:
                attn, mlp = layer.self_attn, layer.mlp
                qkv, qkv_bias = fuse([attn.q_proj, attn.k_proj, attn.v_proj])
                gate_up, gate_up_bias = fuse([mlp.gate_proj, mlp.up_proj])
                self.layers.append(_Layer(
                    layer.input_layernorm.weight, qkv, qkv_bias, attn.o_proj.weight,
                    attn.o_proj.bias, layer.post_attention_layernorm.weight, gate_up,
                    gate_up_bias, mlp.down_proj.weight, mlp.down_proj.bias))
        rotary = inner.rotary_emb
        self.inv_freq = rotary.inv_freq.float()
        self.rope_scaling = float(rotary.attention_scaling)
        self.cos = self.sin = torch.empty(0, self.head_dim, device=self.embed.device)

    @classmethod
    def build(cls, model) -> LeanModel | None:
        return None if unsupported(model) else cls(model)

    def _rope(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin at `positions` [batch, n] -> [batch, 1, n, head_dim], from tables
        grown (doubling) as longer positions arrive."""
        needed = int(positions.max()) + 1
        if needed > self.cos.shape[0]:
            size = max(needed, 2 * self.cos.shape[0], 256)
            steps = torch.arange(size, device=self.inv_freq.device, dtype=torch.float32)
            freqs = steps[:, None] * self.inv_freq[None, :]
            table = torch.cat((freqs, freqs), dim=-1)
            dtype = self.embed.dtype
            self.cos = (table.cos() * self.rope_scaling).to(dtype)
            self.sin = (table.sin() * self.rope_scaling).to(dtype)
        return self.cos[positions].unsqueeze(1), self.sin[positions].unsqueeze(1)

    def forward(self, input_ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor,
                kv: list[tuple[torch.Tensor, torch.Tensor]], extend, logits_to_keep: int):
        """Feed `input_ids` [batch, n] after the cached columns of `kv` (per layer, views
        [batch, kv_heads, cached, head_dim]); `mask` [batch, cached + n] marks real tokens;
        `extend(view, new)` appends columns in place. Returns float32 logits of the last
        `logits_to_keep` positions and the longer per-layer views."""
        batch, n = input_ids.shape
        groups = self.heads // self.kv_heads
        cos, sin = self._rope(positions)
        allowed = _allowed(mask, n, groups)
        hidden = F.embedding(input_ids, self.embed)
        grown = []
        q_size, kv_size = self.heads * self.head_dim, self.kv_heads * self.head_dim
        for layer, (keys, values) in zip(self.layers, kv, strict=True):
            x = rms_norm(hidden, layer.input_norm, self.eps)
            q, k, v = F.linear(x, layer.qkv, layer.qkv_bias).split(
                [q_size, kv_size, kv_size], dim=-1)
            q = rotate(q.view(batch, n, self.heads, self.head_dim).transpose(1, 2), cos, sin)
            k = rotate(k.view(batch, n, self.kv_heads, self.head_dim).transpose(1, 2), cos, sin)
            v = v.view(batch, n, self.kv_heads, self.head_dim).transpose(1, 2)
            keys, values = extend(keys, k), extend(values, v)
            grown.append((keys, values))
            # Grouped-query attention without repeating keys: the query heads that share a
            # key head become extra query rows of that head.
            q = q.reshape(batch, self.kv_heads, groups * n, self.head_dim)
            out = F.scaled_dot_product_attention(q, keys, values, attn_mask=allowed)
            out = out.view(batch, self.kv_heads, groups, n, self.head_dim)
            out = out.permute(0, 3, 1, 2, 4).reshape(batch, n, q_size)
            hidden = hidden + F.linear(out, layer.out, layer.out_bias)
            x = rms_norm(hidden, layer.post_norm, self.eps)
            gate, up = F.linear(x, layer.gate_up, layer.gate_up_bias).chunk(2, dim=-1)
            hidden = hidden + F.linear(F.silu(gate) * up, layer.down, layer.down_bias)
        hidden = rms_norm(hidden[:, -logits_to_keep:], self.final_norm, self.eps)
        return F.linear(hidden, self.lm_head).float(), grown


def _allowed(mask: torch.Tensor, n: int, groups: int) -> torch.Tensor:
    """Which key columns each query may see, [batch, 1, groups * n, columns] (bool): real
    tokens at or before the query's own column. Every query also sees its own column, so a
    padding query has one key and no NaN reaches the cache."""
    real = mask.bool()[:, None, None, :]
    if n == 1:
        return real
    columns = mask.shape[1]
    own = torch.arange(columns - n, columns, device=mask.device)[:, None]
    key = torch.arange(columns, device=mask.device)[None, :]
    allowed = (real & (key <= own)) | (key == own)  # [batch, 1, n, columns]
    return allowed.unsqueeze(2).expand(-1, 1, groups, n, columns).reshape(
        mask.shape[0], 1, groups * n, columns)
