"""Does distillation beat plain training at an equal token budget? One run, same student,
same data order, same seed:

  (a) cross-entropy on the Python-docs text alone
  (b) forward KL to Gemma 3 270M's full-vocabulary probabilities (online teacher)

then held-out perplexity of both on the SQLite docs, plus training throughput as tokens/s and
model-FLOPs utilisation against this machine's matmul peak measured in the same run.

    .venv/bin/python -m benchmarks.distill_vs_ce [--student student_20m] [--tokens 60000]
"""

import argparse
import dataclasses
import shutil
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from benchmarks.harness.core import cpu_pressure
from benchmarks.heldout import teacher_heldout
from benchmarks.workspace import result_path, work_dir, write_result
from distill.train import TrainConfig, start_run
from nano.checkpoint import load_checkpoint
from nano.config import get_preset
from nano.eval import evaluate


def matmul_peak(dtype, n: int = 2048, repeats: int = 5) -> float:
    """Median GFLOP/s of an n^3 matmul in XLA on this machine, now."""
    a = jnp.ones((n, n), dtype)
    f = jax.jit(lambda x, y: x @ y)
    f(a, a).block_until_ready()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        f(a, a).block_until_ready()
        times.append(time.perf_counter() - t)
    return 2 * n**3 / statistics.median(times) / 1e9


def matmul_params(name: str) -> int:
    """Weights that take part in matmuls per token (every kernel + the tied LM head)."""
    c = get_preset(name)
    per_layer = c.d_model * (c.num_heads + 2 * c.num_kv_heads) * c.head_dim + c.num_heads * c.head_dim * c.d_model \
        + 3 * c.d_model * c.ffn_dim
    return c.num_layers * per_layer + c.vocab_size * c.d_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--student", default="student_20m")
    ap.add_argument("--tokens", type=int, default=60_000)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--eval-windows", type=int, default=40)
    ap.add_argument("--out", type=Path, default=None, help="work folder (default: $NANO_CACHE/bench/distill)")
    ap.add_argument("--json", type=Path, default=result_path("distill_vs_ce"))
    args = ap.parse_args()
    args.out = args.out or work_dir("distill")
    pressure = cpu_pressure()

    held = teacher_heldout(args.eval_windows)
    data, windows = held.data, held.windows
    base = TrainConfig(student=args.student, teacher="gemma3-270m", data=str(data), tokens=args.tokens,
                       seq_len=args.seq_len, batch_size=args.batch_size, lr=args.lr, warmup_steps=10,
                       checkpoint_every=10**9, eval_every=10**9, eval_windows=0)
    peak = {"float32": matmul_peak(jnp.float32), "bfloat16": matmul_peak(jnp.bfloat16)}
    results = {}
    for name, cfg in (("cross-entropy", dataclasses.replace(base, teacher=None)),
                      ("distill forward-KL", base)):
        out = args.out / name.split()[0]
        shutil.rmtree(out, ignore_errors=True)
        run = start_run(cfg, out)
        t = time.perf_counter()
        last = run.train()
        wall = time.perf_counter() - t
        student = load_checkpoint(out / "student")
        ppl = evaluate(student, windows).perplexity
        flops_per_token = 6 * matmul_params(cfg.student) + (2 * matmul_params("gemma3_270m") if cfg.teacher else 0)
        tps = last.get("tokens_per_s", cfg.steps * cfg.batch_size * cfg.seq_len / wall)
        results[name] = {"heldout_ppl": ppl, "train_loss": last["loss"], "tokens_per_s": tps,
                         "mfu_vs_bf16_peak": tps * flops_per_token / (peak["bfloat16"] * 1e9),
                         "mfu_vs_f32_peak": tps * flops_per_token / (peak["float32"] * 1e9),
                         "steps": cfg.steps, "wall_s": wall}
    print(f"student {args.student}, {args.tokens:,} training tokens each ({base.steps} steps x {args.batch_size} x {args.seq_len}), "
          f"held-out: {len(windows)} SQLite windows x 512; matmul peak f32 {peak['float32']:.0f} / bf16 {peak['bfloat16']:.0f} GFLOP/s")
    print(f"{'run':<22}{'held-out ppl':>14}{'tokens/s':>10}{'MFU(bf16)':>11}{'MFU(f32)':>10}")
    for name, r in results.items():
        print(f"{name:<22}{r['heldout_ppl']:>14.2f}{r['tokens_per_s']:>10.0f}{r['mfu_vs_bf16_peak']:>11.1%}{r['mfu_vs_f32_peak']:>10.1%}")
    ratio = results["cross-entropy"]["heldout_ppl"] / results["distill forward-KL"]["heldout_ppl"]
    print(f"distillation {'wins' if ratio > 1 else 'LOSES'}: CE ppl / distill ppl = {ratio:.3f}")
    write_result(args.json, {"args": vars(args), "peak_gflops": peak, "results": results}, pressure_before=pressure)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
