"""`ponder serve` end to end: the real server in a subprocess on a free loopback port, driven
by the official `openai` client (and raw httpx for bodies no client would send)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from ponder_server import Server

httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

pytestmark = pytest.mark.slow

KEY = "test-key-123"
MODEL = "smollm2-135m"
ASK = [{"role": "user", "content": "What is 12 + 35?"}]
# A prompt long enough (~250 tokens) that its tokens matter for the request budget.
LONG = [{"role": "user", "content": "Add up these numbers. " + " + ".join(str(i) for i in range(1, 90))}]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("server"), "--max-n", "8", "--max-tokens", "64",
                 "--default-max-tokens", "16", "--max-request-tokens", "600",
                 "--max-concurrent", "60", "--max-body-bytes", "65536", "--gather-ms", "20",
                 key=KEY)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server):
    return server.client()


def ponder_of(obj) -> dict:
    return (obj.model_extra or {}).get("ponder") or {}


# ---- basics -------------------------------------------------------------------------------


def test_health_and_models_list_the_accepted_forms(server, client):
    health = server.http().get("/health").json()
    assert health["status"] == "ok" and health["model"] == MODEL
    ids = [m.id for m in client.models.list().data]
    assert MODEL in ids and f"sc8:{MODEL}" in ids and f"bon8:{MODEL}" in ids
    listing = server.http().get("/v1/models").json()["ponder"]
    assert f"beam[<n>]:{MODEL}" in listing["accepted"]
    assert f"power[<n>]:{MODEL}" in listing["accepted"]
    assert client.models.retrieve(f"sc4:{MODEL}").id == f"sc4:{MODEL}"


def test_chat_usage_and_seeded_reproducibility(client):
    kw = dict(model=MODEL, messages=ASK, max_tokens=12, temperature=0.8, seed=7)
    first = client.chat.completions.create(**kw)
    again = client.chat.completions.create(**kw)
    assert first.object == "chat.completion" and first.model == MODEL
    msg = first.choices[0].message
    assert msg.role == "assistant" and msg.content == again.choices[0].message.content
    u = first.usage
    assert 0 < u.completion_tokens <= 12 and u.prompt_tokens > 0
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens
    assert first.choices[0].finish_reason in ("stop", "length")
    assert ponder_of(first) == {}  # the ponder field only when asked for


def test_n_choices_and_candidates(client):
    r = client.chat.completions.create(model=MODEL, messages=ASK, n=3, max_tokens=8, seed=1,
                                       temperature=1.0, extra_body={"ponder": {"return_candidates": True}})
    assert [c.index for c in r.choices] == [0, 1, 2]
    info = ponder_of(r)
    assert info["strategy"] == "plain" and len(info["candidates"]) == 3
    assert r.usage.completion_tokens == sum(c["tokens"] for c in info["candidates"])
    # The prompt is read once for all n samples, as OpenAI bills it.
    assert r.usage.prompt_tokens == info["compute"]["prompt_tokens"]


def test_completions_endpoint_with_stop_and_several_prompts(client):
    r = client.completions.create(model=MODEL, prompt="Q: What is 2 + 3?\nA:", max_tokens=16,
                                  temperature=0, stop=["\n"])
    assert r.object == "text_completion" and "\n" not in r.choices[0].text
    r = client.completions.create(model=MODEL, prompt=["Once upon a time", "The sky is"],
                                  max_tokens=6, n=2, seed=3)
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    assert r.usage.completion_tokens <= 4 * 6
    r = client.completions.create(model=f"sc2:{MODEL}", prompt="Q: What is 2 + 3?\nA:",
                                  max_tokens=8, extra_body={"ponder": {"return_candidates": True}})
    assert len(r.choices) == 1 and len(ponder_of(r)["candidates"]) == 2


def test_greedy_prefix_is_deterministic(client):
    texts = {client.chat.completions.create(model=f"greedy:{MODEL}", messages=ASK,
                                            max_tokens=10).choices[0].message.content
             for _ in range(2)}
    assert len(texts) == 1


# ---- log-probabilities, echo, token-id prompts ---------------------------------------------

IDS = {"return_tokens_as_token_ids": True}


def ids_of(logprobs) -> list[int]:
    return [int(t.removeprefix("token_id:")) for t in logprobs.tokens]


def test_completion_logprobs_with_token_ids_and_sampling_logprobs(client):
    kw = dict(model=MODEL, prompt="Q: What is 2 + 3?\nA:", max_tokens=8, temperature=0.8, seed=5,
              logprobs=2, extra_body={**IDS, "return_sampling_logprobs": True, "ignore_eos": True})
    r = client.completions.create(**kw)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 8
    assert r.usage.completion_tokens == 8 and all(t.startswith("token_id:") for t in lp.tokens)
    for token, value, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, strict=True):
        assert value <= 0 and top[token] == value and 2 <= len(top) <= 3
        assert max(top.values()) >= value  # the top 2, plus the chosen token when not in them
    assert lp.text_offset[0] == 0 and lp.text_offset == sorted(lp.text_offset)
    q = lp.model_extra["sampling_token_logprobs"]
    # At T=0.8 the sampled tokens are likelier under q than under the model, summed.
    assert len(q) == 8 and sum(q) >= sum(lp.token_logprobs)
    again = client.completions.create(**kw).choices[0].logprobs
    assert again.tokens == lp.tokens  # seed: the same samples


def test_token_id_prompts_and_echo_scoring_match_generation(client):
    text = "Q: What is 2 + 3?\nA:"
    echoed = client.completions.create(model=MODEL, prompt=text, max_tokens=0, echo=True,
                                       logprobs=0, extra_body=IDS)
    choice = echoed.choices[0]
    prompt_ids = ids_of(choice.logprobs)
    assert choice.text == text and echoed.usage.completion_tokens == 0
    assert echoed.usage.prompt_tokens == len(prompt_ids)
    assert choice.logprobs.token_logprobs[0] is None  # nothing predicts the first token
    kw = dict(model=MODEL, max_tokens=10, temperature=1.0, seed=9, logprobs=0, extra_body=IDS)
    by_text = client.completions.create(prompt=text, **kw).choices[0]
    by_ids = client.completions.create(prompt=prompt_ids, **kw).choices[0]
    assert by_ids.text == by_text.text and by_ids.logprobs.tokens == by_text.logprobs.tokens
    # Echo scores prompt + sampled tokens: the sampled part as generation reported it.
    gen_ids = ids_of(by_text.logprobs)
    scored = client.completions.create(model=MODEL, prompt=prompt_ids + gen_ids, max_tokens=0,
                                       echo=True, logprobs=0, extra_body=IDS).choices[0].logprobs
    assert ids_of(scored) == prompt_ids + gen_ids
    tail = scored.token_logprobs[len(prompt_ids):]
    assert max(abs(a - b) for a, b in zip(tail, by_text.logprobs.token_logprobs, strict=True)) < 1e-3
    # Two token-id prompts in one request, n=2 each: four choices, prompt by prompt.
    r = client.completions.create(model=MODEL, prompt=[prompt_ids, prompt_ids[:3]], n=2,
                                  max_tokens=3, seed=1)
    assert [c.index for c in r.choices] == [0, 1, 2, 3]


def test_chat_logprobs_with_top_alternatives(client):
    r = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=6, seed=3,
                                       logprobs=True, top_logprobs=2,
                                       extra_body={"ignore_eos": True})
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens == 6
    assert "".join(t.token for t in content) == r.choices[0].message.content
    for t in content:
        assert t.bytes == list(t.token.encode()) and t.logprob <= 0
        values = [a.logprob for a in t.top_logprobs]
        assert len(values) == 2 and values == sorted(values, reverse=True)
    plain = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=4)
    assert plain.choices[0].logprobs is None


def test_bad_logprob_and_prompt_requests_are_400s(client):
    cases = [dict(prompt="Hi", logprobs=21), dict(prompt=[10**9]), dict(prompt=[1, "a"]),
             dict(prompt="Hi", max_tokens=0), dict(prompt="Hi", echo=True, logprobs=1, stream=True)]
    for kw in cases:
        with pytest.raises(openai.BadRequestError) as info:
            client.completions.create(model=MODEL, **kw)
        assert info.value.body["param"] in ("prompt", "logprobs", "max_tokens", "echo"), kw
    with pytest.raises(openai.BadRequestError, match="top_logprobs"):
        client.chat.completions.create(model=MODEL, messages=ASK, top_logprobs=2)


# ---- streaming ----------------------------------------------------------------------------


def test_stream_sends_tokens_as_chunks_and_matches_the_plain_answer(client):
    kw = dict(model=MODEL, messages=ASK, max_tokens=20, temperature=0.9, seed=11)
    whole = client.chat.completions.create(**kw)
    chunks = list(client.chat.completions.create(**kw, stream=True,
                                                 stream_options={"include_usage": True}))
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    texts = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(texts) > 3  # token by token, not one fake chunk
    assert "".join(texts) == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    assert chunks[-1].usage == whole.usage and chunks[-1].choices == []


def test_stream_never_sends_text_past_a_stop_string(client):
    kw = dict(model=MODEL, prompt="Q: What is 7 + 8?\nA:", max_tokens=24, temperature=0.7,
              seed=5, stop=["\n", "."])
    whole = client.completions.create(**kw).choices[0].text
    streamed = "".join(c.choices[0].text for c in client.completions.create(**kw, stream=True)
                       if c.choices)
    assert streamed == whole and "\n" not in streamed and "." not in streamed


def test_strategy_stream_reports_progress_then_the_answer(client):
    kw = dict(model=f"sc2:{MODEL}", messages=ASK, max_tokens=16, seed=2)
    whole = client.chat.completions.create(**kw)
    chunks = list(client.chat.completions.create(**kw, stream=True))
    progress = [ponder_of(c)["progress"] for c in chunks if "progress" in ponder_of(c)]
    first_text = next(i for i, c in enumerate(chunks) if c.choices and c.choices[0].delta.content)
    done = [p for p in progress if p["stage"] == "call_done"]
    assert done and done[-1]["samples_done"] == 2 and "leader" in done[-1]
    assert all(i < first_text for i, c in enumerate(chunks) if c.choices and
               ponder_of(c).get("progress", {}).get("stage") in ("generating", "call_done"))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content


# ---- strategies ---------------------------------------------------------------------------


def test_self_consistency_prefix_returns_votes_and_counts_every_sample(client):
    r = client.chat.completions.create(model=f"sc3:{MODEL}", messages=ASK, max_tokens=16,
                                       seed=0, extra_body={"ponder": {"return_candidates": True}})
    info = ponder_of(r)
    assert info["strategy"] == "self_consistency" and len(info["candidates"]) == 3
    assert sum(v["votes"] for v in info["trace"]["votes"]) <= 3
    assert r.choices[0].message.content in [c["text"] for c in info["candidates"]]
    assert r.usage.completion_tokens == sum(c["tokens"] for c in info["candidates"])
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_extra_body_best_of_n_scores_and_counts_scorer_tokens(client):
    r = client.chat.completions.create(
        model=MODEL, messages=ASK, max_tokens=12, seed=4,
        extra_body={"ponder": {"strategy": "bon", "n": 2, "return_candidates": True}})
    info = ponder_of(r)
    assert info["strategy"] == "best_of_n"
    scores = [c["score"] for c in info["candidates"]]
    best = info["chosen"]
    assert r.choices[0].message.content == info["candidates"][best]["text"]
    assert all(s is None or s <= scores[best] for s in scores)
    compute = info["compute"]
    assert compute["scorer_tokens"] > 0
    assert r.usage.prompt_tokens == compute["prompt_tokens"] + compute["scorer_tokens"]


def test_unknown_unavailable_and_conflicting_strategies_are_400s(client):
    from ponder.strategies import registry

    cases = [(f"foo:{MODEL}", {}, "unknown strategy"),
             (f"sc2:{MODEL}", {"ponder": {"strategy": "bon"}}, "give one"),
             (f"sc2:{MODEL}", {"n": 2}, "one answer")]
    for future in ("beam", "power"):
        try:
            registry.canonical_name(future)
        except ValueError:
            cases.append((f"{future}:{MODEL}", {}, "not available in this build"))
    for model, extra, message in cases:
        with pytest.raises(openai.BadRequestError, match=message):
            client.chat.completions.create(model=model, messages=ASK, max_tokens=4, extra_body=extra)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4o", messages=ASK, max_tokens=4)


# ---- auth and limits ----------------------------------------------------------------------


def test_every_request_needs_the_key(server):
    for key in (None, "wrong-key", KEY + "x"):
        with pytest.raises(openai.AuthenticationError):
            server.client(key).chat.completions.create(model=MODEL, messages=ASK, max_tokens=4)
        for path in ("/metrics", "/v1/models"):  # /health and /ready are open probes
            r = server.http(key).get(path)
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    r = server.http(None).post("/v1/chat/completions", headers={"Authorization": f"Basic {KEY}"},
                               json={"model": MODEL, "messages": ASK})
    assert r.status_code == 401


@pytest.mark.parametrize("kw, limit", [
    ({"n": 9}, "max_n"),
    ({"max_tokens": 65}, "max_tokens"),
    ({"model": f"refine2:{MODEL}", "max_tokens": 64}, "max_request_tokens"),
    # prompt (~250 tokens) + 8 x 64 generated: found when the worker tokenizes the prompt
    ({"messages": LONG, "n": 8, "max_tokens": 64}, "max_request_tokens"),
    # best-of-2 fits while sampling; scoring would read both answers with the long prompt
    ({"messages": LONG, "model": f"bon2:{MODEL}", "max_tokens": 32}, "max_request_tokens"),
])
def test_limits_give_400_naming_the_limit(client, kw, limit):
    kw = {"model": MODEL, "messages": ASK, **kw}
    with pytest.raises(openai.BadRequestError, match=limit) as info:
        client.chat.completions.create(**kw)
    assert info.value.body["code"] in ("limit_exceeded", "context_length_exceeded")


def test_malformed_bodies_are_400s_and_the_server_lives_on(server):
    ok = {"model": MODEL, "messages": ASK, "max_tokens": 4}
    bodies = [b"{not json", b"[1, 2]", b'{"model": NaN}', b"\xff\xfe\x00",
              b"[" * 100000 + b"]" * 100000,
              json.dumps({**ok, "messages": "hello"}).encode(),
              json.dumps({**ok, "temperature": "hot"}).encode(),
              json.dumps({**ok, "n": True}).encode(),
              json.dumps({**ok, "max_tokens": "4"}).encode(),
              json.dumps({**ok, "unknown_field": 1}).encode(),
              json.dumps({**ok, "messages": [{"role": "user", "content": {"a": 1}}]}).encode(),
              json.dumps({**ok, "ponder": "sc8"}).encode(),
              json.dumps({**ok, "content": "x" * 70000}).encode()]  # over --max-body-bytes
    with server.http() as http:
        for body in bodies:
            r = http.post("/v1/chat/completions", content=body,
                          headers={"Content-Type": "application/json"})
            assert r.status_code == 400, (body[:60], r.text)
            assert set(r.json()["error"]) == {"message", "type", "param", "code"}

        def chunked():  # no Content-Length: the limit is enforced while reading
            for _ in range(100):
                yield b" " * 1000
        r = http.post("/v1/completions", content=chunked())
        assert r.status_code == 400 and "max_body_bytes" in r.json()["error"]["message"]
        assert http.post("/v1/nowhere", json=ok).status_code == 404
        assert http.get("/health").json()["status"] == "ok"
        assert http.post("/v1/chat/completions", json=ok).status_code == 200


def test_fifty_concurrent_requests_all_succeed(server, client):
    before = server.http().get("/health").json()["batches"]

    def ask(i: int) -> str:
        r = client.chat.completions.create(
            model=MODEL, max_tokens=8, seed=i,
            messages=[{"role": "user", "content": f"Say a word about the number {i}."}])
        return r.choices[0].finish_reason

    with ThreadPoolExecutor(50) as pool:
        futures = [pool.submit(ask, i) for i in range(50)]
        health = server.http().get("/health")  # answered while the load is on
        results = [f.result(timeout=300) for f in futures]
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert all(r in ("stop", "length") for r in results)
    after = server.http().get("/health").json()
    assert after["status"] == "ok" and after["in_flight"] == 0
    # Gathering: the 50 requests shared far fewer engine rounds than one each.
    assert after["batches"] - before < 25


# ---- concurrency limit (its own server) ---------------------------------------------------


def test_concurrency_limit_and_chunks_before_the_end(tmp_path):
    srv = Server(tmp_path, "--max-concurrent", "1", "--max-tokens", "64")
    try:
        client = srv.client()
        stream = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=48,
                                                stream=True, extra_body={"ignore_eos": True})
        chunks = iter(stream)
        while not next(chunks).choices[0].delta.content:
            pass
        # A content chunk has arrived and the request is still in flight: the only slot is
        # taken, so a second request is refused.
        with pytest.raises(openai.RateLimitError, match="max_concurrent"):
            client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=4)
        stream.close()  # the client walks away mid-stream
        deadline = time.monotonic() + 120
        while srv.http().get("/health").json()["in_flight"] and time.monotonic() < deadline:
            time.sleep(0.2)
        r = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=4)
        assert r.choices[0].message.content is not None
    finally:
        srv.stop()


def test_serve_rejects_bad_flags_before_loading_the_model():
    for flags in (["--port", "70000"], ["--max-n", "0"], ["--api-key", " "], ["--threads", "0"],
                  ["--max-tokens", "8", "--default-max-tokens", "16"]):
        r = subprocess.run([sys.executable, "-m", "ponder.cli", "serve", *flags],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 2 and "error" in r.stderr, (flags, r.stderr)
