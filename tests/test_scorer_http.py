"""Reward models over HTTP, against a real `ponder serve --reward-model` on loopback: the
http-prm / http-orm scorers give the in-process scores of the same weights, retry what a
busy server refuses, fail clearly on what it rejects, and drive a step search; the route
checks its key and its input and keeps serving. (vLLM's server: tests/test_engine_vllm.py.)

The PRM is a tiny randomly initialised Qwen2 in the released Qwen2.5-Math-PRM's layout
(a Qwen2 body, an MLP head `score.0`/`score.2`, architecture Qwen2ForProcessRewardModel),
built with a fixed seed by `ponder.testing.random_models.build_qwen_prm` (shared with the vLLM
test, the scorer benchmark and scripts/gpu_check.py)."""

from __future__ import annotations

import concurrent.futures
import json

import pytest
from ponder_server import Server

from ponder.engines.openai_pool import ServerError
from ponder.scorers.base import ScoreItem
from ponder.scorers.registry import make_scorer
from ponder.testing.random_models import build_qwen_prm  # also used by the vLLM test

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

pytestmark = pytest.mark.slow

KEY = "reward-key"
QUESTION = "What is 2 + 3?"
THREE = "We add the numbers.\n\n2 + 3 = 5.\n\nThe answer is \\boxed{5}."
RESPONSES = ["2 + 3 = 5, so the answer is \\boxed{5}.", THREE,
             "First, 2 + 3.\n\nThat is 6.\n\nSo \\boxed{6}.\n\nDone.", ""]
TOLERANCE = 1e-5  # both sides run the same fp32 weights through the same torch code


def items(*responses, question=QUESTION):
    return [ScoreItem(question, [{"role": "user", "content": question}], r) for r in responses]


@pytest.fixture(scope="module")
def prm_folder(engine, tmp_path_factory):
    folder, _ = build_qwen_prm(tmp_path_factory.mktemp("tiny_prm"), engine.tokenizer)
    return folder


@pytest.fixture(scope="module")
def prm_server(prm_folder, tmp_path_factory):
    # --max-concurrent 2: a client sending more at once gets 429s, which it must retry.
    srv = Server(tmp_path_factory.mktemp("reward"), "--reward-model", f"qwen-prm:{prm_folder}",
                 "--max-concurrent", "2", "--max-request-tokens", "4000", key=KEY)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def orm_server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("reward-orm"), "--reward-model",
                 "verifier:smollm2-135m-arith-orm", key=KEY)
    yield srv
    srv.stop()


def test_served_prm_gives_the_in_process_step_scores_and_counts_its_tokens(prm_folder,
                                                                            prm_server):
    local = make_scorer(f"qwen-prm:{prm_folder}", device="cpu")
    remote = make_scorer(f"http-prm:{prm_server.url}/v1", api_key=KEY, concurrency=8,
                         max_retries=10, backoff=0.05)
    batch = items(*RESPONSES * 4)  # 16 at once, 8 in flight against a limit of 2
    try:
        ours, theirs = remote.score(batch), local.score(batch)
        assert remote.pool.retries > 0  # the server answered 429 and the scorer retried
    finally:
        remote.close()
    for a, b, item in zip(ours, theirs, batch, strict=True):
        assert len(a.step_scores) == len(b.step_scores)
        assert a.step_scores == pytest.approx(b.step_scores, abs=TOLERANCE)
        assert a.score == pytest.approx(b.score, abs=TOLERANCE)  # min over the steps
        assert a.usage.scorer_tokens == b.usage.scorer_tokens
        assert a.usage.calls == (1 if item.response else 0)
    assert len(ours[2].step_scores) == 4 and ours[3].step_scores == ()
    assert len({round(s, 6) for r in ours for s in r.step_scores}) > 3  # not one constant


def test_served_verifier_gives_the_in_process_scores_of_the_policys_prompt(engine,
                                                                         orm_server):
    prompt = [{"role": "user", "content": "Compute 17 + 25. Put the answer in \\boxed{}."}]
    batch = [ScoreItem("17 + 25", prompt, r) for r in
             ("17 + 25 = 42, so \\boxed{42}.", "The sum is \\boxed{41}.", "I don't know.")]
    local = make_scorer("verifier:smollm2-135m-arith-orm", engine)
    remote = make_scorer(f"http-orm:{orm_server.url}", api_key=KEY, messages="prompt")
    try:
        ours = remote.score(batch)
    finally:
        remote.close()
    theirs = local.score(batch)
    assert [r.score for r in ours] == pytest.approx([r.score for r in theirs], abs=1e-4)
    assert all(0 < r.score < 1 and r.step_scores is None for r in ours)
    assert [r.usage.scorer_tokens for r in ours] == [r.usage.scorer_tokens for r in theirs]


def test_what_the_server_refuses_fails_clearly_without_retrying(prm_server, orm_server):
    wrong_key = make_scorer(f"http-prm:{prm_server.url}", api_key="nope", max_retries=3)
    no_steps = make_scorer(f"http-prm:{orm_server.url}", api_key=KEY, max_retries=3)
    try:
        with pytest.raises(ValueError, match="401.*API key"):
            wrong_key.score(items(THREE))
        with pytest.raises(ValueError, match="outcome scorer.*classify"):
            no_steps.score(items(THREE))
        assert wrong_key.pool.retries == no_steps.pool.retries == 0
    finally:
        wrong_key.close()
        no_steps.close()
    nobody = make_scorer("http-orm:http://127.0.0.1:9", max_retries=1, backoff=0.01)
    with pytest.raises(ServerError, match="giving up after 2 attempts.*127.0.0.1:9"):
        nobody.score(items(THREE))
    nobody.close()


def chat(response: str, **body) -> dict:
    return {"messages": [{"role": "user", "content": QUESTION},
                         {"role": "assistant", "content": response}], **body}


@pytest.mark.parametrize("body, status, param, words", [
    ({"messages": []}, 400, "messages", "non-empty"),
    ({"input": "2 + 3 = 5"}, 400, "input", "send `messages`"),
    ({"messages": [{"role": "user", "content": QUESTION}]}, 400, "messages", "last message"),
    ({"messages": [{"role": "assistant", "content": "5<extra_0>"}]}, 400, "messages",
     "user message"),
    ({"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "5"}]},
     400, "messages[0]", "string role and content"),
    (chat("5<extra_0>", task="embed"), 400, "task", "token_classify, classify"),
    (chat("5<extra_0> and more", task="token_classify"), 400, "messages", "ends with"),
    (chat("a\n\nb<extra_0>"), 400, "messages", "blank line"),
    (chat("5<extra_0>", use_activation=True), 400, "use_activation", "without an activation"),
    (chat("5<extra_0>", model="someone-else"), 404, "model", "not served here"),
    (chat("5<extra_0>", temperature=0), 400, "temperature", "unknown field"),
    (chat("x" * 5000 + "<extra_0>"), 400, "messages", "max_request_tokens"),
])
def test_bad_requests_get_openai_errors_and_the_server_keeps_serving(prm_server, body,
                                                                    status, param, words):
    http = prm_server.http()
    r = http.post("/pooling", json=body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["param"] == param and words in error["message"], error
    good = http.post("/pooling", json=chat("We add.<extra_0>2 + 3 = 5.<extra_0>"))
    assert good.status_code == 200, good.text
    rows = good.json()["data"][0]["data"]
    assert len(rows) == 2 and all(len(row) == 1 and 0 < row[0] < 1 for row in rows)
    assert good.json()["usage"]["prompt_tokens"] > 0


def test_the_route_needs_the_key_and_bounds_what_one_request_may_send(prm_server):
    assert prm_server.http(key=None).post("/pooling", json=chat("5<extra_0>")).status_code == 401
    assert prm_server.http(key="bad").post("/pooling", json=chat("5<extra_0>")).status_code == 401
    huge = prm_server.http().post("/pooling", content=json.dumps(chat("5" * (2 << 20))))
    assert huge.status_code == 400 and "max_body_bytes" in huge.json()["error"]["message"]
    broken = prm_server.http().post("/pooling", content=b"{not json")
    assert broken.status_code == 400 and broken.json()["error"]["code"] == "invalid_json"
    assert prm_server.http().get("/health").status_code == 200


def test_concurrent_requests_get_the_same_scores_whatever_their_batch(prm_server):
    http = prm_server.http()
    body = chat("We add.<extra_0>2 + 3 = 5.<extra_0>The answer is 5.<extra_0>")
    with concurrent.futures.ThreadPoolExecutor(2) as pool:  # the server's limit is 2
        answers = list(pool.map(lambda _: http.post("/pooling", json=body), range(6)))
    assert all(a.status_code in (200, 429) for a in answers)
    rows = [a.json()["data"][0]["data"] for a in answers if a.status_code == 200]
    assert rows and all(r == rows[0] for r in rows)  # same chat, same scores, any batch


@pytest.mark.parametrize("strategy, options", [
    ("beam_search", {"n": 2, "m": 1}),
    ("particle_filter", {"n": 2}),
])
def test_a_step_search_runs_on_the_served_prm(engine, prm_server, strategy, options):
    from ponder.strategies.registry import make_strategy
    from ponder.tasks import load_task

    remote = make_scorer(f"http-prm:{prm_server.url}", api_key=KEY, max_retries=10,
                         backoff=0.05, aggregation="last")
    search = make_strategy(strategy, max_steps=2, max_tokens=16, seed=0, **options)
    try:
        [result] = search.run(load_task("arith:1", limit=1), engine, remote)
    finally:
        remote.close()
    scored = [n for n in result.trace["nodes"] if n.get("score") is not None]
    assert scored and all(0 < n["score"] < 1 for n in scored)
    assert result.usage.scorer_tokens > 0
