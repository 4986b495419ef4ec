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


SYM_BLOCK = 2048  # wider inputs get their gram from its upper blocks (nano1's down: 8192, 24% less time)


def _moments(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    x = x.reshape(-1, x.shape[-1]).astype(jnp.float32)  # (tokens, in)
    return _gram(x), jnp.abs(x).sum(axis=0)


def _gram(x: jax.Array) -> jax.Array:
    """x^T x; for a wide x, only the blocks on and above the diagonal are multiplied (the same
    dot products, so the same values) and the rest mirrored."""
    n = x.shape[1]
    dot = lambda a, b: jnp.einsum("ni,nj->ij", a, b, preferred_element_type=jnp.float32)
    if n < 2 * SYM_BLOCK or n % SYM_BLOCK:
        return dot(x, x)
    cols = [x[:, i:i + SYM_BLOCK] for i in range(0, n, SYM_BLOCK)]
    upper = {(i, j): dot(cols[i], cols[j]) for i in range(len(cols)) for j in range(i, len(cols))}
    return jnp.block([[upper[i, j] if j >= i else upper[j, i].T for j in range(len(cols))] for i in range(len(cols))])


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
        self.tokens = np.asarray(tokens)
        self.x = self._embed(model)  # (N, T, D)

    def _embed(self, model: Transformer) -> np.ndarray:
        return np.concatenate([np.asarray(embed_rows(model, jnp.asarray(self.tokens[s])))
                               for s in _batches(len(self.tokens), self.batch)])  # (N, T, D)

    def reembed(self, model: Transformer) -> None:
        """Restart the stream from the model's embedding as it is now (once it is quantized)."""
        self.x = self._embed(model)

    def block_stats(self, block: Block, progress: Callable[[], None] | None = None) -> dict[str, InputStats]:
        """Each site's moments over all rows, summed on the device (float32) and moved to the host
        once: per batch, an (8192, 8192) gram's copy and float64 sum cost as much as computing it."""
        total = None
        for s in _batches(len(self.x), self.batch):
            moments = _block_moments(block, jnp.asarray(self.x[s]))
            total = moments if total is None else _add(total, moments)
            if progress:
                progress()
        return _stats(total, self.x.shape[0] * self.x.shape[1])

    def advance(self, block: Block) -> None:
        """Run the (now quantized) block: its outputs are the next block's inputs."""
        for s in _batches(len(self.x), self.batch):
            self.x[s] = np.asarray(block_forward(block, jnp.asarray(self.x[s])))

    def head_stats(self, model: Transformer) -> InputStats:
        total = None
        for s in _batches(len(self.x), self.batch):
            moments = {"head": _head_moments(model, jnp.asarray(self.x[s]))}
            total = moments if total is None else _add(total, moments)
        return _stats(total, self.x.shape[0] * self.x.shape[1])["head"]


@jax.jit
def _add(a, b):
    return jax.tree.map(jnp.add, a, b)


def _stats(moments: dict[str, tuple[jax.Array, jax.Array]], n: int) -> dict[str, InputStats]:
    stats = {}
    for site, (gram, abs_sum) in moments.items():
        stats[site] = InputStats(gram.shape[0])
        stats[site].add_moments(np.asarray(gram), np.asarray(abs_sum), n)
    return stats


def float_head_stats(model: Transformer, tokens: np.ndarray, *, batch: int = 8, blocks=None) -> InputStats:
    """The LM head's input moments in the float model (before any block is quantized): one forward
    pass of the calibration rows. ``blocks``: the loader of a streamed model (each block is read,
    run and dropped)."""
    acts = Activations(model, tokens, batch=batch)
    for i in range(len(model.layers)):
        if blocks is not None:
            blocks.load(model, i)
        acts.advance(model.layers[i])
        if blocks is not None:
            blocks.unload(model, i)
    return acts.head_stats(model)
