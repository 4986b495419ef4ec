"""GPTQ (Frantar et al., 2022) as accumulate-then-solve, in pure NumPy.

    g = GPTQ(in_features)
    for x in calibration_inputs:      # (..., in) inputs of the layer
        g.add_batch(x)
    qt = g.solve(w, bits=4, group=32)  # w: (in, out) Nano kernel, y = x @ w

Math. ``H = 2/n sum x^T x`` (the sums kept in float64 by ``quantize.stats.InputStats``) is the
Hessian of ``||x w - x w_hat||^2`` w.r.t. each output column. ``solve`` follows the reference
``fasterquant``: dead inputs (``H[i, i] == 0``) get ``H[i, i] = 1`` and their weight row is zeroed;
``H += damp * mean(diag H) * I``; ``U = chol(H^-1)`` upper (``H^-1 = U^T U``); then the input
rows are quantized one at a time (round-to-nearest with the current group's scale), and each
row's error ``(w_i - q_i) / U[i, i]`` is propagated to the not-yet-quantized rows with ``U[i, i:]``;
updates inside a block of ``block`` rows are immediate, those to later blocks lazy (one matmul
per block).

Layout. The papers and reference write W as (out, in) and quantize along ``in``; Nano's ``w`` is
(in, out), so the code works on ``w.T`` internally; the public API stays (in, out) and the result
is an ordinary :class:`~quantize.int4.QTensor` (scales ``(in // group, out)``).

Groups. Without act-order, a group's scale/zero is computed at its first row from the *current*
(already error-updated) weights of the group, as the reference does. ``block`` is rounded to a
multiple of ``group`` so a group never straddles a block and "current" includes every update
(the reference reads the group from the lazily-updated global matrix, which misses the in-block
updates when a group starts mid-block; with ``block % group == 0`` the two coincide).

Act-order (``act_order=True``) quantizes rows in decreasing ``diag(H)`` order. With groups this
uses *static groups* (AutoGPTQ's ``static_groups``): every group's scale/zero is computed up front
from the original (dead-zeroed) weights in the original row order, and each row uses the params of
the group it belongs to in the original order. So the output needs no ``g_idx`` permutation and
stays a plain grouped QTensor; the cost is that scales do not see the error updates.
``static_groups=True`` selects this also without act-order. Per channel (``group=None``) the scales
are always computed up front from the whole matrix (as the reference does).

``clip_steps > 1`` picks each group's scale by the least-squares clip search of
:mod:`quantize.mse` instead of min-max (the reference's ``mse`` option of its quantizer).

With ``H = I`` and ``damp = 0`` the inverse-Hessian factor is the identity, no error is
propagated and GPTQ reproduces round-to-nearest bit-exactly (tested).
"""

from __future__ import annotations

import numpy as np

from nano.errors import NanoError

from nano.qtensor import QTensor, values

from .int4 import check_args, codes, grouped, params
from .mse import search_params
from .stats import InputStats


def _inverse_cholesky_upper(H: np.ndarray) -> np.ndarray:
    """Upper ``U`` with ``H^-1 = U^T U``, without forming ``H^-1``: with ``J`` the reversal
    permutation and ``J H J = L L^T``, ``U = J L^-1 J`` (upper, positive diagonal, so it is the
    Cholesky factor). One Cholesky and one triangular inverse: ~4x fewer flops than
    chol(inv(H)), which matters at 8192 inputs (nano1's down projection)."""
    from scipy.linalg import lapack

    L = np.linalg.cholesky(H[::-1, ::-1])
    Linv, info = lapack.dtrtri(L, lower=1)
    if info != 0:
        raise np.linalg.LinAlgError("singular Cholesky factor")
    return np.ascontiguousarray(Linv[::-1, ::-1])


class GPTQ:
    """Accumulates the input Hessian of one linear layer, then quantizes its kernel."""

    def __init__(self, in_features: int):
        if int(in_features) <= 0:
            raise NanoError(f"GPTQ: in_features {in_features} must be positive; pass w.shape[0]")
        self.in_features = int(in_features)
        self.stats = InputStats(self.in_features)  # the running x^T x; H is derived from it

    @classmethod
    def from_stats(cls, stats: InputStats) -> "GPTQ":
        """A solver whose Hessian comes from a :class:`quantize.stats.InputStats`."""
        g = cls(stats.width)
        g.stats = stats
        return g

    @property
    def nsamples(self) -> int:
        return self.stats.n

    @property
    def H(self) -> np.ndarray:
        """``2/n sum x^T x`` (a new array)."""
        return self.stats.hessian

    def add_batch(self, x) -> None:
        """Add calibration inputs ``x`` of shape (..., in); rows are samples (tokens)."""
        x = np.asarray(x)
        if x.ndim < 1 or x.shape[-1] != self.in_features:
            raise NanoError(f"GPTQ.add_batch: x has shape {x.shape}, its last axis must be "
                            f"in_features={self.in_features}; pass the layer's inputs")
        self.stats.add_batch(x)

    def solve(self, w, *, bits: int = 4, group: int | None = 32, damp: float = 0.01,
              act_order: bool = False, block: int = 128, symmetric: bool = True,
              static_groups: bool = False, clip_steps: int = 1, scale_dtype=None,
              name: str | None = None) -> QTensor:
        w = check_args(w, bits, group, name)
        n_in, n_out = w.shape
        if n_in != self.in_features:
            raise NanoError(f"GPTQ.solve: weight{f' {name!r}' if name else ''} has input width {n_in}, "
                            f"the Hessian {self.in_features}; pass the (in, out) kernel of this layer")
        if self.nsamples == 0:
            raise NanoError("GPTQ.solve: no calibration data; call add_batch(x) first")
        if damp < 0:
            raise NanoError(f"GPTQ.solve: damp {damp} must be >= 0; use 0.01")
        if block <= 0:
            raise NanoError(f"GPTQ.solve: block {block} must be positive; use 128")

        def scales(wg):  # a group's scale/zero: min-max, or the least-squares clip (reference `mse`)
            if clip_steps > 1:
                return search_params(wg, bits, symmetric, steps=clip_steps, scale_dtype=scale_dtype)
            return params(wg, bits, symmetric, scale_dtype=scale_dtype)

        W = w.T.astype(np.float64)                     # (out, in), as in the reference
        H = self.H
        dead = np.diag(H) == 0
        H[dead, dead] = 1.0
        W[:, dead] = 0.0

        static = group is None or act_order or static_groups
        if static:                                      # params from original weights, original order
            sc_all, ze_all = scales(grouped(W.T.astype(np.float32), group))
        g = n_in if group is None else group
        if group is not None:
            block = max(group, block // group * group)

        perm = np.argsort(-np.diag(H), kind="stable") if act_order else np.arange(n_in)
        W = W[:, perm]
        H = H[perm][:, perm]

        H[np.diag_indices(n_in)] += damp * np.mean(np.diag(H))
        try:
            U = _inverse_cholesky_upper(H)
        except np.linalg.LinAlgError:
            raise NanoError(f"GPTQ.solve: Hessian{f' of {name!r}' if name else ''} is not positive "
                            f"definite with damp={damp}; raise damp (e.g. 0.1) or add calibration data") from None

        Q = np.zeros((n_out, n_in), np.uint8 if (bits == 8 and not symmetric) else np.int8)
        scale = np.zeros((n_in // g, n_out), np.float32)
        zero = None if symmetric else np.zeros((n_in // g, n_out), np.float32)
        if static:
            scale[:] = sc_all[:, 0, :]
            if zero is not None:
                zero[:] = ze_all[:, 0, :]
        sc = ze = None
        for i1 in range(0, n_in, block):
            i2 = min(i1 + block, n_in)
            W1 = W[:, i1:i2].copy()
            Err1 = np.zeros_like(W1)
            U1 = U[i1:i2, i1:i2]
            for i in range(i2 - i1):
                col = perm[i1 + i]                      # original row index of w
                gi = col // g
                if static:
                    sc, ze = scale[gi], None if zero is None else zero[gi]
                elif (i1 + i) % g == 0:                 # group boundary: params from current weights
                    s, z = scales(W1[:, i:i + g].T.astype(np.float32)[None])
                    sc, ze = s[0, 0], None if z is None else z[0, 0]
                    scale[gi] = sc
                    if zero is not None:
                        zero[gi] = ze
                wc = W1[:, i]
                q = codes(wc.astype(np.float32), sc, ze, bits)
                Q[:, i1 + i] = q
                err = (wc - values(q, sc, ze).astype(np.float64)) / U1[i, i]
                W1[:, i:] -= np.outer(err, U1[i, i:])
                Err1[:, i] = err
            W[:, i2:] -= Err1 @ U[i1:i2, i2:]

        q_out = np.empty_like(Q)
        q_out[:, perm] = Q
        return QTensor(q=np.ascontiguousarray(q_out.T), scale=scale, zero=zero, bits=bits, group=group)
