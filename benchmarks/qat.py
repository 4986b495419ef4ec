"""Quantization-aware distillation (`nano distill --qat`) of Gemma 3 270M with every tensor at 4 bits:
the GPTQ checkpoint trained through its own grid on the float teacher's probabilities.

    .venv/bin/python -m benchmarks.qat [--runs 16384@5e-5,16384@2e-4,49152@5e-5] [--windows 40]

Stages, each a `nano` command in $NANO_CACHE/bench/qat (skipped when its product exists, so a
killed run resumes; their wall and CPU seconds in stages.json):
  gptq       `nano quantize --method gptq --embed int4`: every linear layer int4 group 32 (GPTQ, the
             default calibration) and the tied embedding int4 group 32, GPTQ'd as the LM head;
             4.5 bits per weight all-in. The post-training start.
  qat-N-lrLR `nano distill --init <gptq> --qat --teacher gemma3-270m`, one per TOKENS@LR of `--runs`:
             forward KL from the online float teacher, N tokens at 4 x 256 per step, peak lr LR (2 warmup steps, cosine
             to 10%; `:SCALES` trains the scales at LR x SCALES), float32; latent weights and per-group scales trained with straight-through
             rounding; 8 held-out windows scored every 4 steps (the curve). Writes a quantized
             checkpoint with the same grid (bits per weight unchanged).
  eval       `nano eval` on `--windows` held-out windows (BOS + 511 tokens) for the float teacher, the
             GPTQ start and each QAT result: the SQLite docs (the in-domain held-out) and, out of
             domain, quotations and verse (`nano data prepare --heldout debian:fortunes`).
Comparators in the same run: llama.cpp's own quantizer on the same float weights (an F32 GGUF):
pure Q4_0 (every tensor, 4.5 bits/weight) and Q4_K_M (its tied embedding at 6 bits), scored by
llama.cpp on the same windows.
"""

import argparse
import json
import time
from pathlib import Path

from benchmarks.harness.core import cpu_pressure
from benchmarks.heldout import OOD_SOURCE
from benchmarks.workspace import Stages, result_path, work_dir, write_result
from nano.files import read_json

SEQ_LEN, BATCH = 256, 4
LLAMA_CPP = [("llama.cpp Q4_0 (pure)", "Q4_0", True), ("llama.cpp Q4_K_M", "Q4_K_M", False)]
CURVE = {"eval_every": 4, "eval_windows": 8}  # the training curve's held-out windows


def quantized_bits(ckpt: Path) -> float:
    return float(read_json(ckpt / "quantization.json", missing=f"{ckpt}: not quantized")["totals"]["bits_per_weight"])


def _run_spec(spec: str) -> tuple[str, str, float]:
    """`TOKENS@LR[:SCALES]` -> (tokens, lr, the scales' factor on lr)."""
    tokens, _, rest = spec.partition("@")
    lr, _, view_lr = rest.partition(":")
    if not tokens.isdigit() or not lr:
        raise SystemExit(f"error: --runs entry {spec!r}: expected TOKENS@LR or TOKENS@LR:SCALES, e.g. 16384@2e-4:0.25")
    return tokens, lr, float(view_lr or 1)


def llama_cpp_rows(teacher: Path, windows: dict[str, object], work: Path) -> dict[str, dict]:
    """llama.cpp's own quantizer on the same float weights (its F32 GGUF), scored by llama.cpp on the
    same windows (each named set); kept in work/llama_cpp.json."""
    from benchmarks.heldout import llama_cpp_row
    from nano.checkpoint import flat_params, load_checkpoint, load_tokenizer
    from nano.files import write_json
    from nano.gguf_io import write_gguf

    path = work / "llama_cpp.json"
    rows = read_json(path, missing="") if path.is_file() else {}
    f32 = work / "teacher-f32.gguf"
    for name, ftype, pure in LLAMA_CPP:
        if set(windows) <= rows.get(name, {}).keys():
            continue
        if not f32.is_file():
            model = load_checkpoint(teacher)
            write_gguf(f32, flat_params(model), model.config, load_tokenizer(teacher))
        rows[name] = llama_cpp_row(f32, work / f"teacher-{ftype}{'-pure' if pure else ''}.gguf", ftype, windows,
                                   pure=pure)
        write_json(path, rows)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", default="16384@5e-5", help="QAT runs as TOKENS@LR[:SCALES] (SCALES: the per-group "
                                                          "scales' factor on LR, default 1), comma-separated")
    ap.add_argument("--windows", type=int, default=40)
    ap.add_argument("--json", type=Path, default=result_path("qat"))
    args = ap.parse_args()

    from benchmarks.heldout import teacher_heldout

    held = teacher_heldout(args.windows, ood=True)
    teacher = held.teacher
    work = work_dir("qat")
    st = Stages(work)

    def perplexities(key: str, ckpt: Path) -> dict[str, float]:
        """SQLite held-out and out-of-domain (fortunes) perplexity by `nano eval`."""
        return {"perplexity": st.perplexity(key, ckpt, args.windows),
                "perplexity_ood": st.perplexity(f"{key}-ood", ckpt, args.windows, data=held.ood_data)}

    pressure_before = cpu_pressure()
    t0 = time.perf_counter()
    rows = {"float": {**perplexities("float", teacher), "bits_per_weight": 32.0}}
    gptq = work / "gptq-all4"
    cost = st.run("quantize-gptq", gptq, "quantize", teacher, "--out", gptq, "--method", "gptq", "--embed", "int4",
                  "--eval-windows", 0, "--overwrite")
    rows["gptq"] = {**perplexities("gptq", gptq), "bits_per_weight": quantized_bits(gptq), **cost}
    for spec in args.runs.split(","):
        tokens, lr, view_lr = _run_spec(spec)
        name = f"qat-{tokens}-lr{lr}" + ("" if view_lr == 1 else f"-scales{view_lr:g}")
        run = work / name
        run_cfg = work / f"{name}.json"
        run_cfg.write_text(json.dumps({**CURVE, "view_lr": view_lr}))
        cost = st.run(name, run / "student", "distill", "--init", gptq, "--qat", "--teacher", teacher,
                      "--tokens", tokens, "--seq-len", SEQ_LEN, "--batch-size", BATCH, "--warmup-steps", 2,
                      "--lr", lr, "--config", run_cfg, "--out", run, "--resume")
        curve = [{"step": r["step"], "tokens": r["step"] * SEQ_LEN * BATCH, "loss": r["loss"],
                  "heldout_ppl_8": r.get("heldout_ppl")}
                 for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())]
        rows[name] = {**perplexities(name, run / "student"), "lr": float(lr), "view_lr": view_lr,
                      "tokens": int(tokens), "bits_per_weight": quantized_bits(run / "student"), **cost,
                      "curve": curve}
    llama = llama_cpp_rows(teacher, {"perplexity": held.windows, "perplexity_ood": held.ood_windows}, work)
    base, base_ood = rows["float"]["perplexity"], rows["float"]["perplexity_ood"]
    for r in [*rows.values(), *llama.values()]:
        r["vs_float"], r["vs_float_ood"] = r["perplexity"] / base, r["perplexity_ood"] / base_ood
    result = {"windows": args.windows, "window": 512, "seq_len": SEQ_LEN, "batch_size": BATCH,
              "heldout_ood": {"source": OOD_SOURCE, "data": str(held.ood_data)},
              "rows": rows, "llama_cpp": llama, "seconds": time.perf_counter() - t0}
    write_result(args.json, result, pressure_before=pressure_before)
    print(f"{'row':<24}{'ppl':>9}{'x float':>9}{'ood ppl':>9}{'x float':>9}{'bits/w':>8}{'CPU s':>8}")
    for name, r in [*rows.items(), *llama.items()]:
        print(f"{name:<24}{r['perplexity']:>9.3f}{r['vs_float']:>9.3f}{r['perplexity_ood']:>9.3f}"
              f"{r['vs_float_ood']:>9.3f}{r['bits_per_weight']:>8.2f}{r.get('cpu_s', float('nan')):>8.0f}")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
