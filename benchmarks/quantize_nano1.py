"""Quantize a full-size nano1 (1.79B parameters, random weights stored in bfloat16) with
`nano quantize` and report wall time and peak memory: the 24 GiB machine limit check.

    .venv/bin/python -m benchmarks.quantize_nano1 [--methods gptq] [--calib-rows 16]

GPTQ runs on every block (all 21). Recorded per method: wall and CPU seconds (user + system of
the child: robust to other load, wall is not), peak RSS, seconds per block (the pipeline's
quantize time / blocks, and its GPTQ-only part: the sum of the per-tensor solve seconds), and
the CPU pressure and load average before and after, so a noisy machine shows.

The random checkpoint (with the Gemma 3 tokenizer, which nano1 shares) is written once to the
Nano cache; each method then runs as a separate `nano quantize` process so its peak resident
memory (ru_maxrss of the child) is its own. Perplexity is meaningless for random weights and
is skipped (--eval-windows 0).
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def make_checkpoint(path: Path) -> None:
    import jax.numpy as jnp
    from flax import nnx

    from nano.checkpoint import load_tokenizer, save_checkpoint
    from nano.config import get_preset
    from nano.convert import resolve_teacher
    from nano.model import Transformer

    model = Transformer(get_preset("nano1"), rngs=nnx.Rngs(0), param_dtype=jnp.bfloat16)
    save_checkpoint(path, model, tokenizer=load_tokenizer(resolve_teacher("gemma3-270m")),
                    meta={"note": "random weights (benchmarks/quantize_nano1.py)"})


def partial_run(ckpt: Path, blocks: int, calib_rows: int) -> dict:
    """`nano quantize`'s pipeline in this process on the first `blocks` blocks of the streamed
    checkpoint (GPTQ int4 g32, int8 embedding): the fixed costs and the seconds of each block, for
    projecting a full run when one does not fit (the model is cut to `blocks` blocks; nothing is
    written)."""
    import resource

    import numpy as np
    from flax import nnx

    from nano.checkpoint import load_tokenizer, open_streamed
    from nano.data.prepare import prepare_default
    from quantize.pipeline import quantize_model
    from quantize.recipe import Recipe
    from quantize.run import calibration_tokens

    t0 = time.perf_counter()
    tok = load_tokenizer(ckpt)
    tokens, _ = calibration_tokens(prepare_default(tok), tok, rows=calib_rows, length=512)
    model, loader = open_streamed(ckpt, param_dtype=np.float32)
    model.layers = nnx.List(list(model.layers)[:blocks])
    stamps = []
    t1 = time.perf_counter()
    result = quantize_model(model, Recipe(), tokens, blocks=loader,
                            progress=lambda stage, done, total: stamps.append(time.perf_counter()))
    per_block = np.diff([t1, *stamps])
    return {"blocks": blocks, "setup_seconds": round(t1 - t0, 1), "quantize_seconds": round(result.seconds, 1),
            "block_seconds": [round(x, 1) for x in per_block],
            "calibration_forward_seconds": round(result.forward_seconds, 1),
            "tensor_seconds": {n: r["seconds"] for n, r in result.report.items()},
            "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
            "cpu_seconds": round(sum(resource.getrusage(resource.RUSAGE_SELF)[:2]), 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", default="gptq")
    ap.add_argument("--calib-rows", type=int, default=16)
    ap.add_argument("--blocks", type=int, default=0, help="GPTQ only the first N blocks in this process (projection)")
    ap.add_argument("--json", type=Path, default=None, help="default: benchmarks/results/quantize_nano1.json")
    args = ap.parse_args()

    from benchmarks.harness.core import cpu_pressure
    from benchmarks.workspace import result_path, work_dir, write_result

    pressure_before, load_before = cpu_pressure(), os.getloadavg()[0]

    work = work_dir("nano1")
    ckpt = work / "nano1-random-bf16"
    if not (ckpt / "config.json").is_file():
        subprocess.run([sys.executable, "-c", "from benchmarks.quantize_nano1 import make_checkpoint as m; "
                        f"from pathlib import Path; m(Path({str(ckpt)!r}))"], check=True)
    if args.blocks:
        r = partial_run(ckpt, args.blocks, args.calib_rows)
        print(json.dumps(r, indent=1), flush=True)
        path = write_result(args.json or result_path(f"quantize_nano1-{args.blocks}blocks"),
                            {"calib_rows": args.calib_rows, "load_avg_before": load_before,
                             "load_avg_after": os.getloadavg()[0], "partial": r}, pressure_before=pressure_before)
        print(f"wrote {path}")
        return
    nano = Path(sys.executable).with_name("nano")
    results = {}
    for method in args.methods.split(","):
        out = work / f"nano1-{method}"
        t0 = time.perf_counter()
        log = work / f"nano1-{method}.log"
        with open(log, "w") as f:
            proc = subprocess.Popen([str(nano), "quantize", str(ckpt), "--out", str(out), "--method", method,
                                     "--calib-rows", str(args.calib_rows), "--eval-windows", "0", "--overwrite"],
                                    stdout=f, stderr=subprocess.STDOUT)
            _, status, usage = os.wait4(proc.pid, 0)  # this child's own peak RSS
        wall = time.perf_counter() - t0
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"nano quantize --method {method} failed; see {log}")
        peak = usage.ru_maxrss  # KiB
        manifest = json.loads((out / "quantization.json").read_text())
        t = manifest["totals"]
        n_blocks = json.loads((ckpt / "config.json").read_text())["num_layers"]
        tensors = manifest["tensors"]
        solve = sum(e.get("seconds") or 0 for n, e in tensors.items() if n.startswith("layers."))
        results[method] = {"wall_seconds": round(wall, 1), "quantize_seconds": t["quantize_seconds"],
                           "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 1),
                           "blocks": n_blocks, "seconds_per_block": round(t["quantize_seconds"] / n_blocks, 2),
                           "solve_seconds_per_block": round(solve / n_blocks, 2),
                           "load_avg_after": os.getloadavg()[0], "cpu_pressure_after": cpu_pressure(),
                           "calibration_forward_seconds": t.get("calibration_forward_seconds"),
                           "peak_rss_gib": round(peak / 2**20, 2),
                           "bytes": t["bytes"], "bits_per_weight": t["bits_per_weight"],
                           "linear_bits_per_weight": t["linear_bits_per_weight"],
                           "calibration_tokens": (manifest.get("calibration") or {}).get("tokens")}
        print(method, json.dumps(results[method]), flush=True)
    src = sum(p.stat().st_size for p in ckpt.iterdir())
    print(f"\nnano1 random bf16 checkpoint: {src / 2**30:.2f} GiB on disk")
    print(f"{'method':<8}{'wall s':>9}{'peak RSS GiB':>14}{'output GiB':>12}{'bits/weight':>13}{'calib tokens':>14}")
    for m, r in results.items():
        print(f"{m:<8}{r['wall_seconds']:>9.0f}{r['peak_rss_gib']:>14.2f}{r['bytes'] / 2**30:>12.2f}"
              f"{r['bits_per_weight']:>13.3f}{str(r['calibration_tokens'] or '-'):>14}")
    path = write_result(args.json or result_path("quantize_nano1"),
                        {"source_bytes": src, "calib_rows": args.calib_rows, "load_avg_before": load_before,
                         "results": results}, pressure_before=pressure_before)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
