import time

import pytest

from ponder.tasks.extract import (
    METHODS,
    extract_answer,
    extract_answer_is,
    extract_boxed,
    extract_hashes,
    extract_last_number,
)


@pytest.mark.parametrize(
    "text,expected",
    [
        ("so $\\boxed{5}$.", "5"),
        ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("first \\boxed{1} then \\boxed{2}", "2"),
        ("\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}", "\\left( 3, \\frac{\\pi}{2} \\right)"),
        ("\\boxed{\\{1,2\\}}", "\\{1,2\\}"),  # escaped braces do not count
        ("\\boxed{\\text{(C)}}", "\\text{(C)}"),
        ("\\boxed{ 12 }.", "12"),
        ("\\boxed{$12$}", "12"),
        ("\\fbox{7}", "7"),
        ("\\boxed 5$ done", "5"),
        ("\\boxed  {9}", "9"),
        ("\\boxed{a{b{c}}d}", "a{b{c}}d"),
        (
            "\\boxed{\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}}",
            "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}",
        ),
        ("\\boxed{3} and then truncated \\boxed{\\frac{4", "3"),  # last box unclosed
        ("\\boxed{\\frac{4", None),
        ("\\boxed{}", None),
        ("\\boxedx{3}", None),
        ("no box", None),
    ],
)
def test_extract_boxed(text, expected):
    assert extract_boxed(text) == expected


@pytest.mark.parametrize(
    "text,expected",
    [
        ("12 + 25 = 37. The answer is 37.", "37"),
        ("The answer is: 42", "42"),
        ("the answer is 18 dollars.", "18"),
        ("The answer is $\\frac{1}{2}$.", "\\frac{1}{2}"),
        ("The final answer is $\\boxed{7}$. I hope", "7"),
        ("Final Answer: (B)", "(B)"),
        ("The answer is 3.5.", "3.5"),
        ("The answer is 1,234.\nMore text", "1,234"),
        ("The answer is 4. No wait, the answer is 5.", "5"),
        ("The answer is x = 5.", "x = 5"),
        ("The answer is", None),
        ("no marker 5", None),
    ],
)
def test_extract_answer_is(text, expected):
    assert extract_answer_is(text) == expected


@pytest.mark.parametrize(
    "text,expected",
    [
        ("She makes 9 * 2 = $18.\n#### 18", "18"),
        ("#### 1,234\n", "1,234"),
        ("#### 5.", "5"),
        ("####", None),
        ("no hashes 3", None),
    ],
)
def test_extract_hashes(text, expected):
    assert extract_hashes(text) == expected


@pytest.mark.parametrize(
    "text,expected",
    [
        ("a 1 b 2 c 3", "3"),
        ("total is 1,234.", "1234"),
        ("it is -7.5 degrees", "-7.5"),
        ("from 3-5", "5"),
        ("x-1", "1"),
        ("value .5?", "5"),
        ("no digits", None),
    ],
)
def test_extract_last_number(text, expected):
    assert extract_last_number(text) == expected


def test_default_order_and_fallbacks():
    text = "The answer is 4. Also \\boxed{5}. #### 6 and finally 7"
    assert extract_answer(text) == "5"
    assert extract_answer(text, methods=("answer_is", "boxed")) == "4"
    assert extract_answer(text, methods=("hashes",)) == "6 and finally 7"
    assert extract_answer(text, methods=("last_number",)) == "7"
    assert extract_answer("only a number 8 here") == "8"
    assert extract_answer("only a number 8 here", methods=("boxed", "answer_is")) is None
    # A truncated box falls through to the next method.
    assert extract_answer("12 + 30 = 42 so \\boxed{4") == "4"
    assert extract_answer("12 + 30 = 42 so \\boxed{4", methods=("boxed",)) is None
    assert METHODS == ("boxed", "answer_is", "hashes", "last_number")


def test_unknown_method_is_a_programming_error():
    with pytest.raises(ValueError, match="last_number"):
        extract_answer("5", methods=("boxed", "magic"))


@pytest.mark.parametrize(
    "junk",
    [
        None,
        "",
        b"\xff\xfe\x00 12",
        bytearray(b"\\boxed{3}"),
        12,
        3.5,
        object(),
        ["\\boxed{1}"],
        "\\boxed{" * 20_000,
        "{" * 100_000,
        "}" * 100_000,
        "answer is " * 10_000,
        "1" * 100_000,
        "#### " * 20_000,
        bytes(range(256)).decode("latin-1") * 400,
        "\\boxed{" * 5000 + "}" * 2500,
        "\\frac{" * 10_000 + "\\boxed{1}",
    ],
    ids=lambda j: type(j).__name__ + str(len(j) if hasattr(j, "__len__") else ""),
)
def test_never_raises_and_is_fast(junk):
    start = time.perf_counter()
    result = extract_answer(junk)
    assert result is None or isinstance(result, str)
    for method in METHODS:
        assert extract_answer(junk, methods=(method,)) is None or isinstance(result, str)
    assert time.perf_counter() - start < 2.0


def test_bytes_and_numbers():
    assert extract_answer(b"\\boxed{3}") == "3"
    assert extract_answer(12) == "12"
    assert extract_answer(None) is None
    assert extract_answer(["\\boxed{1}"]) is None
