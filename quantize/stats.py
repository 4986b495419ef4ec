"""Calibration statistics of one linear layer's inputs, accumulated batch by batch.

Both calibrated methods need only two moments of the inputs ``x`` (rows = tokens), never the
tokens themselves, so calibration memory is (in, in) per layer whatever the token count:

    gram     = sum x^T x        (GPTQ's Hessian is 2 * gram / n; AWQ's output error uses gram)
    abs_mean = mean |x|         (AWQ's channel saliency)
"""

from __future__ import annotations

import numpy as np

from nano.errors import NanoError


class InputStats:
    def __init__(self, width: int):
        if int(width) <= 0:
            raise NanoError(f"InputStats: width {width} must be positive")
        self.width = int(width)
        self.gram = np.zeros((self.width, self.width), np.float64)
        self.abs_sum = np.zeros(self.width, np.float64)
        self.n = 0

    def add_moments(self, gram, abs_sum, n: int) -> None:
        """Add precomputed moments of ``n`` rows (e.g. reduced on the accelerator)."""
        gram, abs_sum = np.asarray(gram, np.float64), np.asarray(abs_sum, np.float64)
        if gram.shape != (self.width, self.width) or abs_sum.shape != (self.width,):
            raise NanoError(f"InputStats: moments of shape {gram.shape}/{abs_sum.shape} do not match "
                            f"width {self.width}")
        self.gram += gram
        self.abs_sum += abs_sum
        self.n += int(n)

    def add_batch(self, x) -> None:
        """Add inputs ``x`` of shape (..., width)."""
        x = np.asarray(x)
        if x.ndim < 1 or x.shape[-1] != self.width:
            raise NanoError(f"InputStats.add_batch: x has shape {x.shape}, its last axis must be {self.width}")
        x = x.reshape(-1, self.width).astype(np.float64)
        self.add_moments(x.T @ x, np.abs(x).sum(axis=0), x.shape[0])

    def rescaled(self, s) -> "InputStats":
        """Moments of ``x / s``: the layer's inputs after AWQ folded ``1/s`` into the op before it."""
        s = np.asarray(s, np.float64)
        out = InputStats(self.width)
        out.add_moments(self.gram / np.outer(s, s), self.abs_sum / s, self.n)
        return out

    @property
    def hessian(self) -> np.ndarray:
        """GPTQ's ``H = 2/n sum x^T x``."""
        if self.n == 0:
            raise NanoError("no calibration data reached this layer; give more calibration rows")
        return 2.0 * self.gram / self.n

    @property
    def abs_mean(self) -> np.ndarray:
        if self.n == 0:
            raise NanoError("no calibration data reached this layer; give more calibration rows")
        return self.abs_sum / self.n

    def output_error(self, w, w_hat) -> float:
        """Relative calibration output error ``||x (w - w_hat)||^2 / ||x w||^2``."""
        w = np.asarray(w, np.float32)
        d = w - np.asarray(w_hat, np.float32)
        g = self.gram.astype(np.float32)
        den = float(np.sum((g @ w) * w))
        return float(np.sum((g @ d) * d)) / den if den > 0 else 0.0
