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
    # Text towers of Google's multimodal Gemma 3 (262,208-row embedding); their published totals,
    # 4,300,079,472 / 12,187,325,040 / 27,432,406,640 (4.3B / 12.2B / 27.4B), add the SigLIP
    # So400m vision tower (416,866,032) and the projector (1152 x d_model + 1152).
    "gemma3_4b": 3_880_263_168,
    "gemma3_12b": 11_766_034_176,
    "gemma3_27b": 27_009_346_304,
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


# Gemma 3 technical report, Table 1: non-embedding parameters in millions (1B 698M, 4B 3,209M,
# 12B 10,759M, 27B 25,600M); embedding 302M / 675M / 1,012M / 1,416M includes the projector.
@pytest.mark.parametrize("name,non_embedding_m,embedding_m", [
    ("gemma3_1b", 698, 302), ("gemma3_4b", 3209, 675), ("gemma3_12b", 10_759, 1012), ("gemma3_27b", 25_600, 1416)])
def test_gemma3_counts_match_the_technical_report(name, non_embedding_m, embedding_m):
    c = PRESETS[name]
    embedding = c.vocab_size * c.d_model + (1152 * c.d_model if c.vocab_size == 262_208 else 0)
    assert round((EXPECTED[name] - c.vocab_size * c.d_model) / 1e6) == non_embedding_m
    assert abs(embedding / 1e6 - embedding_m) < 1  # the report rounds 674.2M up to 675M


def test_big_gemma3_features():
    for name in ("gemma3_4b", "gemma3_12b", "gemma3_27b"):
        c = PRESETS[name]
        assert (c.rope_global_scale, c.rope_global_base, c.rope_local_base, c.window) == (8.0, 1e6, 1e4, 1024)
        assert c.num_kv_heads > 1 and c.qk_norm
    assert PRESETS["gemma3_27b"].attn_scale == 168 ** -0.5  # d_model / heads, not head_dim 128
    assert PRESETS["gemma3_4b"].attn_scale == 256 ** -0.5


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
    with pytest.raises(NanoError, match=r"model config 'tiny': invalid rope_global_scale \(heads"):
        dataclasses.replace(get_preset("tiny"), rope_global_scale=0.0)
    with pytest.raises(NanoError, match=r"model config 'tiny': invalid query_pre_attn_scalar \(heads"):
        dataclasses.replace(get_preset("tiny"), query_pre_attn_scalar=-1)
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
