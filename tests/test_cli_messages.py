"""What the commands print where a user slips: a message naming what to change and exit 2,
never a traceback; and what they print when all goes well (the stop string not streamed,
votes counted among the voters)."""

from __future__ import annotations

import json
import socket

import pytest

from ponder.cli import main
from ponder.commands.run import _print_result
from ponder.commands.serve import _check_port
from ponder.scorers.hf_prm import HFRewardModel
from ponder.types import Candidate, Result, Usage


def error_of(argv: list[str], capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize("argv, words", [
    (["generate", "hi", "--device", "tpu"], "--device must be cpu or cuda"),
    (["generate", "hi", "--engine", "openai", "--base-url", "http://127.0.0.1:9/v1",
      "--max-tokens", "2"], "giving up after"),
    (["rescore", "."], "is a folder"),
    (["report", "."], "is a folder, not a run store"),
])
def test_slips_are_one_line_messages(argv, words, capsys):
    assert words in error_of(argv, capsys)


def test_report_makes_the_folders_it_writes_into_and_refuses_a_file_for_plots(tmp_path, capsys):
    from ponder.eval.store import Store

    store = tmp_path / "runs.db"
    Store(store).close()
    page = tmp_path / "new" / "deeper" / "report.html"
    assert main(["report", str(store), "--html", str(page)]) == 0
    assert page.is_file()
    capsys.readouterr()
    assert "that is a file" in error_of(["report", str(store), "--png", str(page)], capsys)


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.startswith("ponder ")


def test_a_port_in_use_is_named_before_the_model_loads():
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(ValueError, match=f"127.0.0.1:{port} is in use"):
            _check_port("127.0.0.1", port)


@pytest.mark.parametrize("path, words", [("/no/such/folder", "no reward-model folder at"),
                                         ("no_such_folder", "not a hub id")])
def test_a_reward_model_that_is_nowhere_is_named_so(path, words):
    with pytest.raises(ValueError, match=words):
        HFRewardModel(path, style="orm").load()


def test_only_voters_count_as_giving_no_answer(capsys):
    """RSA keeps its earlier populations among the candidates, but only the last votes."""
    candidates = tuple(Candidate(f"the answer is {a}", a, tokens=10) for a in
                       ["1", "2", None, "3", "50", "50", None, "18"])  # last 4 vote
    votes = [{"answer": "50", "votes": 2, "weight": 2}, {"answer": "18", "votes": 1, "weight": 1}]
    result = Result("p", "50", candidates, Usage(), trace={"votes": votes, "voters": 4})
    _print_result(result, verbose=False)
    out = capsys.readouterr().out
    assert "(no answer)    1 voter(s) gave none" in out


@pytest.mark.slow
def test_generate_streams_no_stop_string(capsys):
    argv = ["generate", "Q: 2 + 3 = ?\nA:", "--raw", "--temperature", "0", "--stop", "\n",
            "--max-tokens", "12"]
    assert main(argv) == 0
    streamed = capsys.readouterr().out
    assert main([*argv, "--json"]) == 0
    [line] = capsys.readouterr().out.splitlines()
    completion = json.loads(line)
    assert completion["finish_reason"] == "stop"
    assert streamed == completion["text"] + "\n"
