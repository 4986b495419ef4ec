"""Which blocks to remove: greedily, the one whose skipping raises the calibration NLL least,
re-scored after each removal (a block's worth depends on which others remain). The last global
layer is never a candidate, so the model keeps attention beyond its window."""

import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Array, Float, Int

from nano.eval import chunked_nll
from nano.model import Transformer, block_forward, embed_rows


@nnx.jit
def _nll(model: Transformer, x: Float[Array, "B T D"], tokens: Int[Array, "B T"]) -> Float[Array, ""]:
    """Mean NLL of tokens[:, 1:] from the residual stream `x` after the last block."""
    return jnp.mean(chunked_nll(model, model.final_norm(x)[:, :-1], tokens[:, 1:]))


def calibration_nll(model: Transformer, tokens: Int[Array, "N T"], layers: list[int]) -> float:
    """Mean NLL of the calibration rows through the blocks `layers` only, in order."""
    tokens = jnp.asarray(tokens)
    x = embed_rows(model, tokens)
    for i in layers:
        x = block_forward(model.layers[i], x)
    return float(_nll(model, x, tokens))


def greedy_removal(model: Transformer, tokens: Int[Array, "N T"], remove: int, *,
                   progress=None) -> tuple[list[int], list[dict[int, float]]]:
    """(blocks removed, in order; per round, the calibration NLL with each candidate skipped)."""
    c = model.config
    tokens = jnp.asarray(tokens)
    kept = list(range(c.num_layers))
    removed, rounds = [], []
    total = sum(c.num_layers - r for r in range(remove))
    done = 0
    for _ in range(remove):
        inputs = [embed_rows(model, tokens)]  # inputs[p]: input of kept[p]
        for i in kept[:-1]:
            inputs.append(block_forward(model.layers[i], inputs[-1]))
        globals_left = [i for i in kept if c.is_global(i)]
        scores: dict[int, float] = {}
        for p, i in enumerate(kept):
            done += 1
            if globals_left == [i]:
                continue
            x = inputs[p]
            for j in kept[p + 1:]:
                x = block_forward(model.layers[j], x)
            scores[i] = float(_nll(model, x, tokens))
            if progress:
                progress(done, total)
        best = min(scores, key=scores.get)
        kept.remove(best)
        removed.append(best)
        rounds.append(scores)
    return removed, rounds


def skip_scores(model: Transformer, tokens: Int[Array, "N T"]) -> dict[int, float]:
    """Calibration NLL with each single block skipped (the first greedy round)."""
    return greedy_removal(model, tokens, 1)[1][0]


def nll_of(model: Transformer, tokens: np.ndarray) -> float:
    return calibration_nll(model, tokens, list(range(model.config.num_layers)))
