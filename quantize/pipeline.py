"""Quantize a whole model by a recipe: the calibrated, layer-by-layer driver.

Order (GPTQ's sequential scheme): the embedding first when its method needs no activations, or
when it is GPTQ'd as the LM head with `embed_first` (then on the float model's final hidden
states), so its rounding shows in every later layer's inputs; then block by block -- measure the
block's input moments with all earlier blocks quantized, apply AWQ's scalings to the float
weights, quantize every linear layer of the block, run the quantized block to get the next
block's inputs -- and last the embedding when it is GPTQ'd as the LM head of the quantized layers.

AWQ folds ``1/s`` into the op before each linear layer so the network's function is unchanged
before rounding: the pre-attention / pre-MLP RMSNorm gains (for q/k/v and gate/up), the `up`
kernel's columns (for `down`) and the `v` kernel's columns (for `o`; with grouped or multi-query
attention the query heads sharing a KV head share one scale, which the saliency is averaged to).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx

from nano.errors import NanoError
from nano.model import Transformer
from nano.params import as_matrix, is_matrix, matrix_shape
from nano.qtensor import QTensor, SplitQTensor, dequantize

from .awq import search_scales_from_moments
from .calibrate import SITE_OF, Activations, float_head_stats
from .gptq import GPTQ
from .int4 import check_args, quantize
from .mse import quantize_mse
from .recipe import CALIBRATED, HOT_BITS, NO_CALIBRATION, Recipe, TensorSpec
from .stats import InputStats, relative_error
from .tied import hot_ids, solve_tied, split_solve, token_counts

Progress = Callable[[str, int, int], None]


@dataclasses.dataclass
class QuantizedModel:
    qtensors: dict[str, QTensor | SplitQTensor]  # parameter name -> codes of its (in, out) matrix (embed: embed.T)
    floats: dict[str, np.ndarray]  # every parameter left in float (norm gains, "float" overrides)
    report: dict[str, dict[str, Any]]  # per quantized tensor: method, errors, seconds
    seconds: float
    forward_seconds: float  # calibration forward passes (moments, block outputs)
    head_stats: InputStats | None = None  # the LM head's input moments, when the embedding was GPTQ'd


def _get(model: Transformer, name: str):
    node = model
    for part in name.split("."):
        node = node[int(part)] if part.isdigit() else getattr(node, part)
    return node


def _read(model: Transformer, name: str) -> np.ndarray:
    return np.asarray(_get(model, name)[...], np.float32)


def _write(model: Transformer, name: str, value: np.ndarray) -> None:
    param = _get(model, name)
    param[...] = jnp.asarray(value, param[...].dtype)


def _matrix(model: Transformer, name: str) -> np.ndarray:
    return as_matrix(name, _read(model, name))


def _set_matrix(model: Transformer, name: str, m: np.ndarray) -> None:
    _write(model, name, as_matrix(name, m))


def plan(model: Transformer, recipe: Recipe) -> dict[str, TensorSpec]:
    """Spec of every parameter to quantize, checked against its shape before any work starts."""
    specs = {}
    for path, param in _params(model):
        spec = recipe.spec_for(path)
        if spec is None or not is_matrix(path):
            continue
        n_in, n_out = matrix_shape(path, param.shape)
        check_args(np.zeros((n_in, 1), np.float32), spec.bits, spec.group, path)  # group divides width
        if spec.bits == 4 and n_in % 2:
            raise NanoError(f"'{path}': int4 needs an even input width, got {n_in}; give it bits 8 in the recipe")
        if spec.hot_rows and path != "embed":
            raise NanoError(f"recipe: hot_rows is for the tied embedding ('embed'), not {path!r}")
        if spec.hot_rows and not 0 < spec.hot_rows < n_out:
            raise NanoError(f"recipe: embed hot_rows {spec.hot_rows} must be below the vocabulary ({n_out} rows)")
        if path == "embed" and spec.method == "awq":
            raise NanoError("recipe: awq cannot scale the tied embedding (the lookup would change too); "
                            "use rtn, mse or gptq for 'embed'")
        specs[path] = spec
    return specs


def _params(module: nnx.Module):
    """(dotted name within `module`, Param) of a model or one of its blocks."""
    for path, leaf in nnx.to_flat_state(nnx.state(module, nnx.Param)):
        yield ".".join(str(p) for p in path), leaf


def _hot_spec(spec: TensorSpec, hot: bool) -> TensorSpec:
    """The grid of a split embedding's hot rows (int8 per row) or of its other rows."""
    return dataclasses.replace(spec, hot_rows=0, **({"bits": HOT_BITS, "group": None} if hot else {}))


def _solve(name: str, w: np.ndarray, spec: TensorSpec, recipe: Recipe, stats: InputStats | None,
           scale_dtype, counts: np.ndarray | None = None) -> QTensor | SplitQTensor:
    if spec.hot_rows:
        return split_solve(w, hot_ids(counts, spec.hot_rows),
                           lambda cols, ids, hot: _solve(name, cols, _hot_spec(spec, hot), recipe, stats, scale_dtype))
    kw = dict(bits=spec.bits, group=spec.group, symmetric=spec.symmetric, scale_dtype=scale_dtype, name=name)
    if spec.method == "gptq":
        return GPTQ.from_stats(stats).solve(w, damp=recipe.damp, act_order=recipe.act_order,
                                            clip_steps=recipe.clip_steps, **kw)
    if spec.method == "mse":
        return quantize_mse(w, steps=recipe.mse_steps, **kw)
    if spec.method == "awq" and recipe.clip_steps > 1:  # after its scaling, clip like the reference
        return quantize_mse(w, steps=recipe.clip_steps, **kw)
    return quantize(w, **kw)  # rtn


def _awq_scales(model: Transformer, prefix: str, site: str, names: list[str], specs: dict[str, TensorSpec],
                stats: InputStats, recipe: Recipe, scale_dtype) -> np.ndarray:
    """One joint scale for the AWQ layers reading ``site`` (their columns concatenated)."""
    kinds = {(specs[n].bits, specs[n].group, specs[n].symmetric) for n in names}
    if len(kinds) > 1:
        raise NanoError(f"recipe: AWQ layers {', '.join(names)} share one input and so one scale; "
                        "give them the same bits, group and symmetric")
    bits, group, symmetric = kinds.pop()
    w = np.concatenate([_matrix(model, n) for n in names], axis=1)
    abs_mean = stats.abs_mean
    if site == "o":  # query heads of one KV head must share a scale: it folds into v's columns
        c = model.config
        abs_mean = np.repeat(abs_mean.reshape(c.num_kv_heads, -1, c.head_dim).mean(axis=1, keepdims=True),
                             c.num_heads // c.num_kv_heads, axis=1).reshape(-1)
    s, _ = search_scales_from_moments(w, stats.gram, abs_mean, bits=bits, group=group, symmetric=symmetric,
                                      grid=recipe.awq_grid, scale_dtype=scale_dtype, name=f"{prefix}{site}")
    return s.astype(np.float64)


def _fold(model: Transformer, prefix: str, site: str, s: np.ndarray) -> None:
    """Multiply the site's kernels' rows by s and divide the op before them by s."""
    for lin, st in SITE_OF.items():
        if st == site:
            name = f"{prefix}{lin}.kernel"
            _write(model, name, _read(model, name) * s[:, None])
    if site in ("qkv", "gate_up"):
        norm = f"{prefix}{'pre_attn_norm' if site == 'qkv' else 'pre_mlp_norm'}.scale"
        _write(model, norm, _read(model, norm) / s)
    elif site == "down":
        name = f"{prefix}mlp.up.kernel"
        _write(model, name, _read(model, name) / s[None, :])
    else:  # o: its input channel (k*G + g)*H + h reads v's output channel k*H + h
        c = model.config
        s_v = s.reshape(c.num_kv_heads, -1, c.head_dim)[:, 0, :].reshape(-1)
        name = f"{prefix}attn.v.kernel"
        _write(model, name, _read(model, name) / s_v[None, :])


def _joint_gptq(names: list[str], specs: dict[str, TensorSpec], prefix: str) -> list[list[str]]:
    """GPTQ layers of one block solved together: same input (site) and same bits/group/symmetric."""
    groups: dict[tuple, list[str]] = {}
    for n in names:
        sp = specs[n]
        if sp.method == "gptq":
            groups.setdefault((SITE_OF[n[len(prefix):-len(".kernel")]], sp.bits, sp.group, sp.symmetric), []).append(n)
    return list(groups.values())


def quantize_model(model: Transformer, recipe: Recipe, calib: np.ndarray | None = None, *,
                   batch: int = 8, scale_dtype=ml_dtypes.bfloat16, progress: Progress | None = None,
                   blocks=None, frequencies: np.ndarray | None = None) -> QuantizedModel:
    """Quantize ``model`` in place (its weights become the dequantized values) by ``recipe``.

    ``calib``: (rows, T) token ids, needed when any tensor's method is gptq or awq.
    ``frequencies``: (V,) token counts of the whole calibration text, which pick the embedding's
    ``hot_rows`` (default: the counts in ``calib``).
    ``scale_dtype``: scales are rounded to it before codes are chosen (bf16: what the
    quantized checkpoint stores and LiteRT's blockwise int4 accepts).
    ``blocks``: a :class:`nano.checkpoint.BlockLoader` when ``model`` comes from
    ``open_streamed`` (its blocks hold shapes only): each block is read before it is quantized
    and dropped after the next block's inputs are computed, so memory follows one block.
    GPTQ layers reading one input with one spec (q/k/v, gate/up) are solved together: one
    Hessian factorization, their columns side by side (the same codes as one solve each).
    """
    start = time.perf_counter()
    specs = plan(model, recipe)
    calibrated = any(is_matrix(n) and s.method in CALIBRATED for n, s in specs.items())  # reads activations
    if recipe.needs_calibration(specs) and (calib is None or len(calib) == 0):
        raise NanoError(NO_CALIBRATION)
    counts = None
    if "embed" in specs:  # token frequencies: the lookup damping and the hot rows
        V = model.config.vocab_size
        if frequencies is not None:  # a tokenizer may have fewer ids than rows (Gemma 3 4B+: 262,144 of 262,208)
            if len(frequencies) > V:
                raise NanoError(f"token counts for {len(frequencies)} ids, the embedding has {V} rows; "
                                "calibrate with this model's tokenizer")
            counts = np.pad(np.asarray(frequencies, np.float64), (0, V - len(frequencies)))
        elif calib is not None:
            counts = token_counts(calib, V)
    qtensors: dict[str, QTensor] = {}
    report: dict[str, dict[str, Any]] = {}
    floats: dict[str, np.ndarray] = {}
    report_progress = progress or (lambda *a: None)

    def finish(name: str, spec: TensorSpec, stats: InputStats | None, w: np.ndarray, t0: float,
               qt: QTensor | None = None, seconds: float | None = None) -> None:
        if qt is None:
            qt = _solve(name, w, spec, recipe, stats, scale_dtype, counts)
        wh = dequantize(qt)
        _set_matrix(model, name, wh)
        qtensors[name] = qt
        report[name] = {"method": spec.method, "bits": spec.bits, "group": spec.group,
                        "symmetric": spec.symmetric, **({"hot_rows": spec.hot_rows} if spec.hot_rows else {}),
                        "weight_rel_err": relative_error(w, wh),
                        "output_rel_err": None if stats is None else stats.output_error(w, wh),
                        "seconds": round(time.perf_counter() - t0 if seconds is None else seconds, 3)}

    embed = specs.get("embed")
    embed_last = embed is not None and embed.method == "gptq" and not recipe.embed_first
    acts = Activations(model, np.asarray(calib), batch=batch) if calibrated else None
    forward = 0.0
    head = None
    if embed is not None and not embed_last:  # its rounding reaches every layer's inputs
        t0 = time.perf_counter()
        qt = None
        if embed.method == "gptq":  # as the LM head of the float model
            head = float_head_stats(model, np.asarray(calib), batch=batch, blocks=blocks)
            forward += time.perf_counter() - t0
            qt = _solve_embed(model, embed, head, recipe, counts, scale_dtype)
        finish("embed", embed, head, _matrix(model, "embed"), t0, qt)
        if acts is not None:
            acts.reembed(model)
    n_layers = len(model.layers)
    for i in range(n_layers):
        if blocks is not None:
            blocks.load(model, i)
        block = model.layers[i]
        prefix = f"layers.{i}."
        names = [f"{prefix}{lin}.kernel" for lin in SITE_OF if f"{prefix}{lin}.kernel" in specs]
        stats: dict[str, InputStats] = {}
        if acts is not None and any(specs[n].method in CALIBRATED for n in names):
            t0 = time.perf_counter()
            stats = acts.block_stats(block)
            forward += time.perf_counter() - t0
        for site in ("o", "qkv", "down", "gate_up"):  # o before qkv, down before gate_up: see _fold
            awq = [n for n in names if SITE_OF[n[len(prefix):-len(".kernel")]] == site
                   and specs[n].method == "awq"]
            if awq:
                s = _awq_scales(model, prefix, site, awq, specs, stats[site], recipe, scale_dtype)
                _fold(model, prefix, site, s)
                stats[site] = stats[site].rescaled(s)
        solved: dict[str, tuple[QTensor, float]] = {}
        for joint in _joint_gptq(names, specs, prefix):  # after every AWQ fold: the weights are final
            t0 = time.perf_counter()
            sp, site = specs[joint[0]], SITE_OF[joint[0][len(prefix):-len(".kernel")]]
            ws = [_matrix(model, n) for n in joint]
            qts = GPTQ.from_stats(stats[site]).solve_many(
                ws, bits=sp.bits, group=sp.group, symmetric=sp.symmetric, scale_dtype=scale_dtype,
                damp=recipe.damp, act_order=recipe.act_order, clip_steps=recipe.clip_steps, names=joint)
            seconds = time.perf_counter() - t0
            total = sum(w.shape[1] for w in ws)
            for n, w, qt in zip(joint, ws, qts):  # the joint time, shared by output columns
                solved[n] = (qt, seconds * w.shape[1] / total)
        for name in names:
            t0 = time.perf_counter()
            site = SITE_OF[name[len(prefix):-len(".kernel")]]
            qt, seconds = solved.get(name, (None, None))
            finish(name, specs[name], stats.get(site), _matrix(model, name), t0, qt,
                   None if seconds is None else seconds + time.perf_counter() - t0)
        del stats
        last = i + 1 == n_layers
        if acts is not None and (not last or embed_last):
            t0 = time.perf_counter()
            acts.advance(block)
            forward += time.perf_counter() - t0
        if blocks is not None:
            floats.update({f"{prefix}{name}": np.asarray(leaf[...]) for name, leaf in _params(block)
                           if f"{prefix}{name}" not in qtensors})
            blocks.unload(model, i)
        report_progress("quantizing layers", i + 1, n_layers)

    if embed_last:
        t0 = time.perf_counter()
        head = acts.head_stats(model)
        finish("embed", embed, head, _matrix(model, "embed"), t0, _solve_embed(model, embed, head, recipe, counts,
                                                                               scale_dtype))

    floats.update({name: np.asarray(leaf[...]) for name, leaf in _params(model)
                   if name not in qtensors and name not in floats and not _abstract(leaf)})
    return QuantizedModel(qtensors=qtensors, floats=floats, report=report,
                          seconds=time.perf_counter() - start, forward_seconds=forward, head_stats=head)


def _solve_embed(model: Transformer, spec: TensorSpec, head: InputStats, recipe: Recipe, counts: np.ndarray,
                 scale_dtype) -> QTensor | SplitQTensor:
    """GPTQ of the tied embedding as the LM head on the head's input moments ``head``; with
    ``hot_rows``, the most frequent tokens' rows (by ``counts``) at int8 per row."""
    w = _matrix(model, "embed")  # (d, V): the LM head's kernel

    def solve(cols, ids, hot):
        sp = _hot_spec(spec, hot)
        return solve_tied(head, cols, counts[ids], lookup=recipe.lookup, damp=recipe.damp, bits=sp.bits,
                          group=sp.group, symmetric=sp.symmetric, act_order=recipe.act_order,
                          clip_steps=recipe.clip_steps, scale_dtype=scale_dtype)

    if spec.hot_rows:
        return split_solve(w, hot_ids(counts, spec.hot_rows), solve)
    return solve(w, np.arange(w.shape[1]), False)


def _abstract(leaf) -> bool:
    return isinstance(getattr(leaf, "value", leaf), jax.ShapeDtypeStruct)
