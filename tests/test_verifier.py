"""Trained verifiers: labels, the probe, the folder format, the contamination guard, and the
data stage's resumption, on the table engine, synthetic data and the bundled model."""

from __future__ import annotations

import json
import math
import re
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
import torch

from ponder.engines.table import TableEngine
from ponder.scorers.backbone import STATS, Backbone
from ponder.scorers.base import ScoreItem
from ponder.scorers.probe import Probe
from ponder.scorers.registry import make_scorer
from ponder.scorers.trained import Card, TrainedVerifier, save_verifier
from ponder.tasks import arith
from ponder.tasks.datasets import Problem, load_task
from ponder.train.contamination import check_disjoint, check_training_task, normalise_question
from ponder.train.examples import Example
from ponder.train.probe import auroc, expected_calibration_error, train_probe
from ponder.train.process_labels import mc_labels
from ponder.train.trainer import VerifierConfig, content_of, split_by_problem
from ponder.types import SamplingParams

# ---- Monte Carlo process labels converge to the exact value ----------------------------------


def exact_success(engine: TableEngine, prefix: list[int], target: int, max_tokens: int) -> float:
    """P(a completion of `prefix` contains `target`), by enumerating every completion."""
    total = 0.0
    for seq in engine.sequences(prefix, max_tokens):
        if target in seq:
            total += math.exp(engine.sequence_logprob(prefix, seq))
    return total


def test_monte_carlo_labels_converge_to_the_exact_probability():
    engine = TableEngine(vocab_size=4, seed=3)
    prefixes = [[0], [1, 1], [2, 0, 1]]
    target, max_tokens = 2, 4
    exact = [exact_success(engine, p, target, max_tokens) for p in prefixes]
    assert min(exact) > 0.05 and max(exact) < 0.95  # informative: neither sure nor hopeless
    params = SamplingParams(temperature=1.0, max_tokens=max_tokens, seed=11)
    errors = {}
    for rollouts in (16, 2000):
        labels = mc_labels(engine, prefixes, lambda i, c: target in c.token_ids, rollouts,
                           params)
        errors[rollouts] = max(abs(soft - e) for (soft, _), e in zip(labels, exact, strict=True))
        assert all(hard == (soft > 0) for soft, hard in labels)
    # 2000 rollouts: the standard error is at most 0.5 / sqrt(2000) = 0.011; 4 of them.
    assert errors[2000] < 0.045
    assert errors[2000] < errors[16] or errors[16] < 0.045


# ---- the probe ---------------------------------------------------------------------------------


def separable(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    y = (torch.rand(n, generator=gen) < 0.3).float()  # imbalanced, as graded samples are
    x = torch.randn(n, 12, generator=gen)
    x[:, 3] += 3.0 * (2 * y - 1)  # one informative direction among noise
    return x, y


def test_training_lowers_the_loss_and_separates_a_separable_set():
    x, y = separable(400, 0)
    xv, yv = separable(200, 1)
    fit = train_probe(x, y, xv, yv)
    assert fit.train_loss[-1] < fit.train_loss[0] * 0.5
    assert fit.val_auroc > 0.98 and fit.val_accuracy > 0.9
    assert fit.val_ece < 0.1  # temperature-calibrated
    assert abs(fit.probe.weight[3]) == fit.probe.weight.abs().max()


def test_a_split_with_one_class_is_refused_with_what_to_do():
    x, _ = separable(50, 0)
    with pytest.raises(ValueError, match="only incorrect samples"):
        train_probe(x, torch.zeros(50), x, torch.ones(50))


def test_auroc_and_calibration_match_their_formulas():
    assert auroc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert auroc([1, 1, 0, 0], [0.1, 0.2, 0.3, 0.4]) == 0.0
    assert auroc([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]) == 0.5  # ties count half
    assert auroc([0, 1, 1], [0.2, 0.1, 0.3]) == 0.5
    assert math.isnan(auroc([1, 1], [0.1, 0.2]))
    assert expected_calibration_error([1, 0], [1.0, 0.0]) == 0.0
    assert expected_calibration_error([1, 1, 0, 0], [0.75, 0.75, 0.75, 0.75]) == 0.25


# ---- the folder: save, load, make_scorer -------------------------------------------------------


def question(a: int, b: int) -> list[dict]:
    return [{"role": "user", "content": f"What is {a} + {b}?"}]


def test_a_saved_verifier_loads_through_make_scorer_and_scores_the_same(engine, tmp_path):
    backbone = Backbone(engine.model, engine.tokenizer, "smollm2-135m")
    items = [ScoreItem("What is 2 + 3?", question(2, 3), "2 + 3 = 5. The answer is 5."),
             ScoreItem("What is 2 + 3?", question(2, 3), "2 + 3 = 7. The answer is 7."),
             ScoreItem("What is 4 + 1?", question(4, 1), "4 + 1 = 5.\n\nSo \\boxed{5}.")]
    feats = torch.cat(backbone.features([(i.prompt, i.response) for i in items]))
    gen = torch.Generator().manual_seed(0)
    probe = Probe(feats.mean(0), feats.std(0) + 1e-3, torch.randn(backbone.width, generator=gen),
                  0.1, 1.5)
    card = Card("outcome", "smollm2-135m", backbone.hash, backbone.layers, task="arith-train:1")
    save_verifier(tmp_path / "v", card, probe)
    expected = probe.probs(feats).tolist()
    for spec in (f"verifier:{tmp_path / 'v'}", f"orm:{tmp_path / 'v'}"):
        scorer = make_scorer(spec, engine)
        assert isinstance(scorer, TrainedVerifier)
        ratings = scorer.score(items)
        assert [r.score for r in ratings] == pytest.approx(expected, abs=1e-5)
        assert all(r.usage.scorer_tokens > 0 for r in ratings)
    # A process verifier scores every step: two steps in the third response.
    save_verifier(tmp_path / "p", Card("process", "smollm2-135m", backbone.hash,
                                       backbone.layers), probe)
    steps = make_scorer(f"verifier:{tmp_path / 'p'}", engine).score(items)
    assert [len(r.step_scores) for r in steps] == [1, 1, 2]
    assert steps[2].score == min(steps[2].step_scores)


def test_an_answer_reading_verifier_reads_the_final_answer_not_the_ramble_after_it(engine):
    end = Backbone(engine.model, engine.tokenizer, "smollm2-135m")
    answer = Backbone(engine.model, engine.tokenizer, "smollm2-135m", reads="answer")
    hidden = end.width - len(STATS)
    prompt = question(2, 8)
    rambling, clean, none = answer.features([(prompt, "2 + 8 = 10. Also 7 is odd."),
                                             (prompt, "2 + 8 = 10"), (prompt, "I do not know")])
    # The answer ("7", the last number) is read where it stands: the model is causal, so its
    # state there is the state at the end of the text cut after it.
    at_seven = end.features([(prompt, "2 + 8 = 10. Also 7")])[0]
    assert rambling.shape == (1, answer.width)
    assert torch.allclose(rambling[0, :hidden], at_seven[0, :hidden], atol=1e-4)
    # ... while the uncertainty statistics cover the whole response, as read at its end.
    whole = end.features([(prompt, "2 + 8 = 10. Also 7 is odd.")])[0]
    assert torch.allclose(rambling[0, hidden:hidden + len(STATS)], whole[0, hidden:], atol=1e-4)
    answer_logprob, after, missing = rambling[0, -3:].tolist()
    assert answer_logprob < 0 and after == pytest.approx(math.log1p(3)) and missing == 0
    # An answer at the very end is read at the end; no answer: read at the end and flagged.
    assert torch.allclose(clean[0, :hidden], end.features([(prompt, "2 + 8 = 10")])[0][0, :hidden],
                          atol=1e-4)
    assert clean[0, -2:].tolist() == [0.0, 0.0] and none[0, -3:].tolist() == [0.0, 0.0, 1.0]


def test_an_answer_reading_process_verifier_reads_its_last_step_at_the_final_answer(engine):
    end = Backbone(engine.model, engine.tokenizer, "smollm2-135m")
    answer = Backbone(engine.model, engine.tokenizer, "smollm2-135m", reads="answer")
    hidden = end.width - len(STATS)
    prompt = question(2, 8)
    text = "First, 2 + 8 = 10.\n\nSo it is 10. Also 7 is odd."
    [rows] = answer.features([(prompt, text)], steps=True)
    [at_ends] = end.features([(prompt, text)], steps=True)
    assert rows.shape == (2, answer.width)
    # The first step is read at its end, as before, and has no final answer yet ...
    assert torch.allclose(rows[0, :hidden + len(STATS)], at_ends[0], atol=1e-4)
    assert rows[0, -3:].tolist() == [0.0, 0.0, 1.0]
    # ... the last at the final answer ("7"), with the outcome reader's statistics.
    [outcome] = answer.features([(prompt, text)])
    assert torch.allclose(rows[1], outcome[0], atol=1e-4)
    # A final answer in an earlier step leaves the last step read at its own end.
    early = "The answer is 10.\n\nGood luck with the rest!"
    [rows] = answer.features([(prompt, early)], steps=True)
    [at_ends] = end.features([(prompt, early)], steps=True)
    assert torch.allclose(rows[:, :hidden], at_ends[:, :hidden], atol=1e-4)


@pytest.mark.parametrize("steps", [False, True])
def test_pooled_rows_add_the_mean_and_maximum_of_the_response_states(engine, tmp_path, steps):
    plain = Backbone(engine.model, engine.tokenizer, "smollm2-135m", reads="answer")
    pooled = Backbone(engine.model, engine.tokenizer, "smollm2-135m", reads="answer",
                      pool="mean-max")
    states = engine.model.config.hidden_size * len(pooled.layers)
    assert pooled.width == plain.width + 2 * states
    prompt = question(2, 8)
    text = "First, 2 + 8 = 10.\n\nSo it is 10. Also 7 is odd."
    [rows], [base] = pooled.features([(prompt, text)], steps), plain.features([(prompt, text)], steps)
    assert rows.shape == (len(base), pooled.width) == ((2 if steps else 1), pooled.width)
    torch.testing.assert_close(rows[:, :plain.width], base)
    # The pooled part, from transformers' own forward: each step's row pools the response
    # up to that step's end; the last row the whole response (what follows the answer too).
    e = pooled.encode(prompt, text)
    with torch.no_grad():
        out = engine.model(torch.tensor([e.ids]), output_hidden_states=True)
    response = torch.cat([out.hidden_states[i][0] for i in pooled.layers], -1)[e.first:e.stop]
    ends = e.ends if steps else [e.stop - 1]
    for row, end in zip(rows, ends, strict=True):
        upto = response[:end - e.first + 1]
        torch.testing.assert_close(row[plain.width:plain.width + states], upto.mean(0),
                                   atol=1e-3, rtol=1e-4)
        torch.testing.assert_close(row[plain.width + states:], upto.max(0).values,
                                   atol=1e-3, rtol=1e-4)
    # An empty response has nothing to pool: zeros, at the same width.
    [empty] = pooled.features([(prompt, "")])
    assert empty.shape == (1, pooled.width) and not empty[0, plain.width:].any()
    # The card says so, and the loaded verifier reads the same rows.
    gen = torch.Generator().manual_seed(0)
    probe = Probe(torch.zeros(pooled.width), torch.full((pooled.width,), 10.0),
                  torch.randn(pooled.width, generator=gen) / pooled.width ** 0.5, 0.0)
    kind = "process" if steps else "outcome"
    save_verifier(tmp_path / "v", Card(kind, "smollm2-135m", pooled.hash, pooled.layers,
                                       reads="answer", pool="mean-max"), probe)
    assert json.loads((tmp_path / "v" / "card.json").read_text())["pool"] == "mean-max"
    [rating] = make_scorer(f"verifier:{tmp_path / 'v'}", engine).score(
        [ScoreItem("What is 2 + 8?", prompt, text)])
    expected = probe.probs(rows).tolist()
    assert all(0.01 < p < 0.99 for p in expected)  # not saturated: the comparison means something
    assert list(rating.step_scores or [rating.score]) == pytest.approx(expected, abs=1e-5)


def test_pooling_is_for_a_probe_and_named_ones_only():
    # By default a probe pools (measured for both kinds); LoRA does not.
    assert VerifierConfig().pool == VerifierConfig(kind="process").pool == "mean-max"
    assert VerifierConfig(head="lora").pool == "none"
    assert VerifierConfig(pool="none").pool == "none"
    with pytest.raises(ValueError, match="pool must be one of"):
        VerifierConfig(pool="sum")
    with pytest.raises(ValueError, match="adds features for a probe"):
        VerifierConfig(pool="mean-max", head="lora")
    with pytest.raises(ValueError, match="pool must be one of"):
        Backbone(None, None, "x", pool="avg")  # checked before the model is read


def test_the_shipped_process_verifier_loads_for_the_bundled_model_and_scores_every_step(engine):
    # Loading checks the card's weights hash against the bundled model's.
    prm = make_scorer("verifier:smollm2-135m-arith-prm", engine)
    assert (prm.card.kind, prm.card.reads) == ("process", "answer")
    ratings = prm.score([ScoreItem("What is 2 + 3?", question(2, 3), text) for text in
                         ("2 + 3 = 5.\n\nSo the answer is 5.", "The answer is 7.")])
    assert [len(r.step_scores) for r in ratings] == [2, 1]
    assert all(r.score == min(r.step_scores) and 0 < r.score < 1 for r in ratings)


def test_a_verifier_for_other_weights_is_refused(engine, tmp_path):
    backbone = Backbone(engine.model, engine.tokenizer, "smollm2-135m")
    probe = Probe(torch.zeros(backbone.width), torch.ones(backbone.width),
                  torch.zeros(backbone.width), 0.0)
    save_verifier(tmp_path / "v", Card("outcome", "smollm2-135m", "0123456789abcdef",
                                       backbone.layers), probe)
    with pytest.raises(ValueError, match="retrain the verifier"):
        make_scorer(f"verifier:{tmp_path / 'v'}", engine).score(
            [ScoreItem("q", question(1, 1), "2")])


def test_a_missing_or_foreign_folder_says_what_to_do(tmp_path):
    with pytest.raises(ValueError, match="train-verifier"):
        TrainedVerifier(tmp_path / "nothing-here")
    (tmp_path / "card.json").write_text('{"format": "something else"}')
    with pytest.raises(ValueError, match="train-verifier"):
        TrainedVerifier(tmp_path)


def test_ponder_models_lists_the_shipped_verifiers_and_the_scorer_hint_names_one(capsys):
    from ponder.cli import main
    from ponder.scorers.trained import scorer_hint, shipped_names

    assert main(["models", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    verifiers = {row["name"]: row for row in listed["verifiers"]}
    assert set(verifiers) == set(shipped_names()) >= {"smollm2-135m-arith-orm",
                                                       "smollm2-135m-arith-prm"}
    orm = verifiers["smollm2-135m-arith-orm"]
    assert (orm["kind"], orm["base_model"], orm["scorer"]) == (
        "outcome", "smollm2-135m", "verifier:smollm2-135m-arith-orm")
    assert 0.5 < orm["val_auroc"] <= 1
    assert [row["name"] for row in listed["models"]] == ["smollm2-135m"]
    assert main(["models"]) == 0
    text = capsys.readouterr().out
    assert all(name in text for name in verifiers) and "--scorer verifier:NAME" in text
    # A strategy without a scorer is told of one that works on the bundled model.
    assert "--scorer verifier:smollm2-135m-arith-orm" in scorer_hint()


# ---- contamination ----------------------------------------------------------------------------


def test_arith_splits_share_no_operands():
    for level in arith.LEVELS:
        train = {tuple(sorted(_numbers(p.question))) for p in
                 load_task(f"arith-train:{level}", limit=300)}
        evaluation = {tuple(sorted(_numbers(p.question))) for p in
                      load_task(f"arith:{level}", limit=300)}
        assert train and evaluation and not train & evaluation
    assert all(arith.split_of({"a": a, "b": b}) == arith.split_of({"x": b, "y": a})
               for a in range(1, 10) for b in range(1, 10))


def test_validation_holds_out_content_not_just_problem_ids():
    problems = load_task("arith-train:1", limit=200)
    examples = [Example(p.id, p.question, f"#### {p.answer}", (float(i % 2),))
                for p in problems for i in range(2)]
    content = {p.id: content_of(p) for p in problems}
    train, val = split_by_problem(examples, 0.25, seed=0, content=content)
    sums = {p.id: tuple(sorted(_numbers(p.question))) for p in problems}
    train_sums = {sums[e.problem_id] for e in train}
    val_sums = {sums[e.problem_id] for e in val}
    assert train_sums and val_sums and not train_sums & val_sums
    # Whole problems, about a quarter of them, every example in exactly one split.
    assert len(train) + len(val) == len(examples)
    assert 40 <= len({e.problem_id for e in val}) <= 75
    # By id alone (no content), the same problems' sums leak across the split.
    train, val = split_by_problem(examples, 0.25, seed=0)
    assert {sums[e.problem_id] for e in train} & {sums[e.problem_id] for e in val}
    # Elsewhere the content is the normalised question: copies of a question stay together.
    copies = [Problem("a", "What is 2+2?", "4"), Problem("b", "what is  2+2", "4"),
              Problem("c", "Name a prime.", "2")]
    assert content_of(copies[0]) == content_of(copies[1]) != content_of(copies[2])
    examples = [Example(p.id, p.question, "x", (1.0,)) for p in copies]
    for seed in range(5):
        train, val = split_by_problem(examples, 0.5, seed, {p.id: content_of(p) for p in copies})
        held = {e.problem_id for e in val}
        assert train and held in ({"a", "b"}, {"c"})


def test_the_split_draws_again_until_both_sides_hold_both_classes():
    # Two correct problems among ten: validation needs one of them, training the other.
    examples = [Example(f"p{i}", "q", "r", (float(i < 2),)) for i in range(10)]
    for seed in range(8):
        train, val = split_by_problem(examples, 0.3, seed)
        assert {e.labels[0] for e in train} == {e.labels[0] for e in val} == {0.0, 1.0}


def _numbers(text: str) -> list[int]:
    import re

    return [int(x) for x in re.findall(r"\d+", text)]


def test_training_on_evaluation_problems_is_refused_unless_forced():
    for task in ("arith:1", "arith", "math500", "gsm8k"):
        with pytest.raises(ValueError, match="--force"):
            check_training_task(task)
        check_training_task(task, force=True)
    check_training_task("arith-train:1")
    train = [Problem("t1", "What is  2+2 ?", "4"), Problem("t2", "Name a prime.", "2")]
    evaluation = [Problem("e1", "what is 2+2", "4")]
    assert normalise_question("What is  2+2 ?") == normalise_question("what is 2+2")
    with pytest.raises(ValueError, match="t1"):
        check_disjoint(train, evaluation, "mine.jsonl")
    check_disjoint(train[1:], evaluation, "mine.jsonl")


# ---- the command: bad input, and the data stage survives SIGKILL --------------------------------


def ponder(*args: str) -> list[str]:
    return [sys.executable, "-m", "ponder.cli", *args]


@pytest.mark.parametrize("args, message", [
    (["--task", "arith:1"], "arith-train:1"),
    (["--task", "gsm8k"], "evaluation set"),
    (["--limit", "1"], "--limit must be >= 2"),
    (["--kind", "reward"], "invalid choice"),
    (["--pool", "sum"], "invalid choice"),
    (["--pool", "mean-max", "--head", "lora"], "adds features for a probe"),
])
def test_bad_input_fails_with_what_to_do(tmp_path, args, message):
    result = subprocess.run(ponder("train-verifier", *args, "--data", str(tmp_path / "d.db"),
                                   "--out", str(tmp_path / "v")),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def rows(db) -> tuple[int, int, int]:
    with sqlite3.connect(db) as conn:
        problems = conn.execute("SELECT COUNT(*) FROM problems").fetchone()[0]
        samples = conn.execute("SELECT COUNT(*) FROM samples").fetchone()[0]
        distinct = conn.execute("SELECT COUNT(DISTINCT run_id || problem_id || idx) "
                                "FROM samples").fetchone()[0]
    return problems, samples, distinct


def problems_stored(db) -> int:
    """Problems the data stage has finished so far; 0 until it has created its tables
    (the file exists a moment before its schema does)."""
    if not db.exists():
        return 0
    try:
        return rows(db)[0]
    except sqlite3.OperationalError:
        return 0


@pytest.mark.slow
def test_the_data_stage_resumes_after_sigkill_with_nothing_lost_or_doubled(tmp_path):
    db, out = tmp_path / "data.db", tmp_path / "v"
    args = ponder("train-verifier", "--limit", "8", "--samples", "2", "--max-tokens", "24",
                  "--data", str(db), "--out", str(out), "--no-progress", "--threads", "1",
                  "--chunk", "1")
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if problems_stored(db) >= 1:
            break
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = rows(db)[0]
    assert 1 <= done_before < 8 and not out.exists()
    result = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert rows(db) == (8, 16, 16)
    assert "validation: AUROC" in result.stdout
    assert isinstance(make_scorer(f"verifier:{out}"), TrainedVerifier)


@pytest.mark.slow
def test_a_process_verifier_trains_end_to_end_and_scores_steps(engine, tmp_path, capfd):
    from ponder.train.trainer import VerifierConfig, train_verifier

    config = VerifierConfig(task="arith-train:1", prompt="cot", limit=6, samples=3,
                            max_tokens=48, kind="process", rollouts=2, val_fraction=0.5)
    card, fit, _ = train_verifier(config, engine, tmp_path / "data.db", tmp_path / "prm",
                                  progress=True)
    # Each stage shows its progress, the feature pass (a forward per sample) included.
    shown = capfd.readouterr().err
    for stage in ("verifier data", "process labels", "verifier features"):
        assert stage in shown
    n = card.data["samples"]
    assert re.search(rf"verifier features: 100%\|[^|]*\| {n}/{n} ", shown)
    assert card.kind == "process" and card.data["positions"] >= card.data["samples"]
    with sqlite3.connect(tmp_path / "data.db") as conn:  # the step labels were stored
        assert conn.execute("SELECT COUNT(*) FROM process_labels").fetchone()[0] == \
            card.data["positions"] - card.data["samples"]
    prm = make_scorer(f"verifier:{tmp_path / 'prm'}", engine)
    [rating] = prm.score([ScoreItem("What is 2 + 3?", question(2, 3),
                                    "First, 2 + 3 = 5.\n\nSo the answer is 5.")])
    assert len(rating.step_scores) == 2 and all(0 <= v <= 1 for v in rating.step_scores)


@pytest.mark.parametrize("reads, pool", [("end", "none"), ("answer", "none"),
                                         ("answer", "mean-max")])
@pytest.mark.parametrize("steps", [False, True])
def test_items_that_share_a_prompt_feed_it_once_and_read_the_same_features(
        engine, monkeypatch, reads, pool, steps):
    """Best-of-N's samples share their prompt: the backbone feeds it once and reads every
    response over its keys and values; the features equal one forward per item, and each
    prompt's tokens are counted once."""
    from ponder.scorers import backbone as backbone_module

    backbone = Backbone(engine.model, engine.tokenizer, "smollm2-135m", reads=reads, pool=pool)
    question = [{"role": "user", "content": "What is 3 + 4?"}]
    other = [{"role": "user", "content": "What is 12 + 5? Show your work."}]
    items = [(question, "3 + 4 = 7.\nThe answer is 7."), (question, "It is 8"),
             (other, "12 + 5 = 17.\nSo 17."), (question, "3 plus 4\nmakes 7, I think"),
             (other, "17")]
    shared = backbone.features(items, steps=steps)
    fed = list(backbone.fed_tokens)
    monkeypatch.setattr(backbone_module, "_distinct_prompts", lambda batch: None)
    whole = backbone.features(items, steps=steps)
    for a, b in zip(shared, whole, strict=True):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, atol=2e-3, rtol=1e-4)
    encoded = [backbone.encode(p, r) for p, r in items]
    assert backbone.fed_tokens == [len(e.ids) for e in encoded]
    # Each prompt once (for the first item that has it in the order fed), every response.
    prompts = {tuple(e.ids[:e.first]) for e in encoded}
    assert sum(fed) == sum(map(len, prompts)) + sum(e.stop - e.first for e in encoded)


def test_an_empty_response_keeps_every_item_on_its_own_forward(engine):
    backbone = Backbone(engine.model, engine.tokenizer, "smollm2-135m")
    question = [{"role": "user", "content": "What is 3 + 4?"}]
    rows = backbone.features([(question, "7"), (question, "")])
    encoded = [backbone.encode(question, r) for r in ("7", "")]
    assert backbone.fed_tokens == [len(e.ids) for e in encoded]
    assert all(r.shape == (1, backbone.width) for r in rows)
