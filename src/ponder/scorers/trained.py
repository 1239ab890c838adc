"""Verifiers trained by `ponder train-verifier`: a probe head on a frozen backbone, or LoRA
on its top layers with a head (scorers.adapted), in a folder any scorer spec can name.

    make_scorer("verifier:/path/to/folder", engine)      # outcome or process, as trained
    make_scorer("orm:/path/to/folder")                    # the same, by the orm style
    make_scorer("verifier:smollm2-135m-arith-orm")        # one shipped with ponder

The folder holds `card.json` (what it is, the backbone and its weights' hash, the task and
data it was trained on, validation metrics, the command that made it) and
`head.safetensors` (the probe, or the adapters and head). An outcome verifier scores a response at its last token; a
process verifier scores every step's last token (step_scores) and aggregates them.

The backbone is the policy itself by default: given the engine whose model it was trained
on, the scorer reads that engine's loaded model (no second copy); otherwise it loads the
base model named in the card. Either way the weights' hash must match the card's.
"""

from __future__ import annotations

import functools
import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from ponder.scorers.base import Rating, ScoreItem, aggregate
from ponder.types import Usage

FORMAT = "ponder-verifier"
VERSION = 1
KINDS = ("outcome", "process")


@dataclass(frozen=True)
class Card:
    kind: str  # outcome or process
    base_model: str
    base_hash: str
    layers: tuple[int, ...]
    head: str = "probe"  # or "lora" (scorers.adapted)
    lora: dict[str, int] = field(default_factory=dict)  # LoRA: {"layers": top, "rank": r}
    reads: str = "end"  # where the (last step's) verdict is read: "end" or "answer" (scorers.backbone)
    pool: str = "none"  # "mean-max": rows carry the response's pooled states (scorers.backbone)
    task: str = ""
    prompt: str = ""
    labels: str = ""  # how the labels were made (graded samples, Monte Carlo rollouts)
    data: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    command: str = ""

    def to_json(self) -> str:
        return json.dumps({"format": FORMAT, "version": VERSION, **asdict(self)}, indent=2)


def save_verifier(folder: str | Path, card: Card, probe) -> Path:
    from safetensors.torch import save_file

    if card.kind not in KINDS:
        raise ValueError(f"a verifier's kind is one of {KINDS}, got {card.kind!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in probe.tensors().items()},
              str(folder / "head.safetensors"))
    (folder / "card.json").write_text(card.to_json() + "\n")
    return folder


def is_verifier_folder(path: str | Path) -> bool:
    card = Path(path) / "card.json"
    if not card.is_file():
        return False
    try:
        return json.loads(card.read_text()).get("format") == FORMAT
    except (OSError, ValueError):
        return False


def shipped(name: str) -> Path | None:
    """The folder of a verifier that ships with ponder, by name; None if there is none."""
    folder = resources.files("ponder").joinpath("verifiers", name)
    return Path(str(folder)) if is_verifier_folder(str(folder)) else None


def verifier_folder(path: str | Path) -> Path | None:
    """The folder a verifier path names: the path itself if it exists, else the shipped
    verifier of that name, else None."""
    return Path(path) if Path(path).exists() else shipped(str(path))


def shipped_names() -> list[str]:
    root = resources.files("ponder").joinpath("verifiers")
    return sorted(p.name for p in root.iterdir() if is_verifier_folder(str(p))) \
        if root.is_dir() else []


def shipped_summaries() -> list[dict[str, Any]]:
    """What `ponder models` shows of each shipped verifier: its name, the scorer spec that
    uses it, its kind, base model, task and validation AUROC (from its card)."""
    rows = []
    for name in shipped_names():
        card = load_card(shipped(name))
        rows.append({"name": name, "scorer": f"verifier:{name}", "kind": card.kind,
                     "base_model": card.base_model, "task": card.task,
                     "val_auroc": card.metrics.get("val_auroc")})
    return rows


def scorer_hint() -> str:
    """How to give a strategy that needs a scorer one, naming a shipped verifier."""
    rows = shipped_summaries()
    row = next((r for r in rows if r["kind"] == "outcome"), rows[0] if rows else None)
    trained = "" if row is None else (
        f", or a trained verifier such as --scorer {row['scorer']} (for {row['base_model']} on "
        f"{row['task']}; `ponder models` lists those shipped)")
    return f"add --scorer mean_logprob (any model){trained}"


def verifier_fingerprint(scorer: str) -> str | None:
    """A digest of the files of the verifier a scorer name points to (None if it names no
    verifier folder): a run scored by a retrained verifier is another run."""
    _style, sep, path = scorer.partition(":")
    if not sep or not path:
        return None
    folder = verifier_folder(path)
    if folder is None or not is_verifier_folder(folder):
        return None
    stamps = tuple((f.stat().st_mtime_ns, f.stat().st_size)
                   for f in (folder / "card.json", folder / "head.safetensors"))
    return _digest(str(folder.resolve()), stamps)


@functools.lru_cache(maxsize=64)
def _digest(folder: str, stamps: tuple) -> str:  # stamps: re-read when a file changes
    digest = hashlib.sha256()
    for name in ("card.json", "head.safetensors"):
        digest.update((Path(folder) / name).read_bytes())
    return digest.hexdigest()[:16]


def load_card(folder: str | Path) -> Card:
    folder = Path(folder)
    if not is_verifier_folder(folder):
        raise ValueError(f"{folder} is not a ponder verifier folder (no card.json of format "
                         f"{FORMAT!r}); make one with `ponder train-verifier`")
    raw = json.loads((folder / "card.json").read_text())
    if raw.get("version") != VERSION:
        raise ValueError(f"{folder}: verifier format version {raw.get('version')} is not "
                         f"{VERSION}; retrain it with this ponder")
    fields_ = {k: v for k, v in raw.items() if k not in ("format", "version")}
    fields_["layers"] = tuple(fields_["layers"])
    return Card(**fields_)


class TrainedVerifier:
    """A Scorer from a verifier folder (see the module docstring).

    engine: the policy engine; its model is reused when it is the card's backbone.
    aggregation: how a process verifier's step scores become the score (min, prod, last,
        mean); step_scores are returned as well.
    """

    def __init__(self, path: str | Path, engine=None, aggregation: str = "min"):
        folder = verifier_folder(path)
        if folder is None:
            raise ValueError(f"no verifier at {path!r}: give a folder made by `ponder "
                             f"train-verifier`, or one shipped with ponder "
                             f"({', '.join(shipped_names()) or 'none'})")
        aggregate([], aggregation)
        self.folder, self.card = folder, load_card(folder)
        self.engine, self.aggregation = engine, aggregation
        self.name = f"verifier:{path}"
        self._backbone = self._head = None

    @property
    def kind(self) -> str:
        return self.card.kind

    def load(self) -> TrainedVerifier:
        if self._head is not None:
            return self
        from safetensors.torch import load_file

        from ponder.scorers.backbone import Backbone
        from ponder.scorers.probe import Probe

        backbone = None
        model = getattr(self.engine, "model", None)
        if model is not None and getattr(self.engine, "tokenizer", None) is not None:
            backbone = Backbone(model, self.engine.tokenizer, self.engine.model_name,
                                self.card.layers, self.card.reads, self.card.pool)
            if backbone.hash != self.card.base_hash:
                backbone = None  # another model: load the card's own
        if backbone is None:
            backbone = Backbone.load(self.card.base_model, layers=self.card.layers,
                                     reads=self.card.reads, pool=self.card.pool)
        if backbone.hash != self.card.base_hash:
            raise ValueError(
                f"the verifier in {self.folder} was trained on {self.card.base_model!r} with "
                f"weights hash {self.card.base_hash}, but that model now has hash "
                f"{backbone.hash}: retrain the verifier for this model")
        self._backbone = backbone
        tensors = load_file(str(self.folder / "head.safetensors"))
        if self.card.head == "lora":
            from ponder.scorers.adapted import AdaptedTop

            self._head = AdaptedTop(backbone.model, self.card.lora["layers"],
                                    self.card.lora["rank"]).load_tensors(tensors).eval()
        else:
            self._head = Probe.from_tensors(tensors)
        return self

    def score(self, items: Sequence[ScoreItem]) -> list[Rating]:
        from ponder.scorers.backbone import verdict_positions

        self.load()
        started = time.perf_counter()
        process = self.card.kind == "process"
        encoded = [self._backbone.encode(it.prompt, it.response) for it in items]
        if self.card.head == "lora":
            probs_each = [self._head.probs(e.ids, verdict_positions(e, self.card.reads, process))
                          for e in encoded]
            lengths = [len(ids) for ids, *_ in encoded]
        else:
            probs_each = [self._head.probs(rows) for rows in
                          self._backbone.encoded_features(encoded, steps=process)]
            lengths = self._backbone.fed_tokens  # a prompt shared by items is fed once
        wall = time.perf_counter() - started
        total = sum(lengths) or 1
        ratings = []
        for each, length in zip(probs_each, lengths, strict=True):
            probs = tuple(each.tolist())
            usage = Usage(scorer_tokens=length, calls=1, wall_seconds=wall * length / total)
            if process:
                ratings.append(Rating(aggregate(probs, self.aggregation), probs, usage))
            else:
                ratings.append(Rating(probs[-1], None, usage))
        return ratings
