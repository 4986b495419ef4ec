"""Calibration statistics of one linear layer's inputs, accumulated batch by batch.

Both calibrated methods need only two moments of the inputs ``x`` (rows = tokens), never the
tokens themselves, so calibration memory is (in, in) per layer whatever the token count:

    gram     = sum x^T x        (GPTQ's Hessian is 2 * gram / n; AWQ's output error uses gram)
    abs_mean = mean |x|         (AWQ's channel saliency)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
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
        self._gram32: tuple[int, jax.Array] | None = None  # (n it was made at, float32 gram on the device)

    def add_moments(self, gram, abs_sum, n: int) -> None:
        """Add precomputed moments of ``n`` rows (e.g. reduced on the accelerator)."""
        gram, abs_sum = np.asarray(gram), np.asarray(abs_sum)
        if gram.shape != (self.width, self.width) or abs_sum.shape != (self.width,):
            raise NanoError(f"InputStats: moments of shape {gram.shape}/{abs_sum.shape} do not match "
                            f"width {self.width}")
        if self.n == 0:  # the first batch: taken over, not added to zeros (one (in, in) float64 array, not two)
            self.gram, self.abs_sum = np.array(gram, np.float64), np.array(abs_sum, np.float64)
        else:
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
        """Relative calibration output error ``||x (w - w_hat)||^2 / ||x w||^2``, in float32 by XLA
        (1.7x NumPy's matmul here; for nano1's `down` this report costs as much as its gram)."""
        if self._gram32 is None or self._gram32[0] != self.n:  # shared by a site's layers
            self._gram32 = (self.n, jnp.asarray(self.gram, jnp.float32))
        w = np.asarray(w, np.float32)
        num, den = _energies(self._gram32[1], jnp.asarray(w), jnp.asarray(w - np.asarray(w_hat, np.float32)))
        return float(num) / float(den) if float(den) > 0 else 0.0



@jax.jit
def _energies(g: jax.Array, w: jax.Array, d: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(||x d||^2, ||x w||^2) from the gram ``g`` = x^T x."""
    return jnp.sum((g @ d) * d), jnp.sum((g @ w) * w)


def relative_error(w: np.ndarray, w_hat: np.ndarray, *, chunk: int = 1 << 22) -> float:
    """``||w - w_hat|| / ||w||`` (0 for a zero ``w``) of two (in, out) matrices, summed in float64
    over blocks of about ``chunk`` elements: no difference matrix the size of the weight (2 GiB for
    nano1's embedding), whatever either's memory layout (the embedding's is transposed)."""
    w, w_hat = np.asarray(w), np.asarray(w_hat)
    rows = max(1, chunk // max(w.shape[1], 1))
    num = den = 0.0
    for i in range(0, w.shape[0], rows):
        x = w[i:i + rows]
        d = (x - w_hat[i:i + rows]).reshape(-1)
        num += float(np.dot(d, d))
        den += float(np.einsum("ij,ij->", x, x))
    return (num / den) ** 0.5 if den else 0.0
