import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from nano.config import get_preset
from nano.model import RMSNorm, Transformer, attention_mask, init_cache, rope

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


def test_attention_mask_exact():
    m = attention_mask(jnp.arange(4), jnp.arange(4), window=2)
    assert m.astype(int).tolist() == [[1, 0, 0, 0], [1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1]]
    g = attention_mask(jnp.array([2]), jnp.arange(4), window=None)
    assert g.astype(int).tolist() == [[1, 1, 1, 0]]


@pytest.mark.parametrize("config", [TINY, TINY_G2], ids=["gemma3", "gemma2"])
def test_kv_cache_path_equals_full_forward(config):
    model = Transformer(config, rngs=nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(1), (2, 40), 0, config.vocab_size)
    full, _ = model(tokens)
    cache = init_cache(config, batch=2, length=64)
    parts = []
    logits, cache = model(tokens[:, :17], cache=cache, start=0)  # prefill
    parts.append(logits)
    for t in range(17, 40):  # decode, well past the 8-token window
        logits, cache = model(tokens[:, t:t + 1], cache=cache, start=t)
        parts.append(logits)
    np.testing.assert_allclose(jnp.concatenate(parts, axis=1), full, atol=1e-4, rtol=0)
    assert cache[0][0].shape == (2, config.num_kv_heads, 64, config.head_dim)  # [B, kv_heads, S, head_dim]


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
