"""GPTQ of a tied embedding: one matrix, two roles.

As the LM head, row ``r`` of the embedding (an output column of its (d, V) kernel) costs
``δ_rᵀ H δ_r`` (``H`` from the final-norm hidden states, as for any linear layer). As the lookup,
it is read once per occurrence of token ``r`` and its error ``||δ_r||²`` reaches every layer.
Per calibration position the two add up to ``δ_rᵀ (H + κ f_r I) δ_r`` with ``f_r`` the token's
frequency: a per-row damping. GPTQ solves output columns independently, so rows that share a
damping share one factorization; rows are put in buckets of damping (a factor ``BUCKET`` apart).

    damp_r = damp + lookup * f_r * V       # relative to mean(diag H), like GPTQ's damp

``lookup`` is the damping of a token of average frequency ``1/V``; ``lookup = 0`` is plain GPTQ
(bit for bit), and equal frequencies give plain GPTQ at ``damp + lookup`` (tested).

Hot rows. The same frequencies pick the rows that matter most in both roles: the embedding rows
of the ``k`` most frequent calibration tokens can go on a finer grid (int8 per row) and the rest
on a coarser one (``split_solve``, a :class:`nano.qtensor.SplitQTensor`). Columns are solved
independently, so each part is its own solve on the same moments. On Gemma 3 270M the 16,384
most frequent Python-docs tokens cover 96% of the SQLite held-out tokens.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from nano.errors import NanoError
from nano.qtensor import QTensor, SplitQTensor
from quantize.gptq import GPTQ
from quantize.stats import InputStats

BUCKET = 2.0  # rows whose dampings are within this factor share a factorization


def token_counts(tokens, vocab: int) -> np.ndarray:
    """(V,) occurrences of each id in the calibration tokens."""
    tokens = np.asarray(tokens).reshape(-1)
    if tokens.size and (tokens.min() < 0 or tokens.max() >= vocab):
        raise NanoError(f"calibration tokens hold ids outside [0, {vocab}); prepare them with this model's tokenizer")
    return np.bincount(tokens, minlength=vocab).astype(np.float64)


def row_damps(counts: np.ndarray, *, damp: float, lookup: float) -> np.ndarray:
    """(V,) each row's damping: ``damp + lookup * f_r * V``."""
    if lookup == 0:
        return np.full(len(counts), float(damp))
    if lookup < 0 or counts.sum() <= 0:
        raise NanoError(f"tied GPTQ: lookup {lookup} must be >= 0, with calibration tokens to count")
    return damp + lookup * counts * (len(counts) / counts.sum())


def buckets(damps: np.ndarray) -> list[tuple[float, np.ndarray]]:
    """(damping, row indices) groups: rows within a factor BUCKET share the bucket's smallest
    damping, so a bucket never damps a row more than the rule says. Undamped rows (damp 0, never
    looked up) are a bucket of their own."""
    levels = np.full(len(damps), -1, np.int64)
    damped = damps > 0
    if damped.any():
        levels[damped] = np.floor(np.log(damps[damped] / damps[damped].min()) / np.log(BUCKET) + 1e-9)
    out = []
    for level in np.unique(levels):
        rows = np.flatnonzero(levels == level)
        out.append((float(damps[rows].min()), rows))
    return out


def solve_tied(stats: InputStats, w, counts: np.ndarray, *, lookup: float, damp: float = 0.01,
               bits: int = 4, group: int | None = 32, act_order: bool = True, clip_steps: int = 1,
               symmetric: bool = True, scale_dtype=None, name: str | None = "embed") -> QTensor:
    """GPTQ of the tied kernel ``w`` (d, V) on the head's input moments, each row damped by its
    lookup frequency (module doc); the codes and scales of one ordinary QTensor."""
    w = np.asarray(w, np.float32)
    if counts.shape != (w.shape[1],):
        raise NanoError(f"tied GPTQ: {counts.shape[0]} token counts for {w.shape[1]} rows; count the vocabulary")
    g = GPTQ.from_stats(stats)
    kw = dict(bits=bits, group=group, act_order=act_order, clip_steps=clip_steps, symmetric=symmetric,
              scale_dtype=scale_dtype, name=name)
    parts = buckets(row_damps(counts, damp=damp, lookup=lookup))
    if len(parts) == 1:
        return g.solve(w, damp=parts[0][0], **kw)
    solved = [(rows, g.solve(w[:, rows], damp=d, **kw)) for d, rows in parts]
    first = solved[0][1]
    q = np.empty(w.shape, first.q.dtype)                                   # (d, V)
    scale = np.empty((first.scale.shape[0], w.shape[1]), first.scale.dtype)  # (d // group, V)
    zero = None if first.zero is None else np.empty(scale.shape, first.zero.dtype)
    for rows, qt in solved:
        q[:, rows], scale[:, rows] = qt.q, qt.scale
        if zero is not None:
            zero[:, rows] = qt.zero
    return QTensor(q=q, scale=scale, zero=zero, bits=bits, group=group)


def hot_ids(counts: np.ndarray, k: int) -> np.ndarray:
    """(k,) increasing ids of the ``k`` most frequent tokens; ties go to the lower id."""
    if not 0 < k < len(counts):
        raise NanoError(f"hot_rows {k} must be in [1, {len(counts) - 1}] (the vocabulary has {len(counts)} rows)")
    return np.sort(np.argsort(-np.asarray(counts), kind="stable")[:k])


def split_solve(w: np.ndarray, ids: np.ndarray, solve: Callable[[np.ndarray, np.ndarray, bool], QTensor]) -> SplitQTensor:
    """``solve(columns of w, their column ids, hot)`` for the columns ``ids`` (hot) and the rest."""
    keep = np.ones(w.shape[1], bool)
    keep[ids] = False
    cold = np.flatnonzero(keep)
    return SplitQTensor(ids=np.asarray(ids, np.int64), hot=solve(w[:, ids], ids, True), cold=solve(w[:, cold], cold, False))
