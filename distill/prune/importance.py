"""Per-unit statistics of a model on calibration rows, from the blocks' taps (nano/model.py).

Per block (all means over calibration tokens):
- `norm_in[name]` (D,): E[x_c^2] of each RMSNorm's input (the energy pruned channels carry);
- `norm_out` (D,): E[y_c^2] summed over the block's pre-norm outputs (what q/k/v/gate/up read);
- `heads` (N,): E[||o-projection of head n||^2], the head's contribution to the block output;
- `ffn` (F,): E[h_i^2] * ||down row i||^2, neuron i's contribution to the MLP output;
- `o_gram` (N*H, N*H), `down_gram` (F, F): second moments of the o and down inputs (refits).
Plus the final norm's input energy and output energy (the LM head reads the latter).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Array, Float, Int

from nano.model import Block, Transformer, embed_rows

NORM_SITES = {"resid": "pre_attn_norm", "attn_out": "post_attn_norm", "resid_mid": "pre_mlp_norm",
              "mlp_out": "post_mlp_norm"}


def _energy(x: jax.Array) -> jax.Array:
    x = x.astype(jnp.float32)
    return jnp.mean(x.reshape(-1, x.shape[-1]) ** 2, axis=0)  # (C,)


def _gram(x: jax.Array) -> jax.Array:
    x = x.reshape(-1, x.shape[-1]).astype(jnp.float32)  # (tokens, C)
    return jnp.einsum("ni,nj->ij", x, x, preferred_element_type=jnp.float32) / x.shape[0]


@nnx.jit
def block_stats(block: Block, x: Float[Array, "B T D"]) -> tuple[Float[Array, "B T D"], dict]:
    """The block's output and its statistics (means over the B*T tokens of `x`)."""
    taps: dict[str, jax.Array] = {}
    y, _ = block(x, jnp.arange(x.shape[1], dtype=jnp.int32), None, 0, tap=taps.__setitem__)
    c = block.attn.config
    out = taps["o"].astype(jnp.float32)  # (B, T, N*H)
    wo = block.attn.o.kernel[...].astype(jnp.float32).reshape(c.num_heads, c.head_dim, -1)  # (N, H, D)
    per_head = jnp.einsum("btnh,nhd->btnd", out.reshape(*out.shape[:2], c.num_heads, c.head_dim), wo)
    down_w = block.mlp.down.kernel[...].astype(jnp.float32)  # (F, D)
    stats = {
        "norm_in": {name: _energy(taps[site]) for site, name in NORM_SITES.items()},
        "norm_out": _energy(taps["qkv"]) + _energy(taps["gate_up"]),
        "heads": jnp.mean(jnp.sum(per_head ** 2, axis=-1).reshape(-1, c.num_heads), axis=0),  # (N,)
        "ffn": _energy(taps["down"]) * jnp.sum(down_w ** 2, axis=-1),  # (F,)
        "o_gram": _gram(out),
        "down_gram": _gram(taps["down"]),
    }
    return y, stats


@nnx.jit
def _final(model: Transformer, x: Float[Array, "B T D"]) -> dict:
    return {"norm_in": _energy(x), "norm_out": _energy(model.final_norm(x))}


@dataclasses.dataclass
class Importance:
    """Statistics of every block (`layers[i]`) and of the final norm (`final`), numpy float64."""

    layers: list[dict]
    final: dict

    def channels(self) -> np.ndarray:
        """(D,) embedding-channel importance: norm-output energy summed over every norm that feeds
        a projection (pre-attention, pre-MLP, final/LM head)."""
        return sum(s["norm_out"] for s in self.layers) + self.final["norm_out"]


def _mean(acc, new, w: float):
    return jax.tree.map(lambda a, b: a + w * np.asarray(b, np.float64), acc, new) if acc is not None else \
        jax.tree.map(lambda b: w * np.asarray(b, np.float64), new)


def measure(model: Transformer, tokens: Int[Array, "N T"], *, batch: int = 4, progress=None) -> Importance:
    """One forward pass over `tokens` (N rows) in batches, every block's statistics averaged."""
    n = len(tokens)
    layers: list = [None] * len(model.layers)
    final = None
    for done, i in enumerate(range(0, n, batch)):
        rows = jnp.asarray(tokens[i:i + batch])
        w = len(rows) / n
        x = embed_rows(model, rows)
        for j, block in enumerate(model.layers):
            x, st = block_stats(block, x)
            layers[j] = _mean(layers[j], st, w)
        final = _mean(final, _final(model, x), w)
        if progress:
            progress(min(i + batch, n), n)
    return Importance(layers=layers, final=final)
