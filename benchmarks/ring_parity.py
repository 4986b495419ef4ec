"""The ring KV cache on the real teacher: Gemma 3 270M decodes greedily from a held-out prompt to
8,192 positions with the ring (local layers keep their 512-position window) and with full
caches; the tokens must be the same at every position.

    .venv/bin/python -m benchmarks.ring_parity [--positions 8192] [--prompt 64]
        [--json benchmarks/results/ring_parity.json]
"""

import argparse
import time
from pathlib import Path

from benchmarks.harness.core import cpu_pressure
from benchmarks.workspace import result_path, write_result


def greedy(model, prompt, positions: int, *, ring: bool) -> list[int]:
    """Greedy tokens after `prompt` up to `positions` in all, one jitted decode step at a time."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from nano.model import init_cache

    @nnx.jit
    def step(m, token, cache, pos):
        logits, cache = m(token[None, None], cache=cache, start=pos)
        return jnp.argmax(logits[0, -1]).astype(jnp.int32), cache

    cache = init_cache(model.config, length=positions, ring=ring)
    logits, cache = nnx.jit(lambda m, t, c: m(t, cache=c, start=0))(model, jnp.asarray([prompt]), cache)
    token, out = jnp.argmax(logits[0, -1]).astype(jnp.int32), []
    for pos in range(len(prompt), positions):
        out.append(int(token))
        token, cache = step(model, token, cache, jnp.int32(pos))
    jax.block_until_ready(token)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--positions", type=int, default=8192)
    ap.add_argument("--prompt", type=int, default=64, help="prompt tokens taken from the held-out text")
    ap.add_argument("--json", type=Path, default=result_path("ring_parity"))
    args = ap.parse_args()

    from benchmarks.heldout import teacher_heldout
    from nano.checkpoint import load_checkpoint

    held = teacher_heldout(1)
    model = load_checkpoint(held.teacher)
    if model.config.max_seq_len < args.positions:
        raise SystemExit(f"error: --positions {args.positions} exceeds the teacher's context {model.config.max_seq_len}")
    prompt = [int(t) for t in held.windows[0][: args.prompt]]
    pressure = cpu_pressure()
    runs = {}
    for ring in (True, False):
        t = time.perf_counter()
        runs["ring" if ring else "full"] = (greedy(model, prompt, args.positions, ring=ring), time.perf_counter() - t)
        print(f"{'ring' if ring else 'full'}: {runs['ring' if ring else 'full'][1]:.0f} s", flush=True)
    (ring, ring_s), (full, full_s) = runs["ring"], runs["full"]
    first_diff = next((i for i, (a, b) in enumerate(zip(ring, full)) if a != b), None)
    out = {"model": model.config.name, "prompt_tokens": len(prompt), "positions": args.positions,
           "generated": len(ring), "identical": ring == full,
           "first_difference_at": None if first_diff is None else len(prompt) + first_diff,
           "distinct_tokens_generated": len(set(full)), "seconds": {"ring": ring_s, "full": full_s}}
    print(out)
    write_result(args.json, out, pressure_before=pressure)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
