"""Round-to-nearest (RTN) 4/8-bit weight quantization: the pure math, no file formats.

Like gguf-py's ``quants.py`` (algorithms) as opposed to ``gguf_writer.py`` (formats), this module
knows nothing of TFLite, GGUF or safetensors; exporters turn a :class:`QTensor` into bytes (see
:mod:`nano.qtensor` for the stored form and nibble layout).

Layout. Nano stores kernels as ``w`` of shape ``(in, out)`` and computes ``x @ w``. Quantization
runs along the *input* dimension: for each output column, groups of ``group`` consecutive rows
share one scale (``scale`` has shape ``(in // group, out)``); ``group=None`` is per channel (one
scale per output column, ``scale`` of shape ``(1, out)``).

Symmetric (default), ``zero is None``::

    q = clip(round(w / scale), -2**(bits-1), 2**(bits-1) - 1)      # [-8, 7] for 4 bits
    w ~= q * scale

  Scale convention ``"max7"`` (default): ``scale = max|w| / 7`` per group (``/127`` for 8 bits).
  The grid is sign-symmetric, the largest magnitude is represented exactly, nothing is ever
  clipped and the rounding error is at most ``scale / 2`` for every weight; ``-8`` is never
  produced by RTN (it is still a legal code, and clipped searches in :mod:`quantize.mse` and
  :mod:`quantize.gptq` may use it). This is the narrow-range symmetric scheme of TFLite/XNNPACK
  int4/int8 per-channel weights (zero point 0, codes in [-7, 7] / [-127, 127]), so a ``QTensor``
  maps onto those formats without requantization.

  Convention ``"q4_0"``: llama.cpp's Q4_0 (``d = m / -8`` where ``m`` is the *signed* value of
  largest magnitude; ``scale`` may be negative). The extreme maps exactly to ``-8``, the step is
  8/7 finer, but values of the opposite sign near ``|m|`` saturate at ``7`` (error up to
  ``|scale|``). Offered for GGUF-faithful experiments; not the default because its error is not
  bounded by half a step and the negative scale does not fit TFLite's per-channel scheme.
  ``convention`` only affects symmetric quantization.

Asymmetric, ``zero`` is a float32 zero point in code units::

    lo = min(min(w), 0), hi = max(max(w), 0)                        # the range always holds 0
    scale = (hi - lo) / 15, zero = -lo / scale                      # zero in [0, 15]
    q = clip(round(w / scale + zero), 0, 15),  w ~= (q - zero) * scale

  ``zero`` is *not* rounded (Q4_1 form, ``min = -zero * scale``), so the error is at most
  ``scale / 2``. Extending the range to hold 0 (as the GPTQ reference does) keeps constant and
  one-signed groups well defined (a constant group of 5.0 is exact) and 0.0 exactly representable
  only when ``zero`` happens to be integral. A format that needs an integer zero point rounds
  ``zero`` itself.

Degenerate groups: an all-zero group gets ``scale = 0``, ``q = 0`` (and ``zero = 0``) and
dequantizes to exact zeros, never NaN/inf.
"""

from __future__ import annotations

import numpy as np

from nano.errors import NanoError
from nano.qtensor import QTensor, qrange

BITS = (4, 8)
CONVENTIONS = ("max7", "q4_0")


def _label(name: str | None) -> str:
    return f" of '{name}'" if name else ""


def check_args(w, bits: int, group: int | None, name: str | None = None,
               convention: str = "max7") -> np.ndarray:
    """Validate the common arguments; return ``w`` as a float32 2-D array."""
    w = np.asarray(w)
    if w.ndim != 2:
        raise NanoError(f"weight{_label(name)} must be a 2-D (in, out) matrix, got shape {w.shape}; "
                        "reshape it to (in, out) before quantizing")
    if not np.issubdtype(w.dtype, np.floating):
        raise NanoError(f"weight{_label(name)} must be floating point, got {w.dtype}; "
                        "pass the float32 kernel")
    if bits not in BITS:
        raise NanoError(f"bits {bits!r}{_label(name)} is not supported; use 4 or 8")
    if convention not in CONVENTIONS:
        raise NanoError(f"convention {convention!r} is unknown; use 'max7' or 'q4_0'")
    n_in = w.shape[0]
    if group is not None:
        if isinstance(group, bool) or not isinstance(group, (int, np.integer)) or group <= 0:
            raise NanoError(f"group {group!r} must be a positive integer or None (per channel); "
                            "use 32, 64 or 128")
        if n_in % group:
            ok = [g for g in (32, 64, 128) if n_in % g == 0]
            fix = (f"use {', '.join(map(str, ok[:-1]))} or {ok[-1]}" if len(ok) > 1
                   else f"use {ok[0]}" if ok else "use group=None (per channel)")
            raise NanoError(f"group {group} does not divide the input width {n_in}{_label(name)}; {fix}")
    if not np.all(np.isfinite(w)):
        raise NanoError(f"weight{_label(name)} contains NaN or inf; fix the checkpoint before quantizing")
    return w.astype(np.float32, copy=False)


def grouped(w: np.ndarray, group: int | None) -> np.ndarray:
    """(in, out) -> (n_groups, group, out); per channel is a single group of width ``in``."""
    n_in, n_out = w.shape
    g = n_in if group is None else group
    return w.reshape(n_in // g, g, n_out)


def representable(x: np.ndarray, dtype) -> np.ndarray:
    """``x`` rounded to the nearest value of ``dtype`` (e.g. bfloat16), returned as float32."""
    if dtype is None:
        return np.asarray(x, np.float32)
    return np.asarray(x, np.float32).astype(dtype).astype(np.float32)


def params(wg: np.ndarray, bits: int, symmetric: bool, *, ratio=1.0,
           convention: str = "max7", scale_dtype=None) -> tuple[np.ndarray, np.ndarray | None]:
    """Scale (and zero) of grouped weights ``wg`` of shape (G, g, out), each (G, 1, out) float32.

    ``ratio`` (scalar or broadcastable to (G, 1, out)) shrinks the range (clipping searches).
    ``scale_dtype`` (e.g. ``ml_dtypes.bfloat16``) rounds scale and zero to values that dtype holds
    exactly *before* the codes are chosen, so a file storing them in that dtype is lossless.
    """
    wg = np.asarray(wg, np.float32)
    if symmetric:
        if convention == "q4_0":
            idx = np.abs(wg).argmax(axis=1)[:, None, :]
            m = np.take_along_axis(wg, idx, axis=1) * np.float32(ratio)
            return representable(m / np.float32(-(2 ** (bits - 1))), scale_dtype), None
        amax = np.abs(wg).max(axis=1, keepdims=True) * np.float32(ratio)
        return representable(amax / np.float32(2 ** (bits - 1) - 1), scale_dtype), None
    lo = np.minimum(wg.min(axis=1, keepdims=True), 0) * np.float32(ratio)
    hi = np.maximum(wg.max(axis=1, keepdims=True), 0) * np.float32(ratio)
    scale = representable((hi - lo) / np.float32(2**bits - 1), scale_dtype)
    safe = np.where(scale == 0, np.float32(1), scale)
    zero = np.where(scale == 0, np.float32(0), -lo / safe).astype(np.float32)
    return scale, representable(zero, scale_dtype)


def codes(wg: np.ndarray, scale: np.ndarray, zero: np.ndarray | None, bits: int) -> np.ndarray:
    """Round-to-nearest integer codes (int8) of ``wg`` given broadcastable scale/zero."""
    lo, hi = qrange(bits, zero is None)
    empty = scale == 0  # only all-zero groups
    t = np.divide(np.asarray(wg, np.float32), np.where(empty, np.float32(1), scale))  # in place from here on:
    if zero is not None:                                                              # one temporary, not five
        t += zero
    np.rint(t, out=t)
    np.clip(t, lo, hi, out=t)
    if empty.any():
        t *= ~empty
    return t.astype(np.uint8 if hi > 127 else np.int8)


def from_grouped(qg: np.ndarray, scale: np.ndarray, zero: np.ndarray | None, bits: int,
                 group: int | None) -> QTensor:
    """Assemble a QTensor from grouped codes (G, g, out) and parameters (G, 1, out)."""
    G, g, n_out = qg.shape
    return QTensor(q=qg.reshape(G * g, n_out), scale=scale.reshape(G, n_out).astype(np.float32),
                   zero=None if zero is None else zero.reshape(G, n_out).astype(np.float32),
                   bits=bits, group=group)


def quantize(w, *, bits: int = 4, group: int | None = 32, symmetric: bool = True,
             convention: str = "max7", scale_dtype=None, name: str | None = None) -> QTensor:
    """Round-to-nearest quantization of an (in, out) float matrix along ``in`` (see module doc)."""
    w = check_args(w, bits, group, name, convention)
    wg = grouped(w, group)
    scale, zero = params(wg, bits, symmetric, convention=convention, scale_dtype=scale_dtype)
    return from_grouped(codes(wg, scale, zero, bits), scale, zero, bits, group)
