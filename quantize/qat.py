"""Quantization-aware training: the model trains through its own quantized weights.

The student keeps float *latent* weights and one learned scale per group; its forward uses

    s' = bf16(s)                                   (the scales a checkpoint stores)
    w' = clip(round(w / s'), qmin, qmax) * s'

with straight-through rounding: d w'/d w = 1 inside the grid, and d w'/d s = round(w/s') - w/s'
inside, the clipped code outside (LSQ's scale gradient, Esser et al. 2020). Started from a GPTQ
checkpoint (w = q * s, so w / s' = q exactly), step 0 *is* that checkpoint; at the end
`finish` rounds the same way in numpy, so the written codes are what the last forward used, bit
for bit. Only the grid is learned here; which tensor gets which grid comes from the quantized
checkpoint it starts from (its `quantization.json`). Pure math and parameter names: the training
loop is `distill/`'s, the file format `nano/qcheckpoint.py`'s.
"""

import datetime
import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from nano.errors import NanoError
from nano.params import as_matrix
from nano.qcheckpoint import SCALE_DTYPE, read_manifest, read_quantized, save_quantized, size_totals, tensor_bytes
from nano.qtensor import QTensor, SplitQTensor, qrange


def _grouped(w, group_count: int):
    """(in, out) -> (G, in/G, out): the rows that share a scale."""
    n_in, n_out = w.shape
    return w.reshape(group_count, n_in // group_count, n_out)  # (G, g, out)


def _round_ste(x):
    return x + jax.lax.stop_gradient(jnp.round(x) - x)


def fake_quant(w: Float[Array, "I O"], scale: Float[Array, "G O"], *, bits: int) -> Float[Array, "I O"]:
    """`w` on its symmetric `bits`-bit grid with per-group `scale` (G groups along `in`), with
    straight-through gradients for `w` and LSQ gradients for `scale`."""
    return _fake_quant(w, scale, bits)


@functools.partial(jax.checkpoint, static_argnums=(2,))  # recomputed in the backward pass: keeps no (I, O) temporaries
def _fake_quant(w, scale, bits: int):
    lo, hi = qrange(bits, symmetric=True)
    s = scale + jax.lax.stop_gradient(scale.astype(SCALE_DTYPE).astype(scale.dtype) - scale)
    s = s[:, None, :]  # (G, 1, O)
    q = jnp.clip(_round_ste(_grouped(w, scale.shape[0]) / jnp.where(s == 0, 1.0, s)), lo, hi)  # (G, g, O)
    return (q * s).reshape(w.shape)  # a zero scale (an all-zero group) keeps its weights at zero


def codes(w: np.ndarray, scale: np.ndarray, *, bits: int, group: int | None) -> QTensor:
    """The stored form of `fake_quant`'s forward: the same codes and bf16 scales (numpy)."""
    lo, hi = qrange(bits, symmetric=True)
    s = np.asarray(scale, np.float32).astype(SCALE_DTYPE).astype(np.float32)
    w = np.asarray(w, np.float32)
    s3 = s[:, None, :]  # (G, 1, O)
    q = np.clip(np.round(_grouped(w, s.shape[0]) / np.where(s3 == 0, 1.0, s3)), lo, hi)
    q = np.where(s3 == 0, 0.0, q).reshape(w.shape)
    return QTensor(q=q.astype(np.int8), scale=s, zero=None, bits=bits, group=group)


# ---- the trainable grid of a quantized checkpoint ------------------------------------------------

def param_name(path: tuple) -> str:
    """`layers.0.attn.q.kernel` from a pytree path of an nnx param State."""
    keys = [getattr(k, "key", getattr(k, "name", None)) for k in path]
    return ".".join(str(k) for k in keys if k != "value")


def nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    """{'a.0.b': x} -> {'a': {'0': {'b': x}}}: scales as a tree orbax checkpoints like params."""
    out: dict[str, Any] = {}
    for name, value in flat.items():
        *parents, leaf = name.split(".")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Inverse of `nest`."""
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        out.update(flatten(value, name + ".") if isinstance(value, Mapping) else {name: value})
    return out


def start(ckpt: str | Path) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """(scales as a nested float32 tree, {name: {bits, group[, hot]}}) of a quantized checkpoint.

    Its latent weights are its dequantized codes, which `load_checkpoint` already returns. A split
    embedding (`--embed mixed`) trains its two grids: scales `embed.hot` and `embed.cold`, and
    `hot` = {ids, bits, group} in its grid entry."""
    _, qtensors, _ = read_quantized(ckpt)
    grid, scales = {}, {}
    for name, qt in qtensors.items():
        if not qt.symmetric:
            raise NanoError(f"{ckpt}: tensor {name!r} is asymmetric; quantization-aware training learns "
                            "symmetric grids only: quantize with \"symmetric\": true in the recipe")
        if isinstance(qt, SplitQTensor):
            grid[name] = {"bits": qt.cold.bits, "group": qt.cold.group,
                          "hot": {"ids": np.asarray(qt.ids), "bits": qt.hot.bits, "group": qt.hot.group}}
            scales |= {f"{name}.hot": qt.hot.scale.astype(np.float32), f"{name}.cold": qt.cold.scale.astype(np.float32)}
        else:
            grid[name] = {"bits": qt.bits, "group": qt.group}
            scales[name] = qt.scale.astype(np.float32)
    return nest(scales), grid


def _split(m, hot: Mapping[str, Any]):
    """(hot columns, cold columns, the slot of each column in [hot | cold]) of an (in, out) matrix."""
    ids = np.asarray(hot["ids"])
    keep = np.ones(m.shape[1], bool)
    keep[ids] = False
    cold = np.flatnonzero(keep)
    return m[:, ids], m[:, cold], np.argsort(np.concatenate([ids, cold]))


def apply(params, scales: Mapping[str, Any], grid: Mapping[str, Mapping[str, Any]]):
    """`params` (an nnx param State) with every tensor of `grid` on its learned grid."""
    flat_scales = flatten(scales)

    def one(path, w):
        name = param_name(path)
        if name not in grid:
            return w
        m, g = as_matrix(name, w), grid[name]
        if "hot" in g:  # each part on its own grid, then the columns back in order
            hot, cold, slot = _split(m, g["hot"])
            parts = [fake_quant(hot, flat_scales[f"{name}.hot"].astype(m.dtype), bits=g["hot"]["bits"]),
                     fake_quant(cold, flat_scales[f"{name}.cold"].astype(m.dtype), bits=g["bits"])]
            return as_matrix(name, jnp.concatenate(parts, axis=1)[:, slot])
        return as_matrix(name, fake_quant(m, flat_scales[name].astype(m.dtype), bits=g["bits"]))

    return jax.tree_util.tree_map_with_path(one, params)


def finish(flat_params: Mapping[str, np.ndarray], scales: Mapping[str, Any],
           grid: Mapping[str, Mapping[str, Any]]) -> tuple[dict[str, np.ndarray], dict[str, QTensor]]:
    """(float parameters, QTensors) to write with `save_quantized`: exactly the trained forward."""
    flat_scales = flatten(scales)
    floats = {n: np.asarray(w, np.float32) for n, w in flat_params.items() if n not in grid}
    qtensors = {}
    for n, g in grid.items():
        m = as_matrix(n, np.asarray(flat_params[n], np.float32))
        if "hot" in g:
            hot, cold, _ = _split(m, g["hot"])
            qtensors[n] = SplitQTensor(
                ids=np.asarray(g["hot"]["ids"], np.int64),
                hot=codes(hot, np.asarray(flat_scales[f"{n}.hot"]), bits=g["hot"]["bits"], group=g["hot"]["group"]),
                cold=codes(cold, np.asarray(flat_scales[f"{n}.cold"]), bits=g["bits"], group=g["group"]))
        else:
            qtensors[n] = codes(m, np.asarray(flat_scales[n]), bits=g["bits"], group=g["group"])
    return floats, qtensors


def save(out: str | Path, *, init: str | Path, model_params: Mapping[str, np.ndarray], scales: Mapping[str, Any],
         grid: Mapping[str, Mapping[str, Any]], config, tokenizer, meta: Mapping[str, Any]) -> Path:
    """Write the trained grid as an ordinary quantized checkpoint (what `nano export` reads), with
    `init`'s quantization.json (recipe, calibration, source) plus what training changed."""
    floats, qtensors = finish(model_params, scales, grid)
    manifest = read_manifest(init)
    q_bytes = {name: tensor_bytes(name, qt) for name, qt in qtensors.items()}
    summary = {k: v for k, v in manifest.items() if k not in ("format", "tensors", "totals")}
    summary["totals"] = size_totals(floats, qtensors, q_bytes)
    summary["qat"] = {"init": str(init), "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}
    info = {name: {"method": "qat", "init_method": manifest["tensors"][name].get("method")} for name in qtensors}
    return save_quantized(out, config=config, float_params=floats, qtensors=qtensors, tensor_info=info,
                          manifest=summary, tokenizer=tokenizer, meta={**meta, "qat_from": str(init)}, overwrite=True)
