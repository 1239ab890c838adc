import re

import pytest

from ponder.tasks.datasets import Problem, load_task
from ponder.tasks.prompts import (
    ARITH_EXEMPLARS,
    BOXED_INSTRUCTION,
    COT_INSTRUCTION,
    GSM8K_EXEMPLARS,
    STYLES,
    build_prompt,
)

Q = "What is 2 + 3?"


def test_plain_chat_and_raw():
    assert build_prompt(Q, "plain") == [{"role": "user", "content": Q}]
    assert build_prompt(Q, "plain", chat=False) == f"Q: {Q}\nA:"


def test_cot_and_boxed_append_instructions():
    assert build_prompt(Q, "cot")[-1]["content"] == f"{Q}\n{COT_INSTRUCTION}"
    assert COT_INSTRUCTION == "Explain step by step."
    boxed = build_prompt(Q, "boxed")
    assert len(boxed) == 1 and boxed[0]["content"].endswith(BOXED_INSTRUCTION)
    assert "\\boxed{}" in BOXED_INSTRUCTION
    raw = build_prompt(Q, "boxed", chat=False)
    assert raw.startswith(f"Q: {Q}\n") and raw.endswith(f"{BOXED_INSTRUCTION}\nA:")


def test_fewshot_gsm8k_has_eight_turn_pairs():
    messages = build_prompt(Q, "fewshot")
    assert len(messages) == 2 * 8 + 1
    assert [m["role"] for m in messages] == ["user", "assistant"] * 8 + ["user"]
    assert messages[-1]["content"] == Q
    raw = build_prompt(Q, "fewshot", chat=False)
    assert raw.count("Q: ") == 9 and raw.count("The answer is") == 8
    assert raw.endswith(f"Q: {Q}\nA:")


def test_fewshot_arith_uses_short_examples():
    problem = load_task("arith:1", limit=1)[0]
    raw = build_prompt(problem, "fewshot", chat=False)
    assert raw.startswith("Q: What is 12 + 25?\nA: 12 + 25 = 37. The answer is 37.\n\n")
    assert raw.count("Q: ") == len(ARITH_EXEMPLARS) + 1
    assert raw.endswith(f"Q: {problem.question}\nA:")
    custom = build_prompt(Q, "fewshot", chat=False, exemplars=[("1+1?", "2. The answer is 2.")])
    assert custom == f"Q: 1+1?\nA: 2. The answer is 2.\n\nQ: {Q}\nA:"


def test_problem_and_string_give_the_same_prompt():
    p = Problem("x", Q, "5", {"task": "math500"})
    for style in STYLES:
        assert build_prompt(p, style) == build_prompt(Q, style)


@pytest.mark.parametrize("style", ["", "CoT-ish", "boxes"])
def test_unknown_style_lists_styles(style):
    with pytest.raises(ValueError) as err:
        build_prompt(Q, style)
    assert all(s in str(err.value) for s in STYLES)


def test_bad_question():
    with pytest.raises(ValueError, match="empty"):
        build_prompt("   ", "plain")
    with pytest.raises(ValueError, match="Problem or a question"):
        build_prompt(42, "plain")


@pytest.mark.parametrize("shot", GSM8K_EXEMPLARS + ARITH_EXEMPLARS, ids=lambda s: s[0][:30])
def test_exemplar_arithmetic_is_right(shot):
    """Every `a op b = c` in a worked answer holds, and the last result is the answer."""
    _, answer = shot
    steps = re.findall(r"(\d+(?: [-+*/] \d+)+) = (\d+)", answer)
    assert steps, "a worked answer shows its arithmetic"
    for expr, result in steps:
        assert eval(expr, {"__builtins__": {}}) == int(result), (expr, result)  # noqa: S307
    final = re.search(r"The answer is (\d+)\.$", answer)
    assert final and int(final.group(1)) == int(steps[-1][1])
