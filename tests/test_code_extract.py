"""Code extraction from model text: fenced blocks, raw continuations, chatter removed."""

from __future__ import annotations

import pytest

from ponder.tasks.code.extract import defines, extract_code


def test_fenced_block_with_chatter_around_it():
    text = "Here you go:\n```python\ndef f(x):\n    return x + 1\n```\nIt adds one."
    assert extract_code(text) == "def f(x):\n    return x + 1\n"


def test_top_level_calls_prints_and_main_blocks_are_dropped():
    text = ("```python\nimport math\n\nLIMIT = 3\n\n@staticmethod\ndef g(y):\n    return y\n\n"
            "def f(x):\n    return math.sqrt(x)\n\nprint(f(4))\nassert f(9) == 4\n"
            "if __name__ == '__main__':\n    f(1)\n```")
    code = extract_code(text)
    assert code == ("import math\n\nLIMIT = 3\n\n@staticmethod\ndef g(y):\n    return y\n\n"
                    "def f(x):\n    return math.sqrt(x)\n")


def test_the_last_block_defining_a_function_wins_over_examples_and_tests():
    text = ("First try:\n```python\ndef f(x):\n    return 0\n```\nBetter:\n```py\n"
            "def f(x):\n    return x\n```\nUsage:\n```python\nprint(f(3))\n```\n"
            "```python\ndef test_f():\n    assert f(1) == 1\n```")
    assert extract_code(text) == "def f(x):\n    return x\n"


def test_unclosed_fence_from_a_truncated_answer():
    assert extract_code("```python\ndef f(x):\n    return x * 2") == "def f(x):\n    return x * 2\n"


def test_raw_continuation_stops_at_the_first_top_level_line():
    text = "    total = sum(xs)\n\n    return total\n\n\ndef main():\n    pass\nprint(1)"
    assert extract_code(text) == "    total = sum(xs)\n\n    return total"


def test_unfenced_function_with_trailing_prose():
    text = "Sure.\ndef f(x):\n    return -x\n\nThis negates x, as asked."
    assert extract_code(text) == "def f(x):\n    return -x\n"


def test_shell_blocks_are_not_code():
    text = "```bash\npip install numpy\n```\n```python\ndef f():\n    return 1\n```"
    assert extract_code(text) == "def f():\n    return 1\n"


@pytest.mark.parametrize("text", [None, "", "   ", "No code here, sorry.", 42, b"\xff\xfe"])
def test_no_code_gives_none(text):
    assert extract_code(text) is None


def test_defines_finds_top_level_functions_only():
    assert defines("def f(x):\n    pass\n", "f")
    assert defines("async def f():\n    pass\n", "f")
    assert not defines("class A:\n    def f(self):\n        pass\n", "f")
    assert not defines("def fx():\n    pass\n", "f")
