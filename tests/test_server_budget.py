"""Per-request compute budgets on a real `ponder serve` over loopback, with the official
client: ponder.budget (or the X-Ponder-Budget header) sets the strategy's knobs, what is
spent never exceeds it, more budget never buys less, and budgets that cannot work are 400s
naming the field."""

import pytest
from ponder_server import Server

KEY = "budget-key"
ASK = [{"role": "user", "content": "What is 2 + 3?"}]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("budget"), "--max-n", "16", "--max-tokens", "600",
                 "--max-request-tokens", "4096", "--scorer", "lik=mean_logprob", key=KEY)
    yield srv
    srv.stop()


def ask(server, model="smollm2-135m", headers=None, **ponder):
    return server.client().chat.completions.create(
        model=model, messages=ASK, max_tokens=16, seed=0,
        extra_body={"ponder": ponder} if ponder else None, extra_headers=headers)


def test_a_budget_sets_n_and_is_never_exceeded_and_more_never_buys_less(server):
    fitted, spent = [], []
    for budget in (256, 512, 1024, 4096):
        r = ask(server, strategy="self_consistency", budget=budget)
        info = r.model_extra["ponder"]["budget"]
        assert info["budget"] == budget and info["spent"] <= budget
        assert len(r.model_extra["ponder"]["compute"]) > 0
        fitted.append(info["fitted"]["n"])
        spent.append(info["spent"])
    assert fitted == sorted(fitted) and fitted[0] < fitted[-1] == 16  # --max-n caps it
    assert spent == sorted(spent)


def test_the_header_is_a_budget_and_the_smaller_of_two_wins(server):
    r = ask(server, "sc:smollm2-135m", headers={"X-Ponder-Budget": "200"})
    assert r.model_extra["ponder"]["budget"]["budget"] == 200
    r = ask(server, "sc:smollm2-135m", headers={"X-Ponder-Budget": "900"}, budget=300)
    info = r.model_extra["ponder"]["budget"]
    assert info["budget"] == 300 and info["spent"] <= 300


def test_an_option_the_request_set_caps_the_fit(server):
    r = ask(server, "sc4:smollm2-135m", budget=4096)
    assert r.model_extra["ponder"]["budget"]["fitted"]["n"] == 4


def test_a_scored_strategy_is_held_to_its_budget(server):
    r = ask(server, strategy="best_of_n", scorer="lik", budget=700)
    info = r.model_extra["ponder"]["budget"]
    assert info["spent"] <= 700 and info["fitted"]["n"] >= 1


def test_budgets_that_cannot_work_are_400s_naming_the_field(server):
    http = server.http()
    body = {"model": "sc:smollm2-135m", "messages": ASK, "max_tokens": 16}
    r = http.post("/v1/chat/completions", json={**body, "ponder": {"budget": 5}})
    assert r.status_code == 400 and r.json()["error"]["param"] == "ponder.budget"
    assert "raise the budget" in r.json()["error"]["message"]
    r = http.post("/v1/chat/completions", json=body, headers={"X-Ponder-Budget": "lots"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "X-Ponder-Budget"
    r = http.post("/v1/chat/completions", json={**body, "ponder": {"budget": -3}})
    assert r.status_code == 400 and r.json()["error"]["param"] == "ponder.budget"
    # A plain request is not fitted: a budget below what it asks for is refused.
    r = http.post("/v1/chat/completions", json={"model": "smollm2-135m", "messages": ASK,
                                                "max_tokens": 64, "n": 4,
                                                "ponder": {"budget": 100}})
    assert r.status_code == 400
    assert http.get("/health").status_code == 200  # and the server is still up
