"""The strategy registry takes every option, type and default from the strategies' config
dataclasses (no model needed)."""

from dataclasses import fields

import pytest

from ponder.strategies.registry import STRATEGIES, OptionError, make_strategy


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_every_option_is_a_config_field_with_its_default(name):
    entry = STRATEGIES[name]
    built = make_strategy(name)
    config_fields = {f.name for f in fields(type(built))}
    for option, default in entry.option_defaults().items():
        if option in entry.adapt_options:
            continue
        assert option in config_fields
        assert getattr(built, option) == default  # the config's own default, not a copy
    params = getattr(built, "params", None)
    for key, value in entry.defaults.items():
        target = entry.takes.get(key, key)
        if params is not None:
            assert getattr(params, key) == value
        elif target in config_fields:
            assert getattr(built, target) == value


def test_options_the_registry_used_to_hide_can_be_set():
    assert make_strategy("adaptive_sc", other_prior=3).other_prior == 3.0
    assert make_strategy("self_refine", critique_tokens="64").critique_tokens == 64


def test_internal_fields_are_not_options():
    with pytest.raises(ValueError, match="does not take"):
        make_strategy("adaptive_sc", draws=10**9)  # would make the posterior take forever
    with pytest.raises(ValueError, match="does not take"):
        make_strategy("thinking_budget", wait="x" * 100_000)
    assert "workers" not in STRATEGIES["code_consistency"].options


def test_types_come_from_the_field_annotations():
    assert STRATEGIES["power"].options["block_size"] is int  # `int | None`
    assert STRATEGIES["smc"].options["anneal"] is bool
    with pytest.raises(OptionError, match="'mcmc_steps' of strategy 'power' must be an integer"):
        make_strategy("power", mcmc_steps="many")
    assert make_strategy("smc", anneal="true").anneal is True


def test_sampling_options_reach_flat_configs_through_their_field_names():
    mcts = make_strategy("mcts", n=5, max_tokens=40, temperature=0.3, seed=2)
    assert (mcts.simulations, mcts.step_max_tokens, mcts.temperature, mcts.seed) == (5, 40, 0.3, 2)
    power = make_strategy("power", n=2, max_tokens=64, top_p=0.9)
    assert (power.n, power.max_tokens, power.top_p) == (2, 64, 0.9)


def test_low_temperature_samples_at_one_over_alpha():
    assert make_strategy("low_temperature", alpha=5).params.temperature == pytest.approx(0.2)
    assert STRATEGIES["low_temperature"].defaults["temperature"] == 0.25
    with pytest.raises(ValueError, match="alpha must be >= 1"):
        make_strategy("low_temperature", alpha=0.5)
