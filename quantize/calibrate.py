"""Layer-by-layer calibration on the JAX model: the moments each linear layer's inputs have
when every earlier layer is already quantized (GPTQ's sequential scheme).

Only a block's moments and one (rows, T, d_model) activation buffer exist at a time, so memory
is bounded by the largest block, not the model or the token count.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from nano.model import Block, Transformer, block_forward, embed_rows

from .stats import InputStats

# Linear layer -> the tap (nano/model.py `Tap`) that sees its input.
SITE_OF = {"attn.q": "qkv", "attn.k": "qkv", "attn.v": "qkv", "attn.o": "o",
           "mlp.gate": "gate_up", "mlp.up": "gate_up", "mlp.down": "down"}


def _moments(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    x = x.reshape(-1, x.shape[-1]).astype(jnp.float32)  # (tokens, in)
    return jnp.einsum("ni,nj->ij", x, x, preferred_element_type=jnp.float32), jnp.abs(x).sum(axis=0)


@nnx.jit
def _block_moments(block: Block, x: jax.Array) -> dict[str, tuple[jax.Array, jax.Array]]:
    taps: dict[str, jax.Array] = {}
    block(x, jnp.arange(x.shape[1], dtype=jnp.int32), None, 0, tap=taps.__setitem__)
    return {site: _moments(v) for site, v in taps.items() if site in SITE_OF.values()}


@nnx.jit
def _norm_moments(norm: nnx.Module, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    return _moments(norm(x))


def _head_moments(model: Transformer, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    return _norm_moments(model.final_norm, x)


def _batches(n: int, batch: int) -> Iterator[slice]:
    for i in range(0, n, batch):
        yield slice(i, min(i + batch, n))


class Activations:
    """The residual stream of the calibration rows entering the current block, on the host."""

    def __init__(self, model: Transformer, tokens: np.ndarray, *, batch: int = 8):
        self.batch = batch
        self.x = np.concatenate([np.asarray(embed_rows(model, jnp.asarray(tokens[s])))
                                 for s in _batches(len(tokens), batch)])  # (N, T, D)

    def block_stats(self, block: Block, progress: Callable[[], None] | None = None) -> dict[str, InputStats]:
        stats: dict[str, InputStats] = {}
        for s in _batches(len(self.x), self.batch):
            x = jnp.asarray(self.x[s])
            for site, (gram, abs_sum) in _block_moments(block, x).items():
                st = stats.setdefault(site, InputStats(gram.shape[0]))
                st.add_moments(np.asarray(gram), np.asarray(abs_sum), x.shape[0] * x.shape[1])
            if progress:
                progress()
        return stats

    def advance(self, block: Block) -> None:
        """Run the (now quantized) block: its outputs are the next block's inputs."""
        for s in _batches(len(self.x), self.batch):
            self.x[s] = np.asarray(block_forward(block, jnp.asarray(self.x[s])))

    def head_stats(self, model: Transformer) -> InputStats:
        st = InputStats(self.x.shape[-1])
        for s in _batches(len(self.x), self.batch):
            gram, abs_sum = _head_moments(model, jnp.asarray(self.x[s]))
            st.add_moments(np.asarray(gram), np.asarray(abs_sum), self.x[s].shape[0] * self.x.shape[1])
        return st
