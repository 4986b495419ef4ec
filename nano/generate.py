"""Sampling on the KV-cache path: one prefill of the (bucket-padded) prompt, then one jitted
decode step per token."""

import dataclasses
from collections.abc import Iterator, Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float, Int

from nano.errors import NanoError
from nano.model import KVCache, Transformer, init_cache


@dataclasses.dataclass(frozen=True, kw_only=True)
class Sampling:
    temperature: float = 0.0  # 0: greedy
    top_k: int | None = None
    top_p: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise NanoError(f"--temperature must be >= 0, got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise NanoError(f"--top-k must be >= 1, got {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise NanoError(f"--top-p must be in (0, 1], got {self.top_p}")


def sample(logits: Float[Array, "B V"], key: jax.Array, s: Sampling) -> Int[Array, "B"]:
    if s.temperature == 0:
        return jnp.argmax(logits, axis=-1)
    logits = logits / s.temperature
    if s.top_k is not None:
        kth = jax.lax.top_k(logits, s.top_k)[0][:, -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if s.top_p is not None:
        order = jnp.argsort(-logits, axis=-1)
        sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        # Keep the smallest prefix whose mass reaches top_p (the first token always stays).
        drop_sorted = jnp.cumsum(probs, axis=-1) - probs >= s.top_p
        drop = jnp.zeros_like(drop_sorted).at[jnp.arange(logits.shape[0])[:, None], order].set(drop_sorted)
        logits = jnp.where(drop, -jnp.inf, logits)
    return jax.random.categorical(key, logits, axis=-1)


@nnx.jit(static_argnums=(4,), donate_argnums=(2,))
def _prefill(model: Transformer, tokens: Int[Array, "B T"], cache: KVCache,
             last: Int[Array, ""], s: Sampling, key: jax.Array):
    h, cache = model.hidden(tokens, cache=cache, start=0, length=last + 1)
    h_last = jax.lax.dynamic_slice_in_dim(h, last, 1, axis=1)  # (B, 1, D)
    return sample(model.logits(h_last)[:, 0], key, s), cache


@nnx.jit(static_argnums=(4,), donate_argnums=(2,))
def _decode(model: Transformer, token: Int[Array, "B"], cache: KVCache, pos: Int[Array, ""],
            s: Sampling, key: jax.Array):
    logits, cache = model(token[:, None], cache=cache, start=pos)
    return sample(logits[:, 0], key, s), cache


def _bucket(n: int) -> int:
    return max(16, 1 << (n - 1).bit_length())


def generate(model: Transformer, prompt: Sequence[int], *, max_new_tokens: int,
             sampling: Sampling = Sampling(), stop_ids: Sequence[int] = ()) -> Iterator[int]:
    """Yield new token ids one by one (stops after a stop id, which is yielded too)."""
    if not prompt:
        raise NanoError("empty prompt: give at least one token (the BOS token counts)")
    n = len(prompt)
    limit = model.config.max_seq_len
    need = n + max_new_tokens
    if need > limit:
        raise NanoError(f"prompt ({n} tokens) + --max-tokens ({max_new_tokens}) exceeds the model's context of {limit} tokens; shorten the prompt or lower --max-tokens")
    width = _bucket(n)
    cache_len = min(limit, max(width, -(-need // 128) * 128))
    if width > cache_len:  # the padded prefill would not fit: prefill exactly
        width = n
    cache = init_cache(model.config, batch=1, length=cache_len, dtype=model.dtype)
    tokens = jnp.zeros((1, width), jnp.int32).at[0, :n].set(jnp.asarray(prompt, jnp.int32))
    key = jax.random.key(sampling.seed)
    key, sub = jax.random.split(key)
    token, cache = _prefill(model, tokens, cache, jnp.int32(n - 1), sampling, sub)
    stops = set(int(t) for t in stop_ids)
    for i in range(max_new_tokens):
        tid = int(token[0])
        yield tid
        if tid in stops or i == max_new_tokens - 1:
            return
        key, sub = jax.random.split(key)
        token, cache = _decode(model, token, cache, jnp.int32(n + i), sampling, sub)


def sample_continuations(model: Transformer, prompts: Int[Array, "B P"], *, length: int,
                         key: jax.Array, temperature: float = 1.0) -> Int[Array, "B P+L"]:
    """Batched, fully jitted sampling (for on-policy distillation): prompts + `length` tokens."""
    B, P = prompts.shape
    cache = init_cache(model.config, batch=B, length=P + length, dtype=model.dtype)
    h, cache = model.hidden(prompts, cache=cache, start=0)
    s = Sampling(temperature=temperature)
    keys = jax.random.split(key, length)
    first = sample(model.logits(h[:, -1:])[:, 0], keys[0], s)

    def step(carry, i):
        token, cache = carry
        logits, cache = model(token[:, None], cache=cache, start=P + i)
        nxt = sample(logits[:, 0], keys[i + 1], s)
        return (nxt, cache), token

    (last, _), tokens = jax.lax.scan(step, (first, cache), jnp.arange(length - 1))
    generated = jnp.concatenate([tokens.T, last[:, None]], axis=1)  # (B, L)
    return jnp.concatenate([prompts, generated.astype(prompts.dtype)], axis=1)
