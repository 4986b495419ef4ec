"""Gemma 3 4B/12B/27B as teachers: linear RoPE scaling on global layers, the 27B's query scale,
multimodal Hugging Face checkpoints (text tower under `language_model`, vision tower skipped),
checked against llama.cpp on small random configs that use every feature."""

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest
from flax import nnx
from typer.testing import CliRunner

from nano.checkpoint import flat_params, load_checkpoint, load_config, load_meta
from nano.cli import app
from nano.config import get_preset
from nano.convert import convert, hf_config, write_hf_safetensors
from nano.errors import NanoError
from nano.gguf_io import read_gguf, write_gguf
from nano.model import Transformer

# 62 layers: llama.cpp knows a 27B by its depth and then scales queries by (d_model / heads)**-0.5,
# here 16**-0.5 against head_dim 32. Window 8 < the 40 tokens scored; 10 global layers scaled x8;
# GQA with 2 KV heads; QK-norm.
PARITY = dataclasses.replace(get_preset("tiny"), name="parity_62", num_layers=62, head_dim=32, ffn_dim=64,
                             query_pre_attn_scalar=16, rope_global_scale=8.0)
# What Google's configs say (google/gemma-3-{4b,12b,27b}-it config.json; the text_config lists
# only what differs from Hugging Face's Gemma3TextConfig defaults).
HF_TEXT_CONFIGS = {
    "gemma3_4b": {"hidden_size": 2560, "intermediate_size": 10240, "model_type": "gemma3_text",
                  "num_hidden_layers": 34, "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
                  "sliding_window": 1024},
    "gemma3_12b": {"hidden_size": 3840, "intermediate_size": 15360, "model_type": "gemma3_text",
                   "num_attention_heads": 16, "num_hidden_layers": 48, "num_key_value_heads": 8,
                   "rope_scaling": {"factor": 8.0, "rope_type": "linear"}, "sliding_window": 1024},
    "gemma3_27b": {"head_dim": 128, "hidden_size": 5376, "intermediate_size": 21504, "model_type": "gemma3_text",
                   "num_attention_heads": 32, "num_hidden_layers": 62, "num_key_value_heads": 16,
                   "query_pre_attn_scalar": 168, "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
                   "sliding_window": 1024},
}
VISION_CONFIG = {"hidden_size": 1152, "image_size": 896, "intermediate_size": 4304, "model_type": "siglip_vision_model",
                 "num_attention_heads": 16, "num_hidden_layers": 27, "patch_size": 14, "vision_use_head": False}


def _random_model(config, *, mlp: bool = True, seed: int = 0):
    model = Transformer(config, rngs=nnx.Rngs(seed))
    for path, leaf in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        if path[-1] == "scale":  # non-trivial norm gains: a missed +1 or swapped norm shows up
            leaf.set_value(1.0 + 0.2 * np.random.default_rng(len(path)).standard_normal(leaf.shape).astype(np.float32))
        if not mlp and path[-2:] == ("down", "kernel"):
            leaf.set_value(np.zeros(leaf.shape, np.float32))
    return model


def _tokens():
    return [2] + [int(t) for t in np.random.default_rng(1).integers(4, 512, 39)]


@pytest.fixture(scope="module")
def llama_parity(tmp_path_factory, tiny_tokenizer):
    """llama.cpp's logits for the PARITY model, with and without its MLP (F32 GGUF, F32 KV)."""
    from benchmarks.harness.llamacpp import LlamaCpp

    out = {}
    for mlp in (False, True):
        model = _random_model(PARITY, mlp=mlp)
        path = write_gguf(tmp_path_factory.mktemp("gguf") / f"parity_{mlp}.gguf", flat_params(model), PARITY, tiny_tokenizer)
        out[mlp] = (model, path, LlamaCpp(path, window=64, threads=2).logits(_tokens()))
    return out


def _logits(model, config=None):
    if config is not None:  # the same weights under another config
        other = Transformer(config, rngs=nnx.Rngs(0))
        nnx.update(other, nnx.state(model, nnx.Param))
        model = other
    return np.asarray(model(np.asarray([_tokens()]))[0][0])


def test_matches_llama_cpp_with_every_feature(llama_parity):
    """Within 1e-4 in float32 with the MLP's output zeroed: ggml's GELU reads an fp16 lookup
    table, which alone moves logits by ~6e-3 (the whole model is checked at that tolerance)."""
    model, _, theirs = llama_parity[False]
    ours = _logits(model)
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)
    # Each feature matters at this tolerance: without it the logits are far off.
    for change in (dict(rope_global_scale=1.0), dict(query_pre_attn_scalar=32), dict(window=64)):
        assert np.abs(_logits(model, dataclasses.replace(PARITY, **change)) - theirs).max() > 1e-2, change
    model, _, theirs = llama_parity[True]
    ours = _logits(model)
    np.testing.assert_allclose(ours, theirs, atol=1e-2, rtol=0)
    assert (ours.argmax(-1) == theirs.argmax(-1)).mean() >= 0.95


def test_gguf_carries_rope_scaling(llama_parity):
    import gguf

    _, path, _ = llama_parity[False]
    fields = gguf.GGUFReader(path).fields
    assert fields["gemma3.rope.scaling.type"].contents() == "linear"
    assert fields["gemma3.rope.scaling.factor"].contents() == 8.0
    config = read_gguf(path).config
    assert (config.rope_global_scale, config.query_pre_attn_scalar, config.num_kv_heads) == (8.0, 16, 2)


@pytest.mark.parametrize("name", sorted(HF_TEXT_CONFIGS))
def test_google_configs_give_the_presets(name):
    data = {"architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3",
            "text_config": HF_TEXT_CONFIGS[name], "vision_config": VISION_CONFIG}
    config = hf_config(data, source="config.json")
    assert config == get_preset(name)
    # transformers >= 5 writes per-layer-type rope parameters instead of rope_scaling
    text = {k: v for k, v in HF_TEXT_CONFIGS[name].items() if k != "rope_scaling"}
    text["rope_parameters"] = {"full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
                               "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}
    assert hf_config({"model_type": "gemma3", "text_config": text}, source="config.json") == get_preset(name)


def _multimodal_hf(model, root: Path, tokenizer, *, prefix: str, vision: bool = True, text: bool = True) -> Path:
    """`model` saved as a Gemma3ForConditionalGeneration checkpoint: text weights under `prefix`,
    a (tiny) vision tower and projector beside them, config nested under text_config."""
    from safetensors.numpy import load_file, save_file

    plain = write_hf_safetensors(flat_params(model), model.config, root / "plain")
    tensors = load_file(str(plain / "model.safetensors")) if text else {}
    tensors = {prefix + k[len("model."):]: v for k, v in tensors.items()}
    if vision:
        outer = "model." if prefix.startswith("model.") else ""
        rng = np.random.default_rng(3)
        tensors[f"{outer}vision_tower.vision_model.encoder.layers.0.mlp.fc1.weight"] = rng.standard_normal((8, 4)).astype(np.float32)
        tensors[f"{outer}vision_tower.vision_model.post_layernorm.bias"] = np.zeros(4, np.float32)
        tensors[f"{outer}multi_modal_projector.mm_input_projection_weight"] = rng.standard_normal((4, 64)).astype(np.float32)
    out = root / prefix.strip(".").replace(".", "_")
    out.mkdir(parents=True)
    half = len(tensors) // 2  # sharded, as the hub's checkpoints are
    names = sorted(tensors)
    save_file({k: tensors[k] for k in names[:half]}, str(out / "model-00001-of-00002.safetensors"))
    save_file({k: tensors[k] for k in names[half:]}, str(out / "model-00002-of-00002.safetensors"))
    text_config = json.loads((plain / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({"architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3",
                                                 "text_config": text_config, "vision_config": VISION_CONFIG}))
    tokenizer.save(out / "tokenizer.model")
    return out


@pytest.mark.parametrize("prefix", ["language_model.model.", "model.language_model."])
def test_multimodal_checkpoint_imports_the_text_tower(prefix, llama_parity, tiny_tokenizer, tmp_path):
    model, _, theirs = llama_parity[False]
    src = _multimodal_hf(model, tmp_path, tiny_tokenizer, prefix=prefix)
    result = CliRunner().invoke(app, ["convert", str(src), "--out", str(tmp_path / "ckpt")])
    assert result.exit_code == 0, result.output
    assert "note: skipped 1 multi_modal_projector, 2 vision_tower tensors (not part of the text tower)" in result.output
    assert load_meta(tmp_path / "ckpt")["skipped_tensors"] == {"multi_modal_projector": 1, "vision_tower": 2}
    config = load_config(tmp_path / "ckpt")
    assert dataclasses.replace(config, name=PARITY.name) == PARITY
    loaded = load_checkpoint(tmp_path / "ckpt")
    np.testing.assert_allclose(_logits(loaded), theirs, atol=1e-4, rtol=0)


# ---- bad input: one line naming the file and field, nothing written ----


def test_unsupported_rope_scaling_is_refused(tmp_path, tiny_tokenizer):
    yarn = {"rope_type": "yarn", "factor": 8.0}
    with pytest.raises(NanoError, match=r"config\.json: rope scaling type 'yarn' \(field rope_scaling\.rope_type\) is not supported; Nano implements linear"):
        hf_config({"model_type": "gemma3", "text_config": dict(HF_TEXT_CONFIGS["gemma3_4b"], rope_scaling=yarn)}, source="config.json")
    sliding = {"full_attention": {"rope_type": "linear", "factor": 8.0},
               "sliding_attention": {"rope_type": "linear", "factor": 2.0}}
    with pytest.raises(NanoError, match=r"config\.json: rope scaling on sliding-window layers \(field rope_parameters\.sliding_attention\)"):
        hf_config({"model_type": "gemma3_text", "rope_parameters": sliding}, source="config.json")
    with pytest.raises(NanoError, match=r"config\.json: rope scaling \(field rope_scaling\.factor = 2\) on gemma2 is not supported"):
        hf_config({"model_type": "gemma2", "vocab_size": 8, "hidden_size": 8, "num_hidden_layers": 2, "num_attention_heads": 2,
                   "intermediate_size": 8, "rope_scaling": {"rope_type": "linear", "factor": 2.0}}, source="config.json")
    with pytest.raises(NanoError, match=r"config\.json: rope scaling factor 0 \(field rope_scaling\.factor\) must be positive"):
        hf_config({"model_type": "gemma3_text", "rope_scaling": {"rope_type": "linear", "factor": 0}}, source="config.json")
    # GGUF: another scaling type, a factor on gemma2 (llama.cpp would scale every layer), or <= 0.
    g2 = dataclasses.replace(get_preset("tiny"), name="tiny_g2", attn_pattern=2, qk_norm=False)
    for config, kind, factor, message in [
            (g2, "LINEAR", 8.0, r"rope scaling factor 8\.0 \(field gemma2\.rope\.scaling\.factor\) is not supported; Nano scales gemma3's global layers"),
            (get_preset("tiny"), "LINEAR", -1.0, r"rope scaling factor -1\.0 \(field gemma3\.rope\.scaling\.factor\) is not supported")]:
        path = _gguf_with_rope(tmp_path / f"{config.name}{factor}.gguf", config, kind, factor, tiny_tokenizer)
        with pytest.raises(NanoError, match=re.escape(str(path)) + ": " + message):
            read_gguf(path)
    # One line from the CLI, no --out left behind.
    _gguf_with_rope(tmp_path / "yarn.gguf", get_preset("tiny"), "YARN", 8.0, tiny_tokenizer)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["convert", str(tmp_path / "yarn.gguf"), "--out", str(out)])
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "rope scaling type 'yarn' (field gemma3.rope.scaling.type) is not supported" in " ".join(result.output.split())
    assert not out.exists()


def _gguf_with_rope(path: Path, config, kind: str, factor: float, tokenizer) -> Path:
    import gguf

    from nano.gguf_io import add_model_metadata, gguf_name_map

    flat = flat_params(_random_model(config))
    w = gguf.GGUFWriter(path, arch=config.family)
    add_model_metadata(w, config)
    w.add_rope_scaling_type(gguf.RopeScalingType[kind])
    w.add_rope_scaling_factor(factor)
    tokenizer.write_gguf(w)
    for g, (n, t) in gguf_name_map(config).items():
        w.add_tensor(g, np.ascontiguousarray(flat[n].T) if t else flat[n])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_vision_only_checkpoint_is_refused(tmp_path, tiny_tokenizer):
    src = _multimodal_hf(_random_model(PARITY), tmp_path, tiny_tokenizer, prefix="language_model.model.", text=False)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["convert", str(src), "--out", str(out)])
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert (f"{src}: no text-tower tensors (model.language_model.*, language_model.model.* or model.*), "
            "only 1 multi_modal_projector, 2 vision_tower tensors") in " ".join(result.output.split())
    assert not out.exists() and not list(tmp_path.glob(".out*"))


def test_gguf_export_refuses_what_llama_cpp_cannot_express(tmp_path, tiny_tokenizer):
    model = _random_model(get_preset("tiny"))
    odd = dataclasses.replace(model.config, query_pre_attn_scalar=20)
    with pytest.raises(NanoError, match=r"model 'tiny': query_pre_attn_scalar 20 has no GGUF field; llama\.cpp's gemma3 with 6 layers scales queries by 16\*\*-0\.5"):
        write_gguf(tmp_path / "q.gguf", flat_params(model), odd, tiny_tokenizer)
    g2 = dataclasses.replace(model.config, name="g2", qk_norm=False, attn_pattern=2, rope_global_scale=8.0)
    with pytest.raises(NanoError, match=r"model 'g2': rope_global_scale 8 on gemma2 \(no qk_norm\): llama\.cpp would scale every layer"):
        write_gguf(tmp_path / "g2.gguf", {}, g2, tiny_tokenizer)
    deep = dataclasses.replace(model.config, name="deep", num_layers=62, query_pre_attn_scalar=None)
    with pytest.raises(NanoError, match=r"model 'deep': query_pre_attn_scalar 32 has no GGUF field; llama\.cpp's gemma3 with 62 layers scales queries by 16\*\*-0\.5"):
        write_gguf(tmp_path / "d.gguf", {}, dataclasses.replace(deep, head_dim=32), tiny_tokenizer)
    assert not list(tmp_path.iterdir())
