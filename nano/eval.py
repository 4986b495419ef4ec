"""Held-out perplexity: BOS-prefixed windows, every next token scored, vocab-chunked so the
(T, 262k) logits never exist at once."""

import dataclasses
import math
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Array, Float, Int

from nano.chunks import merge_positions, split_positions
from nano.model import Transformer


def chunked_nll(model: Transformer, h: Float[Array, "B T D"], targets: Int[Array, "B T"],
                *, chunk: int = 128) -> Float[Array, "B T"]:
    """-log p(target) at every position, computing logits `chunk` positions at a time."""
    def one(args):
        hc, tc = args
        logits = model.logits(hc)  # (B, chunk, V) float32
        target = jnp.take_along_axis(logits, tc[..., None], axis=-1)[..., 0]
        return jax.nn.logsumexp(logits, axis=-1) - target

    nll = jax.lax.map(one, (split_positions(h, chunk), split_positions(targets, chunk)))  # (C, B, chunk)
    return merge_positions(nll, h.shape[1])


@nnx.jit
def window_nll(model: Transformer, tokens: Int[Array, "B T"]) -> Float[Array, "B T-1"]:
    """NLL of tokens[:, 1:] given their prefixes."""
    h, _ = model.hidden(tokens)
    return chunked_nll(model, h[:, :-1], tokens[:, 1:])


@dataclasses.dataclass(frozen=True)
class EvalResult:
    perplexity: float
    mean_nll: float
    windows: int
    window: int
    scored_tokens: int
    seconds: float  # scoring time, compilation excluded
    tokens_per_s: float

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def evaluate(model: Transformer, windows: np.ndarray, *, batch_size: int = 1,
             progress: Callable[[int, int], None] | None = None) -> EvalResult:
    """Perplexity over `windows` (N, W) of token ids; every token after the first is scored."""
    n, w = windows.shape
    pad = -n % batch_size  # pad the last batch with copies, then drop their scores
    padded = np.concatenate([windows, windows[:pad]]) if pad else windows
    window_nll(model, jnp.asarray(padded[:batch_size])).block_until_ready()  # compile outside timing
    total, start = 0.0, time.perf_counter()
    for i in range(0, len(padded), batch_size):
        nll = np.asarray(window_nll(model, jnp.asarray(padded[i:i + batch_size])), dtype=np.float64)
        keep = min(batch_size, n - i)
        total += nll[:keep].sum()
        if progress:
            progress(min(i + batch_size, n), n)
    seconds = time.perf_counter() - start
    scored = n * (w - 1)
    mean = total / scored
    return EvalResult(perplexity=math.exp(mean), mean_nll=mean, windows=n, window=w,
                      scored_tokens=scored, seconds=seconds, tokens_per_s=n * w / seconds)
