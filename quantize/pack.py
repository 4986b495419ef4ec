"""Two 4-bit values per byte: the nibble layout of TFLite's INT4 tensors.

Layout (exact): the codes are flattened in row-major (C) order -- for an (in, out) matrix that is
``q[0, 0], q[0, 1], ..., q[0, out-1], q[1, 0], ...`` -- and element ``2i`` goes into the *low*
4 bits of byte ``i``, element ``2i + 1`` into its *high* 4 bits::

    byte[i] = (q[2i] & 0xF) | ((q[2i+1] & 0xF) << 4)

Signed values are stored as 4-bit two's complement (``-8 -> 0x8``, ``-1 -> 0xF``, ``7 -> 0x7``);
unsigned values (asymmetric codes, 0..15) as themselves. Padding: an odd number of elements is
completed with one zero nibble in the high half of the last byte, so ``n`` values take
``ceil(n / 2)`` bytes; rows are *not* padded individually (the whole tensor is one stream, as in
TFLite). Example: ``[-8, 7, 0, -1] -> [0x78, 0xF0]``.
"""

from __future__ import annotations

import math

import numpy as np

from nano.errors import NanoError


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
