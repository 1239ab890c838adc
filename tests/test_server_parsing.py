"""The server's request parsing, strategy routing and stream helpers (no model, no HTTP)."""

import pytest

from ponder.server.errors import ApiError, LimitError
from ponder.server.limits import Limits
from ponder.server.responses import chosen, jsonable, usage_json
from ponder.server.routing import route, split_model
from ponder.server.schemas import parse_chat, parse_completion, parse_json
from ponder.strategies import registry
from ponder.streaming import StopHoldback
from ponder.types import Candidate, Result, Usage

SERVED = ("smollm2-135m",)
LIMITS = Limits(max_n=8, max_tokens=64, default_max_tokens=32, max_request_tokens=600)
MESSAGES = [{"role": "user", "content": "What is 2 + 3?"}]


def chat(**body):
    return parse_chat({"model": "smollm2-135m", "messages": MESSAGES, **body}, SERVED, LIMITS)


def error_of(fn, *args, **kwargs) -> ApiError:
    with pytest.raises(ApiError) as info:
        fn(*args, **kwargs)
    return info.value


def test_model_prefixes_pick_strategies_and_their_n():
    assert split_model("smollm2-135m", SERVED) == (None, None)
    assert split_model("sc8:smollm2-135m", SERVED) == ("sc", 8)
    assert split_model("BON16:smollm2-135m", SERVED) == ("bon", 16)
    assert route("sc8:smollm2-135m", SERVED, {}).options == {"n": 8}
    assert route("bon4:smollm2-135m", SERVED, {}).scorer == "mean_logprob"
    assert route("refine3:smollm2-135m", SERVED, {}).options == {"iterations": 3}
    assert route("smollm2-135m", SERVED, {"strategy": "sc", "n": 4}).strategy == "self_consistency"
    assert route("smollm2-135m", SERVED, {}).strategy is None


def test_unknown_models_and_strategies_are_client_errors():
    assert error_of(split_model, "gpt-4", SERVED).status == 404
    assert error_of(split_model, "sc8:gpt-4", SERVED).status == 404
    err = error_of(route, "foo:smollm2-135m", SERVED, {})
    assert (err.status, err.code) == (400, "unknown_strategy")
    for future in ("beam", "power"):
        try:
            registry.canonical_name(future)
        except ValueError:  # not registered in this build yet
            err = error_of(route, f"{future}:smollm2-135m", SERVED, {})
            assert err.code == "strategy_not_available" and "not available" in err.message


def test_prefix_and_body_must_agree():
    assert error_of(route, "sc8:smollm2-135m", SERVED, {"strategy": "bon"}).code == "conflict"
    assert error_of(route, "sc8:smollm2-135m", SERVED, {"n": 4}).code == "conflict"
    assert route("sc8:smollm2-135m", SERVED, {"n": 8, "strategy": "self-consistency"}).options == {"n": 8}
    assert error_of(route, "smollm2-135m", SERVED, {"n": 4}).code == "missing_strategy"


def test_chat_bodies_become_plans():
    plan = chat(n=2, temperature=0.5, max_tokens=16, seed=3, stop="\n")
    assert plan.plain and plan.params.n == 2 and plan.params.max_tokens == 16
    assert plan.params.stop == ("\n",) and plan.params.seed == 3
    assert chat().params.max_tokens == LIMITS.default_max_tokens
    plan = chat(model="sc4:smollm2-135m", ponder={"return_candidates": True})
    assert plan.strategy.name == "self_consistency" and plan.strategy.params.n == 4
    assert plan.return_candidates and plan.question == "What is 2 + 3?"
    greedy = chat(model="greedy:smollm2-135m")  # single-sample strategies stream as plain
    assert greedy.plain and greedy.params.temperature == 0


def test_message_forms_openai_allows():
    plan = parse_chat({"model": "smollm2-135m", "messages": [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "2 + "}, {"type": "text", "text": "3?"}],
         "name": "ann"}]}, SERVED, LIMITS)
    assert plan.prompts[0] == [{"role": "system", "content": "Be brief."},
                               {"role": "user", "content": "2 + 3?"}]
    image = [{"type": "image_url", "image_url": {"url": "http://x"}}]
    assert error_of(chat, messages=[{"role": "user", "content": image}]).code == "unsupported"


@pytest.mark.parametrize("body, param", [
    ({"n": True}, "n"), ({"n": 0}, "n"), ({"temperature": "hot"}, "temperature"),
    ({"temperature": 3}, "temperature"), ({"top_p": 0}, "top_p"), ({"max_tokens": 1.5}, "max_tokens"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"), ({"stream": "yes"}, "stream"),
    ({"stream_options": {"include_usage": True}}, "stream_options"),
    ({"frobnicate": 1}, "frobnicate"), ({"presence_penalty": 0.5}, "presence_penalty"),
    ({"messages": []}, "messages"), ({"messages": [{"role": "user"}]}, "messages[0].content"),
    ({"model": 7}, "model"), ({"ponder": {"n": "x", "strategy": "sc"}}, "ponder.n"),
    ({"ponder": {"strategy": "sc", "temperature": 0.1}}, "ponder.temperature"),
    ({"ponder": []}, "ponder"),
])
def test_wrong_types_and_values_are_400s_naming_the_field(body, param):
    err = error_of(chat, **body)
    assert err.status == 400 and err.param == param


def test_neutral_values_of_unimplemented_fields_are_accepted():
    assert chat(presence_penalty=0, frequency_penalty=0.0, logprobs=False, user="u",
                response_format={"type": "text"}).plain


@pytest.mark.parametrize("body, limit", [
    ({"n": 9}, "max_n"), ({"max_tokens": 65}, "max_tokens"),
    ({"max_completion_tokens": 65}, "max_tokens"),
    ({"model": "sc9:smollm2-135m"}, "max_n"),
    ({"model": "refine2:smollm2-135m", "max_tokens": 64}, "max_request_tokens"),
])
def test_limits_are_named_in_the_error(body, limit):
    with pytest.raises(LimitError, match=limit):
        chat(**body)


def test_strategies_refuse_choices_and_stop_strings():
    assert error_of(chat, model="sc2:smollm2-135m", n=2).param == "n"
    assert error_of(chat, model="sc2:smollm2-135m", stop="\n").param == "stop"


def completion(**body):
    return parse_completion({"model": "smollm2-135m", "prompt": "Hi", **body}, SERVED, LIMITS)


def test_completions_take_one_or_more_prompts_as_text_or_token_ids():
    plan = completion(prompt=["a", "b"], n=2)
    assert plan.prompts == ("a", "b") and plan.params.n == 2
    assert completion(prompt=[1, 2]).prompts == ((1, 2),)
    assert completion(prompt=[[1, 2], [3]]).prompts == ((1, 2), (3,))
    for bad in ([1, "a"], [-1], [True], [[1], []], [[1], "a"], [], [[]], 3):
        assert error_of(completion, prompt=bad).param == "prompt", bad
    with pytest.raises(LimitError, match="max_n"):  # 2 prompts x 5 samples > 8
        completion(prompt=["a", "b"], n=5)


def test_logprobs_echo_and_their_extensions_are_read_strictly():
    plan = completion(logprobs=3, echo=True, return_tokens_as_token_ids=True,
                      return_sampling_logprobs=True, max_tokens=0)
    out = plan.output
    assert (out.logprobs, out.echo, out.token_ids, out.sampling, out.score_only) == \
        (3, True, True, True, True)
    assert plan.params.logprobs == 3  # the engine is asked for the top 3
    assert completion(logprobs=0).output.logprobs == 0
    assert not completion().output.wanted
    chat_out = chat(logprobs=True, top_logprobs=2).output
    assert chat_out.chat and chat_out.logprobs == 2
    assert chat(logprobs=True).output.logprobs == 0
    cases = [(completion, {"logprobs": 21}, "logprobs"), (completion, {"logprobs": True}, "logprobs"),
             (completion, {"logprobs": "2"}, "logprobs"), (completion, {"echo": 1}, "echo"),
             (completion, {"max_tokens": 0}, "max_tokens"),  # only with echo
             (completion, {"return_sampling_logprobs": True}, "return_sampling_logprobs"),
             (completion, {"logprobs": 1, "stream": True}, "logprobs"),
             (completion, {"echo": True, "stream": True}, "echo"),
             (completion, {"logprobs": 1, "model": "sc2:smollm2-135m"}, "logprobs"),
             (completion, {"prompt": [1, 2], "model": "sc2:smollm2-135m"}, "prompt"),
             (chat, {"top_logprobs": 2}, "top_logprobs"),
             (chat, {"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
             (chat, {"logprobs": 1}, "logprobs"), (chat, {"echo": True}, "echo"),
             (chat, {"return_tokens_as_token_ids": True}, "return_tokens_as_token_ids")]
    for parse, body, param in cases:
        err = error_of(parse, **body)
        assert err.status == 400 and err.param == param, (body, err.message)


def test_json_bodies():
    assert parse_json(b'{"a": 1}') == {"a": 1}
    for raw in (b"{", b"[1]", b'{"a": NaN}', b"\xff", b"[" * 50000 + b"]" * 50000):
        assert error_of(parse_json, raw).status == 400


def test_worst_case_covers_every_generation():
    refine = registry.make_strategy("self_refine", iterations=2, max_tokens=10)
    generated = 10 * 3 + 2 * refine.critique_tokens
    assert refine.worst_case(0).tokens >= generated
    assert registry.make_strategy("sc", n=4, max_tokens=10).worst_case(5).tokens == 5 + 40


def test_limits_validate():
    with pytest.raises(ValueError, match="max_n"):
        Limits(max_n=0)
    with pytest.raises(ValueError, match="default_max_tokens"):
        Limits(max_tokens=10, default_max_tokens=20)


@pytest.mark.parametrize("pieces", [["Hel", "lo\nwor", "ld"], ["ab", "c", "\n", "x"],
                                    ["a\n", "\nb"], ["no stop here"]])
def test_stop_holdback_never_streams_past_a_stop(pieces):
    hold = StopHoldback(["\n"])
    full = "".join(pieces)
    final = full.split("\n")[0]
    sent = "".join(hold.push(p) for p in pieces)
    assert final.startswith(sent)
    assert sent + hold.finish(final) == final


def test_stop_holdback_holds_partial_multichar_stops():
    hold = StopHoldback(["END"])
    assert hold.push("abcE") == "abc"
    assert hold.push("N") == ""
    assert hold.push("x") == "ENx"  # it was not a stop after all
    assert hold.finish("abcENx") == ""


def test_chosen_text_is_the_sample_behind_the_answer():
    cands = (Candidate("so 4", "4", meta={"finish_reason": "eos"}),
             Candidate("so 5", "5", meta={"finish_reason": "length"}),
             Candidate("thus 5", "5"))
    assert chosen(Result("r", "5", cands, Usage(), chosen=1)) == ("so 5", "length")
    assert chosen(Result("r", "5", cands, Usage(), chosen=2))[0] == "thus 5"
    assert chosen(Result("r", "7", cands, Usage(), chosen=None)) == ("7", "stop")
    assert chosen(Result("r", None, (), Usage())) == ("", "stop")
    cut = (Candidate("so 5 and", "5", tokens=8),)
    assert chosen(Result("r", "5", cut, Usage(), chosen=0), max_tokens=8) == ("so 5 and", "length")
    assert chosen(Result("r", "5", cut, Usage(), chosen=0), max_tokens=16)[1] == "stop"
    with pytest.raises(ValueError, match="not an index"):
        Result("r", "5", cut, Usage(), chosen=1)


def test_usage_counts_scorer_reads_as_prompt_tokens():
    u = usage_json(Usage(prompt_tokens=10, generated_tokens=30, forward_tokens=39, scorer_tokens=50))
    assert u == {"prompt_tokens": 60, "completion_tokens": 30, "total_tokens": 90}
    assert jsonable({"s": float("-inf"), "t": (1, 2)}) == {"s": None, "t": [1, 2]}
