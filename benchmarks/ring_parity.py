"""The ring KV cache on the real teacher: Gemma 3 270M reads 8,192 held-out tokens through its
KV cache, in chunks of 61 tokens and of 1 (prefill and decode steps, so the 512-slot rings of
its local layers wrap at every offset), once with the ring and once with full caches. The
greedy pick (argmax) must be the same at every position; the largest logit difference is kept.

    .venv/bin/python -m benchmarks.ring_parity [--positions 8192]
        [--json benchmarks/results/ring_parity.json]
"""

import argparse
import time
from pathlib import Path

import numpy as np

from benchmarks.harness.core import cpu_pressure
from benchmarks.workspace import result_path, write_result


def picks(model, tokens: np.ndarray, *, ring: bool) -> tuple[np.ndarray, np.ndarray]:
    """(argmax, logits) at every position of `tokens` (1, N), fed through the cache in chunks."""
    import jax.numpy as jnp
    from flax import nnx

    from nano.model import init_cache

    step = nnx.jit(lambda m, chunk, cache, start: m(chunk, cache=cache, start=start))
    cache = init_cache(model.config, length=tokens.shape[1], ring=ring)
    out, logits_all, start = [], [], 0
    while start < tokens.shape[1]:
        n = min(61 if len(out) % 2 == 0 else 1, tokens.shape[1] - start)
        logits, cache = step(model, jnp.asarray(tokens[:, start:start + n]), cache, jnp.int32(start))
        logits = np.asarray(logits[0])
        out.append(logits.argmax(-1))
        logits_all.append(logits.max(-1))  # the winning logit, for the difference between runs
        start += n
    return np.concatenate(out), np.concatenate(logits_all)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--positions", type=int, default=8192)
    ap.add_argument("--json", type=Path, default=result_path("ring_parity"))
    args = ap.parse_args()

    from benchmarks.heldout import teacher_heldout
    from nano.checkpoint import load_checkpoint
    from nano.data.shards import TokenSplit

    held = teacher_heldout(1)
    model = load_checkpoint(held.teacher)
    text = TokenSplit.open(held.data, "heldout").tokens
    tokens = np.concatenate([[held.tokenizer.bos_id], text[: args.positions - 1]]).astype(np.int32)[None]
    pressure = cpu_pressure()
    runs = {}
    for ring in (True, False):
        t = time.perf_counter()
        runs[ring] = (*picks(model, tokens, ring=ring), time.perf_counter() - t)
        print(f"{'ring' if ring else 'full'}: {runs[ring][2]:.0f} s", flush=True)
    (ring_ids, ring_top, ring_s), (full_ids, full_top, full_s) = runs[True], runs[False]
    differ = np.flatnonzero(ring_ids != full_ids)
    out = {"model": model.config.name, "window": model.config.window, "positions": int(tokens.shape[1]),
           "identical_picks": bool(differ.size == 0), "positions_that_differ": differ.tolist()[:20],
           "max_abs_top_logit_difference": float(np.abs(ring_top - full_top).max()),
           "distinct_picks": int(len(set(full_ids.tolist()))), "seconds": {"ring": ring_s, "full": full_s}}
    print(out)
    write_result(args.json, out, pressure_before=pressure)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
