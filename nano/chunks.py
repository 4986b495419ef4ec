"""Split the position axis into fixed-size chunks and back: how every (B, T, 262k)-logits
computation (scoring, distillation losses, teacher targets) runs `chunk` positions at a time
under `jax.lax.map`."""

import jax
import jax.numpy as jnp


def split_positions(x: jax.Array, chunk: int) -> jax.Array:
    """(B, T, ...) -> (C, B, chunk, ...), zero-padded to a multiple of `chunk`."""
    pad = -x.shape[1] % chunk
    x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
    return x.reshape(x.shape[0], -1, chunk, *x.shape[2:]).swapaxes(0, 1)  # (C, B, chunk, ...)


def merge_positions(y: jax.Array, length: int) -> jax.Array:
    """(C, B, chunk, ...) -> (B, length, ...): the inverse of `split_positions`, padding dropped."""
    y = y.swapaxes(0, 1)  # (B, C, chunk, ...)
    return y.reshape(y.shape[0], -1, *y.shape[3:])[:, :length]
