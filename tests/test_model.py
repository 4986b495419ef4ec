import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from nano.config import get_preset
from nano.model import (RMSNorm, Transformer, attention_mask, cache_context, cache_lengths, init_cache, ring_positions,
                        ring_write, rope)

TINY = get_preset("tiny")
# Gemma-2-style variant of the tiny preset: alternating local/global, soft-caps, no QK-norm.
TINY_G2 = dataclasses.replace(TINY, name="tiny_g2", attn_pattern=2, qk_norm=False, attn_softcap=50.0,
                              final_softcap=30.0, rope_global_base=10_000.0)


def test_rmsnorm_exact():
    norm = RMSNorm(2, eps=0.0)
    out = norm(jnp.array([3.0, 4.0]))
    rms = math.sqrt((9 + 16) / 2)
    np.testing.assert_allclose(out, [3 / rms, 4 / rms], rtol=1e-6)


def test_rope_exact():
    x = jnp.array([[[[1.0, 0.0]]], [[[1.0, 0.0]]]])  # (B=2, T=1, N=1, H=2)
    np.testing.assert_allclose(rope(x[:1], jnp.array([0]), 10_000.0)[0, 0, 0], [1.0, 0.0])
    # head_dim 2: a single frequency of 1 rad/position
    np.testing.assert_allclose(rope(x[:1], jnp.array([1]), 10_000.0)[0, 0, 0], [math.cos(1), math.sin(1)], rtol=1e-6)
    # head_dim 4: frequencies 1 and base**-0.5; half-split layout
    y = rope(jnp.array([[[[1.0, 1.0, 0.0, 0.0]]]]), jnp.array([2]), 100.0)[0, 0, 0]
    np.testing.assert_allclose(y, [math.cos(2), math.cos(0.2), math.sin(2), math.sin(0.2)], rtol=1e-6)


def test_rope_linear_scaling_divides_positions():
    x = jnp.asarray(np.random.default_rng(0).standard_normal((1, 3, 2, 8)), jnp.float32)
    scaled = rope(x, jnp.array([8, 16, 40]), 1e6, 8.0)
    np.testing.assert_allclose(scaled, rope(x, jnp.array([1, 2, 5]), 1e6), rtol=1e-6, atol=1e-6)
    # head_dim 2: one frequency of 1 rad/position, divided by the factor
    y = rope(jnp.array([[[[1.0, 0.0]]]]), jnp.array([3]), 10_000.0, 4.0)[0, 0, 0]
    np.testing.assert_allclose(y, [math.cos(0.75), math.sin(0.75)], rtol=1e-6)


def test_rope_scaling_applies_to_global_layers_only():
    c = dataclasses.replace(TINY, rope_global_scale=8.0)
    model = Transformer(c, rngs=nnx.Rngs(0))
    assert [layer.attn.rope_scale for layer in model.layers] == [1.0] * 5 + [8.0]
    assert [layer.attn.rope_base for layer in model.layers] == [10_000.0] * 5 + [1e6]
    plain = Transformer(TINY, rngs=nnx.Rngs(0))
    tokens = jnp.arange(1, 21)[None]
    a, b = np.asarray(model(tokens)[0]), np.asarray(plain(tokens)[0])
    np.testing.assert_array_equal(a[:, 0], b[:, 0])  # position 0: no rotation either way
    assert np.abs(a - b).max() > 1e-3


def test_attention_mask_exact():
    m = attention_mask(jnp.arange(4), jnp.arange(4), window=2)
    assert m.astype(int).tolist() == [[1, 0, 0, 0], [1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1]]
    g = attention_mask(jnp.array([2]), jnp.arange(4), window=None)
    assert g.astype(int).tolist() == [[1, 1, 1, 0]]


@pytest.mark.parametrize("ring", [True, False], ids=["ring", "full"])
@pytest.mark.parametrize("config", [TINY, TINY_G2], ids=["gemma3", "gemma2"])
def test_kv_cache_path_equals_full_forward(config, ring):
    model = Transformer(config, rngs=nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(1), (2, 40), 0, config.vocab_size)
    full, _ = model(tokens)
    cache = init_cache(config, batch=2, length=64, ring=ring)
    parts = []
    logits, cache = model(tokens[:, :17], cache=cache, start=0)  # prefill
    parts.append(logits)
    for t in range(17, 40):  # decode, well past the 8-token window
        logits, cache = model(tokens[:, t:t + 1], cache=cache, start=t)
        parts.append(logits)
    np.testing.assert_allclose(jnp.concatenate(parts, axis=1), full, atol=1e-4, rtol=0)
    want = [64 if config.is_global(i) or not ring else config.window for i in range(config.num_layers)]
    assert [k.shape for k, _ in cache] == [(2, config.num_kv_heads, n, config.head_dim) for n in want]  # [B, K, S, H]
    assert cache_lengths(config, 64, ring=ring) == want


@pytest.mark.parametrize("length, in_place", [(8, 6), (64, 1)], ids=["context=window", "context>window"])
def test_only_caches_shorter_than_the_context_are_rings(length, in_place):
    """A layer cache that holds the whole context is written in place (dynamic_update_slice: safe
    when a runtime passes one buffer as input and output); only shorter ones are rings."""
    model = Transformer(TINY, rngs=nnx.Rngs(0))
    cache = init_cache(TINY, length=length)
    assert cache_context(cache) == length
    jaxpr = str(jax.make_jaxpr(lambda t, c: model(t, cache=c, start=3))(jnp.ones((1, 2), jnp.int32), cache))
    assert jaxpr.count("dynamic_update_slice") == 2 * in_place  # K and V of each in-place layer
    no_global = dataclasses.replace(TINY, num_layers=1, attn_pattern=2)  # one local layer only
    assert cache_lengths(no_global, 64) == [64]  # full: its context could not be read off a ring


def test_ring_positions_and_write_exact():
    assert ring_positions(jnp.int32(10), 4).tolist() == [8, 9, 6, 7]
    assert ring_positions(jnp.int32(2), 4).tolist() == [0, 1, -2, -1]
    assert ring_positions(jnp.int32(0), 3).tolist() == [-3, -2, -1]
    cache = jnp.arange(4, dtype=jnp.float32).reshape(1, 1, 4, 1)  # slots hold 0, 1, 2, 3
    new = jnp.array([10.0, 11.0, 12.0, 13.0, 14.0, 15.0]).reshape(1, 1, 6, 1)  # positions 5..10
    keep = jnp.array([True, True, True, True, True, False])  # the last one is padding
    # positions 6..9 (the last 4 real ones) land in slots 2, 3, 0, 1
    out = ring_write(cache, new, jnp.int32(5), keep & (jnp.arange(6) >= 5 - 4))
    assert out[0, 0, :, 0].tolist() == [13.0, 14.0, 11.0, 12.0]
    nothing = ring_write(cache, new, jnp.int32(5), jnp.zeros(6, bool))
    assert nothing[0, 0, :, 0].tolist() == [0.0, 1.0, 2.0, 3.0]



def test_ring_write_one_token_is_a_slice_update():
    """Decode (T = 1) takes the slice-update path: slot start % S, nothing written when not kept,
    bit-equal to the one-hot product of longer chunks."""
    cache = jax.random.normal(jax.random.key(0), (1, 2, 5, 3))
    new = jax.random.normal(jax.random.key(1), (1, 2, 1, 3))
    for start in (0, 3, 4, 5, 12):
        out = ring_write(cache, new, jnp.int32(start), jnp.array([True]))
        want = cache.at[:, :, start % 5].set(new[:, :, 0])
        assert jnp.array_equal(out, want)
        pad = jnp.concatenate([new, jnp.zeros_like(new)], axis=2)  # the T > 1 path, padding not kept
        assert jnp.array_equal(out, ring_write(cache, pad, jnp.int32(start), jnp.array([True, False])))
        assert jnp.array_equal(ring_write(cache, new, jnp.int32(start), jnp.array([False])), cache)

def test_ring_cache_with_padded_chunks_equals_full_forward():
    """Chunks of 6 holding 4 real tokens then padding (LiteRT-LM's position-0 convention), past
    many wraps of the 8-slot ring: the real positions' logits are those of the full forward."""
    model = Transformer(TINY, rngs=nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(2), (1, 40), 0, TINY.vocab_size)
    full, _ = model(tokens)
    cache = init_cache(TINY, length=64)
    step = jax.jit(lambda chunk, cache, start: model(chunk, cache=cache, start=start, length=4))
    parts = []
    for start in range(0, 40, 4):
        chunk = jnp.concatenate([tokens[:, start:start + 4], jnp.zeros((1, 2), tokens.dtype)], axis=1)  # (1, 6)
        logits, cache = step(chunk, cache, jnp.int32(start))
        parts.append(logits[:, :4])
    np.testing.assert_allclose(jnp.concatenate(parts, axis=1), full, atol=1e-4, rtol=0)


def test_ring_cache_picks_the_full_cache_tokens_to_8k_positions():
    """8,192 positions fed as chunks of 61 tokens then one (so the 8-slot ring wraps at every
    offset): the greedy token at every position is the one the full 8,192-position cache picks."""
    config = dataclasses.replace(TINY, max_seq_len=8192)
    model = Transformer(config, rngs=nnx.Rngs(3))
    tokens = jax.random.randint(jax.random.key(4), (1, 8192), 0, config.vocab_size)
    step = jax.jit(lambda chunk, cache, start: model(chunk, cache=cache, start=start))

    def greedy(cache) -> np.ndarray:
        picks, start = [], 0
        while start < 8192:
            n = min(61 if len(picks) % 2 == 0 else 1, 8192 - start)
            logits, cache = step(tokens[:, start:start + n], cache, jnp.int32(start))
            picks.append(np.asarray(jnp.argmax(logits[0], axis=-1)))
            start += n
        return np.concatenate(picks)

    ring, full = greedy(init_cache(config, length=8192)), greedy(init_cache(config, length=8192, ring=False))
    assert len(ring) == 8192 and len(set(full[-512:].tolist())) > 10  # real choices, not one token
    np.testing.assert_array_equal(ring, full)


def test_sliding_window_limits_what_a_local_layer_sees():
    config = dataclasses.replace(TINY, num_layers=1, attn_pattern=2)  # one local layer, window 8
    model = Transformer(config, rngs=nnx.Rngs(0))
    a = jnp.arange(1, 21)[None]
    b = a.at[0, 0].set(99)
    la, lb = model(a)[0][0], model(b)[0][0]
    diff = jnp.abs(la - lb).max(axis=-1)
    assert float(diff[7]) > 1e-4  # position 7 still sees position 0
    assert float(diff[8:].max()) == 0.0  # position 8 on does not


def test_final_softcap_bounds_logits():
    model = Transformer(TINY_G2, rngs=nnx.Rngs(0))
    h = jnp.full((1, 1, TINY_G2.d_model), 100.0)
    assert float(jnp.abs(model.logits(h)).max()) <= 30.0


def test_bf16_compute_is_close_to_f32():
    f32 = Transformer(TINY, rngs=nnx.Rngs(0))
    bf16 = Transformer(TINY, rngs=nnx.Rngs(0), dtype=jnp.bfloat16)
    tokens = jnp.arange(16)[None]
    a, b = f32(tokens)[0], bf16(tokens)[0]
    assert b.dtype == jnp.float32  # logits always float32
    assert float(jnp.abs(a - b).max()) < 0.1
    assert jax.tree.leaves(nnx.state(bf16, nnx.Param))[0].dtype == jnp.float32  # master weights
