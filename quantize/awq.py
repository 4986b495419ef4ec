"""AWQ (Lin et al., 2023): activation-aware per-input-channel scaling, the search only.

Salient input channels (large mean ``|x|``) matter most for the output, so before round-to-nearest
the kernel rows are scaled up by ``s`` and the activations down by ``1/s``::

    y = x @ w = (x / s) @ (s[:, None] * w)  ~=  (x / s) @ dequantize(qt),   qt = Q(s[:, None] * w)

``s = mean|x|^alpha`` (normalized by ``sqrt(max s * min s)`` as the reference does, which only
moves the overall magnitude between x and w), with ``alpha`` searched on ``grid`` evenly spaced
values in [0, 1]; the kept alpha minimizes the calibration output error
``||x (w - dequantize(Q(w s)) / s)||_F^2``, computed as ``sum((G D) * D)`` with ``G = x^T x``
(one (in, in) matrix, so the search is independent of the number of tokens). ``alpha = 0`` is
``s = 1``, i.e. plain RTN, so the result is never worse than RTN on the calibration data.

The caller must fold ``1/s`` into the op that produces ``x`` (the preceding RMSNorm gain or the
previous linear layer's output columns), or divide ``x`` by ``s`` at run time; the QTensor alone
represents ``s[:, None] * w``, not ``w``. ``mean|x|`` is clamped at 1e-4 so dead channels do not
give ``s = 0``.
"""

from __future__ import annotations

import numpy as np

from nano.errors import NanoError

from nano.qtensor import QTensor, dequantize

from .int4 import check_args, quantize


def search_scales(w, x, *, bits: int = 4, group: int | None = 32, symmetric: bool = True,
                  grid: int = 20, scale_dtype=None, name: str | None = None) -> tuple[np.ndarray, QTensor]:
    """Best per-input-channel scale ``s`` (float32, shape (in,)) and ``Q(s[:, None] * w)``."""
    w = check_args(w, bits, group, name)
    x = np.asarray(x)
    if x.ndim < 1 or x.shape[-1] != w.shape[0]:
        raise NanoError(f"awq: x has shape {x.shape}, its last axis must be the input width "
                        f"{w.shape[0]}{f' of {name!r}' if name else ''}; pass the layer's inputs")
    x = x.reshape(-1, w.shape[0]).astype(np.float64)
    return search_scales_from_moments(w, x.T @ x, np.abs(x).mean(axis=0), bits=bits, group=group,
                                      symmetric=symmetric, grid=grid, scale_dtype=scale_dtype, name=name)


def search_scales_from_moments(w, gram, abs_mean, *, bits: int = 4, group: int | None = 32,
                               symmetric: bool = True, grid: int = 20, scale_dtype=None,
                               name: str | None = None) -> tuple[np.ndarray, QTensor]:
    """:func:`search_scales` from the inputs' ``gram = x^T x`` and ``abs_mean = mean|x|``
    (see :class:`quantize.stats.InputStats`), so calibration never holds the tokens."""
    w = check_args(w, bits, group, name)
    n_in = w.shape[0]
    gram, abs_mean = np.asarray(gram, np.float64), np.asarray(abs_mean, np.float64)
    if gram.shape != (n_in, n_in) or abs_mean.shape != (n_in,):
        raise NanoError(f"awq: moments of shape {gram.shape}/{abs_mean.shape} do not match the input "
                        f"width {n_in}{f' of {name!r}' if name else ''}")
    if grid < 1:
        raise NanoError(f"awq: grid {grid} must be >= 1; use 20")
    x_mean = np.maximum(abs_mean, 1e-4)
    w64 = w.astype(np.float64)
    best = None
    for alpha in np.linspace(0.0, 1.0, grid) if grid > 1 else [0.0]:
        s = x_mean**alpha
        s = (s / np.sqrt(s.max() * s.min())).astype(np.float32)
        qt = quantize(w * s[:, None], bits=bits, group=group, symmetric=symmetric,
                      scale_dtype=scale_dtype, name=name)
        D = w64 - dequantize(qt).astype(np.float64) / s[:, None]
        err = float(np.sum((gram @ D) * D))
        if best is None or err < best[0]:
            best = (err, s, qt)
    return best[1], best[2]
