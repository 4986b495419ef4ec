"""Nano checkpoints (the files are listed in `nano/files.py`): save a model, load one back, float
or quantized (`nano/qcheckpoint.py` reads the codes). Never pickle; always written atomically.

Tensor names are the model's parameter paths joined by dots (`layers.3.attn.q.kernel`).
"""

import datetime
import json
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import ml_dtypes
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


def check_tensors(source: str, config: ModelConfig, want: Mapping[str, tuple[int, ...]],
                  have: Mapping[str, tuple[int, ...]]) -> None:
    """A missing, extra or mis-shaped tensor (name -> shape) is a NanoError naming `source`."""
    missing = [n for n in want if n not in have]
    if missing:
        raise NanoError(f"{source}: missing tensor {missing[0]!r} ({len(missing)} missing) for model {config.name!r}")
    extra = sorted(set(have) - set(want))
    if extra:
        raise NanoError(f"{source}: unexpected tensor {extra[0]!r} for model {config.name!r} ({len(extra)} extra)")
    for n, shape in want.items():
        if have[n] != shape:
            raise NanoError(f"{source}: tensor {n!r} has shape {have[n]}, model {config.name!r} expects {shape}")


def model_from_flat(config: ModelConfig, flat: Mapping[str, np.ndarray], *, source: str,
                    dtype=jnp.float32, param_dtype=None) -> Transformer:
    """Build a model from named arrays; a missing, extra or mis-shaped tensor is a NanoError."""
    abstract = abstract_model(config)
    graphdef, state = nnx.split(abstract)
    flat_state = nnx.to_flat_state(state)
    check_tensors(source, config, {_key(p): tuple(leaf.shape) for p, leaf in flat_state},
                  {name: tuple(arr.shape) for name, arr in flat.items()})
    leaves = []
    for path, leaf in flat_state:
        arr = flat[_key(path)]
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


_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16, "F64": np.float64,
           "I8": np.int8, "U8": np.uint8, "I16": np.int16, "I32": np.int32, "I64": np.int64,
           "U16": np.uint16, "U32": np.uint32, "U64": np.uint64, "BOOL": np.bool_}


class TensorFile:
    """A safetensors file read one tensor at a time (plain reads, no mmap: a tensor's pages are
    the caller's array only, so peak memory follows what the caller keeps)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            with open(self.path, "rb") as f:
                (n,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(n))
        except (OSError, struct.error, ValueError) as e:
            raise NanoError(f"{self.path}: unreadable safetensors file ({e})") from None
        header.pop("__metadata__", None)
        self._base = 8 + n
        self._entries = header
        size = self.path.stat().st_size
        for name, e in header.items():
            if e.get("dtype") not in _DTYPES or e["data_offsets"][1] + self._base > size:
                raise NanoError(f"{self.path}: tensor {name!r} has dtype {e.get('dtype')!r} or offsets past "
                                "the end of the file; re-write the checkpoint")

    def names(self) -> list[str]:
        return list(self._entries)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._entries[name]["shape"])

    def read(self, name: str) -> np.ndarray:
        """Tensor ``name`` as stored (dtype kept, bf16 as ml_dtypes.bfloat16)."""
        e = self._entries[name]
        start, end = e["data_offsets"]
        dtype = np.dtype(_DTYPES[e["dtype"]])
        out = np.empty(tuple(e["shape"]), dtype)
        if end - start != out.nbytes:
            raise NanoError(f"{self.path}: tensor {name!r} has {end - start} bytes for shape {tuple(e['shape'])} "
                            f"{e['dtype']}; re-write the checkpoint")
        with open(self.path, "rb") as f:
            f.seek(self._base + start)
            if f.readinto(memoryview(out.reshape(-1).view(np.uint8))) != out.nbytes:
                raise NanoError(f"{self.path}: truncated at tensor {name!r}; re-write the checkpoint")
        return out


class BlockLoader:
    """Loads a float checkpoint's blocks into a skeleton model one at a time (`open_streamed`)."""

    def __init__(self, file: TensorFile, abstract: Transformer, param_dtype):
        self.file, self.param_dtype = file, param_dtype
        self._abstract = {_key(p): leaf for p, leaf in nnx.to_flat_state(nnx.state(abstract, nnx.Param))}

    def _block_params(self, model: Transformer, i: int):
        for path, leaf in nnx.to_flat_state(nnx.state(model.layers[i], nnx.Param)):
            yield f"layers.{i}.{_key(path)}", leaf

    def load(self, model: Transformer, i: int) -> None:
        """Read block ``i``'s parameters from the file into ``model``."""
        for name, param in self._block_params(model, i):
            arr = self.file.read(name)
            param.value = jnp.asarray(arr, dtype=self.param_dtype or arr.dtype)

    def unload(self, model: Transformer, i: int) -> None:
        """Drop block ``i``'s parameters (shapes only again)."""
        for name, param in self._block_params(model, i):
            param.value = self._abstract[name].value if hasattr(self._abstract[name], "value") else self._abstract[name]


def open_streamed(ckpt: str | Path, *, dtype=jnp.float32, param_dtype=jnp.float32) -> tuple[Transformer, BlockLoader]:
    """A float checkpoint as a model whose blocks hold shapes only, and a loader that reads one
    block at a time (`load(model, i)` / `unload(model, i)`): peak memory is the embedding plus the
    blocks the caller has loaded, not the model. Names and shapes are checked up front."""
    config = load_config(ckpt)
    path = Path(ckpt) / WEIGHTS
    if is_quantized(ckpt):
        raise NanoError(f"{ckpt}: a quantized checkpoint cannot be streamed as float; load it with load_checkpoint")
    if not path.is_file():
        raise NanoError(f"{ckpt}: missing {WEIGHTS}; the checkpoint is incomplete, re-run the command that wrote it")
    file = TensorFile(path)
    check_tensors(str(path), config, expected_shapes(config), {n: file.shape(n) for n in file.names()})
    model = abstract_model(config, param_dtype=param_dtype)
    for name, param in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        if not _key(name).startswith("layers."):
            arr = file.read(_key(name))
            param.value = jnp.asarray(arr, dtype=param_dtype or arr.dtype)
    return set_compute_dtype(model, dtype), BlockLoader(file, abstract_model(config, param_dtype=param_dtype),
                                                        param_dtype)
