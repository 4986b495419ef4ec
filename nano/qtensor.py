"""Quantized tensors as stored: :class:`QTensor` (integer codes + per-group scales) and the
nibble layout of 4-bit codes. Storage types only; the algorithms that choose codes live in
`quantize/`, the writers of each file format in `nano/qcheckpoint.py`, `export/`.

Codes of an ``(in, out)`` matrix are grouped along ``in``: ``group`` consecutive rows share one
scale per output column (``group=None``: one scale per column)::

    w ~= (q - zero) * scale          (zero = 0 when symmetric)

Nibble layout (exact), TFLite's INT4 tensors: the codes are flattened in row-major (C) order and
element ``2i`` goes into the *low* 4 bits of byte ``i``, element ``2i + 1`` into its *high* 4 bits::

    byte[i] = (q[2i] & 0xF) | ((q[2i+1] & 0xF) << 4)

Signed values are 4-bit two's complement (``-8 -> 0x8``, ``-1 -> 0xF``); unsigned (asymmetric
codes, 0..15) as themselves. An odd count is completed with one zero nibble in the high half of
the last byte; rows are *not* padded individually. Example: ``[-8, 7, 0, -1] -> [0x78, 0xF0]``.

:class:`SplitQTensor` puts some output columns of one matrix on another grid: the tied embedding
with the rows of frequent tokens at 8 bits and the rest at 4 (its columns as the LM head).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from nano.errors import NanoError


@dataclass(frozen=True)
class QTensor:
    """Integer codes plus per-group parameters of a quantized ``(in, out)`` matrix.

    q:     int8, same shape as the weight; [-2**(bits-1), 2**(bits-1)-1] symmetric, [0, 2**bits-1]
           asymmetric (uint8 for asymmetric 8 bits, whose codes 0..255 do not fit int8).
    scale: float32, ``(in // group, out)`` or ``(1, out)`` for ``group=None``.
    zero:  float32 like ``scale`` (asymmetric, in code units) or ``None`` (symmetric).
    """

    q: np.ndarray
    scale: np.ndarray
    zero: np.ndarray | None
    bits: int
    group: int | None

    @property
    def symmetric(self) -> bool:
        return self.zero is None

    @property
    def shape(self) -> tuple[int, int]:
        return self.q.shape

    @property
    def size(self) -> int:
        return int(self.q.size)


@dataclass(frozen=True)
class SplitQTensor:
    """An ``(in, out)`` matrix whose output columns ``ids`` are quantized as ``hot`` and the others,
    in increasing order, as ``cold`` (for the embedding: ``ids`` are token ids, ``hot`` their rows)."""

    ids: np.ndarray  # (K,) int64, strictly increasing
    hot: QTensor  # (in, K)
    cold: QTensor  # (in, out - K)

    def __post_init__(self):
        ids = np.asarray(self.ids)
        n_in, k = self.hot.q.shape
        if (ids.ndim != 1 or len(ids) != k or self.cold.q.shape[0] != n_in
                or (k and (np.any(np.diff(ids) <= 0) or ids[0] < 0 or ids[-1] >= self.shape[1]))):
            raise NanoError(f"SplitQTensor: {len(ids)} increasing column ids in [0, {self.shape[1]}) must match "
                            f"the hot part {self.hot.q.shape} and the cold part {self.cold.q.shape}")

    @property
    def shape(self) -> tuple[int, int]:
        return self.hot.q.shape[0], self.hot.q.shape[1] + self.cold.q.shape[1]

    @property
    def size(self) -> int:
        return self.hot.size + self.cold.size

    @property
    def symmetric(self) -> bool:
        return self.hot.symmetric and self.cold.symmetric

    @property
    def cold_ids(self) -> np.ndarray:
        """(out - K,) the other columns, increasing."""
        keep = np.ones(self.shape[1], bool)
        keep[self.ids] = False
        return np.flatnonzero(keep)

    @property
    def order(self) -> np.ndarray:
        """(out,) the column of the full matrix at each position of ``[hot | cold]``."""
        return np.concatenate([np.asarray(self.ids, np.int64), self.cold_ids])


def split_columns(w_hat_hot: np.ndarray, w_hat_cold: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """The (in, out) matrix with ``w_hat_hot`` at columns ``ids`` and ``w_hat_cold`` at the others."""
    n_in, k = w_hat_hot.shape
    out = np.empty((n_in, k + w_hat_cold.shape[1]), np.float32)
    keep = np.ones(out.shape[1], bool)
    keep[ids] = False
    out[:, ids] = w_hat_hot
    out[:, keep] = w_hat_cold
    return out


def qrange(bits: int, symmetric: bool) -> tuple[int, int]:
    """Smallest and largest integer code."""
    if symmetric:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def values(q: np.ndarray, scale: np.ndarray, zero: np.ndarray | None) -> np.ndarray:
    """Dequantized float32 values of codes ``q`` with broadcastable scale/zero (in one new array:
    fresh multi-GB arrays are slow to fault in on some machines)."""
    out = np.array(q, np.float32)  # a new array even when q is float32 (callers own the result)
    if zero is not None:
        out -= np.asarray(zero, np.float32)
    out *= np.asarray(scale, np.float32)
    return out


def dequantize(qt: QTensor | SplitQTensor) -> np.ndarray:
    """float32 (in, out) matrix represented by ``qt``."""
    if isinstance(qt, SplitQTensor):
        return split_columns(dequantize(qt.hot), dequantize(qt.cold), qt.ids)
    n_in, n_out = qt.q.shape
    G = qt.scale.shape[0]
    qg = qt.q.reshape(G, n_in // G, n_out)
    zero = None if qt.zero is None else qt.zero[:, None, :]
    return values(qg, qt.scale[:, None, :], zero).reshape(n_in, n_out)


def pack_int4(q, *, signed: bool = True) -> np.ndarray:
    """Pack integer codes of any shape into a 1-D uint8 array of ``ceil(q.size / 2)`` bytes."""
    q = np.asarray(q)
    if not np.issubdtype(q.dtype, np.integer):
        raise NanoError(f"pack_int4: q must hold integers, got {q.dtype}; quantize first")
    lo, hi = (-8, 7) if signed else (0, 15)
    flat = q.reshape(-1).astype(np.int16)
    if flat.size and (flat.min() < lo or flat.max() > hi):
        raise NanoError(f"pack_int4: q holds values in [{flat.min()}, {flat.max()}] outside "
                        f"[{lo}, {hi}]; pass signed={not signed} or clip the codes")
    nib = (flat & 0xF).astype(np.uint8)
    if nib.size % 2:
        nib = np.concatenate([nib, np.zeros(1, np.uint8)])
    return (nib[0::2] | (nib[1::2] << 4)).astype(np.uint8)


def unpack_int4(packed, shape, *, signed: bool = True) -> np.ndarray:
    """Inverse of :func:`pack_int4`: int8 array of ``shape`` (the padding nibble is dropped)."""
    packed = np.asarray(packed)
    if packed.dtype != np.uint8 or packed.ndim != 1:
        raise NanoError(f"unpack_int4: packed must be a 1-D uint8 array, got {packed.dtype} "
                        f"{packed.shape}; pass pack_int4's output")
    shape = tuple(int(s) for s in np.atleast_1d(shape)) if not isinstance(shape, int) else (shape,)
    n = math.prod(shape)
    if packed.size != (n + 1) // 2:
        raise NanoError(f"unpack_int4: shape {shape} needs {(n + 1) // 2} bytes, got {packed.size}; "
                        "pass the shape that was packed")
    nib = np.empty(packed.size * 2, np.int16)
    nib[0::2] = packed & 0xF
    nib[1::2] = packed >> 4
    nib = nib[:n]
    if signed:
        nib = np.where(nib >= 8, nib - 16, nib)
    return nib.astype(np.int8).reshape(shape)
