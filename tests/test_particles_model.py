"""Particle filtering on the bundled model with the judge as its reward model: the first
step's weights are the judge's scores through the logit potential, resampled copies grow from
their parent's KV state (the accounting shows the prefix read once per node), and the answer
is the chosen candidate's. Exactness is checked on the table engine (test_particles.py)."""

import math

import pytest
from test_search import STEP, Recorder

from ponder.scorers.judge import JudgeScorer
from ponder.strategies.base import default_render
from ponder.strategies.particle_filter import ParticleFilter
from ponder.tasks.datasets import load_task


@pytest.fixture(scope="module")
def run(engine):
    problems = load_task("arith:1", limit=2, shuffle_seed=0)
    recorder = Recorder(JudgeScorer(engine))
    config = ParticleFilter(particles=4, max_steps=3, step_max_tokens=STEP, seed=0)
    return problems, config.run(problems, engine, recorder), recorder


def test_first_step_weights_are_the_judges_scores_through_the_logit(run):
    _, results, _ = run
    for r in results:
        first = [n for n in r.trace["nodes"] if n["depth"] == 1]
        assert len(first) == 4
        logits = [math.log(n["score"] / (1 - n["score"])) for n in first]
        top = max(logits)
        expected = [math.exp(x - top) for x in logits]
        expected = [x / sum(expected) for x in expected]
        assert r.trace["particle_steps"][0][0]["weights"] == pytest.approx(expected, abs=1e-3)


def test_copies_grow_from_their_parents_state_and_every_token_is_counted(run, engine):
    problems, results, _ = run
    for p, r in zip(problems, results, strict=True):
        nodes = r.trace["nodes"][1:]
        assert r.usage.generated_tokens == sum(n["tokens"] for n in nodes)
        # One request per distinct parent: it re-feeds one token, however many copies grow.
        expansions = len({n["parent"] for n in nodes if n["depth"] > 1})
        prompt = len(engine.tokenize(default_render(p)))
        assert r.usage.forward_tokens == prompt + expansions + sum(n["tokens"] - 1 for n in nodes)
        assert r.usage.scorer_tokens > 0
        assert r.answer == r.candidates[r.chosen].answer
        assert sum(c.score for c in r.candidates) == pytest.approx(1.0)
