"""Our own commands print no warnings: not transformers' deprecation notices (the native
engine passes the cache under the argument name the installed release expects), not torch's."""

import subprocess
import sys

import pytest

NOISE = ("warning", "deprecat")


def stderr_of(argv: list[str]) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stderr


def test_generate_command_prints_no_warnings():
    err = stderr_of([sys.executable, "-m", "ponder.cli", "generate", "What is 2 + 2?",
                     "--max-tokens", "4", "--n", "2", "--seed", "0"])
    assert not any(word in err.lower() for word in NOISE), err


@pytest.mark.parametrize("lean", [True, False])
def test_both_forward_paths_generate_and_score_without_warnings(lean):
    script = (
        "from ponder.engines.hf import HFEngine\n"
        "from ponder.types import GenerateRequest, SamplingParams, ScoreRequest\n"
        f"e = HFEngine('smollm2-135m', lean={lean})\n"
        "[g] = e.generate([GenerateRequest('Hi', SamplingParams(n=2, max_tokens=3, seed=1),"
        " keep_state=True)])\n"
        "e.generate([GenerateRequest(state=g.completions[0].state,"
        " params=SamplingParams(max_tokens=2))])\n"
        "e.score([ScoreRequest('Hi', ' there')])\n"
        "print(e.forward_path)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ("lean" if lean else "transformers")
    assert not any(word in done.stderr.lower() for word in NOISE), done.stderr
