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


def test_a_model_folder_loads_without_claiming_a_conversion(tmp_path, engine):
    """Only a GGUF source is converted to a safetensors cache; a plain HF folder is read as
    it is, and loading it says nothing."""
    from ponder.testing.random_models import QwenShape, build_qwen_policy

    folder = build_qwen_policy(tmp_path / "tiny", engine.tokenizer,
                               QwenShape(hidden=32, layers=1, heads=2, kv_heads=1,
                                         intermediate=64))
    script = ("from ponder.engines.hf import HFEngine\n"
              "from ponder.types import GenerateRequest, SamplingParams\n"
              f"HFEngine({folder!r}).generate([GenerateRequest('Hi', SamplingParams("
              "max_tokens=2))])\n")
    err = stderr_of([sys.executable, "-c", script])
    assert "convert" not in err.lower() and not any(w in err.lower() for w in NOISE), err
