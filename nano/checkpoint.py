"""Nano checkpoints (the files are listed in `nano/files.py`): save a model, load one back, float
or quantized (`nano/qcheckpoint.py` reads the codes). Never pickle; always written atomically.

Tensor names are the model's parameter paths joined by dots (`layers.3.attn.q.kernel`).
"""

import datetime
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from nano import __version__
from nano.atomic import atomic_dir
from nano.config import ModelConfig
from nano.errors import NanoError
from nano.files import CONFIG, META, TOKENIZER, WEIGHTS, read_json
from nano.model import Transformer, abstract_model, set_compute_dtype
from nano.qcheckpoint import dequantized_params, is_quantized



def _key(path: tuple) -> str:
    return ".".join(str(p) for p in path)


def flat_params(model: Transformer) -> dict[str, np.ndarray]:
    """Parameter name -> host numpy array (dtype kept, bf16 included)."""
    state = nnx.state(model, nnx.Param)
    return {_key(path): np.asarray(leaf) for path, leaf in nnx.to_flat_state(state)}


def expected_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    state = nnx.state(abstract_model(config), nnx.Param)
    return {_key(path): tuple(leaf.shape) for path, leaf in nnx.to_flat_state(state)}


def model_from_flat(config: ModelConfig, flat: Mapping[str, np.ndarray], *, source: str,
                    dtype=jnp.float32, param_dtype=None) -> Transformer:
    """Build a model from named arrays; a missing, extra or mis-shaped tensor is a NanoError."""
    abstract = abstract_model(config)
    graphdef, state = nnx.split(abstract)
    flat_state = nnx.to_flat_state(state)
    missing = [_key(p) for p, _ in flat_state if _key(p) not in flat]
    if missing:
        raise NanoError(f"{source}: missing tensor {missing[0]!r} ({len(missing)} missing) for model {config.name!r}")
    known = {_key(p) for p, _ in flat_state}
    extra = sorted(set(flat) - known)
    if extra:
        raise NanoError(f"{source}: unexpected tensor {extra[0]!r} for model {config.name!r} ({len(extra)} extra)")
    leaves = []
    for path, leaf in flat_state:
        name, arr = _key(path), flat[_key(path)]
        if tuple(arr.shape) != tuple(leaf.shape):
            raise NanoError(f"{source}: tensor {name!r} has shape {tuple(arr.shape)}, model {config.name!r} expects {tuple(leaf.shape)}")
        arr = jnp.asarray(arr, dtype=param_dtype) if param_dtype is not None else jnp.asarray(arr)
        leaves.append((path, leaf.replace(arr) if hasattr(leaf, "replace") else arr))
    return set_compute_dtype(nnx.merge(graphdef, nnx.from_flat_state(leaves)), dtype)


def save_checkpoint(out: str | Path, model: Transformer, *, tokenizer=None,
                    meta: Mapping[str, Any] | None = None, overwrite: bool = False,
                    extra_json: Mapping[str, Any] | None = None) -> Path:
    """`extra_json`: file name -> data, written as JSON in the same atomic directory."""
    out = Path(out)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        for name, data in (extra_json or {}).items():
            (tmp / name).write_text(json.dumps(data, indent=2, default=str) + "\n")
        save_file(flat_params(model), str(tmp / WEIGHTS))
        (tmp / CONFIG).write_text(model.config.to_json() + "\n")
        info = {"nano_version": __version__,
                "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                **(meta or {})}
        if tokenizer is not None:
            tokenizer.save(tmp / TOKENIZER)
            info["tokenizer_sha256"] = tokenizer.sha256
        (tmp / META).write_text(json.dumps(info, indent=2) + "\n")
    return out


def load_config(ckpt: str | Path) -> ModelConfig:
    path = Path(ckpt) / CONFIG
    data = read_json(path, missing=f"{ckpt}: not a Nano checkpoint (no {CONFIG}); create one with `nano convert`")
    return ModelConfig.from_dict(data, source=str(path))


def load_meta(ckpt: str | Path) -> dict[str, Any]:
    path = Path(ckpt) / META
    return json.loads(path.read_text()) if path.is_file() else {}


def load_checkpoint(ckpt: str | Path, *, dtype=jnp.float32, param_dtype=None) -> Transformer:
    """The model of a checkpoint; a quantized one (`nano quantize`) comes back dequantized."""
    config = load_config(ckpt)
    path = Path(ckpt) / WEIGHTS
    if is_quantized(ckpt):
        return model_from_flat(config, dequantized_params(ckpt), source=str(path), dtype=dtype,
                               param_dtype=param_dtype)
    if not path.is_file():
        raise NanoError(f"{ckpt}: missing {WEIGHTS}; the checkpoint is incomplete, re-run the command that wrote it")
    try:
        flat = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise NanoError(f"{path}: unreadable safetensors file ({e})") from None
    return model_from_flat(config, flat, source=str(path), dtype=dtype, param_dtype=param_dtype)


def load_tokenizer(ckpt: str | Path):
    from nano.tokenizer import Tokenizer

    path = Path(ckpt) / TOKENIZER
    if not path.is_file():
        raise NanoError(f"{ckpt}: no {TOKENIZER} beside the checkpoint; convert the teacher with `nano convert` or copy its tokenizer.model here")
    return Tokenizer.load(path)
