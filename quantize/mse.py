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

import numpy as np

from nano.errors import NanoError

from nano.qtensor import QTensor, values

from .int4 import check_args, codes, from_grouped, grouped, params


def clip_ratios(steps: int = 20, min_ratio: float = 0.5) -> np.ndarray:
    if steps < 1 or not 0 < min_ratio <= 1:
        raise NanoError(f"clip search: steps {steps} / min_ratio {min_ratio} invalid; "
                        "use steps >= 1 and 0 < min_ratio <= 1")
    return np.linspace(1.0, min_ratio, steps, dtype=np.float32)


def search_params(wg: np.ndarray, bits: int, symmetric: bool, *, steps: int = 20, min_ratio: float = 0.5,
                  convention: str = "max7", scale_dtype=None) -> tuple[np.ndarray, np.ndarray | None]:
    """Per-group scale (and zero), each (G, 1, out), minimizing squared error of grouped ``wg`` (G, g, out)."""
    wg = np.asarray(wg, np.float32)
    best_err = best_scale = best_zero = None
    for r in clip_ratios(steps, min_ratio):
        scale, zero = params(wg, bits, symmetric, ratio=r, convention=convention,
                             scale_dtype=scale_dtype)
        q = codes(wg, scale, zero, bits)
        err = ((values(q, scale, zero) - wg).astype(np.float64) ** 2).sum(axis=1, keepdims=True)
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
