"""Distillation targets from teacher logits: pure and jit-able.

Two schemes, both returning `TeacherTargets` with `k` slots per position (padding: id 0, weight 0):
  top-k   the k most probable ids, by descending probability, with their log-probs under the
          full softmax (temperature 1); weights are the top-k probabilities renormalised.
  sample  Gemma 3's scheme: k draws with replacement from the teacher distribution, kept as
          unique ids with weight count/k, an unbiased estimate of the teacher distribution.
          The key of each position is fold_in(fold_in(key(seed), row), position): targets do
          not depend on batching or chunking.
`chunked_targets` computes logits a few positions at a time, so (B, T, V) never exists.
`shared_vocab_logits` restricts a larger-vocabulary teacher's logits to the student's ids.
"""

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from nano.chunks import merge_positions, split_positions
from nano.errors import NanoError

PAD_LOGPROB = -1e30  # log-prob of padding slots: finite, so 0 * PAD_LOGPROB stays 0
SCHEMES = ("topk", "sample")


class TeacherTargets(NamedTuple):
    """k targets per position: what the teacher pass yields and the teacher cache stores."""

    ids: Int[Array, "*P k"]  # int32 token ids
    logprobs: Float[Array, "*P k"]  # log p_teacher(id), full softmax; PAD_LOGPROB in padding
    weights: Float[Array, "*P k"]  # the target distribution over `ids` (sums to 1); 0 in padding
    lse: Float[Array, "*P"]  # logsumexp of the teacher logits (logit = logprob + lse)


def shared_vocab_logits(logits: Float[Array, "*P Vt"], vocab: int) -> Float[Array, "*P V"]:
    """The teacher's logits over the student's ids, the first `vocab` (Vt >= vocab), before any
    softmax: Gemma 3 4B/12B/27B have 262,208 rows, the tokenizer's 262,144 ids then 64 unused
    padding rows, so the target is the teacher's softmax over the ids a student can emit."""
    if logits.shape[-1] < vocab:
        raise NanoError(f"teacher logits have {logits.shape[-1]:,} ids, fewer than the student's {vocab:,}; use a teacher whose vocabulary covers the student's")
    return logits[..., :vocab]


def topk_targets(logits: Float[Array, "*P V"], k: int) -> TeacherTargets:
    logits = logits.astype(jnp.float32)
    lse = jax.nn.logsumexp(logits, axis=-1)
    top, ids = jax.lax.top_k(logits, k)
    logprobs = top - lse[..., None]
    return TeacherTargets(ids.astype(jnp.int32), logprobs, jax.nn.softmax(logprobs, axis=-1), lse)


def _fanout(vocab: int) -> int:
    """Fan-out of the three-level inverse CDF: ~V^(1/3), a power of two (64 for Gemma's 262,144)."""
    return 1 << -(-(vocab - 1).bit_length() // 3)


def _pick(weights: Float[Array, "k f"], u: Float[Array, "k"]) -> tuple[Int[Array, "k"], Float[Array, "k"]]:
    """Per row, the cell of `weights` that mass `u` falls in, and `u` minus the mass before it.
    Clamped to the last positive cell, so rounding can never pick a zero-probability one."""
    c = jnp.cumsum(weights, axis=-1)
    last = weights.shape[-1] - 1 - jnp.argmax(weights[:, ::-1] > 0, axis=-1)
    i = jnp.minimum(jnp.sum(c <= u[:, None], axis=-1), last)
    before = jnp.where(i > 0, jnp.take_along_axis(c, jnp.maximum(i - 1, 0)[:, None], axis=-1)[:, 0], 0.0)
    return i, u - before


def _sample_one(logits: Float[Array, "V"], key: jax.Array, k: int) -> TeacherTargets:
    """k draws by a three-level inverse CDF: O(V + 3 k V^(1/3)) work, cumulative sums of at most
    64 terms. Gumbel-max (`jax.random.categorical`) would need k * V random numbers per
    position (33M at k=128), and a float32 cumsum over V is slow on CPU and imprecise."""
    vocab = logits.shape[0]
    f = _fanout(vocab)
    m = jnp.max(logits)
    e = jnp.pad(jnp.exp(logits - m), (0, f ** 3 - vocab))  # unnormalised probabilities
    l3 = e.reshape(f * f, f)
    l2 = l3.sum(-1)  # (f*f,)
    l1 = l2.reshape(f, f).sum(-1)  # (f,)
    total = l1.sum()
    lse = m + jnp.log(total)
    u = jax.random.uniform(key, (k,), jnp.float32) * total
    a, u = _pick(jnp.broadcast_to(l1, (k, f)), u)
    b, u = _pick(l2.reshape(f, f)[a], u)
    c, _ = _pick(l3[a * f + b], u)
    draws = jnp.sort(((a * f + b) * f + c).astype(jnp.int32))
    # Unique ids with their counts: slot s holds the s-th distinct id (ascending).
    first = jnp.concatenate([jnp.ones(1, bool), draws[1:] != draws[:-1]])
    slot = jnp.cumsum(first) - 1
    counts = jnp.zeros(k, jnp.int32).at[slot].add(1)
    ids = jnp.zeros(k, jnp.int32).at[slot].set(draws)
    logprobs = jnp.where(counts > 0, logits[ids] - lse, PAD_LOGPROB)
    order = jnp.lexsort((ids, -logprobs, -counts))  # by weight, then probability, then id
    return TeacherTargets(ids[order], logprobs[order], counts[order].astype(jnp.float32) / k, lse)


def sampled_targets(logits: Float[Array, "B c V"], k: int, *, seed: Int[Array, ""] | int,
                    rows: Int[Array, "B"], positions: Int[Array, "c"]) -> TeacherTargets:
    """`rows`: the global training-row index of each batch entry; `positions`: within the row."""
    base = jax.random.key(seed)
    row_keys = jax.vmap(lambda r: jax.random.fold_in(base, r))(rows.astype(jnp.uint32))
    keys = jax.vmap(lambda rk: jax.vmap(lambda t: jax.random.fold_in(rk, t))(positions.astype(jnp.uint32)))(row_keys)
    one = lambda lg, key: _sample_one(lg.astype(jnp.float32), key, k)  # noqa: E731
    return jax.vmap(jax.vmap(one))(logits, keys)


def chunked_targets(logits_fn: Callable[[Float[Array, "B c D"]], Float[Array, "B c V"]],
                    h: Float[Array, "B T D"], rows: Int[Array, "B"], *, k: int, scheme: str,
                    seed: Int[Array, ""] | int = 0, chunk: int = 32) -> TeacherTargets:
    """Teacher targets for every position of `h`, `chunk` positions at a time (logits (B, chunk, V))."""
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
    T = h.shape[1]
    pos = jnp.arange(T + -T % chunk, dtype=jnp.int32).reshape(-1, chunk)  # (C, chunk)

    def one(args):
        hx, px = args
        logits = logits_fn(hx)
        if scheme == "topk":
            return topk_targets(logits, k)
        return sampled_targets(logits, k, seed=seed, rows=rows, positions=px)

    out = jax.lax.map(one, (split_positions(h, chunk), pos))  # leaves (C, B, chunk, ...)
    return jax.tree.map(lambda a: merge_positions(a, T), out)
