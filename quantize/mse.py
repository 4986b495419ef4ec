"""MSE-optimal clipping: per group, shrink the range and keep the scale with least squared error.

For each group the range (``max|w|`` symmetric, ``[min, max]`` asymmetric, see
:mod:`quantize.int4`) is multiplied by ratios ``1.0`` down to ``min_ratio`` (``steps`` values,
evenly spaced, as the GPTQ reference's ``mse`` grid); each candidate scale is applied with
round-to-nearest and the one with the smallest sum of squared errors ``sum (w - Q(w))^2`` over the
group is kept (ties keep the larger ratio). Ratio 1.0 is RTN itself, so the result is never worse
than :func:`quantize.int4.quantize` per group. Clipping trades a few saturated outliers for a
finer step on the bulk, which pays off on heavy-tailed weights.

Vectorized over all groups and columns; one pass per ratio, so memory stays ~3x the weight.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from nano.errors import NanoError

from nano.qtensor import QTensor, qrange

from .int4 import check_args, codes, from_grouped, grouped, params


def clip_ratios(steps: int = 20, min_ratio: float = 0.5) -> np.ndarray:
    if steps < 1 or not 0 < min_ratio <= 1:
        raise NanoError(f"clip search: steps {steps} / min_ratio {min_ratio} invalid; "
                        "use steps >= 1 and 0 < min_ratio <= 1")
    return np.linspace(1.0, min_ratio, steps, dtype=np.float32)


CHUNK = 1 << 17  # elements of one search chunk (512 KiB of float32: stays in cache across the ratios)


def search_params(wg: np.ndarray, bits: int, symmetric: bool, *, steps: int = 20, min_ratio: float = 0.5,
                  convention: str = "max7", scale_dtype=None) -> tuple[np.ndarray, np.ndarray | None]:
    """Per-group scale (and zero), each (G, 1, out), minimizing squared error of grouped ``wg`` (G, g, out).

    Groups are independent, so the search runs on cache-sized chunks of groups x columns, on a
    few threads (NumPy releases the GIL); every element sees the same float operations as a
    whole-array pass, so the result does not depend on the chunking (tested bit for bit)."""
    wg = np.asarray(wg, np.float32)
    ratios = clip_ratios(steps, min_ratio)
    G, g, n_out = wg.shape
    ext = _extremes(wg, symmetric, convention)                  # (G, k, out): all params() reads
    best_scale = np.empty((G, 1, n_out), np.float32)
    best_zero = None if symmetric else np.empty((G, 1, n_out), np.float32)
    cols = max(1, min(n_out, CHUNK // g))
    rows = max(1, min(G, CHUNK // (g * cols)))
    chunks = [(slice(a, min(a + rows, G)), slice(c, min(c + cols, n_out)))
              for a in range(0, G, rows) for c in range(0, n_out, cols)]

    def run(chunk):
        r, c = chunk
        sc, ze = _search_chunk(np.ascontiguousarray(wg[r, :, c]), ext[r, :, c], ratios, bits, symmetric,
                               convention, scale_dtype)
        best_scale[r, :, c] = sc
        if best_zero is not None:
            best_zero[r, :, c] = ze

    workers = min(len(chunks), os.cpu_count() or 1, 4)
    if workers > 1:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(run, chunks))
    else:
        for chunk in chunks:
            run(chunk)
    return best_scale, best_zero


def _extremes(wg: np.ndarray, symmetric: bool, convention: str) -> np.ndarray:
    """The values of each group :func:`quantize.int4.params` reads, (G, k, out): ``max|w|``
    (symmetric), the signed value of largest magnitude (q4_0), ``[min, max]`` (asymmetric)."""
    if symmetric and convention == "q4_0":
        return np.take_along_axis(wg, np.abs(wg).argmax(axis=1)[:, None, :], axis=1)
    if symmetric:
        return np.abs(wg).max(axis=1, keepdims=True)
    return np.concatenate([wg.min(axis=1, keepdims=True), wg.max(axis=1, keepdims=True)], axis=1)


def _search_chunk(wc: np.ndarray, ec: np.ndarray, ratios: np.ndarray, bits: int, symmetric: bool,
                  convention: str, scale_dtype) -> tuple[np.ndarray, np.ndarray | None]:
    """The clip search on one chunk ``wc`` (G', g, c) with its extremes ``ec``: the same values as
    ``codes`` -> ``values`` -> squared error, without the int8 round trip (codes are small integers)."""
    lo, hi = qrange(bits, symmetric)
    best_err = best_scale = best_zero = None
    t = np.empty_like(wc)
    for r in ratios:
        scale, zero = params(ec, bits, symmetric, ratio=r, convention=convention, scale_dtype=scale_dtype)
        np.divide(wc, np.where(scale == 0, np.float32(1), scale), out=t)
        if zero is not None:
            t += zero
        np.rint(t, out=t)
        np.clip(t, lo, hi, out=t)
        if (scale == 0).any():                                  # codes() gives 0 there
            t[np.broadcast_to(scale == 0, t.shape)] = 0
        if zero is not None:
            t -= zero
        t *= scale                                              # = values(codes(...))
        t -= wc
        d = t.astype(np.float64)
        err = (d * d).sum(axis=1, keepdims=True)
        if best_err is None:
            best_err, best_scale, best_zero = err, scale, zero
            continue
        better = err < best_err
        best_err = np.where(better, err, best_err)
        best_scale = np.where(better, scale, best_scale)
        if zero is not None:
            best_zero = np.where(better, zero, best_zero)
    return best_scale, best_zero


def quantize_mse(w, *, bits: int = 4, group: int | None = 32, symmetric: bool = True,
                 steps: int = 20, min_ratio: float = 0.5, convention: str = "max7",
                 scale_dtype=None, name: str | None = None) -> QTensor:
    """RTN with a per-group clip ratio chosen to minimize squared error (see module doc)."""
    w = check_args(w, bits, group, name, convention)
    wg = grouped(w, group)
    scale, zero = search_params(wg, bits, symmetric, steps=steps, min_ratio=min_ratio,
                                convention=convention, scale_dtype=scale_dtype)
    return from_grouped(codes(wg, scale, zero, bits), scale, zero, bits, group)
