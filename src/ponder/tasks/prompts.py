"""Prompt styles: how a question is put to a model.

    plain    the question as is
    cot      the question, then "Explain step by step."
    boxed    the question, then the Qwen-Math instruction to reason step by step and put
             the final answer in \\boxed{}
    fewshot  worked examples first: 8 GSM8K-style exemplars ending "The answer is N.",
             or for the `arith` task 3 short ones (a tiny model copies their format well)

`build_prompt(..., chat=True)` returns chat messages (the engine applies the model's
chat template; few-shot examples become earlier user/assistant turns);
`chat=False` returns one raw "Q: ...\\nA:" string for base models.
"""

from __future__ import annotations

from collections.abc import Sequence

from ponder.types import Problem

STYLES = ("plain", "cot", "boxed", "fewshot")
COT_INSTRUCTION = "Explain step by step."
BOXED_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."

Exemplar = tuple[str, str]  # (question, worked answer ending "The answer is N.")

# Written for this project in the classic GSM8K chain-of-thought style.
GSM8K_EXEMPLARS: tuple[Exemplar, ...] = (
    (
        "A baker makes 24 muffins in the morning and 18 muffins in the afternoon. "
        "She sells 30 of them. How many muffins does she have left?",
        "The baker makes 24 + 18 = 42 muffins. After selling 30, she has 42 - 30 = 12 "
        "muffins left. The answer is 12.",
    ),
    (
        "Carlos reads 15 pages of his book every day. How many pages does he read in 2 weeks?",
        "Two weeks have 2 * 7 = 14 days. Carlos reads 15 * 14 = 210 pages. The answer is 210.",
    ),
    (
        "Nina buys 3 packs of juice boxes at $4 each and a sandwich for $6. She pays with a "
        "$20 bill. How much change does she get?",
        "The juice boxes cost 3 * 4 = 12 dollars. With the sandwich she spends 12 + 6 = 18 "
        "dollars. Her change is 20 - 18 = 2 dollars. The answer is 2.",
    ),
    (
        "There are 28 students in a class. Half of them walk to school and 5 of the others "
        "ride bikes. The rest take the bus. How many students take the bus?",
        "Half of the students is 28 / 2 = 14, so 14 walk and 28 - 14 = 14 do not. Of those, "
        "5 ride bikes, so 14 - 5 = 9 take the bus. The answer is 9.",
    ),
    (
        "A garden has 4 rows of tomato plants with 7 plants in each row. Each plant gives "
        "3 tomatoes. How many tomatoes does the garden give?",
        "There are 4 * 7 = 28 plants. They give 28 * 3 = 84 tomatoes. The answer is 84.",
    ),
    (
        "Leo had $50. He spent a fifth of it on a book and $12 on lunch. "
        "How much money does he have now?",
        "The book cost 50 / 5 = 10 dollars. He spent 10 + 12 = 22 dollars in all, so he has "
        "50 - 22 = 28 dollars left. The answer is 28.",
    ),
    (
        "A train travels at 60 miles per hour for 3 hours and then at 45 miles per hour "
        "for 2 hours. How far does it travel in total?",
        "First it travels 60 * 3 = 180 miles, then 45 * 2 = 90 miles. In total it travels "
        "180 + 90 = 270 miles. The answer is 270.",
    ),
    (
        "Maya is 4 years older than her brother. In 6 years, the sum of their ages will be "
        "30. How old is Maya now?",
        "In 6 years both are 6 years older, so today their ages add up to 30 - 6 - 6 = 18. "
        "Without Maya's extra 4 years that is 18 - 4 = 14, so her brother is 14 / 2 = 7 and "
        "Maya is 7 + 4 = 11. The answer is 11.",
    ),
)

ARITH_EXEMPLARS: tuple[Exemplar, ...] = (
    ("What is 12 + 25?", "12 + 25 = 37. The answer is 37."),
    (
        "Anna has 3 pencils. She gets 4 more. How many pencils does Anna have now?",
        "3 + 4 = 7. The answer is 7.",
    ),
    ("What is 48 - 15?", "48 - 15 = 33. The answer is 33."),
)


def fewshot_exemplars(task: str | None) -> tuple[Exemplar, ...]:
    """The default few-shot examples for a task name (arith gets its own, others GSM8K)."""
    return ARITH_EXEMPLARS if task == "arith" else GSM8K_EXEMPLARS


def build_prompt(
    problem_or_question: Problem | str,
    style: str = "boxed",
    chat: bool = True,
    *,
    exemplars: Sequence[Exemplar] | None = None,
) -> str | list[dict[str, str]]:
    """The prompt for a problem (or a bare question) in one of STYLES.

    chat=True: a list of {"role", "content"} messages; chat=False: a raw string.
    exemplars: (question, answer) pairs for the fewshot style, overriding the task's.
    """
    if isinstance(problem_or_question, Problem):
        question, task = problem_or_question.question, problem_or_question.task
    elif isinstance(problem_or_question, str):
        question, task = problem_or_question, None
    else:
        raise ValueError(
            f"build_prompt needs a Problem or a question string, got {type(problem_or_question).__name__}"
        )
    if not question.strip():
        raise ValueError("the question is empty")
    key = style.strip().lower() if isinstance(style, str) else style
    if key not in STYLES:
        raise ValueError(f"unknown prompt style {style!r}: choose one of {', '.join(STYLES)}")
    question = question.strip()
    shots: Sequence[Exemplar] = ()
    if key == "cot":
        question = f"{question}\n{COT_INSTRUCTION}"
    elif key == "boxed":
        question = f"{question}\n{BOXED_INSTRUCTION}"
    elif key == "fewshot":
        shots = fewshot_exemplars(task) if exemplars is None else tuple(exemplars)
    if chat:
        messages: list[dict[str, str]] = []
        for q, a in shots:
            messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        messages.append({"role": "user", "content": question})
        return messages
    return "".join(f"Q: {q}\nA: {a}\n\n" for q, a in shots) + f"Q: {question}\nA:"
