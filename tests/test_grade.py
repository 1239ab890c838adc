"""Answer equivalence: >250 hand-written pairs in MATH-500 answer styles, the MATH-500
self-check (each gold answer against its own solution's \\boxed{}), time limits and junk."""

import threading
import time

import pytest

from ponder.tasks.datasets import load_task
from ponder.tasks.extract import extract_boxed
from ponder.tasks.grade import grade, is_equiv, is_equiv_many, normalize_answer
from ponder.tasks.grade_workers import run_in_process

# (prediction, gold) pairs that must grade equal.
TRUE = [
    # numbers
    ("5", "5"),
    ("05", "5"),
    ("5.0", "5"),
    ("5.00", "5"),
    ("+5", "5"),
    ("-3", "-3"),
    ("- 3", "-3"),
    ("1,000", "1000"),
    ("1000", "1,000"),
    ("10080", "10,\\!080"),
    ("11111111100", "11,\\! 111,\\! 111,\\! 100"),
    ("32348", "\\$32,\\!348"),
    ("\\$32,348", "32348"),
    ("18.90", "\\$18.90"),
    ("18.9", "\\$18.90"),
    ("36", "\\$36"),
    ("$36$", "36"),
    ("58500", "58,500"),
    ("0.0000672", ".0000672"),
    ("6.72\\times10^{-5}", ".0000672"),
    ("6.72e-5", ".0000672"),
    ("0.35625", ".35625"),
    ("326.5", "326.5"),
    ("3.21", "3.21"),
    ("1.25", "\\frac{5}{4}"),
    ("1.25", "\\frac54"),
    ("3\\times 10^5", "300000"),
    ("3 \\cdot 10^{5}", "300000"),
    ("1e3", "1000"),
    ("2.5E2", "250"),
    # fractions
    ("\\frac{1}{2}", "0.5"),
    ("1/2", "\\frac{1}{2}"),
    ("\\dfrac{1}{2}", "\\frac12"),
    ("\\tfrac12", "1/2"),
    ("2/4", "\\frac{1}{2}"),
    ("\\frac{14}{3}", "14/3"),
    ("\\frac43", "\\frac{4}{3}"),
    ("\\frac 59", "5/9"),
    ("\\frac9{19}", "9/19"),
    ("\\frac{270}7", "270/7"),
    ("\\frac{270}{7}", "\\frac{270}7\\text{ degrees}"),
    ("-\\frac{35}{9}", "-35/9"),
    ("\\frac{-35}{9}", "-\\frac{35}{9}"),
    ("-\\frac{\\pi}{6}", "-\\frac{\\pi}{6}"),
    ("\\frac{-\\pi}{6}", "-\\frac{\\pi}{6}"),
    ("-\\pi/6", "-\\frac{\\pi}{6}"),
    ("0.75", "\\frac{3}{4}"),
    ("\\frac{9}{5}", "1\\frac{4}{5}"),
    ("1.8", "1\\frac{4}{5}"),
    ("137.5", "137 \\frac{1}{2}"),
    ("275/2", "137 \\frac{1}{2}"),
    ("\\frac{33}{100}", "\\dfrac{33}{100}"),
    ("0.33", "\\dfrac{33}{100}"),
    ("0.333333", "\\frac{1}{3}"),
    ("0.6666667", "\\frac{2}{3}"),
    ("\\frac{1997}{2}", "998.5"),
    ("\\frac{\\sqrt{3}}{3}", "\\frac{1}{\\sqrt{3}}"),
    ("\\frac{\\sqrt3}{3}", "\\frac{\\sqrt{3}}{3}"),
    ("\\sqrt{3}/3", "\\frac{\\sqrt{3}}{3}"),
    ("\\frac{3\\sqrt{3}}{4}", "\\frac{3}{4}\\sqrt{3}"),
    ("\\frac{11+9a}{20}", "\\frac{9a+11}{20}"),
    # percent
    ("10\\%", "10"),
    ("10", "10\\%"),
    ("10%", "10\\%"),
    ("0.1", "10\\%"),
    ("50\\%", "0.5"),
    # degrees and units
    ("90", "90^\\circ"),
    ("90^{\\circ}", "90^\\circ"),
    ("90°", "90"),
    ("90 degrees", "90^\\circ"),
    ("145", "145^\\circ"),
    ("864", "864 \\mbox{ inches}^2"),
    ("864 \\text{ inches}^2", "864"),
    ("15", "15\\mbox{ cm}^2"),
    ("15 cm^2", "15\\mbox{ cm}^2"),
    ("5.4", "5.4 \\text{ cents}"),
    ("5.4 cents", "5.4"),
    ("18 dollars", "18"),
    ("\\$18", "18"),
    ("12 \\text{ feet}", "12"),
    # sqrt and pi
    ("3\\sqrt{13}", "3\\sqrt{13}"),
    ("3 \\sqrt{13}", "3\\sqrt{13}"),
    ("\\sqrt{117}", "3\\sqrt{13}"),
    ("11\\sqrt{2}", "11\\sqrt2"),
    ("\\sqrt{242}", "11\\sqrt2"),
    ("70\\sqrt2", "70 \\sqrt{2}"),
    ("2\\sqrt{5}", "\\sqrt{20}"),
    ("\\sqrt{51}", "\\sqrt{51}"),
    ("\\pi", "\\pi"),
    ("288\\pi", "288 \\pi"),
    ("12\\pi", "12 \\pi"),
    ("\\pi \\cdot 12", "12\\pi"),
    ("18+2\\pi", "2\\pi+18"),
    ("\\frac{20000}{\\pi}", "20000/\\pi"),
    ("1+2\\sqrt{3}", "2\\sqrt{3}+1"),
    ("11 + 11\\sqrt{5}", "11 \\sqrt{5} + 11"),
    # complex
    ("6-5i", "6 - 5i"),
    ("-5i+6", "6 - 5i"),
    ("1+274i", "1+274i"),
    ("2i+1", "1+2i"),
    # expressions
    ("x^3+3x-6", "x^3 + 3x - 6"),
    ("3x - 6 + x^3", "x^3+3x-6"),
    ("2k+2", "2(k+1)"),
    ("(a+5)(b+2)", "(b+2)(a+5)"),
    ("p-q", "p - q"),
    ("-q+p", "p - q"),
    ("15x-80", "15x - 80"),
    ("6r^2-4r-24", "6r^2 -4r - 24"),
    ("5r^5", "5 r^5"),
    ("\\cot x", "\\cot x"),
    ("x^5-x^4+x^3-x^2+x-1", "x^5 - x^4 + x^3 - x^2 + x - 1"),
    # equations and assignments
    ("x=5", "5"),
    ("5", "x=5"),
    ("x = 5", "x=5"),
    ("k = 4", "4"),
    ("y=2x+3", "y = 2x + 3"),
    ("2x+3", "y = 2x + 3"),
    ("5x-7y+11z+4=0", "5x - 7y + 11z + 4 = 0"),
    ("\\theta = \\frac{\\pi}{2}", "\\frac{\\pi}{2}"),
    # tuples, points
    ("(3, \\frac{\\pi}{2})", "\\left( 3, \\frac{\\pi}{2} \\right)"),
    ("(3,\\pi/2)", "\\left( 3, \\frac{\\pi}{2} \\right)"),
    ("(6,31,-1)", "(6,31,-1)"),
    ("(6, 31, -1)", "(6,31,-1)"),
    ("\\left(\\frac32, -13\\right)", "\\left( \\frac{3}{2}, -13 \\right)"),
    ("(1.5,-13)", "\\left( \\frac{3}{2}, -13 \\right)"),
    ("(-2, 1)", "(-2,1)"),
    ("(1,-16,-4,43)", "(1,-16,-4,43)"),
    # lists and sets
    ("-2,1", "1,-2"),
    ("1, -2", "1,-2"),
    ("3,5,7", "3, 5, 7"),
    ("7, 5, 3", "3, 5, 7"),
    ("\\{1,-2\\}", "1,-2"),
    ("1\\pm\\sqrt{19}", "1 \\pm \\sqrt{19}"),
    ("1+\\sqrt{19}, 1-\\sqrt{19}", "1 \\pm \\sqrt{19}"),
    ("-2, 1+\\sqrt{5}, 1-\\sqrt{5}", "\\{1\\pm\\sqrt{5},-2\\}"),
    ("3+2\\sqrt2, 3-2\\sqrt2", "3 \\pm 2 \\sqrt{2}"),
    # intervals
    ("(3,4]", "(3,4]"),
    ("(3, 4]", "(3,4]"),
    ("\\left(\\frac{3}{5},\\frac{8}{3}\\right]", "\\left(\\frac{3}{5},\\frac{8}{3}\\right]"),
    ("(0.6, 8/3]", "\\left(\\frac{3}{5},\\frac{8}{3}\\right]"),
    ("(2,\\infty)", "(2,\\infty)"),
    ("(2, \\infty)", "(2,\\infty)"),
    ("(-\\infty,0]", "(-\\infty, 0]"),
    ("[-2,7]", "x \\in [-2,7]"),
    ("(0,9)\\cup(9,36)", "(0,9) \\cup (9,36)"),
    ("(-\\infty,2)\\cup(3,\\infty)", "(-\\infty, 2) \\cup (3, \\infty)"),
    ("(-\\sqrt3,\\sqrt3)", "(-\\sqrt{3}, \\sqrt{3})"),
    (
        "\\left[\\frac{\\pi^2}{8},\\frac{5\\pi^2}{4}\\right]",
        "\\left[ \\frac{\\pi^2}{8}, \\frac{5 \\pi^2}{4} \\right]",
    ),
    # matrices
    (
        "\\begin{pmatrix} -1/3 \\\\ 2/3 \\\\ 5/3 \\end{pmatrix}",
        "\\begin{pmatrix} -\\frac13 \\\\ \\frac23 \\\\ \\frac53 \\end{pmatrix}",
    ),
    (
        "\\begin{pmatrix}-2\\\\-14\\\\-7\\end{pmatrix}",
        "\\begin{pmatrix} -2 \\\\ -14 \\\\ -7 \\end{pmatrix}",
    ),
    (
        "\\begin{pmatrix} -1 & 0 \\\\ 0 & -1 \\end{pmatrix}",
        "\\begin{pmatrix} -1 & 0 \\\\ 0 & -1 \\end{pmatrix}",
    ),
    (
        "\\begin{bmatrix} -1 & 0 \\\\ 0 & -1 \\end{bmatrix}",
        "\\begin{pmatrix} -1 & 0 \\\\ 0 & -1 \\end{pmatrix}",
    ),
    (
        "\\begin{pmatrix} 0.2 \\\\ -3.6 \\end{pmatrix}",
        "\\begin{pmatrix} 1/5 \\\\ -18/5 \\end{pmatrix}",
    ),
    # text answers and multiple choice
    ("Evelyn", "\\text{Evelyn}"),
    ("\\text{evelyn}", "\\text{Evelyn}"),
    ("east", "\\text{east}"),
    ("\\text{ellipse}", "ellipse"),
    ("\\text{even}", "\\text{even}"),
    ("Navin", "\\text{Navin}"),
    ("C", "\\text{(C)}"),
    ("(C)", "\\text{(C)}"),
    ("\\textbf{(C)}", "\\text{(C)}"),
    ("(E)", "\\text{(E)}"),
    ("E", "\\text{(E)}"),
    ("B", "\\text{(B)}"),
    ("(B) 12", "\\text{(B)}"),
    # bases
    ("52_8", "52_8"),
    ("52", "52_8"),
    ("4210_5", "4210_{5}"),
    ("2516", "2516_8"),
    # wrappers
    ("0.70710678", "\\frac{\\sqrt{2}}{2}"),
    ("\\sqrt{8}", "2\\sqrt2"),
    ("2^{10}", "1024"),
    ("\\sqrt[3]{27}", "3"),
    ("[6,31,-1]", "(6,31,-1)"),  # three or more: ( and [ both just mean an ordered tuple
    ("(1, 2, 2\\sqrt{2})", "\\left(1,2,\\sqrt{8}\\right)"),
    ("\\boxed{5}", "5"),
    ("$\\frac{1}{2}$", "\\frac12"),
    ("\\(\\frac{1}{2}\\)", "0.5"),
    ("\\displaystyle\\frac{1}{2}", "\\frac12"),
    ("5.", "5"),
    (" 5 ", "5"),
    ("\\left(3\\right)", "3"),
    ("3!", "6"),
    ("\\binom{5}{2}", "10"),
]
# (prediction, gold) pairs that must not.
FALSE = [
    ("6", "5"),
    ("4", "5"),
    ("-5", "5"),
    ("50", "5"),
    ("1001", "1000"),
    ("1000001", "1000000"),
    ("10081", "10,\\!080"),
    ("0.34", "\\frac{1}{3}"),
    ("0.33", "\\frac{1}{3}"),
    ("0.3333", "\\frac13"),
    ("\\frac{1}{3}", "0.5"),
    ("\\frac{2}{3}", "\\frac{3}{2}"),
    ("\\frac{14}{5}", "\\frac{14}{3}"),
    ("\\frac{3}{56}", "\\frac{3}{65}"),
    ("-\\frac{35}{9}", "\\frac{35}{9}"),
    ("\\frac{9}{5}", "1\\frac{5}{4}"),
    ("1.26", "1.25"),
    ("3.2", "3.21"),
    ("326", "326.5"),
    ("0.000672", ".0000672"),
    ("3\\times10^{6}", "300000"),
    ("5", "50\\%"),
    ("0.05", "50\\%"),
    ("91", "90^\\circ"),
    ("865", "864 \\mbox{ inches}^2"),
    ("5.5", "5.4 \\text{ cents}"),
    ("3\\sqrt{14}", "3\\sqrt{13}"),
    ("\\sqrt{13}", "3\\sqrt{13}"),
    ("13\\sqrt{3}", "3\\sqrt{13}"),
    ("2\\pi", "\\pi"),
    ("\\pi", "3.14"),
    ("287\\pi", "288 \\pi"),
    ("18-2\\pi", "18+2\\pi"),
    ("1-2\\sqrt{3}", "1+2\\sqrt{3}"),
    ("6+5i", "6 - 5i"),
    ("5i-6", "6 - 5i"),
    ("1+2i", "1-2i"),
    ("-2-7i", "-2 + 7i"),
    ("x^3+3x+6", "x^3+3x-6"),
    ("x^3+3x", "x^3+3x-6"),
    ("2k+1", "2k+2"),
    ("(a+5)(b-2)", "(a+5)(b+2)"),
    ("q-p", "p - q"),
    ("\\tan x", "\\cot x"),
    ("y=2x-3", "y = 2x + 3"),
    ("x=6", "x=5"),
    ("5x-7y+11z-4=0", "5x - 7y + 11z + 4 = 0"),
    ("(31,6,-1)", "(6,31,-1)"),
    ("(6,31,1)", "(6,31,-1)"),
    ("(6,31)", "(6,31,-1)"),
    ("(1,-2)", "(-2,1)"),
    ("(3,\\pi)", "\\left( 3, \\frac{\\pi}{2} \\right)"),
    ("(\\frac{\\pi}{2}, 3)", "\\left( 3, \\frac{\\pi}{2} \\right)"),
    ("(1,-16,-4,42)", "(1,-16,-4,43)"),
    ("1,2", "1,-2"),
    ("1", "1,-2"),
    ("3,5", "3, 5, 7"),
    ("3,5,7,9", "3, 5, 7"),
    ("1+\\sqrt{19}", "1 \\pm \\sqrt{19}"),
    ("(3,4)", "(3,4]"),
    ("[3,4]", "(3,4]"),
    ("(3,5]", "(3,4]"),
    ("(2,\\infty)", "[2,\\infty)"),
    ("(-\\infty,0)", "(-\\infty, 0]"),
    ("[-2,8]", "x \\in [-2,7]"),
    ("(0,36)", "(0,9) \\cup (9,36)"),
    ("(-\\infty,3)\\cup(2,\\infty)", "(-\\infty, 2) \\cup (3, \\infty)"),
    (
        "\\begin{pmatrix} -1/3 \\\\ 2/3 \\\\ 4/3 \\end{pmatrix}",
        "\\begin{pmatrix} -1/3 \\\\ 2/3 \\\\ 5/3 \\end{pmatrix}",
    ),
    (
        "\\begin{pmatrix} 2/3 \\\\ -1/3 \\\\ 5/3 \\end{pmatrix}",
        "\\begin{pmatrix} -1/3 \\\\ 2/3 \\\\ 5/3 \\end{pmatrix}",
    ),
    (
        "\\begin{pmatrix} 1 & 0 \\\\ 0 & 1 \\end{pmatrix}",
        "\\begin{pmatrix} -1 & 0 \\\\ 0 & -1 \\end{pmatrix}",
    ),
    ("Evelynn", "\\text{Evelyn}"),
    ("Bob", "\\text{Evelyn}"),
    ("west", "\\text{east}"),
    ("odd", "\\text{even}"),
    ("\\text{parabola}", "\\text{ellipse}"),
    ("D", "\\text{(C)}"),
    ("(A)", "\\text{(C)}"),
    ("C", "\\text{(E)}"),
    ("12", "\\text{(B)}"),
    ("53_8", "52_8"),
    ("4210_4", "4210_{5}"),  # both give a base: it must agree
    ("[8,-2]", "(8,-2)"),  # two elements: brackets matter (intervals vs points)
    ("[1,2)", "[1,2]"),
    ("0.7071", "\\frac{\\sqrt{2}}{2}"),  # too few places for an irrational
    ("(1, 2, 3\\sqrt{2})", "\\left(1,2,\\sqrt{8}\\right)"),
    ("4211_5", "4210_{5}"),
    ("", "5"),
    ("5", ""),
    ("None", "5"),
    ("\\boxed{}", "5"),
    ("{", "5"),
    ("\\frac{1}{", "\\frac{1}{2}"),
    ("2^{10^{10}}", "1"),
    ("9^{9^{9}}", "5"),
]


@pytest.mark.parametrize("pred,gold", TRUE)
def test_equivalent(pred, gold):
    assert is_equiv(pred, gold), grade(pred, gold)


@pytest.mark.parametrize("pred,gold", FALSE)
def test_not_equivalent(pred, gold):
    assert not is_equiv(pred, gold), grade(pred, gold)


def test_enough_cases():
    assert len(TRUE) + len(FALSE) >= 150 and len(FALSE) >= 50


def test_math500_gold_matches_own_solution():
    """Every gold answer grades equal to the \\boxed{} of its own solution. No exceptions."""
    failures = []
    for problem in load_task("math500"):
        boxed = extract_boxed(problem.metadata["solution"])
        if boxed is None or not is_equiv(boxed, problem.answer):
            failures.append((problem.id, problem.answer, boxed))
    assert failures == []


def test_math500_gold_is_not_equal_to_a_shifted_neighbour():
    """A grader that says yes to everything would pass the self-check; it must not pass this."""
    golds = [p.answer for p in load_task("math500", limit=120)]
    preds = golds[1:] + golds[:1]
    verdicts = is_equiv_many(preds, golds, timeout=3.0)
    same = [(p, g) for p, g, v in zip(preds, golds, verdicts, strict=True) if v]
    # Neighbours can share an answer by chance; only those may agree.
    assert all(normalize_answer(p) == normalize_answer(g) for p, g in same)
    assert len(same) <= 5


@pytest.mark.parametrize(
    "answers",
    [
        ["1/2", "\\frac{1}{2}", "\\dfrac12", "0.5", "$0.5$", "0.50", "\\boxed{\\frac12}"],
        ["10080", "10,080", "10,\\!080", "\\$10,080", "10080.0"],
        ["C", "(C)", "\\text{(C)}", "\\textbf{(C)}"],
        ["5", "x = 5", "5^\\circ", "5 \\text{ cm}", "+5"],
        ["50", "50\\%", "50%"],  # percent signs are dropped (is_equiv also accepts 0.5)
        ["-2,1", "1, -2", "1,-2"],
        ["\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\frac{\\pi}{2})", "(3, \\frac{\\pi}{2})"],
    ],
)
def test_normalize_pools_equivalent_answers(answers):
    keys = {normalize_answer(a) for a in answers}
    assert len(keys) == 1, keys


def test_normalize_keeps_different_answers_apart():
    answers = [
        "1/2",
        "1/3",
        "(1,2)",
        "[1,2]",
        "(1,2]",
        "\\{1,2\\}",
        "12",
        "-1/2",
        "C",
        "D",
        "x+1",
        "x-1",
    ]
    assert len({normalize_answer(a) for a in answers}) == len(answers)


@pytest.mark.parametrize("bad", [None, b"\\xff\\x00junk", 3.5, object(), [1, 2], "", "   "])
def test_normalize_never_raises(bad):
    assert isinstance(normalize_answer(bad), str)


def test_numbers_and_bytes_are_accepted():
    assert is_equiv(27, "27.0") and is_equiv(27.0, "27") and is_equiv(b"1/2", "0.5")
    assert not is_equiv(None, "5") and not is_equiv(True, "1") and not is_equiv([5], "5")


JUNK = [
    "",
    "{",
    "}}}}{{{{",
    "\\frac{1}{",
    "\\boxed{\\boxed{\\boxed{",
    "\\left( \\right]",
    "x" * 100_000,
    "1" * 100_000,
    "\\frac{" * 5000 + "1" + "}" * 5000,
    "{" * 20_000 + "}" * 20_000,
    "\\sqrt{" * 3000 + "2" + "}" * 3000,
    "(" * 3000 + ")" * 3000,
    bytes(range(256)).decode("latin-1") * 200,
    "\\begin{pmatrix}" * 200,
    "^^^^____$$$$%%%%&&&&",
    "2^{2^{2^{2^{2^{2}}}}}",
    "10^{10^{10}}",
    "99999999!",
    "\\underbrace{" * 50,
    "\x00\x01\x02 5",
]


@pytest.mark.parametrize("junk", JUNK, ids=lambda j: repr(j[:20]) + f"..{len(j)}")
def test_malformed_input_returns_false_in_time(junk):
    for pred, gold in ((junk, "5"), ("5", junk), (junk, junk[:-1] or "1")):
        start = time.perf_counter()
        result = grade(pred, gold, timeout=1.0)
        elapsed = time.perf_counter() - start
        assert isinstance(result.correct, bool)
        # 1 s of sympy at most, plus starting a fresh worker process after a kill
        assert elapsed < 4.0, (result, elapsed)
    # The same text twice is the same answer, however odd (empty text is no answer).
    assert grade(junk, junk, timeout=1.0).correct == bool(junk.strip())


# math-verify needs minutes for this pair (it evaluates sin(10^100) to high precision).
def slow_pair(i):
    return f"\\sin(10^{{100}}) + {i}", f"(1+x)^{{{300 + i}}}"


def test_slow_comparison_is_cut_off_at_the_deadline():
    start = time.perf_counter()
    result = grade(*slow_pair(0), timeout=0.3)
    elapsed = time.perf_counter() - start
    assert result.how == "timeout" and not result.correct
    assert elapsed < 2.0  # the deadline, plus maybe starting the first worker
    # The pool recovers: the next comparison still works.
    assert is_equiv("\\frac{\\sqrt{2}}{2}", "\\frac{1}{\\sqrt{2}}", timeout=5.0)


def test_grading_off_the_main_thread():
    results = {}

    def work(i):
        start = time.perf_counter()
        how = grade(*slow_pair(i + 1), timeout=0.3).how
        results[i] = (
            is_equiv("\\frac{\\sqrt{3}}{3}", "\\frac{1}{\\sqrt{3}}"),
            is_equiv("(a+5)(b+3)", "(a+5)(b+2)"),
            how,
            time.perf_counter() - start < 5.0,
        )

    threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == {i: (True, False, "timeout", True) for i in range(3)}


def test_is_equiv_many_matches_one_by_one():
    preds = [p for p, _ in TRUE[:40]] + [p for p, _ in FALSE[:40]] + ["5", "5"]
    golds = [g for _, g in TRUE[:40]] + [g for _, g in FALSE[:40]] + ["5", "6"]
    many = is_equiv_many(preds, golds, workers=2)
    assert many == [is_equiv(p, g) for p, g in zip(preds, golds, strict=True)]
    assert many[:40] == [True] * 40 and many[40:80] == [False] * 40
    with pytest.raises(ValueError, match="gold"):
        is_equiv_many(["1"], [])


def test_grade_reports_how():
    assert grade("0.5", "\\frac12").how == "string"
    assert grade("0.333333", "\\frac13").how == "numeric"
    assert grade("\\sqrt{8}", "2\\sqrt{2}").how == "numeric"  # constants are evaluated
    assert grade("2(k+1)", "2k+2").how == "symbolic"
    assert grade("", "1").how == "empty"
    assert grade("2^{10^{10}}", "1").how == "unsafe"


def test_in_process_fallback_has_a_deadline():
    def slow(pred, gold):
        time.sleep(5)
        return True

    start = time.perf_counter()
    assert run_in_process(slow, "a", "b", 0.2) is None
    assert time.perf_counter() - start < 2
    assert run_in_process(lambda p, g: p == g, "a", "a", 1.0) is True
