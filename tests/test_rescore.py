import json
import subprocess
import sys

import pytest

from ponder.cli import main

LINES = [
    # answers: 0.5 (right), 1/3, \frac12 (right), 7
    {
        "id": "q1",
        "gold": "\\frac{1}{2}",
        "responses": ["so \\boxed{0.5}", "The answer is 1/3.", "\\boxed{\\frac12}", "#### 7"],
        "scores": [0.9, 0.2, 0.1, 0.8],
    },
    # answers: 41, 41, none, 42 (right)
    {"id": "q2", "gold": 42, "answers": ["41", "41", None, "42"], "scores": [0.1, 0.1, 0.5, 0.9]},
]

# By hand, per problem (q1, q2), then the mean:
EXPECTED = {
    "acc@1": (2 / 4 + 1 / 4) / 2,
    "pass@1": (2 / 4 + 1 / 4) / 2,
    "pass@2": ((1 - 1 / 6) + (1 - 3 / 6)) / 2,  # 1 - C(n-c,2)/C(4,2)
    "pass@4": 1.0,
    "maj@1": (2 / 4 + 1 / 4) / 2,
    # q1 pairs: (0,1) tie .5, (0,2) 1, (0,3) .5, (1,2) .5, (1,3) 0, (2,3) .5 -> 3/6
    # q2 pairs: (0,1) 0, (0,2) 0, (0,3) .5, (1,2) 0, (1,3) .5, (2,3) 1 -> 2/6
    "maj@2": (3 / 6 + 2 / 6) / 2,
    "maj@4": (1 + 0) / 2,  # q1: 1/2 has two votes; q2: 41 has two
    "rm@1": (2 / 4 + 1 / 4) / 2,
    # q1 best of pairs by score: (0,1)->0 T, (0,2)->0 T, (0,3)->0 T, (1,2)->1 F, (1,3)->3 F,
    #    (2,3)->3 F -> 3/6;  q2: (0,1) tie F, (0,2)->2 F, (0,3)->3 T, (1,2)->2 F, (1,3)->3 T,
    #    (2,3)->3 T -> 3/6
    "rm@2": (3 / 6 + 3 / 6) / 2,
    "rm@4": (1 + 1) / 2,  # top scores .9: 0.5 (right) and 42 (right)
    "weighted@1": (2 / 4 + 1 / 4) / 2,
    # q1 sums: {0.5,\frac12}=1.0 vs 1/3=.2 vs 7=.8 -> right; q2: 41=.2 vs 42=.9 -> right
    "weighted@4": 1.0,
}


def write_jsonl(path, rows, extra_lines=()):
    text = "\n".join(json.dumps(r) for r in rows)
    if extra_lines:
        text += "\n" + "\n".join(extra_lines)
    path.write_text(text + "\n")
    return path


def run_json(capsys, *argv):
    code = main(["rescore", *argv, "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out.strip().splitlines()[-1]), err


def test_json_metrics_match_hand_computed(tmp_path, capsys):
    path = write_jsonl(tmp_path / "s.jsonl", LINES)
    summary, _ = run_json(capsys, str(path))
    assert summary["problems"] == 2 and summary["samples"] == 8 and summary["ks"] == [1, 2, 4]
    metrics = summary["metrics"]
    for name, value in EXPECTED.items():
        assert metrics[name] == pytest.approx(value), name
    assert set(metrics) == {"acc@1"} | {
        f"{m}@{k}" for m in ("pass", "maj", "rm", "weighted") for k in (1, 2, 4)
    }
    low, high = summary["acc@1_ci95"]
    assert low <= metrics["acc@1"] <= high


def test_malformed_lines_are_reported_and_skipped(tmp_path, capsys):
    path = write_jsonl(
        tmp_path / "s.jsonl",
        LINES,
        extra_lines=[
            "not json",  # line 3
            json.dumps({"gold": "3"}),  # 4: no responses
            json.dumps({"gold": "3", "responses": "3"}),  # 5: not a list
            json.dumps({"gold": "3", "responses": ["3"], "scores": [1, 2]}),  # 6
            "[1, 2]",  # 7: not an object
            json.dumps({"responses": ["3"]}),  # 8: no gold
            "",  # blank lines are fine
        ],
    )
    summary, err = run_json(capsys, str(path))
    assert summary["skipped_lines"] == 6 and summary["problems"] == 2
    for lineno in (3, 4, 5, 6, 7, 8):
        assert f"s.jsonl:{lineno}:" in err
    assert "s.jsonl:9:" not in err and "s.jsonl:1:" not in err
    assert summary["metrics"]["maj@4"] == pytest.approx(EXPECTED["maj@4"])


def test_per_sample_output(tmp_path, capsys):
    path = write_jsonl(tmp_path / "s.jsonl", LINES)
    out_path = tmp_path / "graded.jsonl"
    run_json(capsys, str(path), "--per-sample", str(out_path))
    rows = [json.loads(line) for line in out_path.read_text().splitlines()]
    assert [(r["problem"], r["index"]) for r in rows] == [
        (p, i) for p in ("q1", "q2") for i in range(4)
    ]
    assert [r["extracted"] for r in rows] == ["0.5", "1/3", "\\frac12", "7", "41", "41", None, "42"]
    assert [r["correct"] for r in rows] == [True, False, True, False, False, False, False, True]


def test_field_overrides_k_and_no_scores(tmp_path, capsys):
    rows = [
        {"answer": "5", "outputs": ["\\boxed{5}", "\\boxed{6}", "\\boxed{5}"]},
        {"answer": "x=2", "outputs": ["2", "3", "3"]},
    ]
    path = write_jsonl(tmp_path / "o.jsonl", rows)
    summary, _ = run_json(
        capsys, str(path), "--gold-field", "answer", "--responses-field", "outputs", "--k", "1,3"
    )
    m = summary["metrics"]
    assert summary["ks"] == [1, 3]
    assert "rm@3" not in m and "weighted@3" not in m
    assert m["maj@3"] == pytest.approx(0.5) and m["pass@3"] == 1.0
    assert m["acc@1"] == pytest.approx((2 / 3 + 1 / 3) / 2)


def test_table_output(tmp_path, capsys):
    path = write_jsonl(tmp_path / "s.jsonl", LINES)
    assert main(["rescore", str(path)]) == 0
    out = capsys.readouterr().out
    assert "2 problems, 8 samples" in out
    for row in ("pass@k", "maj@k", "rm@k", "weighted@k", "acc@1"):
        assert row in out
    maj_row = next(line for line in out.splitlines() if line.startswith("maj@k"))
    assert maj_row.split()[1:] == [f"{EXPECTED[f'maj@{k}']:.3f}" for k in (1, 2, 4)]


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--k", "1,9"], "--k"),
        (["--k", "a"], "--k"),
        (["--methods", "boxed,guess"], "--methods"),
        (["--timeout", "0"], "--timeout"),
    ],
)
def test_bad_flags_exit_2(tmp_path, capsys, argv, message):
    path = write_jsonl(tmp_path / "s.jsonl", LINES)
    assert main(["rescore", str(path), *argv]) == 2
    assert message in capsys.readouterr().err


def test_missing_file_and_empty_file(tmp_path, capsys):
    assert main(["rescore", str(tmp_path / "nope.jsonl")]) == 2
    assert "no such file" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text("garbage\n")
    assert main(["rescore", str(bad)]) == 2
    assert "no usable lines" in capsys.readouterr().err


def test_progress_bar_for_large_files(tmp_path, capsys):
    rows = [{"gold": str(i), "answers": [str(i), str(i + 1)]} for i in range(300)]
    path = write_jsonl(tmp_path / "big.jsonl", rows)
    summary, err = run_json(capsys, str(path))
    assert "grading" in err  # tqdm writes to stderr
    assert summary["metrics"]["acc@1"] == 0.5 and summary["metrics"]["pass@2"] == 1.0
    _, err_quiet = run_json(capsys, str(path), "--no-progress")
    assert "grading" not in err_quiet


def test_real_cli_help_and_run(tmp_path):
    helped = subprocess.run(
        [sys.executable, "-m", "ponder.cli", "rescore", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert helped.returncode == 0
    assert '"responses"' in helped.stdout and "--per-sample" in helped.stdout
    path = write_jsonl(tmp_path / "s.jsonl", LINES)
    done = subprocess.run(
        [sys.executable, "-m", "ponder.cli", "rescore", str(path), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    metrics = json.loads(done.stdout)["metrics"]
    assert metrics["rm@2"] == pytest.approx(EXPECTED["rm@2"])
    missing = subprocess.run(
        [sys.executable, "-m", "ponder.cli", "rescore", str(tmp_path / "x.jsonl")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode == 2 and "no such file" in missing.stderr
