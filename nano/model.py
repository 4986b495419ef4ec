"""Gemma 2 / Gemma 3 decoder-only transformer in flax.nnx, with a fixed-size KV cache.

One code path serves training, scoring and decoding: `Transformer.__call__` takes a chunk of
tokens starting at position `start`; with a cache it attends over the cached positions and the
chunk, and writes the chunk's keys/values into the cache (prefill is a chunk of T, decode a
chunk of 1). A global layer's cache holds every position (written at `start`); a local layer's
holds only its `window` most recent ones, a ring written at `position % window`, so its memory
and the keys each decoded token reads stay fixed however long the context grows.

Padding: a chunk may end in padding, marked as LiteRT-LM marks it, by position 0 after the
first token (`positions[i] != start + i`); padded entries are never attended to and never
overwrite a ring slot.

Weights are stored (in, out), norms as their full multiplier (Gemma's `1 + w`, as in GGUF).
"""

import functools
import math
import types
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Bool, Float, Int

from nano.config import ModelConfig
from nano.errors import NanoError

# One (k, v) pair per layer, each (B, kv_heads, S, head_dim): LiteRT-LM's layout.
KVCache = list[tuple[Float[Array, "B K S H"], Float[Array, "B K S H"]]]

_MASKED = -1e30  # finite, so a fully masked row can never produce NaN

# Optional observer of the inputs of a block's linear layers, called as tap(site, x) with site
# "qkv" (input of q, k, v), "o", "gate_up" (input of gate and up) or "down": how calibration
# (quantize/calibrate.py) sees activations without a second copy of the forward pass. The inputs
# of the block's four norms are tapped too, for pruning (distill/prune): "resid" (pre-attention
# norm), "attn_out" (post-attention), "resid_mid" (pre-MLP) and "mlp_out" (post-MLP).
Tap = Callable[[str, jax.Array], None]

# What a training forward keeps of each block for the backward pass (`Transformer.hidden(remat=)`):
# "none" every activation; "block" only the block's input, the rest recomputed during the backward
# pass one block at a time (one more forward pass of the blocks: ~1/3 more student compute);
# "dots" also the outputs of the weight matmuls (not the attention scores).
REMAT_POLICIES = {"none": None, "block": jax.checkpoint_policies.nothing_saveable,
                  "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable}


def cache_lengths(config: ModelConfig, length: int, *, ring: bool = True) -> list[int]:
    """Positions each layer's cache holds for a context of `length`: all of them for global
    layers; a ring of min(window, length) for local ones (`ring=False`: all, for runtimes that
    need one cache length, e.g. LiteRT-LM). A model without a global layer keeps full caches:
    its context could not be read off the cache (`cache_context`)."""
    ring = ring and any(config.is_global(i) for i in range(config.num_layers))
    return [length if config.is_global(i) or not ring else min(config.window, length)
            for i in range(config.num_layers)]


def cache_context(cache: KVCache) -> int:
    """The context a cache serves: its longest layer's length. A shorter layer cache is a ring."""
    return max(k.shape[2] for k, _ in cache)


def init_cache(config: ModelConfig, *, batch: int = 1, length: int | None = None,
               dtype=jnp.float32, ring: bool = True) -> KVCache:
    cache = []
    for n in cache_lengths(config, length or config.max_seq_len, ring=ring):
        shape = (batch, config.num_kv_heads, n, config.head_dim)  # (B, K, S, H)
        cache.append((jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)))
    return cache


class RMSNorm(nnx.Module):
    def __init__(self, dim: int, *, eps: float, param_dtype=jnp.float32):
        self.scale = nnx.Param(jnp.ones((dim,), param_dtype))
        self.eps = eps

    def __call__(self, x: Float[Array, "... D"]) -> Float[Array, "... D"]:
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (y * self.scale[...].astype(jnp.float32)).astype(x.dtype)


class Linear(nnx.Module):
    def __init__(self, d_in: int, d_out: int, *, rngs: nnx.Rngs, dtype, param_dtype):
        init = jax.nn.initializers.lecun_normal()
        self.kernel = nnx.Param(init(rngs.params(), (d_in, d_out), param_dtype))
        self.dtype = dtype

    def __call__(self, x: Float[Array, "... I"]) -> Float[Array, "... O"]:
        return x.astype(self.dtype) @ self.kernel[...].astype(self.dtype)


def rope(x: Float[Array, "B T N H"], positions: Int[Array, "T"], base: float,
         scale: float = 1.0) -> Float[Array, "B T N H"]:
    """Rotary embedding, half-split ("NeoX") layout as in Gemma and llama.cpp's gemma archs.
    `scale`: linear RoPE scaling, positions divided by it (as inv_freq / scale in Hugging Face)."""
    half = x.shape[-1] // 2
    inv_freq = base ** (-jnp.arange(half, dtype=jnp.float32) / half)  # (H/2,)
    if scale != 1.0:
        inv_freq = inv_freq / scale
    angles = positions.astype(jnp.float32)[:, None] * inv_freq  # (T, H/2)
    cos, sin = jnp.cos(angles)[:, None, :], jnp.sin(angles)[:, None, :]  # (T, 1, H/2)
    x1, x2 = x[..., :half].astype(jnp.float32), x[..., half:].astype(jnp.float32)
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


def ring_positions(start: Int[Array, ""], slots: int) -> Int[Array, "S"]:
    """Position held by each slot of a ring of `slots` after positions [0, start) were written:
    the latest p < start with p = slot (mod slots); negative where nothing was written yet."""
    j = jnp.arange(slots, dtype=jnp.int32)
    return start - 1 - jnp.mod(start - 1 - j, slots)


def ring_write(cache: Float[Array, "B K S H"], new: Float[Array, "B K T H"], start: Int[Array, ""],
               keep: Bool[Array, "T"]) -> Float[Array, "B K S H"]:
    """`cache` with the chunk's entries where `keep` written at (start + i) % S. A one-hot
    product rather than a scatter: it converts to plain TFLite ops and is exact."""
    S, T = cache.shape[2], new.shape[2]
    if T == 1:
        # Decode: one slot. A slice update, not the one-hot product: in TFLite the product becomes
        # an outer-product BATCH_MATMUL, a TRANSPOSE and a SELECT_V2 over the whole [S, H] ring per
        # K and V per local layer (gemma3_270m shapes: 6-7% of a decode step, measured). Exact.
        at = jnp.mod(start, S)
        old = jax.lax.dynamic_slice_in_dim(cache, at, 1, axis=2)
        return jax.lax.dynamic_update_slice_in_dim(cache, jnp.where(keep[0], new.astype(cache.dtype), old), at, axis=2)
    slot = jnp.mod(start + jnp.arange(T, dtype=jnp.int32), S)  # (T,)
    onehot = (slot[:, None] == jnp.arange(S, dtype=jnp.int32)[None, :]) & keep[:, None]  # (T, S)
    written = jnp.einsum("ts,bkth->bksh", onehot.astype(cache.dtype), new.astype(cache.dtype))  # (B, K, S, H)
    return jnp.where(onehot.any(0)[None, None, :, None], written, cache)


def attention_mask(q_pos: Int[Array, "T"], k_pos: Int[Array, "S"], window: int | None) -> jax.Array:
    """(T, S) boolean: causal, and within `window` tokens (query included) for local layers."""
    diff = q_pos[:, None] - k_pos[None, :]
    mask = diff >= 0
    if window is not None:
        mask &= diff < window
    return mask


class Attention(nnx.Module):
    def __init__(self, config: ModelConfig, layer: int, *, rngs: nnx.Rngs, dtype, param_dtype):
        c = config
        lin = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.q = Linear(c.d_model, c.num_heads * c.head_dim, **lin)
        self.k = Linear(c.d_model, c.num_kv_heads * c.head_dim, **lin)
        self.v = Linear(c.d_model, c.num_kv_heads * c.head_dim, **lin)
        self.o = Linear(c.num_heads * c.head_dim, c.d_model, **lin)
        if c.qk_norm:
            self.q_norm = RMSNorm(c.head_dim, eps=c.norm_eps, param_dtype=param_dtype)
            self.k_norm = RMSNorm(c.head_dim, eps=c.norm_eps, param_dtype=param_dtype)
        is_global = c.is_global(layer)
        self.window = None if is_global else c.window
        self.rope_base = c.rope_global_base if is_global else c.rope_local_base
        self.rope_scale = c.rope_global_scale if is_global else 1.0
        self.config = c

    def __call__(self, x: Float[Array, "B T D"], positions: Int[Array, "T"],
                 cache: tuple[jax.Array, jax.Array] | None, start: Int[Array, ""], tap: Tap | None = None,
                 context: int | None = None):
        """`context`: the positions the whole cache serves (`cache_context`); a layer cache
        shorter than that is a ring, one that holds it all is updated in place."""
        c = self.config
        B, T, _ = x.shape
        q = self.q(x).reshape(B, T, c.num_heads, c.head_dim)  # (B, T, N, H)
        k = self.k(x).reshape(B, T, c.num_kv_heads, c.head_dim)  # (B, T, K, H)
        v = self.v(x).reshape(B, T, c.num_kv_heads, c.head_dim)  # (B, T, K, H)
        if c.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q = rope(q, positions, self.rope_base, self.rope_scale) * jnp.asarray(c.attn_scale, q.dtype)
        k = rope(k, positions, self.rope_base, self.rope_scale)
        k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # (B, K, T, H)
        q = q.reshape(B, T, c.num_kv_heads, c.num_heads // c.num_kv_heads, c.head_dim)  # (B, T, K, G, H)
        if cache is None:
            out = self._attend(q, [(k, v, attention_mask(positions, positions, self.window))])
        elif cache[0].shape[2] < (context or cache[0].shape[2]):  # a ring of the window's positions
            order = start + jnp.arange(T, dtype=jnp.int32)  # chunk positions, padding included
            fresh = positions == order  # False on padding
            ring_pos = ring_positions(start, cache[0].shape[2])
            old = attention_mask(order, ring_pos, self.window) & (ring_pos >= 0)[None, :]
            new = attention_mask(order, order, self.window) & fresh[None, :]
            out = self._attend(q, [(cache[0], cache[1], old), (k, v, new)])
            keep = fresh & (jnp.arange(T) >= jnp.sum(fresh) - cache[0].shape[2])  # the last S real ones
            cache = (ring_write(cache[0], k, start, keep), ring_write(cache[1], v, start, keep))
        else:  # every position: write the chunk at `start`, attend over the cache
            k = jax.lax.dynamic_update_slice(cache[0], k.astype(cache[0].dtype), (0, 0, start, 0))
            v = jax.lax.dynamic_update_slice(cache[1], v.astype(cache[1].dtype), (0, 0, start, 0))
            cache = (k, v)
            out = self._attend(q, [(k, v, attention_mask(positions, jnp.arange(k.shape[2]), self.window))])
        out = out.reshape(B, T, c.num_heads * c.head_dim)  # (B, T, N*H)
        if tap:
            tap("o", out)
        return self.o(out), cache

    def _attend(self, q: Float[Array, "B T K G H"],
                parts: list[tuple[Float[Array, "B K S H"], Float[Array, "B K S H"], Bool[Array, "T S"]]]
                ) -> Float[Array, "B T K G H"]:
        """Softmax attention over the keys of every (keys, values, mask) part jointly."""
        c = self.config
        logits = jnp.concatenate([jnp.einsum("btkgh,bksh->bkgts", q, k.astype(q.dtype), preferred_element_type=jnp.float32)
                                  for k, _, _ in parts], axis=-1)  # (B, K, G, T, S1+S2)
        if c.attn_softcap is not None:
            logits = c.attn_softcap * jnp.tanh(logits / c.attn_softcap)
        mask = jnp.concatenate([m for _, _, m in parts], axis=-1)
        probs = jax.nn.softmax(jnp.where(mask, logits, _MASKED), axis=-1)
        out, at = 0.0, 0
        for _, v, _ in parts:
            p = probs[..., at:at + v.shape[2]].astype(v.dtype)
            out = out + jnp.einsum("bkgts,bksh->btkgh", p, v.astype(p.dtype))  # (B, T, K, G, H)
            at += v.shape[2]
        return out


class MLP(nnx.Module):
    """GeGLU: down(gelu_tanh(gate(x)) * up(x))."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs, dtype, param_dtype):
        lin = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.gate = Linear(config.d_model, config.ffn_dim, **lin)
        self.up = Linear(config.d_model, config.ffn_dim, **lin)
        self.down = Linear(config.ffn_dim, config.d_model, **lin)

    def __call__(self, x: Float[Array, "B T D"], tap: Tap | None = None) -> Float[Array, "B T D"]:
        h = jax.nn.gelu(self.gate(x), approximate=True) * self.up(x)
        if tap:
            tap("down", h)
        return self.down(h)


class Block(nnx.Module):
    """Pre- and post-norm around both attention and MLP (Gemma 2/3)."""

    def __init__(self, config: ModelConfig, layer: int, *, rngs: nnx.Rngs, dtype, param_dtype):
        norm = dict(eps=config.norm_eps, param_dtype=param_dtype)
        self.pre_attn_norm = RMSNorm(config.d_model, **norm)
        self.attn = Attention(config, layer, rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.post_attn_norm = RMSNorm(config.d_model, **norm)
        self.pre_mlp_norm = RMSNorm(config.d_model, **norm)
        self.mlp = MLP(config, rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.post_mlp_norm = RMSNorm(config.d_model, **norm)

    def __call__(self, x, positions, cache, start, tap: Tap | None = None, context: int | None = None):
        if tap:
            tap("resid", x)
        a = self.pre_attn_norm(x)
        if tap:
            tap("qkv", a)
        h, cache = self.attn(a, positions, cache, start, tap, context)
        if tap:
            tap("attn_out", h)
        x = x + self.post_attn_norm(h)
        if tap:
            tap("resid_mid", x)
        m = self.pre_mlp_norm(x)
        if tap:
            tap("gate_up", m)
        f = self.mlp(m, tap)
        if tap:
            tap("mlp_out", f)
        x = x + self.post_mlp_norm(f)
        return x, cache


class Transformer(nnx.Module):
    """`dtype` is the compute dtype (bf16 for training); params are kept in `param_dtype`."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs, dtype=jnp.float32,
                 param_dtype=jnp.float32):
        c = config
        self.config = c
        self.dtype = dtype
        # Tied input embedding / LM head; std 1/sqrt(d) so logits of a unit-RMS state are O(1).
        embed_init = jax.nn.initializers.normal(stddev=c.d_model ** -0.5)
        self.embed = nnx.Param(embed_init(rngs.params(), (c.vocab_size, c.d_model), param_dtype))
        self.layers = nnx.List([Block(c, i, rngs=rngs, dtype=dtype, param_dtype=param_dtype)
                                for i in range(c.num_layers)])
        self.final_norm = RMSNorm(c.d_model, eps=c.norm_eps, param_dtype=param_dtype)

    def embed_tokens(self, tokens: Int[Array, "B T"]) -> Float[Array, "B T D"]:
        """Input embeddings, scaled by sqrt(d) as in Gemma."""
        x = jnp.take(self.embed[...], tokens, axis=0).astype(jnp.float32)
        return (x * math.sqrt(self.config.d_model)).astype(self.dtype)

    def hidden(self, tokens: Int[Array, "B T"], *, cache: KVCache | None = None,
               start: Int[Array, ""] | int = 0, length: Int[Array, ""] | int | None = None,
               remat: str = "none", in_order: bool = False) -> tuple[Float[Array, "B T D"], KVCache | None]:
        """Final-normed hidden states; with `cache`, also the cache updated at [start, start+T).
        `length`: the chunk's real tokens; the rest is padding (see the module doc).
        `remat`: a key of REMAT_POLICIES, what each block keeps for a backward pass.
        `in_order`: each block's weights are read (gathered over a mesh, converted) only once the
        previous block's input exists (`weights_after`), so at most two blocks' are live."""
        start = jnp.asarray(start, jnp.int32)
        positions = start + jnp.arange(tokens.shape[1], dtype=jnp.int32)
        if length is not None:
            positions = jnp.where(jnp.arange(tokens.shape[1]) < length, positions, 0)
        x = self.embed_tokens(tokens)
        new_cache = [] if cache is not None else None
        context = None if cache is None else cache_context(cache)
        if remat not in REMAT_POLICIES or (remat != "none" and cache is not None):
            raise NanoError(f"remat {remat!r}: choose one of {', '.join(REMAT_POLICIES)}, and 'none' with a cache")
        previous = x
        for i, block in enumerate(self.layers):
            wait_for, previous = (previous if in_order else None), x
            if remat != "none":
                x = remat_block(block, x, positions, REMAT_POLICIES[remat], wait_for)
                continue
            if wait_for is not None:
                block = weights_after(block, wait_for)
            x, layer_cache = block(x, positions, None if cache is None else cache[i], start, context=context)
            if cache is not None:
                new_cache.append(layer_cache)
        return self.final_norm(x), new_cache

    def logits(self, h: Float[Array, "B T D"]) -> Float[Array, "B T V"]:
        """Tied LM head (+ Gemma 2's final soft-cap), in float32."""
        out = jnp.einsum("btd,vd->btv", h, self.embed[...].astype(h.dtype),
                         preferred_element_type=jnp.float32)
        cap = self.config.final_softcap
        return out if cap is None else cap * jnp.tanh(out / cap)

    def __call__(self, tokens: Int[Array, "B T"], *, cache: KVCache | None = None,
                 start: Int[Array, ""] | int = 0, length: Int[Array, ""] | int | None = None
                 ) -> tuple[Float[Array, "B T V"], KVCache | None]:
        h, cache = self.hidden(tokens, cache=cache, start=start, length=length)
        return self.logits(h), cache


def remat_block(block: Block, x: Float[Array, "B T D"], positions: Int[Array, "T"],
                policy: Callable[..., bool], wait_for: jax.Array | None = None) -> Float[Array, "B T D"]:
    """`block` over whole rows (no cache) keeping only what `policy` saves for the backward pass,
    which recomputes the rest once the block's output cotangent exists (`_recompute_late`).
    `wait_for`: see `weights_after` (applied inside, so the saved weights are the originals)."""
    graphdef, state = nnx.split(block)

    def run(state, x, positions, wait_for):
        block = nnx.merge(graphdef, state)
        if wait_for is not None:
            block = weights_after(block, wait_for)
        return block(x, positions, None, 0)[0]

    return _recompute_late(jax.checkpoint(run, policy=policy))(state, x, positions, wait_for)


def weights_after(module: nnx.Module, x: jax.Array) -> nnx.Module:
    """`module` with its weights made to depend on `x`, the same values: XLA cannot read them
    before `x` exists. Left free, XLA:CPU gathered and converted every block's weights up front,
    all live at once (nano1 from Gemma 3 4B: 15 GiB of teacher weights, benchmarks/nano1_plan.py)."""
    graphdef, state = nnx.split(module)
    return nnx.merge(graphdef, _plus_zero(state, jax.lax.stop_gradient(x)))


def _recompute_late(f: Callable) -> Callable:
    """`f` whose backward pass reads its saved values through a data dependency on the output
    cotangent. jax.checkpoint's optimization barriers alone do not hold: XLA:CPU removes them
    before CSE, which then merges the recomputation back into the forward pass (nano1: the same
    peak memory with remat as without, benchmarks/nano1_plan.py)."""
    @jax.custom_vjp
    def g(*args):
        return f(*args)

    g.defvjp(lambda *args: jax.vjp(f, *args), lambda vjp, ct: _plus_zero(vjp, ct)(ct))
    return g


def _plus_zero(tree, x: jax.Array):
    """Every float leaf of `tree` + 0 * the first element of `x`: the same values (XLA never folds
    a float x * 0, which is NaN for an infinite x), computed after `x`."""
    zero = 0.0 * x.reshape(-1)[0].astype(jnp.float32)
    return jax.tree.map(lambda r: r + zero.astype(r.dtype) if jnp.issubdtype(r.dtype, jnp.floating) else r, tree)


@nnx.jit
def block_forward(block: Block, x: Float[Array, "B T D"]) -> Float[Array, "B T D"]:
    """One block over whole rows from position 0 without a cache: the layer-by-layer passes of
    calibration and pruning, which hold one block's activations at a time."""
    return block(x, jnp.arange(x.shape[1], dtype=jnp.int32), None, 0)[0]


def embed_rows(model: Transformer, tokens: Int[Array, "B T"]) -> Float[Array, "B T D"]:
    """`model.embed_tokens(tokens)` in float32, from the embedding alone, so it also works on a
    model whose blocks hold shapes only (`nano.checkpoint.open_streamed`)."""
    return _embed_rows(model.embed[...], tokens, model.config, model.dtype)


@functools.partial(jax.jit, static_argnums=(2, 3))
def _embed_rows(embed: jax.Array, tokens: jax.Array, config: ModelConfig, dtype) -> jax.Array:
    view = types.SimpleNamespace(embed=embed, config=config, dtype=dtype)
    return Transformer.embed_tokens(view, tokens).astype(jnp.float32)  # (B, T, D)


def set_compute_dtype(model: Transformer, dtype) -> Transformer:
    """Switch the compute dtype of every module in place (parameters keep theirs)."""
    for _, node in nnx.iter_graph(model):
        if isinstance(node, nnx.Module) and hasattr(node, "dtype"):
            node.dtype = dtype
    return model


def abstract_model(config: ModelConfig, *, param_dtype=jnp.float32) -> Transformer:
    """The model with ShapeDtypeStruct leaves: shapes without allocating (full-size presets)."""
    return nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(0), param_dtype=param_dtype))


def param_count(model: Transformer) -> int:
    return sum(math.prod(x.shape) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
