"""Scorers by name, so a command line, a recipe or a server request can pick one.

    make_scorer("judge", engine)                          # P(Yes) per step, the policy judges
    make_scorer("judge_answer", engine)                   # P(Yes) that the final answer is right
    make_scorer("qwen-prm:/models/Qwen2.5-Math-PRM-7B", trust_remote_code=True)
    make_scorer("math-shepherd:peiyi9979/math-shepherd-mistral-7b-prm")
    make_scorer("orm:/models/my-reward-model")            # any sequence-classification ORM
    make_scorer("mean_logprob", engine)                   # and the model-free likelihood scorers
    make_scorer("verifier:smollm2-135m-arith-orm", engine)  # trained by ponder train-verifier
    make_scorer("http-prm:http://127.0.0.1:8000")      # a PRM served by vLLM or ponder serve

A reward model is a style plus a path ("STYLE:PATH"; "prm:PATH" means qwen-prm). Models load
on first use, so building a scorer to validate its name is free. Options (separator,
aggregation, device, dtype, ...) go to the scorer's constructor.
"""

from __future__ import annotations

from typing import Any

from ponder.scorers.hf_prm import REWARD_STYLES, STYLE_ALIASES, HFRewardModel, canonical_style
from ponder.scorers.judge import JudgeScorer
from ponder.scorers.likelihood import HeuristicScorer, LikelihoodScorer
from ponder.scorers.self_certainty import SelfCertaintyScorer
from ponder.scorers.trained import is_verifier_folder

BUILTIN = {
    "mean_logprob": "mean token log-probability under the policy",
    "sum_logprob": "summed token log-probability under the policy",
    "self_certainty": "mean KL(uniform || next-token distribution) under the policy",
    "heuristic": "a boxed answer, then brevity (free)",
    "judge": "P(Yes) to 'is this step correct?' from the policy (or any engine), per step",
    "judge_answer": "P(Yes) to 'is the final answer correct?' from the policy, per response",
}
ALIASES = {"likelihood": "mean_logprob", "mean-logprob": "mean_logprob",
           "sum-logprob": "sum_logprob", "judge_step": "judge", "judge:step": "judge",
           "judge-answer": "judge_answer", "self-certainty": "self_certainty", "judge:answer": "judge_answer"}


def scorer_names() -> list[str]:
    """Every name make_scorer takes, reward models as STYLE:PATH."""
    return [*BUILTIN, *(f"{s}:PATH" for s in REWARD_STYLES), "verifier:PATH", "http-prm:URL",
            "http-orm:URL"]


def make_scorer(name: str, engine: Any = None, **options: Any):
    """A scorer by name (see the module docstring); `engine` is the model the likelihood
    scorers and the judge read (None only to validate a name)."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"a scorer name must be a non-empty string, got {name!r}")
    key = ALIASES.get(name.strip(), name.strip())
    if key in ("mean_logprob", "sum_logprob"):
        return LikelihoodScorer(engine, key.split("_")[0], **options)
    if key == "self_certainty":
        return SelfCertaintyScorer(engine, **options)
    if key == "heuristic":
        return HeuristicScorer(**options)
    if key in ("judge", "judge_answer"):
        return JudgeScorer(engine, target="step" if key == "judge" else "answer", **options)
    style, sep, path = key.partition(":")
    if sep and path and style.lower() in ("http-prm", "http-orm"):
        from ponder.scorers.http import HTTPRewardModel

        return HTTPRewardModel(path, style.lower()[5:], **options)  # served over HTTP
    if sep and path and (style.lower() == "verifier" or is_verifier_folder(path)):
        from ponder.scorers.trained import TrainedVerifier

        return TrainedVerifier(path, engine, **options)  # trained by `ponder train-verifier`
    if sep and path and (style.lower() in REWARD_STYLES or style.lower() in STYLE_ALIASES
                         or style.lower().replace("_", "-") in REWARD_STYLES):
        return HFRewardModel(path, canonical_style(style), **options)
    raise ValueError(
        f"unknown scorer {name!r}; use one of {', '.join(BUILTIN)}, or a reward model as "
        f"STYLE:PATH with STYLE one of {', '.join(REWARD_STYLES)} (e.g. qwen-prm:/models/prm), or a served one "
        f"as http-prm:URL or http-orm:URL")
