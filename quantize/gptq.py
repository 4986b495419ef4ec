"""GPTQ (Frantar et al., 2022) as accumulate-then-solve, in pure NumPy.

    g = GPTQ(in_features)
    for x in calibration_inputs:      # (..., in) inputs of the layer
        g.add_batch(x)
    qt = g.solve(w, bits=4, group=32)  # w: (in, out) Nano kernel, y = x @ w

Math. ``H = 2/n sum x^T x`` (the sums kept in float64 by ``quantize.stats.InputStats``) is the
Hessian of ``||x w - x w_hat||^2`` w.r.t. each output column. The reference ``fasterquant``:
dead inputs (``H[i, i] == 0``) get ``H[i, i] = 1`` and their weight row is zeroed;
``H += damp * mean(diag H) * I``; ``U = chol(H^-1)`` upper (``H^-1 = U^T U``); the input rows are
quantized one at a time (round-to-nearest with the current group's scale) and each row's error
``(w_i - q_i) / U[i, i]`` is propagated to the later rows with ``U[i, i:]``.

This solver computes the same thing without inverting H. With ``J`` the reversal permutation,
one float64 Cholesky ``J H J = L L^T`` gives ``H = V V^T`` with ``V = J L J`` upper and
``U = V^-1``. Since the reference ends with ``Q = W - E U`` (E: the scaled errors), ``E = D V``
with ``D = W - Q`` (original weights minus codes), so the row being quantized is

    w_i(current) = w_i + sum_{k<i} D_k V[k, i] / V[i, i]

which needs only ``C = V / diag(V)`` (strictly upper, float32) and no triangular inverse (a third
of the flops at 8192 inputs). It is applied lazily (the GPTQ paper's lazy batch): inside a
sub-block of 32 rows immediately (rank-1 updates), then one matmul from the sub-block to the rest
of its ``block`` (128) rows, and one matmul from the block to every later row. Everything after the
factorization is float32 in Nano's (in, out) layout, where an input row is contiguous. The loss
``sum_i ||(w_i(current) - q_i) V[i, i]||^2`` (the damped ``tr(D^T H D)``) is kept in ``last_loss``.
Layers reading the same input (q/k/v, gate/up) share H: ``factor`` is computed once per
(damp, act_order) and ``solve_many`` solves their kernels side by side (columns are independent).

Layout. The papers and reference write W as (out, in) and quantize along ``in``; Nano's ``w`` is
(in, out), so the code works on ``w.T`` internally; the public API stays (in, out) and the result
is an ordinary :class:`~quantize.int4.QTensor` (scales ``(in // group, out)``).

Groups. Without act-order, a group's scale/zero is computed at its first row from the *current*
(already error-updated) weights of the group, as the reference does. ``block`` is rounded to a
multiple of ``group`` and the sub-block is a multiple or divisor of ``group``, so a group never
straddles a boundary and "current" includes every update (the reference reads the group from the
lazily-updated global matrix, which misses the in-block updates when a group starts mid-block;
with ``block % group == 0`` the two coincide). The group's later rows are what the reference's
column loop holds at that point (the OBS update given the rows already quantized), recovered from
the lazily-updated rows by one small triangular solve with ``V``'s diagonal block (``_obs_rows``).

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

import dataclasses
from collections.abc import Sequence

import numpy as np

from nano.errors import NanoError

from nano.qtensor import QTensor, values

from .int4 import check_args, codes, grouped, params
from .mse import search_params
from .stats import InputStats

SUB = 32  # columns per immediate-update sub-block (see _sub_block)


@dataclasses.dataclass(frozen=True)
class Factor:
    """What ``solve`` needs of one (damped, permuted) Hessian; layers sharing an input share it.

    ``perm`` (in,): row order (act-order or identity); ``dead`` (in,) bool: inputs never seen;
    ``C`` (in, in) float32: ``V[k, i] / V[i, i]`` for ``k < i`` (on and below the diagonal it holds
    leftovers of the factorization, which nothing reads), where ``H = V V^T`` with ``V`` upper
    (``V = U^-1``); ``vdiag`` (in,) float64: ``diag(V)``.
    """
    perm: np.ndarray
    dead: np.ndarray
    C: np.ndarray
    vdiag: np.ndarray


def _factor(H: np.ndarray, *, damp: float, act_order: bool, name: str | None) -> Factor:
    """One float64 Cholesky of the reversed, damped Hessian: ``J H J = L L^T`` gives
    ``H = V V^T`` with ``V = J L J`` upper, so no triangular inverse is needed (module doc)."""
    n = H.shape[0]
    dead = np.diag(H) == 0
    H[dead, dead] = 1.0
    perm = np.argsort(-np.diag(H), kind="stable") if act_order else np.arange(n)
    rev = perm[::-1]
    H = H[np.ix_(rev, rev)]                            # J P H P^T J in one gather (strided copies cost 6x)
    H[np.diag_indices(n)] += damp * np.mean(np.diag(H))
    from scipy.linalg import lapack

    # clean=0: the upper triangle keeps H's values; triu below drops them (V's lower part)
    L, info = lapack.dpotrf(H, lower=1, clean=0, overwrite_a=1)
    if info != 0:
        raise NanoError(f"GPTQ.solve: Hessian{f' of {name!r}' if name else ''} is not positive "
                        f"definite with damp={damp}; raise damp (e.g. 0.1) or add calibration data")
    del H
    V = L[::-1, ::-1]                                   # (in, in) upper, H = V V^T (a view)
    vdiag = np.ascontiguousarray(np.diag(V))
    C = V.astype(np.float32)                           # (in, in); only its strict upper part is read
    del L, V
    C /= vdiag.astype(np.float32)[None, :]
    return Factor(perm=perm, dead=dead, C=C, vdiag=vdiag)


def _obs_rows(W: np.ndarray, W0: np.ndarray, C: np.ndarray, vdiag: np.ndarray, i: int, j: int) -> np.ndarray:
    """Rows ``i:j`` (j-i, out) as the reference's column loop holds them once rows ``< i`` are
    quantized (the OBS update ``W0_r + H_rr^-1 H_rf D_f = W0_r + V_rr^-T V_fr^T D_f``), from
    ``W[i:j]``, which holds ``W0 + (V_fr^T D_f) / diag(V)``: one small triangular solve."""
    from scipy.linalg import solve_triangular

    vd = vdiag[i:j]
    Vg = C[i:j, i:j] * vd[None, :]                        # (g, g) upper block of V
    Vg[np.diag_indices(j - i)] = vd
    P = (W[i:j] - W0[i:j]) * vd[:, None]                  # (g, out) = V_fr^T D_f
    return W0[i:j] + solve_triangular(Vg, P, trans="T", lower=False, check_finite=False).astype(np.float32)


def _sub_block(group: int | None, static: bool) -> int:
    """Width of the immediate-update sub-blocks: a group never straddles a sub-block boundary
    (its scale must see every earlier update), so it is a multiple or a divisor of ``group``."""
    if static or group is None:
        return SUB
    if group <= SUB:
        return SUB // group * group
    return max(d for d in range(1, SUB + 1) if group % d == 0)


class GPTQ:
    """Accumulates the input Hessian of one linear layer, then quantizes its kernel."""

    def __init__(self, in_features: int):
        if int(in_features) <= 0:
            raise NanoError(f"GPTQ: in_features {in_features} must be positive; pass w.shape[0]")
        self.in_features = int(in_features)
        self.stats = InputStats(self.in_features)  # the running x^T x; H is derived from it
        self.last_loss: float | None = None  # the damped tr(D^T H D) of the last solve

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

    def factor(self, *, damp: float = 0.01, act_order: bool = False, name: str | None = None) -> Factor:
        """The Cholesky factor of the damped Hessian, computed once per (damp, act_order) and kept:
        layers reading the same input (q/k/v, gate/up) solve with one factorization."""
        if self.nsamples == 0:
            raise NanoError("GPTQ.solve: no calibration data; call add_batch(x) first")
        if damp < 0:
            raise NanoError(f"GPTQ.solve: damp {damp} must be >= 0; use 0.01")
        key = (float(damp), bool(act_order), self.nsamples)
        cached = getattr(self, "_factor", None)
        if cached is None or cached[0] != key:
            self._factor = (key, _factor(self.H, damp=damp, act_order=act_order, name=name))
        return self._factor[1]

    def solve(self, w, *, bits: int = 4, group: int | None = 32, damp: float = 0.01,
              act_order: bool = False, block: int = 128, symmetric: bool = True,
              static_groups: bool = False, clip_steps: int = 1, scale_dtype=None,
              name: str | None = None) -> QTensor:
        """Quantize the (in, out) kernel ``w`` (see module doc)."""
        return self.solve_many([w], bits=bits, group=group, damp=damp, act_order=act_order, block=block,
                               symmetric=symmetric, static_groups=static_groups, clip_steps=clip_steps,
                               scale_dtype=scale_dtype, names=None if name is None else [name])[0]

    def solve_many(self, ws: Sequence, *, bits: int = 4, group: int | None = 32, damp: float = 0.01,
                   act_order: bool = False, block: int = 128, symmetric: bool = True,
                   static_groups: bool = False, clip_steps: int = 1, scale_dtype=None,
                   names: Sequence[str] | None = None) -> list[QTensor]:
        """Quantize several (in, out) kernels that read this layer input (q/k/v; gate/up) in one
        pass: GPTQ treats output columns independently, so their columns are concatenated and
        solved together -- the same codes as one ``solve`` each, one factorization, one loop."""
        names = list(names) if names is not None else [None] * len(ws)
        ws = [check_args(w, bits, group, n) for w, n in zip(ws, names)]
        if not ws:
            return []
        for w, n in zip(ws, names):
            if w.shape[0] != self.in_features:
                raise NanoError(f"GPTQ.solve: weight{f' {n!r}' if n else ''} has input width {w.shape[0]}, "
                                f"the Hessian {self.in_features}; pass the (in, out) kernel of this layer")
        if block <= 0:
            raise NanoError(f"GPTQ.solve: block {block} must be positive; use 128")
        f = self.factor(damp=damp, act_order=act_order, name=names[0] if len(names) == 1 else None)
        w = ws[0] if len(ws) == 1 else np.concatenate(ws, axis=1)     # (in, out_total)
        q, scale, zero, self.last_loss = _solve(
            w, f, bits=bits, group=group, block=block, symmetric=symmetric,
            static=group is None or act_order or static_groups, clip_steps=clip_steps, scale_dtype=scale_dtype)
        out, c0 = [], 0
        for wi in ws:
            c1 = c0 + wi.shape[1]
            out.append(QTensor(q=np.ascontiguousarray(q[:, c0:c1]), scale=np.ascontiguousarray(scale[:, c0:c1]),
                               zero=None if zero is None else np.ascontiguousarray(zero[:, c0:c1]),
                               bits=bits, group=group))
            c0 = c1
        return out


def _solve(w: np.ndarray, f: Factor, *, bits: int, group: int | None, block: int, symmetric: bool,
           static: bool, clip_steps: int, scale_dtype) -> tuple:
    """Codes (in, out), scales and zeros (in // g, out) of ``w`` (in, out), and the loss
    ``sum_i ||err_i||^2`` (the damped ``tr(D^T H D)``). Works in Nano's (in, out) layout, so the
    row of input ``i`` (a column in the paper's W) is contiguous."""
    n_in, n_out = w.shape

    def scales(wg):  # a group's scale/zero: min-max, or the least-squares clip (reference `mse`)
        if clip_steps > 1:
            return search_params(wg, bits, symmetric, steps=clip_steps, scale_dtype=scale_dtype)
        return params(wg, bits, symmetric, scale_dtype=scale_dtype)

    w = w.copy() if not f.dead.any() else np.where(f.dead[:, None], np.float32(0), w)
    g = n_in if group is None else group
    scale = np.zeros((n_in // g, n_out), np.float32)     # (G, out)
    zero = None if symmetric else np.zeros((n_in // g, n_out), np.float32)
    if static:                                            # params from original weights, original order
        sc_all, ze_all = scales(grouped(w, group))
        scale[:] = sc_all[:, 0, :]
        if zero is not None:
            zero[:] = ze_all[:, 0, :]
    if group is not None:
        block = max(group, block // group * group)
    sub = _sub_block(group, static)

    perm, C = f.perm, f.C
    W0 = w[perm]                                          # (in, out) original rows, in solve order
    W = W0.copy()                                         # rows become current (error-updated) when reached
    Q = np.zeros((n_in, n_out), np.uint8 if (bits == 8 and not symmetric) else np.int8)
    D = np.empty((min(block, n_in), n_out), np.float32)  # (block, out): W0 - dequantized, this block
    vdiag = f.vdiag.astype(np.float32)
    loss = 0.0
    sc = ze = None
    for i1 in range(0, n_in, block):
        i2 = min(i1 + block, n_in)
        for a1 in range(i1, i2, sub):
            a2 = min(a1 + sub, i2)
            for i in range(a1, a2):
                col = perm[i]                             # original row index of w
                gi = col // g
                if static:
                    sc, ze = scale[gi], None if zero is None else zero[gi]
                elif i % g == 0:                          # group boundary: params from current weights
                    s, z = scales(_obs_rows(W, W0, C, vdiag, i, i + g)[None])
                    sc, ze = s[0, 0], None if z is None else z[0, 0]
                    scale[gi] = sc
                    if zero is not None:
                        zero[gi] = ze
                wc = W[i]                                 # (out,) current
                q = codes(wc, sc, ze, bits)
                Q[i] = q
                deq = values(q, sc, ze)
                e = (wc - deq) * vdiag[i]
                loss += float(np.dot(e, e))
                d = D[i - i1]
                np.subtract(W0[i], deq, out=d)
                if i + 1 < a2:                            # immediate updates inside the sub-block
                    W[i + 1:a2] += C[i, i + 1:a2, None] * d[None, :]
            if a2 < i2:                                   # sub-block -> rest of the block: one matmul
                W[a2:i2] += C[a1:a2, a2:i2].T @ D[a1 - i1:a2 - i1]
        if i2 < n_in:                                     # block -> all later rows: one matmul (lazy batch)
            W[i2:] += C[i1:i2, i2:].T @ D[:i2 - i1]

    q_out = np.empty_like(Q)
    q_out[perm] = Q
    return q_out, scale, zero, loss
