"""Randomly initialised Qwen2 models saved as real checkpoints, for tests, benchmarks and the
GPU check (scripts/gpu_check.py): a policy in Qwen2.5's layout (Qwen2ForCausalLM) and a
process reward model in the released Qwen2.5-Math-PRM's (a Qwen2 body, an MLP head
`score.0`/`score.2`, architecture Qwen2ForProcessRewardModel, step tag <extra_0>), so the
native engine, vLLM, the in-process qwen-prm style and `ponder serve --reward-model` all load
them. Any tokenizer will do (the bundled model's works offline); a model's vocabulary may be
larger than its tokenizer's, as Qwen2.5's is.

    folder, tag = build_qwen_prm(tmp / "prm", tokenizer)             # tiny: hidden 64, 2 layers
    build_qwen_policy(tmp / "policy", tokenizer, QwenShape(1536, 28, 12, 2, 8960, 151936),
                      dtype="bfloat16", device="cuda")                # Qwen2.5-1.5B's shape
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch

STEP_TAG = "<extra_0>"


@dataclass(frozen=True)
class QwenShape:
    """A Qwen2 model's sizes. vocab: at least the tokenizer's length (None: exactly it)."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int | None = None

    def as_dict(self) -> dict:
        return asdict(self)


# The released models' shapes (their config.json); callers cut `layers` to fit their time.
QWEN25_1_5B = QwenShape(hidden=1536, layers=28, heads=12, kv_heads=2, intermediate=8960,
                        vocab=151936)
QWEN25_MATH_PRM_7B = QwenShape(hidden=3584, layers=28, heads=28, kv_heads=4,
                               intermediate=18944, vocab=152064)


def _config(shape: QwenShape, vocab: int, dtype: str, tie: bool):
    from transformers import Qwen2Config

    if shape.hidden % shape.heads or shape.heads % shape.kv_heads:
        raise ValueError(f"hidden must split into heads and heads into kv_heads: {shape}")
    return Qwen2Config(vocab_size=max(vocab, shape.vocab or 0), hidden_size=shape.hidden,
                       intermediate_size=shape.intermediate, num_hidden_layers=shape.layers,
                       num_attention_heads=shape.heads, num_key_value_heads=shape.kv_heads,
                       max_position_embeddings=4096, tie_word_embeddings=tie,
                       torch_dtype=dtype)


def _save(tensors: dict, folder: Path, dtype: str) -> None:
    from safetensors.torch import save_file

    cast = getattr(torch, dtype)
    save_file({k: v.detach().to(cast).contiguous().cpu() for k, v in tensors.items()},
              str(folder / "model.safetensors"), metadata={"format": "pt"})


def build_qwen_policy(folder, tokenizer, shape: QwenShape, seed: int = 0,
                      dtype: str = "float32", device: str = "cpu") -> str:
    """A Qwen2ForCausalLM of `shape` with random weights (tied embeddings, as Qwen2.5's small
    models have), saved in `dtype` with `tokenizer` in `folder`; returns the folder."""
    from transformers import Qwen2ForCausalLM

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(folder)
    config = _config(shape, len(tokenizer), dtype, tie=True)
    torch.manual_seed(seed)
    with torch.device(device):
        model = Qwen2ForCausalLM(config).eval()
    model.to(getattr(torch, dtype)).save_pretrained(folder)
    del model
    return str(folder)


def build_qwen_prm(folder, tokenizer, hidden: int = 64, layers: int = 2, seed: int = 0, *,
                   shape: QwenShape | None = None, dtype: str = "float32",
                   device: str = "cpu"):
    """A Qwen2 PRM with random weights saved as the released checkpoint is (so vLLM's
    Qwen2ForProcessRewardModel and the in-process qwen-prm style both load it), on
    `tokenizer` plus the step tag <extra_0>; returns (folder, the tag's token id).
    shape: the model's sizes (None: `hidden` and `layers`, hidden // 32 heads, one KV head,
    intermediate 2 * hidden)."""
    from transformers import AutoTokenizer, Qwen2Model

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    shape = shape or QwenShape(hidden, layers, max(1, hidden // 32), 1, 2 * hidden)
    tokenizer.save_pretrained(folder)
    tok = AutoTokenizer.from_pretrained(folder)
    tok.add_special_tokens({"additional_special_tokens": [STEP_TAG]})
    tok.save_pretrained(folder)
    config = _config(shape, len(tok), dtype, tie=False)
    torch.manual_seed(seed)
    with torch.device(device):
        body = Qwen2Model(config).eval()
        head = torch.nn.Sequential(torch.nn.Linear(shape.hidden, shape.hidden), torch.nn.ReLU(),
                                   torch.nn.Linear(shape.hidden, 2))
    tensors = {f"model.{k}": v for k, v in body.state_dict().items()}
    tensors |= {f"score.{k}": v for k, v in head.state_dict().items()}
    _save(tensors, folder, dtype)
    config.architectures = ["Qwen2ForProcessRewardModel"]
    config.auto_map = {"AutoModel": "modeling_qwen2_rm.Qwen2ForProcessRewardModel"}
    config.save_pretrained(folder)
    del body, head, tensors
    return str(folder), AutoTokenizer.from_pretrained(folder).convert_tokens_to_ids(STEP_TAG)
