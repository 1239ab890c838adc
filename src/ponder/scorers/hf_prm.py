"""Reward models from Hugging Face checkpoints, chosen by a style name and a path.

One class reads many checkpoints: a *style* says how a (question, steps) pair is laid out
as tokens and where the step scores are read, so a new checkpoint of a known family needs
no new code.

    qwen-prm        Qwen2.5-Math-PRM: chat template, steps joined and ended by the separator
                    token "<extra_0>"; a 2-class token head, P(class 1) at each separator.
    math-shepherd   Math-Shepherd (Wang et al., 2024): "question step1 ки\\nstep2 ки"; a causal
                    LM whose "+"/"-" next-token probabilities at each step tag score the step.
    orm             any sequence-classification outcome model: one score per response (the
                    logit with one label, P(label 1) with two).

Responses are split into steps on "\\n\\n" (configurable). Items are scored in batches of at
most `batch_tokens` padded tokens, shortest first. The model loads on first use, so naming
a scorer (to validate a command line) costs nothing.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import torch

from ponder.models import dtype_name
from ponder.scorers.base import Rating, ScoreItem, aggregate
from ponder.types import Usage

REWARD_STYLES = ("qwen-prm", "math-shepherd", "orm")
STYLE_ALIASES = {"qwen2.5-math-prm": "qwen-prm", "qwen_prm": "qwen-prm", "qwen": "qwen-prm",
                 "prm": "qwen-prm", "shepherd": "math-shepherd", "math_shepherd": "math-shepherd"}
QWEN_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."


def split_steps(text: str, separator: str = "\n\n") -> list[str]:
    """The non-empty steps of a response (stripped), in order."""
    return [s.strip() for s in text.split(separator) if s.strip()]


def canonical_style(style: str) -> str:
    key = style.strip().lower().replace("_", "-")
    key = STYLE_ALIASES.get(key, STYLE_ALIASES.get(style.strip().lower(), key))
    if key not in REWARD_STYLES:
        raise ValueError(f"unknown reward-model style {style!r}; use one of {', '.join(REWARD_STYLES)}")
    return key


class HFRewardModel:
    """A process (qwen-prm, math-shepherd) or outcome (orm) reward model on a local folder
    or hub id.

    separator: how responses are split into steps.
    aggregation: how step scores become Rating.score (min, prod, last, mean); step_scores
        are always returned too, so a strategy can combine them differently.
    step_token / good_token / bad_token: the separator or step tag and the "+"/"-" tokens.
    trust_remote_code: run a checkpoint's own model code. Not needed for the released
        Qwen2.5-Math-PRM (its MLP head is read natively); other checkpoints that ship code are
        refused without it rather than loaded with a randomly initialized head.
    """

    def __init__(self, path: str | Path, style: str = "qwen-prm", separator: str = "\n\n",
                 aggregation: str = "min", device: str | None = None, dtype: str = "auto",
                 batch_tokens: int = 8192, step_token: str | None = None,
                 good_token: str = "+", bad_token: str = "-", system_prompt: str = QWEN_SYSTEM,
                 trust_remote_code: bool = False):
        self.style = canonical_style(style)
        aggregate([], aggregation)  # validates the name now, not at the first score
        if not separator:
            raise ValueError("the step separator must be a non-empty string")
        if batch_tokens < 1:
            raise ValueError("batch_tokens must be >= 1")
        self.path, self.separator, self.aggregation = str(path), separator, aggregation
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.dtype, self.batch_tokens = dtype, batch_tokens
        self.step_token = step_token or {"qwen-prm": "<extra_0>", "math-shepherd": "ки"}.get(
            self.style)
        self.good_token, self.bad_token = good_token, bad_token
        self.system_prompt, self.trust_remote_code = system_prompt, trust_remote_code
        self.name = f"{self.style}:{self.path}"
        self.model = self.tokenizer = None

    # ---- loading ------------------------------------------------------------------------

    def load(self) -> HFRewardModel:
        """Load the checkpoint now (it is otherwise loaded on the first score call)."""
        if self.model is not None:
            return self
        import transformers

        _check_path(self.path)
        kwargs = {"trust_remote_code": self.trust_remote_code}
        try:
            config = transformers.AutoConfig.from_pretrained(self.path, **kwargs)
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(self.path, **kwargs)
        except OSError as err:
            raise ValueError(f"cannot load reward model {self.path!r}: {err}") from err
        dtype = self._torch_dtype()
        self._head = None
        if getattr(config, "auto_map", None) and not self.trust_remote_code:
            # The released Qwen2.5-Math-PRM ships code for a plain MLP head on a Qwen2 model;
            # read that head's weights ourselves rather than run the checkpoint's code.
            self._head = self._mlp_head() if self.style == "qwen-prm" else None
            if self._head is None:
                raise ValueError(
                    f"{self.path!r} ships its own model code (auto_map in config.json); pass "
                    "trust_remote_code=True to run it, after checking you trust it")
        auto = {"qwen-prm": transformers.AutoModelForTokenClassification,
                "math-shepherd": transformers.AutoModelForCausalLM,
                "orm": transformers.AutoModelForSequenceClassification}[self.style]
        if self.style == "qwen-prm" and getattr(config, "auto_map", None):
            # the base model (its head read by _mlp_head), or the PRM's own AutoModel class
            auto = _body_without_head(config) if self._head is not None else transformers.AutoModel
        self.model = auto.from_pretrained(self.path, dtype=dtype, **kwargs).to(self.device).eval()
        if self._head is not None:
            self._head = self._head.to(self.device, dtype).eval()
        self._step_id = self._single_id(self.step_token) if self.step_token else None
        if self.style == "math-shepherd":
            self._good_bad = self._candidate_ids()
        return self

    def _mlp_head(self):
        """Qwen2.5-Math-PRM's head, score = Linear(h, h) -> ReLU -> Linear(h, 2), from the
        checkpoint's tensors `score.0.*` and `score.2.*`; None if it has no such tensors."""
        import json

        from safetensors import safe_open
        from transformers.utils import cached_file

        index = cached_file(self.path, "model.safetensors.index.json",
                            _raise_exceptions_for_missing_entries=False)
        if index:
            weight_map = json.loads(Path(index).read_text())["weight_map"]
            shard = weight_map.get("score.0.weight")
        else:
            shard = "model.safetensors"
        path = cached_file(self.path, shard, _raise_exceptions_for_missing_entries=False) \
            if shard else None
        if not path:
            return None
        with safe_open(path, "pt") as f:
            names = set(f.keys())
            if not {"score.0.weight", "score.2.weight"} <= names:
                return None
            tensors = {k: f.get_tensor(k) for k in names if k.startswith("score.")}
        first, last = tensors["score.0.weight"], tensors["score.2.weight"]
        head = torch.nn.Sequential(
            torch.nn.Linear(first.shape[1], first.shape[0], bias="score.0.bias" in tensors),
            torch.nn.ReLU(),
            torch.nn.Linear(last.shape[1], last.shape[0], bias="score.2.bias" in tensors))
        head.load_state_dict({k.removeprefix("score."): v for k, v in tensors.items()})
        return head

    def _torch_dtype(self):
        if self.dtype == "auto":
            return torch.bfloat16 if self.device.startswith("cuda") else torch.float32
        return getattr(torch, dtype_name(self.dtype))

    def _single_id(self, token: str) -> int:
        ids = self.tokenizer.encode(token, add_special_tokens=False)
        if len(ids) != 1:
            raise ValueError(
                f"the step token {token!r} is {len(ids)} tokens in {self.path!r}'s tokenizer; "
                "a reward model of this style needs it to be one token")
        return ids[0]

    def _candidate_ids(self) -> tuple[int, int]:
        # As Math-Shepherd's reference code: encode "+ -" and take the two word tokens.
        ids = self.tokenizer.encode(f"{self.good_token} {self.bad_token}", add_special_tokens=False)
        if len(ids) == 2:
            return ids[0], ids[1]
        return (self.tokenizer.encode(self.good_token, add_special_tokens=False)[-1],
                self.tokenizer.encode(self.bad_token, add_special_tokens=False)[-1])

    # ---- scoring ------------------------------------------------------------------------

    def score(self, items: Sequence[ScoreItem]) -> list[Rating]:
        """One Rating per item; process styles fill step_scores (one per step)."""
        self.load()
        started = time.perf_counter()
        encoded = [self._encode(it) for it in items]
        values: list[list[float] | float | None] = [None] * len(items)
        todo = [i for i, (ids, _) in enumerate(encoded) if ids]
        for chunk in self._chunks(todo, encoded):
            for i, v in zip(chunk, self._run([encoded[i] for i in chunk]), strict=True):
                values[i] = v
        wall = time.perf_counter() - started
        total = sum(len(ids) for ids, _ in encoded) or 1
        ratings = []
        for (ids, _), value in zip(encoded, values, strict=True):
            usage = Usage(scorer_tokens=len(ids), calls=1 if ids else 0,
                          wall_seconds=wall * len(ids) / total)
            if self.style == "orm":
                ratings.append(Rating(float(value), usage=usage))
            else:
                steps = tuple(value or ())
                ratings.append(Rating(aggregate(steps, self.aggregation), steps, usage))
        return ratings

    def _encode(self, item: ScoreItem) -> tuple[list[int], int]:
        """Token ids and how many step scores to read (0 for an outcome model)."""
        steps = split_steps(item.response, self.separator)
        if self.style == "orm":
            return self._chat_ids(item.question, item.response.strip(), system=None), 0
        if not steps:  # nothing to rate: no steps, no model call
            return [], 0
        if self.style == "qwen-prm":
            body = "".join(f"{s}{self.step_token}" for s in steps)
            return self._chat_ids(item.question, body, system=self.system_prompt), len(steps)
        body = "".join(f"{s} {self.step_token}\n" for s in steps).rstrip("\n")
        return self.tokenizer.encode(f"{item.question} {body}"), len(steps)

    def _chat_ids(self, question: str, answer: str, system: str | None) -> list[int]:
        if getattr(self.tokenizer, "chat_template", None):
            messages = ([{"role": "system", "content": system}] if system else []) + [
                {"role": "user", "content": question}, {"role": "assistant", "content": answer}]
            text = self.tokenizer.apply_chat_template(messages, tokenize=False)
            return self.tokenizer.encode(text, add_special_tokens=False)
        return self.tokenizer.encode(f"{question}\n\n{answer}")

    def _chunks(self, todo: list[int], encoded) -> list[list[int]]:
        order = sorted(todo, key=lambda i: len(encoded[i][0]))
        chunks, current, longest = [], [], 0
        for i in order:
            length = len(encoded[i][0])
            if current and max(longest, length) * (len(current) + 1) > self.batch_tokens:
                chunks.append(current)
                current, longest = [], 0
            current.append(i)
            longest = max(longest, length)
        return chunks + ([current] if current else [])

    def _run(self, batch: list[tuple[list[int], int]]) -> list:
        """Right-padded forward pass (causal models: padding after a row cannot change it)."""
        width = max(len(ids) for ids, _ in batch)
        input_ids = torch.zeros(len(batch), width, dtype=torch.long)
        mask = torch.zeros_like(input_ids)
        for row, (ids, _) in enumerate(batch):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            mask[row, : len(ids)] = 1
        input_ids, mask = input_ids.to(self.device), mask.to(self.device)
        with torch.inference_mode():
            if self.style == "qwen-prm":
                out = self.model(input_ids=input_ids, attention_mask=mask)
                if self._head is not None:
                    logits = self._head(out.last_hidden_state)
                else:
                    logits = out.logits if hasattr(out, "logits") else out[0]
                probs = logits.float().softmax(dim=-1)[..., 1]
                return [self._at_steps(probs[row], ids, n) for row, (ids, n) in enumerate(batch)]
            hidden = self._hidden(input_ids, mask)
            if self.style == "math-shepherd":
                weight = self.model.get_output_embeddings().weight[list(self._good_bad)]
                out = []
                for row, (ids, n) in enumerate(batch):
                    pos = self._step_positions(ids, n)
                    two = (hidden[row, pos] @ weight.T).float().softmax(dim=-1)[:, 0]
                    out.append(two.tolist())
                return out
            last = mask.sum(dim=1) - 1
            pooled = self.model.score(hidden[torch.arange(len(batch)), last]).float()
            if pooled.shape[-1] == 1:
                return pooled[:, 0].tolist()
            return pooled.softmax(dim=-1)[:, 1].tolist()

    def _hidden(self, input_ids, mask) -> torch.Tensor:
        base = getattr(self.model, self.model.base_model_prefix, None)
        if base is None or (self.style == "orm" and not hasattr(self.model, "score")):
            raise ValueError(f"{self.path!r}: unsupported architecture for style {self.style!r}")
        return base(input_ids=input_ids, attention_mask=mask).last_hidden_state

    def _step_positions(self, ids: list[int], n: int) -> list[int]:
        # The last n occurrences: a question that happens to contain the tag cannot shift them.
        pos = [i for i, t in enumerate(ids) if t == self._step_id]
        if len(pos) < n:
            raise ValueError(
                f"found {len(pos)} step tokens {self.step_token!r} for {n} steps; the text may "
                "be cut or the tokenizer merges the tag with its neighbours")
        return pos[-n:]

    def _at_steps(self, probs: torch.Tensor, ids: list[int], n: int) -> list[float]:
        return probs[self._step_positions(ids, n)].tolist()


def _body_without_head(config):
    """The checkpoint's base model class (Qwen2Model for Qwen2.5-Math-PRM), told that the
    head's tensors (`score.*`, which `_mlp_head` reads) belong in the file: loaded as the
    plain base model, transformers printed them as unexpected keys (a "LOAD REPORT") on
    every load of the scorer."""
    import transformers

    try:
        base = transformers.AutoModel._model_mapping[type(config)]
    except KeyError:  # a config class transformers does not map: its usual loader decides
        return transformers.AutoModel
    return type(base.__name__, (base,), {"_keys_to_ignore_on_load_unexpected": [r"^score\."]})


def _check_path(path: str) -> None:
    """A clear error for a reward model that is neither a local folder nor a hub id, before
    transformers turns it into a question to the hub (which may be unreachable)."""
    local = Path(path).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise ValueError(f"reward model {path!r} is a folder but has no config.json: not a "
                             "Hugging Face model folder")
        return
    if local.exists() or path.startswith((".", "/", "~")):
        raise ValueError(f"no reward-model folder at {path!r}")
    if "/" not in path or " " in path:
        raise ValueError(f"no reward-model folder {path!r} here, and it is not a hub id "
                         "(org/name): give a folder or a hub id such as Qwen/Qwen2.5-Math-PRM-7B")
