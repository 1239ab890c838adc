"""The eval runner: spec validation, streaming into the store, resume, recipes, report."""

from __future__ import annotations

import pytest

from ponder.eval.metrics import Samples, summarize
from ponder.eval.report import format_table, summarize_run, summarize_store
from ponder.eval.runner import run_eval
from ponder.eval.spec import RunSpec, load_recipe, make_spec, recipe_names
from ponder.eval.store import Store
from ponder.tasks.grade import is_equiv

SMALL = {"task": "arith:1", "strategy": "sc", "n": 2, "max_tokens": 32, "prompt": "fewshot"}


@pytest.mark.parametrize("raw, message", [
    ({"task": "arith:1", "strategy": "tree_of_thoughts"}, "unknown strategy"),
    ({"task": "nope"}, "unknown task"),
    ({"task": "arith:9"}, "unknown arith level"),
    ({"task": "arith:1", "prompt": "haiku"}, "unknown prompt style"),
    ({"task": "arith:1", "temprature": 0.5}, "unknown run option"),
    ({"task": "arith:1", "strategy": "greedy", "n": 4}, "greedy gives one answer"),
    ({"task": "arith:1", "strategy": "sc", "iterations": 2}, "does not take"),
    ({"task": "arith:1", "strategy": "bon"}, "needs a scorer"),
    ({"task": "arith:1", "strategy": "bon", "scorer": "oracle"}, "unknown scorer"),
    ({"task": "arith:1", "model": "gpt-17"}, "unknown model"),
    ({"task": "arith:1", "dtype": "int3"}, "unknown dtype"),
    ({"task": "arith:1", "temperature": -1.0}, "temperature"),
    ({"strategy": "greedy"}, "no task"),
])
def test_bad_specs_say_what_is_wrong(raw, message):
    with pytest.raises(ValueError, match=message):
        make_spec(raw)


def test_spec_resolves_defaults_and_hashes_what_matters():
    spec = make_spec(SMALL)
    assert spec.strategy == "self_consistency" and spec.options["seed"] == 0
    assert spec.options["temperature"] == 0.7  # the strategy's default, made explicit
    assert spec.label == "self_consistency@2 [fewshot]"
    same = make_spec({**SMALL, "strategy": "self-consistency", "temperature": 0.7,
                      "limit": 3, "label": "mine"})
    assert same.run_id == spec.run_id  # limit and label do not define results
    for change in ({"seed": 1}, {"n": 3}, {"prompt": "cot"}, {"levels": [1]}, {"raw": True}):
        assert make_spec({**SMALL, **change}).run_id != spec.run_id, change
    cot = make_spec({"task": "arith:1", "strategy": "cot"})
    assert (cot.strategy, cot.prompt, cot.label) == ("greedy", "cot", "cot")


def test_recipes_ship_and_validate(tmp_path):
    assert {"greedy", "cot", "sc8", "bon8", "self-refine", "demo"} <= set(recipe_names())
    for name in recipe_names():
        for raw in load_recipe(name):
            make_spec({"task": "arith:1", **raw})
    demo = [make_spec(raw) for raw in load_recipe("demo")]
    assert [(s.strategy, s.prompt) for s in demo[:3]] == [
        ("greedy", "plain"), ("greedy", "fewshot"), ("self_consistency", "fewshot")]
    assert demo[2].options["n"] == 8 and len({s.run_id for s in demo}) == len(demo)
    # The verifier runs read the shipped verifiers, on the prompt they were trained on.
    verified = {s.strategy: (s.scorer, s.prompt) for s in demo if s.scorer}
    assert verified == {"best_of_n": ("verifier:smollm2-135m-arith-orm", "plain"),
                        "weighted_best_of_n": ("verifier:smollm2-135m-arith-orm", "plain"),
                        "beam_search": ("verifier:smollm2-135m-arith-prm", "plain")}
    path = tmp_path / "r.yaml"
    path.write_text("task: arith:1\nmax_tokens: 16\nruns:\n  - {strategy: greedy}\n"
                    "  - {strategy: sc, n: 4, max_tokens: 24}\n")
    runs = load_recipe(str(path))
    assert runs == [{"task": "arith:1", "max_tokens": 16, "strategy": "greedy"},
                    {"task": "arith:1", "max_tokens": 24, "strategy": "sc", "n": 4}]
    path.write_text("runs: [1, 2]\n")
    with pytest.raises(ValueError, match="runs"):
        load_recipe(str(path))
    path.write_text("task: [unclosed\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_recipe(str(path))
    with pytest.raises(ValueError, match="shipped"):
        load_recipe("no-such-recipe")


def test_run_eval_streams_grades_resumes_and_extends(engine, tmp_path):
    spec = make_spec({**SMALL, "limit": 4})
    with Store(tmp_path / "runs.db") as store:
        first = run_eval(spec, engine, store, chunk=3, progress=False)
        assert (first.added, first.skipped) == (4, 0)
        rows = store.problems(spec.run_id)
        problems = spec.load_problems()
        assert [r.problem_id for r in rows] == [p.id for p in problems]
        for r, p in zip(rows, problems, strict=True):
            assert len(r.samples) == 2
            assert r.gold == p.answer
            assert r.correct == is_equiv(r.answer, p.answer)
            assert [s.correct for s in r.samples] == [is_equiv(s.extracted, p.answer)
                                                      for s in r.samples]
            assert r.usage["generated_tokens"] == sum(s.tokens for s in r.samples)
            assert sum(v["votes"] for v in r.trace["votes"]) <= 2

        again = run_eval(spec, engine, store, chunk=3, progress=False)
        assert (again.added, again.skipped) == (0, 4)

        wider = make_spec({**SMALL, "limit": 6})
        assert wider.run_id == spec.run_id
        more = run_eval(wider, engine, store, chunk=3, progress=False)
        assert (more.added, more.skipped) == (2, 4)
        assert store.problems(spec.run_id)[:4] == rows  # earlier rows untouched
        assert store.counts() == (1, 6, 12)
        [run] = store.runs()
        assert (run.done, run.planned) == (6, 6)


def test_report_metrics_come_from_the_stored_samples(engine, tmp_path):
    spec = make_spec({**SMALL, "n": 4, "limit": 3})
    with Store(tmp_path / "runs.db") as store:
        run_eval(spec, engine, store, progress=False)
        [run] = store.runs()
        summary = summarize_run(store, run)
        rows = store.problems(spec.run_id)
        expected = summarize([Samples([s.extracted for s in r.samples],
                                      [s.correct for s in r.samples]) for r in rows], [1, 2, 4])
        assert summary.ks == (1, 2, 4)
        assert summary.metrics == expected
        assert summary.accuracy == sum(r.correct for r in rows) / 3
        assert summary.ci_low <= summary.accuracy <= summary.ci_high
        assert summary.tokens_per_problem == sum(r.usage["forward_tokens"] for r in rows) / 3
        text = format_table([summary])
        assert spec.label in text and "maj@k" in text and "pass@k" in text
        assert summarize_store(store, [spec.run_id[:6]]) == [summary]
        with pytest.raises(ValueError, match="no run"):
            summarize_store(store, ["zzzz"])


def test_report_shows_adaptive_runs_against_fixed_n(engine, tmp_path):
    adaptive = make_spec({**SMALL, "strategy": "asc", "n": 6, "round_size": 2, "min_rounds": 1,
                          "limit": 3})
    fixed = make_spec({**SMALL, "limit": 3})
    with Store(tmp_path / "runs.db") as store:
        for spec in (adaptive, fixed):
            run_eval(spec, engine, store, progress=False)
        by_id = {s.run_id: s for s in summarize_store(store)}
        traces = [r.trace for r in store.problems(adaptive.run_id)]
    summary = by_id[adaptive.run_id]
    assert by_id[fixed.run_id].adaptive == {}
    assert summary.adaptive["n"] == 6
    assert summary.adaptive["samples_used"] == sum(t["samples_used"] for t in traces) / 3
    priced = [t for t in traces if t["baseline_tokens_at_n"]]
    assert summary.adaptive["token_saving"] == pytest.approx(
        1 - sum(t["tokens"] for t in priced) / sum(t["baseline_tokens_at_n"] for t in priced))
    text = format_table([summary, by_id[fixed.run_id]])
    assert f"{summary.adaptive['samples_used']:.1f} of 6" in text and "fixed-N" in text
    assert summary.to_dict()["adaptive"] == summary.adaptive


def test_the_engine_is_part_of_the_run_id_and_native_ids_are_unchanged():
    native = make_spec({"task": "arith:1", "strategy": "greedy"})
    vllm = make_spec({"task": "arith:1", "strategy": "greedy", "engine": "vllm"})
    assert "engine" not in native.config()  # ids of runs stored before engines had names
    assert vllm.engine == "vllm" and vllm.run_id != native.run_id
    assert RunSpec.from_dict(vllm.to_dict()).run_id == vllm.run_id
    with pytest.raises(ValueError, match="unknown engine 'tgi'"):
        make_spec({"task": "arith:1", "engine": "tgi"})


def test_a_retrained_verifier_of_the_same_name_makes_another_run(tmp_path):
    import shutil

    from ponder.scorers.trained import shipped

    folder = tmp_path / "orm"
    shutil.copytree(shipped("smollm2-135m-arith-orm"), folder)
    raw = {"task": "arith:1", "strategy": "best_of_n", "n": 2, "scorer": f"verifier:{folder}"}
    first = make_spec(raw).run_id
    assert make_spec(raw).config()["scorer_weights"] and make_spec(raw).run_id == first
    head = folder / "head.safetensors"
    head.write_bytes(head.read_bytes()[:-4] + b"\x00\x00\x80\x3f")  # one weight changed
    assert make_spec(raw).run_id != first
    # Scorers that are not trained verifiers keep the ids they had.
    plain = make_spec({**raw, "scorer": "mean_logprob"})
    assert "scorer_weights" not in plain.config()
