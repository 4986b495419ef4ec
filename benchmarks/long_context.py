"""Does decode stay flat as the context grows? A full-size int4 nano1 exported at seq_len 8192
twice, with the sliding-window ring KV cache (local layers keep 512 positions) and with full
caches, each timed by `nano bench`'s harness (CompiledModel) at two prompt lengths in one run.

    .venv/bin/python -m benchmarks.long_context [--ckpt DIR] [--prompt-lens 100,4000]
        [--decode-tokens 32] [--threads 2] [--json benchmarks/results/long_context.json]

The checkpoint defaults to the RTN int4 nano1 of benchmarks.quantize_nano1 (random weights:
speed does not depend on them). KV bytes are float32 K and V of every layer's cache.
"""

import argparse
from pathlib import Path

from benchmarks.harness.core import cpu_pressure
from benchmarks.workspace import result_path, work_dir, write_result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", type=Path, default=None)
    ap.add_argument("--seq-len", type=int, default=8192)
    ap.add_argument("--prompt-lens", default="100,4000")
    ap.add_argument("--decode-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=result_path("long_context"))
    args = ap.parse_args()

    from benchmarks.harness.run import parse_prompt_lens, run_bench
    from export.checkpoint import export_checkpoint
    from nano.checkpoint import load_config
    from nano.errors import NanoError
    from nano.model import cache_lengths

    ckpt = args.ckpt or work_dir("nano1") / "nano1-rtn"
    lens = parse_prompt_lens(args.prompt_lens)
    pressure = cpu_pressure()
    try:
        config = load_config(ckpt)
        out = {"checkpoint": str(ckpt), "model": config.name, "seq_len": args.seq_len, "runs": {}}
        for ring in (True, False):
            name = "ring" if ring else "full"
            tflite = work_dir("long_context") / f"{config.name}-{args.seq_len}-{name}.tflite"
            print(f"exporting {tflite}", flush=True)
            export_checkpoint(ckpt, tflite, seq_len=args.seq_len, ring=ring)
            result = run_bench(tflite, threads=args.threads, prompt_lens=lens, decode_tokens=args.decode_tokens,
                               repeats=1, progress=lambda stage, done, total: print(f"  [{done}/{total}] {stage}",
                                                                                   flush=True))
            rt = result["runtimes"]["litert_compiled"]
            kv = sum(cache_lengths(config, args.seq_len, ring=ring)) * 2 * config.num_kv_heads * config.head_dim * 4
            rows = {str(r["prompt_len"]): {k: r[k] for k in ("decode_tok_s", "decode_ms_median", "ttft_ms")
                                           if k in r} for r in rt["rows"]}
            out["runs"][name] = {"kv_bytes": kv, "rows": rows, "peak_rss_bytes": rt["peak_rss_bytes"],
                                 "file_bytes": rt["file_bytes"], "machine": result["machine"]}
            print(name, rows, f"KV {kv / 2**20:.0f} MiB", flush=True)
            tflite.unlink()
    except NanoError as e:
        raise SystemExit(f"error: {e}") from None
    ring, full = out["runs"]["ring"], out["runs"]["full"]
    short, long_ = (str(p) for p in (min(lens), max(lens)))
    out["summary"] = {
        "kv_full_over_ring": full["kv_bytes"] / ring["kv_bytes"],
        "ring_decode_long_over_short": ring["rows"][long_]["decode_tok_s"] / ring["rows"][short]["decode_tok_s"],
        "full_decode_long_over_short": full["rows"][long_]["decode_tok_s"] / full["rows"][short]["decode_tok_s"],
        "ring_over_full_decode_long": ring["rows"][long_]["decode_tok_s"] / full["rows"][long_]["decode_tok_s"]}
    print(out["summary"])
    write_result(args.json, out, pressure_before=pressure)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
