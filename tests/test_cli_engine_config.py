"""The engine options: EngineConfig's defaults and checks, the CLI flags built from it, and
the eval side (runner, spec, Ray pool) free of the command-line modules. No model loads."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import pytest

from ponder.cli import main
from ponder.commands._common import add_engine_args, engine_config_from_args
from ponder.engines.config import EngineConfig
from ponder.models import DEFAULT_MODEL, DTYPE_NAMES


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_engine_args(parser)
    return parser.parse_args(list(argv))


def test_the_flags_default_to_the_configs_defaults():
    assert engine_config_from_args(parse()) == EngineConfig()
    assert EngineConfig().model == DEFAULT_MODEL and EngineConfig().dtype in DTYPE_NAMES
    parser = argparse.ArgumentParser()
    add_engine_args(parser)
    [action] = [a for a in parser._actions if a.dest == "dtype"]
    assert tuple(action.choices) == DTYPE_NAMES


def test_flags_map_onto_every_field():
    args = parse("--engine", "openai", "--model", "m", "--base-url", "http://a/v1, http://b/v1",
                 "--api-key", "k", "--concurrency", "3", "--tokenizer", "t",
                 "--tensor-parallel-size", "2", "--dtype", "bfloat16", "--device", "cpu",
                 "--max-batch-size", "8", "--threads", "2")
    config = engine_config_from_args(args)
    assert config == EngineConfig(engine="openai", model="m", base_url="http://a/v1, http://b/v1",
                                  api_key="k", concurrency=3, tokenizer="t",
                                  tensor_parallel_size=2, dtype="bfloat16", device="cpu",
                                  max_batch_size=8, threads=2)
    assert config.base_urls == ["http://a/v1", "http://b/v1"]
    # A flag left None (eval's --model and --dtype) takes the default.
    assert engine_config_from_args(argparse.Namespace(model=None, dtype=None)) == EngineConfig()


def test_serve_names_the_upstream_key_flag_apart_from_its_own():
    parser = argparse.ArgumentParser()
    parser.add_argument("--api-key")
    add_engine_args(parser)
    args = parser.parse_args(["--api-key", "mine", "--upstream-api-key", "theirs"])
    assert engine_config_from_args(args).api_key == "theirs"


@pytest.mark.parametrize("options, message", [
    ({"engine": "bogus"}, "unknown engine 'bogus'"),
    ({"dtype": "float8"}, "unknown dtype 'float8'"),
    ({"threads": 0}, "--threads must be >= 1, got 0"),
    ({"max_batch_size": 0}, "--max-batch-size must be >= 1, got 0"),
    ({"concurrency": 0}, "--concurrency must be >= 1, got 0"),
    ({"tensor_parallel_size": 0}, "--tensor-parallel-size must be >= 1, got 0"),
    ({"engine": "openai"}, "--engine openai needs --base-url"),
    ({"engine": "openai", "base_url": " , "}, "--engine openai needs --base-url"),
])
def test_bad_options_are_named(options, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        EngineConfig(**options)


def test_a_mapping_of_options():
    assert EngineConfig(dtype="bf16").dtype == "bfloat16"  # the short names are accepted
    config = EngineConfig.from_mapping({"device": "cpu", "threads": None})
    assert config == EngineConfig(device="cpu")
    with pytest.raises(ValueError, match=r"unknown engine option\(s\) \['gpus'\]"):
        EngineConfig.from_mapping({"gpus": 1})


def test_the_ray_pool_checks_its_engine_options_first():
    from ponder.eval.distributed import RayWorkers

    with pytest.raises(ValueError, match="unknown engine option"):
        RayWorkers({"gpus": 1})
    with pytest.raises(ValueError, match="--threads must be >= 1"):
        RayWorkers({"threads": 0})


def test_the_eval_modules_import_nothing_from_the_commands():
    code = ("import sys, ponder.eval.runner, ponder.eval.spec, ponder.eval.distributed; "
            "print(sorted(m for m in sys.modules if m.startswith('ponder.commands')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_sweep_checks_the_engine_flags_as_eval_does(tmp_path, capsys):
    for flags, message in ((["--max-batch-size", "0"], "--max-batch-size must be >= 1"),
                           (["--threads", "0"], "--threads must be >= 1")):
        for command in (["eval", "--strategy", "sc"], ["sweep", "--strategy", "sc", "--grid",
                                                       "n=1,2", "--dry-run"]):
            out = tmp_path / "x.db"
            assert main([*command, "--task", "arith:1", *flags, "--out", str(out)]) == 2
            assert message in capsys.readouterr().err
            assert not out.exists()


OPENMP_WAITING = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")


@pytest.mark.parametrize("user", [{}, {"OMP_WAIT_POLICY": "PASSIVE"}, {"GOMP_SPINCOUNT": "7"}])
def test_commands_wait_for_openmp_work_with_a_short_spin_unless_the_user_chose(
        user, monkeypatch, capsys):
    # The settings reach torch only through the environment of a fresh process, so what is
    # checked is what the CLI leaves in the environment before a command imports torch.
    for name in OPENMP_WAITING:  # set, then deleted: each is put back as it was after the
        monkeypatch.setenv(name, "")  # test (a delenv of an absent name records nothing,
        monkeypatch.delenv(name)  # and what main() sets would leak into later tests)
    for name, value in user.items():
        monkeypatch.setenv(name, value)
    assert main([]) == 2  # no command: the help, after the environment is set
    got = {name: os.environ.get(name) for name in OPENMP_WAITING}
    if "OMP_WAIT_POLICY" in user:  # the user's policy alone: no spin count added
        assert got == {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": None,
                       "KMP_BLOCKTIME": None}
    else:
        assert got == {"OMP_WAIT_POLICY": None,
                       "GOMP_SPINCOUNT": user.get("GOMP_SPINCOUNT", "1000"),
                       "KMP_BLOCKTIME": "0"}
