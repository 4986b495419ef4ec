"""GGUF <-> Nano: read a Gemma 2/3 GGUF into named float arrays, and write a model as GGUF
(F32/F16/BF16/Q8_0/Q4_0/Q4_1/Q5_0/Q5_1) that llama.cpp loads.

Only the name mapping lives here; the model math is in nano/model.py.
"""

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from nano.config import ModelConfig, match_preset
from nano.errors import NanoError

SUPPORTED_ARCHS = ("gemma2", "gemma3")

# GGUF per-layer tensor -> (nano name, is a (out, in) matrix to transpose to (in, out)).
_LAYER_MAP = {
    "attn_norm": ("pre_attn_norm.scale", False),
    "attn_q": ("attn.q.kernel", True),
    "attn_k": ("attn.k.kernel", True),
    "attn_v": ("attn.v.kernel", True),
    "attn_output": ("attn.o.kernel", True),
    "attn_q_norm": ("attn.q_norm.scale", False),
    "attn_k_norm": ("attn.k_norm.scale", False),
    "post_attention_norm": ("post_attn_norm.scale", False),
    "ffn_norm": ("pre_mlp_norm.scale", False),
    "ffn_gate": ("mlp.gate.kernel", True),
    "ffn_up": ("mlp.up.kernel", True),
    "ffn_down": ("mlp.down.kernel", True),
    "post_ffw_norm": ("post_mlp_norm.scale", False),
}
_GLOBAL_MAP = {"token_embd": ("embed", False), "output_norm": ("final_norm.scale", False)}


def gguf_name_map(config: ModelConfig) -> dict[str, tuple[str, bool]]:
    """GGUF tensor name -> (nano parameter name, transpose?) for every tensor of `config`."""
    out = {f"{g}.weight": v for g, v in _GLOBAL_MAP.items()}
    for i in range(config.num_layers):
        for g, (n, t) in _LAYER_MAP.items():
            if g in ("attn_q_norm", "attn_k_norm") and not config.qk_norm:
                continue
            out[f"blk.{i}.{g}.weight"] = (f"layers.{i}.{n}", t)
    return out


@dataclasses.dataclass
class GGUFModel:
    config: ModelConfig
    params: dict[str, np.ndarray]  # nano names, float32
    tokenizer_fields: dict[str, Any]
    meta: dict[str, Any]


def open_gguf(path: str | Path):
    import gguf

    path = Path(path)
    if not path.is_file():
        raise NanoError(f"{path}: file not found")
    try:
        return gguf.GGUFReader(path)
    except Exception as e:  # the reader raises ValueError/struct/IndexError/mmap errors alike
        reason = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        raise NanoError(f"{path}: not a valid GGUF file ({reason}); check the file is complete (re-download or re-assemble it)") from None


def field(reader, key: str, *, source: str, default: Any = ...) -> Any:
    f = reader.fields.get(key)
    if f is None:
        if default is ...:
            raise NanoError(f"{source}: missing metadata field {key!r}")
        return default
    try:
        return f.contents()
    except Exception:
        raise NanoError(f"{source}: unreadable metadata field {key!r}") from None


def config_from_gguf(reader, *, source: str) -> ModelConfig:
    arch = field(reader, "general.architecture", source=source)
    if arch not in SUPPORTED_ARCHS:
        raise NanoError(f"{source}: unsupported architecture {arch!r} (field general.architecture); Nano imports {', '.join(SUPPORTED_ARCHS)}")

    def get(key: str, default: Any = ...) -> Any:
        return field(reader, f"{arch}.{key}", source=source, default=default)

    d, layers, heads = int(get("embedding_length")), int(get("block_count")), int(get("attention.head_count"))
    head_dim = int(get("attention.key_length", d // heads))
    # llama.cpp's keys: rope.scaling.type ("none" | "linear" | "yarn" | ...) and
    # rope.scaling.factor; Gemma 3 applies it on global layers only (local: unscaled).
    kind = get("rope.scaling.type", "linear")
    scaling = float(get("rope.scaling.factor", 1.0) or 1.0)
    if kind not in ("none", "linear"):
        raise NanoError(f"{source}: rope scaling type {kind!r} (field {arch}.rope.scaling.type) is not supported; Nano implements linear scaling (Gemma 3)")
    if kind == "none":
        scaling = 1.0
    if scaling <= 0 or (arch == "gemma2" and scaling != 1.0):
        raise NanoError(f"{source}: rope scaling factor {scaling} (field {arch}.rope.scaling.factor) is not supported; Nano scales gemma3's global layers by a positive factor")
    pattern = get("attention.sliding_window_pattern", 6 if arch == "gemma3" else 2)
    if not isinstance(pattern, int):  # newer files store one bool per layer (True = local)
        pattern = next((i + 1 for i, local in enumerate(pattern) if not local), layers)
    big = _llama_cpp_scales_by_width(arch, layers)
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    embd = next((t for t in reader.tensors if t.name == "token_embd.weight"), None)
    vocab = int(embd.shape[1]) if embd is not None else len(tokens.data) if tokens else 0
    cfg = dict(
        vocab_size=vocab, d_model=d, num_layers=layers, num_heads=heads,
        num_kv_heads=int(get("attention.head_count_kv", heads)), head_dim=head_dim,
        ffn_dim=int(get("feed_forward_length")), window=int(get("attention.sliding_window", 4096)),
        attn_pattern=int(pattern),
        rope_global_base=float(get("rope.freq_base", 10_000.0)),
        rope_local_base=float(get("rope.freq_base_swa", 10_000.0)),
        rope_global_scale=scaling,
        query_pre_attn_scalar=d / heads if big else head_dim,
        attn_softcap=_opt_float(get("attn_logit_softcapping", None)),
        final_softcap=_opt_float(get("final_logit_softcapping", None)),
        qk_norm=arch == "gemma3", norm_eps=float(get("attention.layer_norm_rms_epsilon", 1e-6)),
        max_seq_len=int(get("context_length", 8192)),
    )
    if arch == "gemma2":
        cfg["rope_local_base"] = cfg["rope_global_base"]
    return ModelConfig(name=match_preset(cfg, default=f"{arch}_custom"), **cfg)


def _llama_cpp_scales_by_width(arch: str, layers: int) -> bool:
    """llama.cpp scales queries by head_dim**-0.5 except for the 27B models, which it knows by
    their depth: (d_model / heads)**-0.5 there (Gemma 3 27B: 168**-0.5, head_dim 128)."""
    return (arch, layers) in (("gemma2", 46), ("gemma3", 62))


def _opt_float(x: Any) -> float | None:
    return None if x is None or float(x) == 0.0 else float(x)


def read_gguf(path: str | Path) -> GGUFModel:
    """Read and dequantize a Gemma 2/3 GGUF (float32 arrays in Nano's names and layout)."""
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    from nano.tokenizer import read_gguf_tokenizer_fields

    source = str(path)
    reader = open_gguf(path)
    config = config_from_gguf(reader, source=source)
    tensors = {t.name: t for t in reader.tensors}
    if "output.weight" in tensors:
        raise NanoError(f"{source}: tensor 'output.weight' (untied LM head) is not supported; Gemma models tie it to token_embd")
    shapes = _expected_gguf_shapes(config)
    params, qtypes = {}, {}
    for gname, (nname, transpose) in gguf_name_map(config).items():
        t = tensors.get(gname)
        if t is None:
            raise NanoError(f"{source}: missing tensor {gname!r} (architecture {config.family}, {config.num_layers} layers)")
        shape = tuple(int(x) for x in reversed(t.shape))  # GGUF lists dims innermost first
        if shape != shapes[gname]:
            raise NanoError(f"{source}: tensor {gname!r} has shape {shape}, metadata implies {shapes[gname]}")
        try:
            arr = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(shape)
        except Exception as e:
            raise NanoError(f"{source}: cannot dequantize tensor {gname!r} of type {t.tensor_type.name} ({e})") from None
        params[nname] = np.ascontiguousarray(arr.T) if transpose else arr
        qtypes[gname] = GGMLQuantizationType(t.tensor_type).name
    tok = read_gguf_tokenizer_fields(reader)
    n_tokens = len(tok.get("tokenizer.ggml.tokens", ()))
    if n_tokens and n_tokens != config.vocab_size:
        raise NanoError(f"{source}: tokenizer has {n_tokens} tokens (field tokenizer.ggml.tokens) but token_embd.weight has {config.vocab_size} rows")
    meta = {
        "source": Path(path).name,
        "source_format": "gguf",
        "general.name": field(reader, "general.name", source=source, default=None),
        "license": field(reader, "general.license", source=source, default=None),
        "source_tensor_types": dict(sorted({v: sum(1 for x in qtypes.values() if x == v) for v in qtypes.values()}.items())),
    }
    return GGUFModel(config=config, params=params, tokenizer_fields=tok, meta=meta)


def _expected_gguf_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    from nano.checkpoint import expected_shapes

    nano = expected_shapes(config)
    return {g: (nano[n][::-1] if t else nano[n]) for g, (n, t) in gguf_name_map(config).items()}


WEIGHT_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1")


def write_gguf(path: str | Path, params: dict[str, np.ndarray], config: ModelConfig,
               tokenizer, *, weight_type: str = "f32",
               embed_type: str | None = None, name: str = "nano",
               raw: Mapping[str, tuple[str, np.ndarray]] | None = None) -> Path:
    """Write float params as a GGUF llama.cpp can run. Norms stay F32; matrices get
    `weight_type`, the tied embedding `embed_type` (default: same). `raw` maps Nano names to
    ready ggml blocks ("q4_0" | "q8_0", uint8 (rows, bytes); export/gguf.py) written as they are,
    in place of `params`."""
    import gguf
    from gguf import GGMLQuantizationType as Q
    from gguf.quants import quantize

    for t in (weight_type, embed_type or weight_type):
        if t not in WEIGHT_TYPES:
            raise NanoError(f"unsupported GGUF weight type {t!r}; choose one of {', '.join(WEIGHT_TYPES)}")
    default_pattern = 6 if config.family == "gemma3" else 2
    if config.attn_pattern != default_pattern or not config.regular_pattern:
        raise NanoError(f"model {config.name!r}: llama.cpp's {config.family} assumes a local/global pattern of {default_pattern}, not {config.attn_pattern}" + ("" if config.regular_pattern else f" with global layers {list(config.global_layers or ())}"))
    arch = config.family
    llama_scalar = config.d_model / config.num_heads if _llama_cpp_scales_by_width(arch, config.num_layers) else config.head_dim
    if (config.query_pre_attn_scalar or config.head_dim) != llama_scalar:
        raise NanoError(f"model {config.name!r}: query_pre_attn_scalar {config.query_pre_attn_scalar or config.head_dim:g} has no GGUF field; llama.cpp's {arch} with {config.num_layers} layers scales queries by {llama_scalar:g}**-0.5")
    if arch == "gemma2" and config.rope_global_scale != 1.0:
        raise NanoError(f"model {config.name!r}: rope_global_scale {config.rope_global_scale:g} on gemma2 (no qk_norm): llama.cpp would scale every layer; Nano scales global layers only")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        w = gguf.GGUFWriter(tmp, arch=arch)
        w.add_name(name)
        add_model_metadata(w, config)
        tokenizer.write_gguf(w)
        raw = raw or {}
        kinds = {kind for n, (kind, _) in raw.items() if n != "embed"}
        w.add_file_type(_FILE_TYPES[kinds.pop() if len(kinds) == 1 else weight_type])
        for gname, (nname, transpose) in gguf_name_map(config).items():
            if nname in raw:
                kind, blocks = raw[nname]
                w.add_tensor(gname, blocks, raw_dtype=Q[kind.upper()])
                continue
            arr = np.asarray(params[nname], dtype=np.float32)
            arr = np.ascontiguousarray(arr.T) if transpose else arr
            wt = (embed_type or weight_type) if gname == "token_embd.weight" else weight_type
            if arr.ndim == 1 or wt == "f32":
                w.add_tensor(gname, arr)
            elif wt == "f16":
                w.add_tensor(gname, arr.astype(np.float16))
            else:
                qt = Q[wt.upper()]
                w.add_tensor(gname, quantize(arr, qt), raw_dtype=qt)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        os.replace(tmp, path)  # atomic: llama.cpp never sees half a file
    finally:
        tmp.unlink(missing_ok=True)
    return path


def add_model_metadata(w, config: ModelConfig) -> None:
    """The `{arch}.*` hyper-parameters llama.cpp reads (keys prefixed by the writer's arch)."""
    w.add_context_length(config.max_seq_len)
    w.add_embedding_length(config.d_model)
    w.add_block_count(config.num_layers)
    w.add_feed_forward_length(config.ffn_dim)
    w.add_head_count(config.num_heads)
    w.add_head_count_kv(config.num_kv_heads)
    w.add_key_length(config.head_dim)
    w.add_value_length(config.head_dim)
    w.add_layer_norm_rms_eps(config.norm_eps)
    w.add_rope_freq_base(config.rope_global_base)
    w.add_sliding_window(config.window)
    if config.family == "gemma3":
        w.add_rope_freq_base_swa(config.rope_local_base)
    if config.rope_global_scale != 1.0:
        from gguf import RopeScalingType

        w.add_rope_scaling_type(RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(config.rope_global_scale)
    if config.attn_softcap:
        w.add_attn_logit_softcapping(config.attn_softcap)
    if config.final_softcap:
        w.add_final_logit_softcapping(config.final_softcap)


_FILE_TYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q8_0": 7, "q5_0": 8, "q5_1": 9, "bf16": 32}
