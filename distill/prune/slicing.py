"""Cut a model's named arrays down to the kept units (weights are (in, out), see nano/model.py).

- blocks: keep `layers` in order, renumbered; each keeps its local/global type (`global_layers`).
- FFN neurons: gate/up columns, down rows; query heads: q columns, o rows (per KV group).
- embedding channels: the tied embedding's columns, every d_model norm gain, the rows of
  q/k/v/gate/up and the columns of o/down. The input embedding is multiplied by sqrt(d), so
  with d' channels the embedding is scaled by sqrt(d/d') (inputs unchanged) and the final norm
  gain by sqrt(d'/d) (logits unchanged).
Optional training-free corrections: a least-squares refit of the projection reading the pruned
units (o, down) on calibration second moments, and norm gains rescaled by the share of the input
energy the kept channels carry (RMS over d' channels instead of d).
"""

import dataclasses
import math
import re

import numpy as np

from nano.config import ModelConfig

D_ROWS = ("attn.q.kernel", "attn.k.kernel", "attn.v.kernel", "mlp.gate.kernel", "mlp.up.kernel")
D_COLS = ("attn.o.kernel", "mlp.down.kernel")
NORMS = ("pre_attn_norm", "post_attn_norm", "pre_mlp_norm", "post_mlp_norm")


def drop_blocks(flat: dict[str, np.ndarray], config: ModelConfig, keep: list[int]
                ) -> tuple[dict[str, np.ndarray], ModelConfig]:
    """Blocks `keep` (sorted source indices) renumbered 0..len-1, each keeping its type."""
    out = {}
    for name, arr in flat.items():
        m = re.match(r"layers\.(\d+)\.(.*)", name)
        if m is None:
            out[name] = arr
        elif int(m.group(1)) in keep:
            out[f"layers.{keep.index(int(m.group(1)))}.{m.group(2)}"] = arr
    glob = tuple(j for j, i in enumerate(keep) if config.is_global(i))
    new = dataclasses.replace(config, num_layers=len(keep), global_layers=None)
    if any(new.is_global(j) != (j in glob) for j in range(len(keep))):
        new = dataclasses.replace(new, global_layers=glob)
    return out, new


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest scores, in ascending index order (ties: the lower index)."""
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    return np.sort(order[:k])


def top_heads(scores: np.ndarray, k: int, kv_heads: int) -> np.ndarray:
    """k query heads, k/kv_heads of each KV group (heads n = g*G .. g*G+G-1 share KV head g)."""
    g = len(scores) // kv_heads
    return np.concatenate([grp * g + top_k(scores[grp * g:(grp + 1) * g], k // kv_heads)
                           for grp in range(kv_heads)])


def refit(w: np.ndarray, gram: np.ndarray, keep: np.ndarray, *, damp: float = 1e-6) -> np.ndarray:
    """Rows of `w` (in, out) for the kept inputs that best reproduce x @ w from x[:, keep] on
    calibration data with second moments `gram` (in, in): (G_kk + damp)^-1 G_k: w."""
    g = np.asarray(gram, np.float64)
    gkk = g[np.ix_(keep, keep)]
    gkk = gkk + damp * max(float(np.mean(np.diag(gkk))), 1e-30) * np.eye(len(keep))
    return np.linalg.solve(gkk, g[keep] @ np.asarray(w, np.float64)).astype(w.dtype)


def slice_ffn(flat, layer: int, keep: np.ndarray, *, gram: np.ndarray | None = None) -> None:
    p = f"layers.{layer}.mlp."
    down = flat[p + "down.kernel"]
    flat[p + "gate.kernel"] = flat[p + "gate.kernel"][:, keep]
    flat[p + "up.kernel"] = flat[p + "up.kernel"][:, keep]
    flat[p + "down.kernel"] = down[keep] if gram is None else refit(down, gram, keep)


def slice_heads(flat, layer: int, keep: np.ndarray, head_dim: int, *, gram: np.ndarray | None = None) -> None:
    p = f"layers.{layer}.attn."
    cols = (keep[:, None] * head_dim + np.arange(head_dim)[None, :]).reshape(-1)  # (k*H,)
    o = flat[p + "o.kernel"]
    flat[p + "q.kernel"] = flat[p + "q.kernel"][:, cols]
    flat[p + "o.kernel"] = o[cols] if gram is None else refit(o, gram, cols)


def slice_channels(flat, config: ModelConfig, keep: np.ndarray, *,
                   norm_scale: dict[str, float] | None = None) -> None:
    """Keep embedding channels `keep`; `norm_scale` multiplies named norm gains (corrections)."""
    d, d2 = config.d_model, len(keep)
    norm_scale = norm_scale or {}
    flat["embed"] = flat["embed"][:, keep] * np.asarray(math.sqrt(d / d2), flat["embed"].dtype)
    for name in list(flat):
        if name.endswith(D_ROWS):
            flat[name] = flat[name][keep]
        elif name.endswith(D_COLS):
            flat[name] = flat[name][:, keep]
        elif name.endswith(tuple(n + ".scale" for n in NORMS)) or name == "final_norm.scale":
            s = norm_scale.get(name, 1.0) * (math.sqrt(d2 / d) if name == "final_norm.scale" else 1.0)
            flat[name] = flat[name][keep] * np.asarray(s, flat[name].dtype)


def energy_share_scale(energy: np.ndarray, keep: np.ndarray) -> float:
    """Gain factor so RMS over the kept channels matches RMS over all: sqrt(d/d' * kept share)."""
    e = np.asarray(energy, np.float64)
    return math.sqrt(len(e) / len(keep) * e[keep].sum() / max(e.sum(), 1e-30))
