"""The imported teacher next to llama.cpp, same machine, same run: held-out perplexity and
forward speed.

    .venv/bin/python -m benchmarks.teacher [--windows 40] [--threads 2] [--json out.json]

Over the same SQLite held-out windows of 512 tokens (BOS + 511 scored tokens):
  perplexity  every token scored (Nano: `nano eval`'s chunked scorer; llama.cpp: its logits)
  score       tokens/s with logits at every position (what perplexity and distillation need)
  prefill     tokens/s with logits at the last position only (prompt processing), 4 windows
llama.cpp runs the F32 re-export of our weights (same math) and the original Q4_K_M file.
Speeds are medians, printed as ratios to Nano; CPU pressure is printed before and after.
"""

import argparse
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx

from benchmarks.harness.core import cpu_pressure
from benchmarks.workspace import result_path, write_result


def median_rate(fn, windows, repeats: int) -> float:
    """Median tokens/s of `fn(window)` over windows x repeats (after one warm-up call)."""
    fn(windows[0])
    rates = []
    for _ in range(repeats):
        for w in windows:
            t = time.perf_counter()
            fn(w)
            rates.append(len(w) / (time.perf_counter() - t))
    return statistics.median(rates)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--windows", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", type=Path, default=result_path("teacher"))
    args = ap.parse_args()

    from benchmarks.harness.llamacpp import LlamaCpp
    from benchmarks.heldout import teacher_heldout
    from nano.checkpoint import flat_params, load_checkpoint
    from nano.convert import assemble_packaged
    from nano.eval import evaluate
    from nano.gguf_io import write_gguf
    from nano.paths import cache_dir

    held = teacher_heldout(args.windows)
    ckpt, tok, windows = held.teacher, held.tokenizer, held.windows
    model = load_checkpoint(ckpt)
    f32 = cache_dir() / "gguf" / "gemma3-270m-f32.gguf"
    if not f32.is_file():
        write_gguf(f32, flat_params(model), model.config, tok)

    @nnx.jit
    def score(m, t):
        return m(t)[0]

    @nnx.jit
    def prefill(m, t):
        h, _ = m.hidden(t)
        return m.logits(h[:, -1:])

    few = windows[:4]
    pressure_before = cpu_pressure()
    rows = {}
    result = evaluate(model, windows)
    rows["nano jax f32"] = {
        "perplexity": result.perplexity,
        "score": median_rate(lambda w: score(model, jnp.asarray(w[None])).block_until_ready(), few, args.repeats),
        "prefill": median_rate(lambda w: prefill(model, jnp.asarray(w[None])).block_until_ready(), few, args.repeats),
    }
    for name, path in (("llama.cpp f32", f32), ("llama.cpp q4_k_m", assemble_packaged("gemma3-270m"))):
        scorer = LlamaCpp(path, window=512, threads=args.threads)
        rows[name] = {"perplexity": scorer.perplexity(windows),
                      "score": median_rate(scorer.logits, few, args.repeats)}
        del scorer
        prompt = LlamaCpp(path, window=512, threads=args.threads, logits_all=False)
        rows[name]["prefill"] = median_rate(prompt.eval_only, few, args.repeats)
        del prompt

    base = rows["nano jax f32"]
    print(f"Gemma 3 270M, {len(windows)} SQLite held-out windows x 512 tokens ({len(windows) * 511:,} scored), "
          f"speeds: median of {len(few)} windows x {args.repeats}; jax {jax.__version__} on {jax.devices()[0].platform}")
    print(f"cpu pressure before: {pressure_before}; after: {cpu_pressure()}")
    print(f"{'engine':<20}{'perplexity':>11}{'nano ppl/this':>15}{'score tok/s':>13}{'prefill tok/s':>15}"
          f"{'nano/this score':>17}{'nano/this prefill':>19}")
    for name, r in rows.items():
        print(f"{name:<20}{r['perplexity']:>11.3f}{base['perplexity'] / r['perplexity']:>15.4f}{r['score']:>13.0f}"
              f"{r['prefill']:>15.0f}{base['score'] / r['score']:>17.2f}{base['prefill'] / r['prefill']:>19.2f}")
    write_result(args.json, {"rows": rows, "windows": len(windows)}, pressure_before=pressure_before)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
