"""Configs: presets, --set parsing and validation errors that name the fix."""

import dataclasses
import json

import pytest

from jaxgan import build, configs
from jaxgan.configs import ConfigError


def test_overrides_are_typed():
    o = configs.parse_overrides(["loss=hinge", "d_steps=5", "g_lr=2e-4", "unroll_first_order=true", "g_hidden=64,32"])
    assert o == {"loss": "hinge", "d_steps": 5, "g_lr": 2e-4, "unroll_first_order": True, "g_hidden": (64, 32)}


def test_penalties_shorthand_sets_the_penalty_keys():
    o = configs.parse_overrides(["penalties=gp:10,label_flip:0.1"])
    assert o["gp"] == 10.0 and o["label_flip"] == 0.1 and o["r1"] == 0.0
    c = configs.apply_overrides(configs.preset("ring8"), o)
    names = [type(r).__name__ for r in build.remedies(c)]
    assert names == ["GradientPenalty", "LabelFlip"]


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("lr=1", "unknown config key 'lr'; valid keys: .*g_lr"),
        ("d_steps=two", "config key 'd_steps' needs a value of type int, got 'two'"),
        ("d_steps=1.5", "needs a value of type int"),
        ("unroll_first_order=maybe", "type bool"),
        ("penalties=gp10", "name:value pairs"),
        ("nonsense", "key=value"),
    ],
)
def test_bad_overrides_name_the_problem(item, message):
    with pytest.raises(ConfigError, match=message):
        configs.parse_overrides([item])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"d_steps": 0}, "d_steps=0: each round needs at least one D update"),
        ({"g_lr": -1.0}, "g_lr=-1.0: a learning rate must be >= 0"),
        ({"unroll_steps": -2}, "unroll_steps=-2"),
        ({"loss": "wgan"}, "choose one of minimax"),
        ({"label_flip": 1.5}, "label_flip"),
        ({"dataset": "mnist-ish"}, "dataset="),
    ],
)
def test_invalid_configs_are_refused(override, message):
    with pytest.raises(ConfigError, match=message):
        configs.apply_overrides(configs.preset("ring8"), override)


def test_unknown_preset_lists_the_presets():
    with pytest.raises(ConfigError, match="ring8"):
        configs.preset("ring9")


def test_config_round_trips_through_json():
    c = configs.apply_overrides(configs.preset("grid25"), {"g_hidden": (64, 64), "gp": 5.0})
    again = configs.Config.from_dict(json.loads(c.to_json()))
    assert again == c


def test_instance_noise_anneal_counts_rounds():
    c = dataclasses.replace(configs.preset("ring8"), instance_noise=0.2, instance_noise_anneal=100, d_steps=5)
    (noise,) = build.remedies(c)
    assert noise.anneal_steps == 500  # the remedy counts D updates: 5 per round
