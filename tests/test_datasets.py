import hashlib
import json
import re
from importlib import resources

import pytest

from ponder.tasks import arith
from ponder.tasks.datasets import Problem, gold_to_string, load_task, task_names

SHA256 = {
    "math500_test.jsonl": "35dc41080a3680858b27fa7e0533d2d547825316fc5dafe5d316f4ccc5a06132",
    "gsm8k_test.jsonl": "3730d312f6e3440559ace48831e51066acaca737f6eabec99bccb9e4b3c39d14",
    "aime24_test.jsonl": "af2b8bd2aa911b6333ad0df32f3ca05c7ae8ed10f1731f4372c8ae26990bf7ac",
    "amc23_test.jsonl": "43707e1ca784602d8479de24ee8ce36609dbebc46dd152b0b12a46611aa898a4",
}


@pytest.mark.parametrize("file", sorted(SHA256))
def test_vendored_files_match_provenance(file):
    data = resources.files("ponder.tasks").joinpath("data", file).read_bytes()
    assert hashlib.sha256(data).hexdigest() == SHA256[file]
    provenance = resources.files("ponder.tasks").joinpath("data", "PROVENANCE.md").read_text()
    assert SHA256[file] in provenance


@pytest.mark.parametrize(
    "name,rows", [("math500", 500), ("gsm8k", 1319), ("aime24", 30), ("amc23", 40)]
)
def test_builtin_sizes_and_unique_ids(name, rows):
    problems = load_task(name)
    assert len(problems) == rows
    assert len({p.id for p in problems}) == rows
    assert all(isinstance(p, Problem) and p.question and p.answer for p in problems)
    assert all(p.task == name for p in problems)


def test_gold_answers_are_normalized():
    gsm = load_task("gsm8k")
    assert gsm[0].answer == "18"
    assert all(re.fullmatch(r"-?\d+(\.\d+)?", p.answer) for p in gsm), "commas or text left"
    assert "#### 18" in gsm[0].metadata["solution"]
    amc = load_task("amc23")
    assert amc[0].answer == "27"  # 27.0 in the file
    aime = {p.id: p.answer for p in load_task("aime24")}
    assert aime["aime24-67"] == "25"  # "025" in the file
    math = load_task("math500")
    assert math[0].answer == r"\left( 3, \frac{\pi}{2} \right)"
    assert math[0].metadata["level"] == 2 and math[0].metadata["subject"] == "Precalculus"
    assert math[0].id == "test/precalculus/807.json"


@pytest.mark.parametrize(
    "value,numeric,expected",
    [
        (27.0, False, "27"),
        (2.5, False, "2.5"),
        (7, False, "7"),
        ("Janet...\n#### 1,234", False, "1234"),
        ("025", True, "25"),
        ("025", False, "025"),
        (" \\frac{1}{2} ", False, "\\frac{1}{2}"),
        (None, False, None),
        ([1], False, None),
        (float("nan"), False, None),
    ],
)
def test_gold_to_string(value, numeric, expected):
    assert gold_to_string(value, numeric=numeric) == expected


def test_limit_shuffle_and_filters():
    first = load_task("math500", limit=5)
    assert [p.id for p in first] == [p.id for p in load_task("math500")[:5]]
    a = load_task("math500", limit=20, shuffle_seed=3)
    b = load_task("math500", limit=20, shuffle_seed=3)
    c = load_task("math500", limit=20, shuffle_seed=4)
    assert [p.id for p in a] == [p.id for p in b]
    assert [p.id for p in a] != [p.id for p in c]
    assert [p.id for p in a] != [p.id for p in first]
    lv = load_task("math500", levels=[1, 2])
    assert len(lv) == 43 + 90 and {p.metadata["level"] for p in lv} == {1, 2}
    sub = load_task("math500", subjects=["number theory", "Geometry"])
    assert len(sub) == 62 + 41
    both = load_task("math500", levels=[5], subjects="Algebra")
    assert both and all(
        p.metadata["level"] == 5 and p.metadata["subject"] == "Algebra" for p in both
    )


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"limit": 0}, "limit"),
        ({"limit": -3}, "limit"),
        ({"shuffle_seed": "x"}, "shuffle_seed"),
        ({"levels": [9]}, "level"),
        ({"subjects": ["Astrology"]}, "Algebra"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        load_task("math500", **kwargs)


def test_unknown_task_lists_known_ones():
    with pytest.raises(ValueError) as err:
        load_task("mmlu")
    for name in task_names():
        assert name in str(err.value)


def test_filters_on_tasks_without_metadata():
    with pytest.raises(ValueError, match="no levels"):
        load_task("gsm8k", levels=[1])
    with pytest.raises(ValueError, match="no subjects"):
        load_task("gsm8k", subjects=["Algebra"])


def write(tmp_path, lines, name="mine.jsonl"):
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


def test_user_jsonl_auto_and_explicit_fields(tmp_path):
    path = write(
        tmp_path,
        [
            json.dumps({"problem": "1+1?", "answer": 2.0, "level": 1}),
            "",
            json.dumps({"problem": "2+2?", "answer": "4"}),
        ],
    )
    problems = load_task(path)
    assert [(p.id, p.question, p.answer) for p in problems] == [
        ("mine-0000", "1+1?", "2"),
        ("mine-0001", "2+2?", "4"),
    ]
    assert problems[0].metadata["level"] == 1
    path2 = write(tmp_path, [json.dumps({"q": "x?", "y": "7", "key": "a1"})], name="other.jsonl")
    (p,) = load_task(str(path2), question_field="q", answer_field="y", id_field="key")
    assert (p.id, p.question, p.answer) == ("a1", "x?", "7")


def test_user_jsonl_errors_name_field_and_line(tmp_path):
    path = write(tmp_path, [json.dumps({"q": "a", "y": "1"}), json.dumps({"q": "b"})])
    with pytest.raises(ValueError, match=r"line 2 .*'y'"):
        load_task(path, question_field="q", answer_field="y")
    with pytest.raises(ValueError, match="no question field"):
        load_task(path)
    with pytest.raises(ValueError, match=r"line 1 .*'key'"):
        load_task(path, question_field="q", answer_field="y", id_field="key")
    bad = write(tmp_path, [json.dumps({"q": "a", "y": "1"}), "{not json"], name="bad.jsonl")
    with pytest.raises(ValueError, match=r"bad.jsonl:2: not valid JSON"):
        load_task(bad, question_field="q", answer_field="y")
    arr = write(tmp_path, ["[1, 2]"], name="arr.jsonl")
    with pytest.raises(ValueError, match="expected a JSON object"):
        load_task(arr)
    with pytest.raises(ValueError, match="no such file"):
        load_task(tmp_path / "missing.jsonl")
    empty = write(tmp_path, [""], name="empty.jsonl")
    with pytest.raises(ValueError, match="empty"):
        load_task(empty)
    dup = write(tmp_path, ['{"id": 1, "question": "a", "answer": 1}'] * 2, name="dup.jsonl")
    with pytest.raises(ValueError, match="duplicate id"):
        load_task(dup)


def test_arith_is_deterministic_and_ids_are_stable():
    a = load_task("arith:1", limit=50, shuffle_seed=0)
    b = load_task("arith:1", limit=50, shuffle_seed=0)
    assert a == b and len(a) == 50
    by_id = {p.id: p for p in load_task("arith:1")}
    assert all(by_id[p.id] == p for p in a), "shuffling must not change a problem's content"
    assert load_task("arith:1")[7].id == "arith1-0007"
    assert arith.make_item(2, 123) == arith.make_item(2, 123)
    assert arith.make_item(2, 123) != arith.make_item(2, 124)
    assert arith.make_item(2, 5, seed=1) != arith.make_item(2, 5, seed=0)


@pytest.mark.parametrize("level", [1, 2, 3])
def test_arith_answers_are_right(level):
    problems = load_task(f"arith:{level}")
    assert len(problems) == arith.PROBLEMS_PER_LEVEL
    for p in problems:
        assert p.metadata["level"] == level
        assert p.metadata["solution"].endswith(f"The answer is {p.answer}.")
        value = int(p.answer)
        assert value >= 0
        numbers = [int(n) for n in re.findall(r"\d+", p.question)]
        if p.question.startswith("What is"):
            # Re-evaluate the bare expression independently of the generator.
            expr = p.question.removeprefix("What is ").removesuffix("?")
            assert eval(expr, {"__builtins__": {}}) == value  # noqa: S307 - digits and + - only
        if level == 1:
            assert all(n <= 9 for n in numbers)
        if level == 2:
            assert all(10 <= n <= 99 for n in numbers)


def test_arith_levels_differ_in_difficulty():
    def mean_digits(level):
        ps = load_task(f"arith:{level}")
        return sum(len(re.findall(r"\d+", p.question)) for p in ps) / len(ps)

    assert mean_digits(1) == 2 and mean_digits(2) == 2 and mean_digits(3) > 2.5
    mixed = load_task("arith", limit=6)
    assert [p.metadata["level"] for p in mixed] == [1, 2, 3, 1, 2, 3]
    templates = {p.metadata["template"] for p in load_task("arith:1")}
    assert templates == {t.name for _, t in arith.LEVELS[1]}


def test_arith_unknown_level():
    with pytest.raises(ValueError, match="arith:1"):
        load_task("arith:7")
    with pytest.raises(ValueError, match="level"):
        arith.make_item(9, 0)
