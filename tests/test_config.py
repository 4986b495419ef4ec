import dataclasses

import pytest

from nano.config import PRESETS, ModelConfig, get_preset, match_preset
from nano.errors import NanoError
from nano.model import abstract_model, param_count

# Exact parameter counts (tied LM head), computed with jax.eval_shape: nothing is allocated.
EXPECTED = {
    "gemma3_270m": 268_098_176,  # Google's Gemma 3 270M
    "gemma3_1b": 999_885_952,  # Google's Gemma 3 1B
    "gemma2_2b": 2_614_341_888,  # Google's Gemma 2 2B
    "nano1": 1_792_201_216,
    "nano2": 3_277_103_616,
    "student_20m": 121_815_680,
    "student_60m": 193_226_752,
    "tiny": 255_744,
}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_param_counts(name):
    assert param_count(abstract_model(PRESETS[name])) == EXPECTED[name]


def test_every_preset_has_an_expected_count():
    assert set(EXPECTED) == set(PRESETS)


@pytest.mark.parametrize("name,target", [("nano1", 1.8e9), ("nano2", 3.25e9)])
def test_nano_sizes_match_gemini_nano(name, target):
    assert abs(EXPECTED[name] / target - 1) <= 0.02
    assert PRESETS[name].num_kv_heads == 1  # multi-query attention, as in Gemini Nano


@pytest.mark.parametrize("name,non_embedding", [("student_20m", 20e6), ("student_60m", 60e6)])
def test_student_sizes(name, non_embedding):
    c = PRESETS[name]
    assert abs((EXPECTED[name] - c.vocab_size * c.d_model) / non_embedding - 1) < 0.1


def test_layer_pattern():
    c = get_preset("gemma3_270m")
    assert [i for i in range(c.num_layers) if c.is_global(i)] == [5, 11, 17]
    g2 = get_preset("gemma2_2b")
    assert [g2.is_global(i) for i in range(4)] == [False, True, False, True]


def test_config_is_frozen_and_keyword_only():
    c = get_preset("tiny")
    with pytest.raises(dataclasses.FrozenInstanceError, match="cannot assign to field 'd_model'"):
        c.d_model = 1  # type: ignore[misc]
    with pytest.raises(TypeError, match="takes 1 positional argument but 4 were given"):
        ModelConfig("x", 1, 2)  # type: ignore[misc]


def test_bad_configs():
    with pytest.raises(NanoError, match="num_heads"):
        dataclasses.replace(get_preset("tiny"), num_heads=3)
    with pytest.raises(NanoError, match="unknown preset"):
        get_preset("nano3")
    with pytest.raises(NanoError, match=r"cfg\.json: unknown model config field\(s\) \['d_modle'\]"):
        ModelConfig.from_dict({"d_modle": 3}, source="cfg.json")


def test_json_round_trip_and_preset_matching():
    c = get_preset("gemma3_270m")
    assert ModelConfig.from_dict(dataclasses.asdict(c)) == c
    fields = dataclasses.asdict(c) | {"name": "x", "norm_eps": 9.999999974752427e-07}
    assert match_preset(fields, default="custom") == "gemma3_270m"
    assert match_preset(fields | {"d_model": 641}, default="custom") == "custom"
