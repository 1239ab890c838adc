"""Our own commands print no warnings: not transformers' deprecation notices (the native
engine passes the cache under the argument name the installed release expects), not torch's."""

import subprocess
import sys

NOISE = ("warning", "deprecat")


def stderr_of(argv: list[str]) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stderr


def test_generate_command_prints_no_warnings():
    err = stderr_of([sys.executable, "-m", "ponder.cli", "generate", "What is 2 + 2?",
                     "--max-tokens", "4", "--n", "2", "--seed", "0"])
    assert not any(word in err.lower() for word in NOISE), err


def test_engine_generates_continues_and_scores_without_warnings():
    script = (
        "from ponder.engines.hf import HFEngine\n"
        "from ponder.types import GenerateRequest, SamplingParams, ScoreRequest\n"
        "e = HFEngine('smollm2-135m')\n"
        "[g] = e.generate([GenerateRequest('Hi', SamplingParams(n=2, max_tokens=3, seed=1),"
        " keep_state=True)])\n"
        "e.generate([GenerateRequest(state=g.completions[0].state,"
        " params=SamplingParams(max_tokens=2))])\n"
        "e.score([ScoreRequest('Hi', ' there')])\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert not any(word in done.stderr.lower() for word in NOISE), done.stderr
