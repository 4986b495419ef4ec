"""Teacher forward speed: Nano (JAX, float32) next to llama.cpp on the same machine, same run.

    .venv/bin/python -m benchmarks.teacher_forward [--windows 6] [--threads 2]

Two workloads over the same held-out windows of 512 tokens:
  score    logits at every position (what perplexity and distillation need)
  prefill  logits at the last position only (prompt processing)
llama.cpp runs the F32 re-export of our weights (same math) and the original Q4_K_M file.
Reports medians and ratios, never a bare time alone; machine noise from /proc/pressure/cpu.
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def cpu_pressure() -> str:
    try:
        return Path("/proc/pressure/cpu").read_text().splitlines()[0]
    except OSError:
        return "n/a"


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
    ap.add_argument("--windows", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    from nano.checkpoint import flat_params, load_checkpoint, load_tokenizer
    from nano.convert import assemble_packaged, resolve_teacher
    from nano.data.prepare import prepare_default
    from nano.data.shards import TokenSplit, eval_windows
    from nano.gguf_io import write_gguf
    from nano.llamacpp import LlamaCpp
    from nano.paths import cache_dir

    ckpt = resolve_teacher("gemma3-270m")
    model, tok = load_checkpoint(ckpt), load_tokenizer(ckpt)
    split = TokenSplit.open(prepare_default(tok), "heldout")
    windows = eval_windows(split.tokens, window=512, bos_id=tok.bos_id, max_windows=args.windows)
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

    pressure_before = cpu_pressure()
    rows = {}
    rows["nano jax f32"] = {
        "score": median_rate(lambda w: score(model, jnp.asarray(w[None])).block_until_ready(), windows, args.repeats),
        "prefill": median_rate(lambda w: prefill(model, jnp.asarray(w[None])).block_until_ready(), windows, args.repeats),
    }
    for name, path in (("llama.cpp f32", f32), ("llama.cpp q4_k_m", assemble_packaged("gemma3-270m"))):
        scorer = LlamaCpp(path, window=512, threads=args.threads)
        rows[name] = {"score": median_rate(scorer.logits, windows, args.repeats)}
        del scorer
        prompt = LlamaCpp(path, window=512, threads=args.threads, logits_all=False)
        rows[name]["prefill"] = median_rate(prompt.eval_only, windows, args.repeats)
        del prompt

    base = rows["nano jax f32"]
    print(f"Gemma 3 270M forward, {len(windows)} held-out windows x 512 tokens, {args.repeats} repeats, "
          f"jax {jax.__version__} on {jax.devices()[0].platform}; cpu pressure before: {pressure_before}; after: {cpu_pressure()}")
    print(f"{'engine':<20}{'score tok/s':>14}{'prefill tok/s':>15}{'nano/this score':>17}{'nano/this prefill':>19}")
    for name, r in rows.items():
        print(f"{name:<20}{r['score']:>14.0f}{r['prefill']:>15.0f}{base['score'] / r['score']:>17.2f}{base['prefill'] / r['prefill']:>19.2f}")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "windows": len(windows), "pressure": cpu_pressure()}, indent=2))


if __name__ == "__main__":
    main()
