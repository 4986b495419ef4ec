"""Peak memory of `nano distill` against the size of its training split: rows are read from the
memory-mapped shards per batch, so 2B tokens should cost what 2M do.

    .venv/bin/python -m benchmarks.stream_rss [--sizes 2000000,2000000000] [--steps 5] [--repeats 2] [--keep]

For each size, a synthetic prepared-data dir in `nano data prepare`'s layout under
`$NANO_CACHE/bench/stream_rss/data-N` (manifest.json; train/ and heldout/ with 16M-token uint32
shards and doc_offsets.npy), random ids below the tiny student's vocabulary, one document per
shard so doc_offsets stays a few entries; written a shard at a time, atomically, and reused when
already there. Then `nano distill --teacher none --student tiny` (seq_len 512, batch 8, eval off)
runs a few steps in a child process, `--repeats` times per size (peaks vary by tens of MB from run
to run with thread timing during XLA's compile); its peak RSS is wait4's ru_maxrss (resident
anonymous and file-backed pages, maximum over the child's life). Growth is the largest size's
highest peak minus the smallest size's highest. The data dirs are deleted afterwards unless
--keep (the 2B one is 8 GB).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from benchmarks.harness.core import ROOT, cpu_pressure
from benchmarks.workspace import result_path, work_dir, write_result
from nano.errors import NanoError

STUDENT, SEQ_LEN, BATCH = "tiny", 512, 8
HELDOUT_TOKENS = 1 << 16


def _write_split(split_dir: Path, tokens: int, *, vocab: int, eos_id: int, seed: int) -> dict:
    """`tokens` random ids in SHARD_TOKENS shards, each shard one document ending in EOS."""
    from nano.data.prepare import SHARD_TOKENS

    split_dir.mkdir(parents=True)
    rng, names = np.random.default_rng(seed), []
    for start in range(0, tokens, SHARD_TOKENS):
        shard = rng.integers(4, vocab, min(SHARD_TOKENS, tokens - start), dtype=np.uint32)  # (n,): no specials
        shard[-1] = eos_id
        names.append(f"tokens-{len(names):05d}.npy")
        np.save(split_dir / names[-1], shard)
    np.save(split_dir / "doc_offsets.npy", np.array([*range(0, tokens, SHARD_TOKENS), tokens], np.int64))
    return {"sources": [{"spec": f"synthetic:uniform-{vocab}", "documents": len(names)}], "documents": len(names),
            "tokens": tokens, "text_bytes": 0, "shards": names}


def make_data(out: Path, tokens: int, tokenizer: dict) -> Path:
    """The prepared-data dir of `tokens` training tokens at `out` (reused when complete)."""
    from nano import __version__
    from nano.atomic import atomic_dir
    from nano.data.prepare import PIPELINE, Manifest

    for stale in out.parent.glob(f".{out.name}.*.tmp"):  # left by a killed write
        shutil.rmtree(stale, ignore_errors=True)
    manifest = out / "manifest.json"
    if manifest.is_file() and json.loads(manifest.read_text())["splits"]["train"]["tokens"] == tokens:
        return out
    vocab = _student_vocab()
    with atomic_dir(out, overwrite=True) as tmp:
        splits = {split: _write_split(tmp / split, n, vocab=vocab, eos_id=tokenizer["eos_id"], seed=i)
                  | {"tokenizer_sha256": tokenizer["sha256"], "vocab_size": tokenizer["vocab_size"]}
                  for i, (split, n) in enumerate((("train", tokens), ("heldout", HELDOUT_TOKENS)))}
        m = Manifest(pipeline=PIPELINE, nano_version=__version__, tokenizer=tokenizer, splits=splits, overlap={},
                     created=datetime.now(timezone.utc).isoformat(timespec="seconds"))
        (tmp / "manifest.json").write_text(json.dumps(m.to_dict(), indent=2))
    return out


def _student_vocab() -> int:
    from nano.config import get_preset

    return get_preset(STUDENT).vocab_size


def _tokenizer() -> dict:
    """The tokenizer fields `nano distill --teacher none` checks data against (Gemma 3 270M's)."""
    from nano.checkpoint import load_meta, load_tokenizer
    from nano.convert import resolve_teacher

    ckpt = resolve_teacher("gemma3-270m")
    tok = load_tokenizer(ckpt)
    return {"sha256": load_meta(ckpt).get("tokenizer_sha256", tok.sha256), "vocab_size": int(tok.vocab_size),
            "bos_id": int(tok.bos_id), "eos_id": int(tok.eos_id)}


def distill_peak_rss(data: Path, run: Path, steps: int) -> dict:
    """Run a short `nano distill` on `data` as a child process; its peak RSS and wall time."""
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True)
    config = run.parent / f"{run.name}.json"
    config.write_text(json.dumps({"seq_len": SEQ_LEN, "batch_size": BATCH, "tokens": steps * BATCH * SEQ_LEN,
                                  "eval_windows": 0, "warmup_steps": 1, "checkpoint_every": steps}))
    cmd = [sys.executable, "-m", "nano.cli", "distill", "--teacher", "none", "--student", STUDENT,
           "--data", str(data), "--config", str(config), "--out", str(run / "out")]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    log = run / "distill.log"
    t = time.perf_counter()
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage, not every child's so far
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-1500:]
        raise NanoError(f"{' '.join(cmd)} exited {proc.returncode}; see {log}:\n{tail}")
    metrics = [json.loads(ln) for ln in (run / "out" / "metrics.jsonl").read_text().splitlines()]
    return {"peak_rss_bytes": usage.ru_maxrss * 1024, "wall_s": round(time.perf_counter() - t, 1),
            "steps": len(metrics), "final_loss": metrics[-1]["loss"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="2000000,2000000000", help="training tokens of each data dir, comma-separated")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=2, help="distill runs per size")
    ap.add_argument("--keep", action="store_true", help="keep the data dirs (the 2B one is 8 GB)")
    ap.add_argument("--json", type=Path, default=result_path("stream_rss"))
    args = ap.parse_args()

    sizes = [int(s) for s in args.sizes.split(",")]
    work, tokenizer = work_dir("stream_rss"), _tokenizer()
    pressure = cpu_pressure()
    runs = []
    try:
        for tokens in sizes:
            print(f"{tokens:,} tokens: writing data", flush=True)
            data = make_data(work / f"data-{tokens}", tokens, tokenizer)
            shards = json.loads((data / "manifest.json").read_text())["splits"]["train"]["shards"]
            disk = sum((data / "train" / s).stat().st_size for s in shards)
            results = []
            for _ in range(args.repeats):
                results.append(distill_peak_rss(data, work / f"run-{tokens}", args.steps))
                print(f"  peak RSS {results[-1]['peak_rss_bytes'] / 2**20:,.0f} MiB, {results[-1]['wall_s']} s", flush=True)
            runs.append({"tokens": tokens, "shards": len(shards), "documents": len(shards), "disk_bytes": disk,
                         "rows": tokens // SEQ_LEN, "peak_rss_bytes": max(r["peak_rss_bytes"] for r in results),
                         "repeats": results})
    finally:
        if not args.keep:
            for tokens in sizes:
                shutil.rmtree(work / f"data-{tokens}", ignore_errors=True)
    out = {"student": STUDENT, "teacher": None, "seq_len": SEQ_LEN, "batch_size": BATCH, "steps": args.steps, "eval": False,
           "runs": runs, "growth_bytes": runs[-1]["peak_rss_bytes"] - runs[0]["peak_rss_bytes"]}
    write_result(args.json, out, pressure_before=pressure)
    print(f"growth {out['growth_bytes'] / 2**20:+,.0f} MiB; wrote {args.json}")


if __name__ == "__main__":
    main()
