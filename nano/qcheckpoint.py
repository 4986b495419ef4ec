"""Quantized Nano checkpoints: the file format only (the algorithms are in `quantize/`).

A quantized checkpoint is an ordinary checkpoint directory (`config.json`, `meta.json`,
`tokenizer.model`) whose `model.safetensors` holds, for every quantized parameter P:

    P.q      codes, laid out (out, in) row-major: one row per output channel (for `embed`,
             one row per vocabulary entry). 4 bits: uint8 (out, in/2), two codes per byte
             along `in`, low nibble first, 4-bit two's complement when symmetric
             (`nano/qtensor.py`). 8 bits: int8 (uint8 when asymmetric) (out, in).
    P.scale  bfloat16 (out, in/group), or (out, 1) per channel.
    P.zero   bfloat16 like P.scale, asymmetric only (zero point in code units, not rounded).

    w[o, i] = (q[o, i] - zero[o, i // group]) * scale[o, i // group]     (zero = 0 if symmetric)

and every other parameter (norm gains, unquantized tensors) under its own name as before.
A split parameter (:class:`nano.qtensor.SplitQTensor`: the embedding with its frequent tokens' rows
on an 8-bit grid) stores its other rows as P.q / P.scale, those rows as P.hot.q / P.hot.scale,
and their ids, increasing, as int32 P.hot_ids; its entry in `quantization.json` has `hot`.
This is the layout of TFLite's int4/int8 fully-connected weights and of GGUF's blocks, so
exporters read the codes without transposing. `quantization.json` lists each quantized
tensor (bits, group, symmetric, method, errors), the recipe, the calibration data and the
source checkpoint. `embed` is quantized as the LM head sees it (in = d_model, out = vocab; `nano/params.py`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from nano.atomic import atomic_dir
from nano.errors import NanoError
from nano.files import CONFIG, META, QUANT, TOKENIZER, WEIGHTS, read_json
from nano.params import EMBED, as_matrix
from nano.qtensor import QTensor, SplitQTensor, dequantize, pack_int4, unpack_int4

FORMAT = "nano-quant/1"
SCALE_DTYPE = ml_dtypes.bfloat16  # exporters need bf16-representable scales (LiteRT blockwise)


def is_quantized(ckpt: str | Path) -> bool:
    return (Path(ckpt) / QUANT).is_file()


def encode(name: str, qt: QTensor | SplitQTensor) -> dict[str, np.ndarray]:
    """Tensors stored for one quantized parameter (see the module doc)."""
    if isinstance(qt, SplitQTensor):
        return {**encode(name, qt.cold), **encode(f"{name}.hot", qt.hot),
                f"{name}.hot_ids": np.asarray(qt.ids, np.int32)}
    codes = np.ascontiguousarray(qt.q.T)  # (out, in)
    n_out, n_in = codes.shape
    if qt.bits == 4:
        if n_in % 2:
            raise NanoError(f"{name}: int4 rows need an even input width, got {n_in}; quantize it to 8 bits")
        codes = pack_int4(codes, signed=qt.symmetric).reshape(n_out, n_in // 2)
    out = {f"{name}.q": codes, f"{name}.scale": np.ascontiguousarray(qt.scale.T).astype(SCALE_DTYPE)}
    if qt.zero is not None:
        out[f"{name}.zero"] = np.ascontiguousarray(qt.zero.T).astype(SCALE_DTYPE)
    for key in (f"{name}.scale", f"{name}.zero"):  # the codes were chosen for these exact values
        src = qt.scale if key.endswith("scale") else qt.zero
        if key in out and not np.array_equal(out[key].astype(np.float32), src.T):
            raise NanoError(f"{name}: {key.rsplit('.', 1)[1]} is not bfloat16-representable; quantize "
                            "with scale_dtype=ml_dtypes.bfloat16")
    return out


def entry_of(qt: QTensor | SplitQTensor) -> dict[str, Any]:
    """The grid fields of a tensor's entry in quantization.json."""
    if isinstance(qt, SplitQTensor):
        return {**entry_of(qt.cold), "matrix_shape": list(qt.shape),
                "hot": {"rows": len(qt.ids), "bits": qt.hot.bits, "group": qt.hot.group, "symmetric": qt.hot.symmetric}}
    return {"bits": qt.bits, "group": qt.group, "symmetric": qt.symmetric, "matrix_shape": list(qt.q.shape)}


def stored_keys(name: str, entry: Mapping[str, Any]) -> list[str]:
    """The safetensors keys a quantized parameter's entry is stored under."""
    keys = [f"{name}.q", f"{name}.scale"] + ([] if entry["symmetric"] else [f"{name}.zero"])
    hot = entry.get("hot")
    if hot:
        keys += [f"{name}.hot.q", f"{name}.hot.scale", f"{name}.hot_ids"] + ([] if hot["symmetric"] else [f"{name}.hot.zero"])
    return keys


def decode(name: str, tensors: Mapping[str, np.ndarray], entry: Mapping[str, Any]) -> QTensor | SplitQTensor:
    hot = entry.get("hot")
    if hot:
        n_in, n_out = entry["matrix_shape"]
        k = int(hot["rows"])
        ids = np.asarray(tensors[f"{name}.hot_ids"], np.int64)
        cold = decode(name, tensors, {k: v for k, v in entry.items() if k != "hot"} | {"matrix_shape": [n_in, n_out - k]})
        return SplitQTensor(ids=ids, hot=decode(f"{name}.hot", tensors, {**hot, "matrix_shape": [n_in, k]}), cold=cold)
    n_in, n_out = entry["matrix_shape"]
    bits, group, symmetric = entry["bits"], entry["group"], entry["symmetric"]
    codes = tensors[f"{name}.q"]
    if bits == 4:
        codes = unpack_int4(codes.reshape(-1), (n_out, n_in), signed=symmetric)
    scale = tensors[f"{name}.scale"].astype(np.float32).T
    zero = tensors[f"{name}.zero"].astype(np.float32).T if not symmetric else None
    return QTensor(q=np.ascontiguousarray(codes.T), scale=np.ascontiguousarray(scale),
                   zero=None if zero is None else np.ascontiguousarray(zero), bits=bits, group=group)


def tensor_bytes(name: str, qt: QTensor) -> int:
    return sum(a.nbytes for a in encode(name, qt).values())


def size_totals(floats: Mapping[str, np.ndarray], qtensors: Mapping[str, QTensor],
                q_bytes: Mapping[str, int]) -> dict[str, Any]:
    """Parameters and stored bytes of a quantized checkpoint's tensors, as quantization.json's
    `totals` reports them; `q_bytes`: each quantized tensor's `tensor_bytes`."""
    params = sum(a.size for a in floats.values()) + sum(qt.size for qt in qtensors.values())
    total = sum(a.nbytes for a in floats.values()) + sum(q_bytes.values())
    linear = [n for n in qtensors if n != EMBED]
    return {"params": int(params), "bytes": int(total), "float32_bytes": int(4 * params),
            "bits_per_weight": 8 * total / params,
            "linear_bits_per_weight": (8 * sum(q_bytes[n] for n in linear)
                                       / max(sum(qtensors[n].size for n in linear), 1))}


def save_quantized(out: str | Path, *, config, float_params: Mapping[str, np.ndarray],
                   qtensors: Mapping[str, QTensor], tensor_info: Mapping[str, Mapping[str, Any]],
                   manifest: Mapping[str, Any], tokenizer=None, meta: Mapping[str, Any] | None = None,
                   overwrite: bool = False) -> Path:
    """Write a quantized checkpoint atomically; ``tensor_info`` adds per-tensor fields (method, errors)."""
    out = Path(out)
    tensors: dict[str, np.ndarray] = {k: np.ascontiguousarray(v) for k, v in float_params.items()}
    entries = {}
    for name, qt in qtensors.items():
        tensors.update(encode(name, qt))
        entries[name] = {**entry_of(qt), **tensor_info.get(name, {})}
    with atomic_dir(out, overwrite=overwrite) as tmp:
        save_file(tensors, str(tmp / WEIGHTS))
        (tmp / CONFIG).write_text(config.to_json() + "\n")
        info = dict(meta or {})
        if tokenizer is not None:
            tokenizer.save(tmp / TOKENIZER)
            info["tokenizer_sha256"] = tokenizer.sha256
        info["quantized"] = True
        (tmp / META).write_text(json.dumps(info, indent=2) + "\n")
        (tmp / QUANT).write_text(json.dumps({"format": FORMAT, **manifest, "tensors": entries},
                                            indent=2, default=str) + "\n")
    return out


def read_manifest(ckpt: str | Path) -> dict[str, Any]:
    path = Path(ckpt) / QUANT
    data = read_json(path, missing=f"{ckpt}: not a quantized checkpoint (no {QUANT}); make one with `nano quantize`",
                     fix="re-run `nano quantize`")
    if data.get("format") != FORMAT:
        raise NanoError(f"{path}: format {data.get('format')!r} is not {FORMAT!r}; re-run `nano quantize` "
                        "with this version of Nano")
    return data


def read_quantized(ckpt: str | Path) -> tuple[dict[str, np.ndarray], dict[str, QTensor | SplitQTensor], dict[str, Any]]:
    """(float parameters, quantized parameters as QTensors, quantization.json) of a checkpoint."""
    manifest = read_manifest(ckpt)
    path = Path(ckpt) / WEIGHTS
    try:
        tensors = load_file(str(path))
    except FileNotFoundError:
        raise NanoError(f"{ckpt}: missing {WEIGHTS}; re-run `nano quantize`") from None
    except (SafetensorError, OSError, ValueError) as e:
        raise NanoError(f"{path}: unreadable safetensors file ({e})") from None
    qtensors = {}
    for name, entry in manifest["tensors"].items():
        try:
            qtensors[name] = decode(name, tensors, entry)
        except (KeyError, NanoError, ValueError) as e:
            raise NanoError(f"{path}: quantized tensor {name!r} is incomplete or mis-shaped ({e}); "
                            "re-run `nano quantize`") from None
    stored = {k for name, entry in manifest["tensors"].items() for k in stored_keys(name, entry)}
    floats = {k: v for k, v in tensors.items() if k not in stored}
    return floats, qtensors, manifest


def dequantized_params(ckpt: str | Path) -> dict[str, np.ndarray]:
    """Every parameter as float32 in the model's layout: what `nano eval`/`generate` run."""
    floats, qtensors, _ = read_quantized(ckpt)
    flat = dict(floats)
    for name, qt in qtensors.items():
        flat[name] = as_matrix(name, dequantize(qt))
    return flat

