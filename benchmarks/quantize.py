"""Nano's 4-bit quantizers next to llama.cpp's on the same float weights, same held-out text.

    .venv/bin/python -m benchmarks.quantize [--windows 40] [--student DIR] [--json out.json]

For the imported Gemma 3 270M (its float weights) and a distilled student (default: the one
`benchmarks/distill_vs_ce.py` trains), over the same SQLite held-out windows of 512 tokens:

  nano          float32, then int4 group-32 symmetric linear layers by each method (rtn, mse,
                gptq, awq; calibration 128 x 512 Python-docs tokens) with the embedding int8
                per row, and GPTQ with the embedding int4 too (every tensor 4-bit): by MSE
                clipping, and GPTQ'd as the LM head (`--embed int4`)
  llama.cpp     the F32 GGUF of the same weights, its Q4_0 (pure: every tensor), Q4_0 with a
                Q8_0 embedding, and Q4_K_M -- all made by llama.cpp's own quantizer

and prints perplexity, bits per weight (all tensors, and linear layers only) and, for each
4-bit row, the share of the Q4_0 -> float perplexity gap it closes (Q4_0 of the same embedding
precision as reference). Finished rows are cached in the Nano cache, so a killed run resumes.
Perplexities are deterministic; quantization seconds are wall time on
a shared machine (CPU pressure printed).
"""

import argparse
import hashlib
import json
import time
from pathlib import Path

import numpy as np

from benchmarks.harness.core import cpu_pressure
from benchmarks.workspace import result_path, work_dir, write_result
from quantize.recipe import EMBED_INT4


NANO_ROWS = [  # (label, method, embed spec)
    ("nano gptq", "gptq", "int8"),
    ("nano awq", "awq", "int8"),
    ("nano rtn", "rtn", "int8"),
    ("nano mse", "mse", "int8"),
    ("nano gptq, embed int4 mse", "gptq", "int4-mse"),
    ("nano gptq, embed int4 gptq (as LM head)", "gptq", "int4"),
]
EMBED = {"int8": {"method": "rtn", "bits": 8, "group": None},
         "int4-mse": {"method": "mse", "bits": 4, "group": 32},
         "int4": EMBED_INT4}  # `--embed int4`
LLAMA_ROWS = [  # (label, ftype, embed type, pure, embed bits class)
    ("llama.cpp Q4_0 (pure)", "Q4_0", None, True),
    ("llama.cpp Q4_0, embed Q8_0", "Q4_0", "Q8_0", False),
    ("llama.cpp Q4_K_M", "Q4_K_M", None, False),
]


def _weights_digest(ckpt: Path) -> str:
    h = hashlib.sha256()
    with open(ckpt / "model.safetensors", "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            h.update(chunk)
    return h.hexdigest()


def bench_model(label: str, ckpt: Path, windows: np.ndarray, calib: np.ndarray, workdir: Path) -> dict:
    from benchmarks.heldout import llama_cpp_row
    from nano.checkpoint import flat_params, load_checkpoint, load_tokenizer
    from nano.eval import evaluate
    from nano.files import write_json
    from nano.gguf_io import write_gguf
    from nano.qcheckpoint import tensor_bytes
    from quantize.pipeline import quantize_model
    from quantize.recipe import Recipe, TensorSpec

    # Finished rows are kept in workdir (keyed by what determines them), so a killed run resumes.
    key = hashlib.sha256(np.ascontiguousarray(windows).tobytes() + np.ascontiguousarray(calib).tobytes()
                         + _weights_digest(ckpt).encode()).hexdigest()[:16]
    cache_path = workdir / f"{label}-rows-{key}.json"
    rows: dict[str, dict] = json.loads(cache_path.read_text()) if cache_path.is_file() else {}

    def done(name: str, row: dict) -> None:
        rows[name] = row
        write_json(cache_path, rows)

    model, tok = load_checkpoint(ckpt), load_tokenizer(ckpt)
    n_params = sum(a.size for a in flat_params(model).values())
    if "nano float32" not in rows:
        done("nano float32", {"perplexity": evaluate(model, windows).perplexity, "bits_per_weight": 32.0,
                              "linear_bits_per_weight": 32.0})
    print(f"  {label} float32: {rows['nano float32']['perplexity']:.3f}", flush=True)

    f32 = workdir / f"{label}-f32.gguf"
    if not f32.is_file():
        write_gguf(f32, flat_params(model), model.config, tok)
    del model
    for name, ftype, embed_type, pure in [("llama.cpp F32", None, None, False), *LLAMA_ROWS]:
        if name in rows:
            continue
        slug = "".join(c if c.isalnum() else "_" for c in name)
        done(name, llama_cpp_row(f32, workdir / f"{label}-{slug}.gguf", ftype, {"perplexity": windows},
                                 embed_type=embed_type, pure=pure))
        print(f"  {label} {name}: {rows[name]['perplexity']:.3f} at {rows[name]['bits_per_weight']:.3f} bits/weight",
              flush=True)

    for name, method, embed in NANO_ROWS:
        recipe = Recipe(default=TensorSpec(method=method, bits=4, group=32), overrides=(("embed", EMBED[embed]),))
        if name in rows and rows[name].get("recipe") == recipe.to_dict():
            continue
        model = load_checkpoint(ckpt)
        t0 = time.perf_counter()
        result = quantize_model(model, recipe, calib)
        seconds = time.perf_counter() - t0
        q_bytes = {n: tensor_bytes(n, qt) for n, qt in result.qtensors.items()}
        total = sum(q_bytes.values()) + sum(a.nbytes for a in result.floats.values())
        linear = [n for n in q_bytes if n != "embed"]
        done(name, {"perplexity": evaluate(model, windows).perplexity,
                    "bits_per_weight": 8 * total / n_params,
                    "linear_bits_per_weight": 8 * sum(q_bytes[n] for n in linear)
                    / sum(result.qtensors[n].q.size for n in linear),
                    "quantize_seconds": seconds, "calibration_forward_seconds": result.forward_seconds,
                    "recipe": recipe.to_dict()})
        print(f"  {label} {name}: {rows[name]['perplexity']:.3f} ({seconds:.0f} s)", flush=True)
        del model

    f = rows["nano float32"]["perplexity"]
    for name, r in rows.items():  # share of the Q4_0 -> float gap closed, same embedding precision
        ref = "llama.cpp Q4_0 (pure)" if "embed int4" in name else "llama.cpp Q4_0, embed Q8_0"
        if name.startswith("nano ") and name != "nano float32":
            q = rows[ref]["perplexity"]
            r["gap_closed_vs"] = ref
            r["gap_closed"] = (q - r["perplexity"]) / (q - f)
    return {"checkpoint": str(ckpt), "params": int(n_params), "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--windows", type=int, default=40)
    ap.add_argument("--calib-rows", type=int, default=128)
    ap.add_argument("--student", type=Path, default=None, help="default: the student of benchmarks.distill_vs_ce")
    ap.add_argument("--models", default="teacher,student")
    ap.add_argument("--json", type=Path, default=result_path("quantize"))
    args = ap.parse_args()

    from benchmarks.heldout import teacher_heldout
    from nano.errors import NanoError
    from quantize.run import calibration_tokens

    args.student = args.student or work_dir("distill") / "distill" / "student"

    held = teacher_heldout(args.windows)
    teacher, tok, data, windows = held.teacher, held.tokenizer, held.data, held.windows
    calib, calib_info = calibration_tokens(data, tok, rows=args.calib_rows, length=512)
    models = {"teacher": teacher, "student": args.student}
    wanted = args.models.split(",")
    if "student" in wanted and not (args.student / "config.json").is_file():
        raise SystemExit(f"{args.student}: no student; run `python -m benchmarks.distill_vs_ce` first or pass --student")
    workdir = work_dir("quantize")
    pressure = cpu_pressure()
    results = {}
    for label in wanted:
        print(f"{label}: {models[label]}", flush=True)
        try:
            results[label] = bench_model(label, models[label], windows, calib, workdir)
        except NanoError as e:
            raise SystemExit(f"error: {e}") from None
    print(f"\n{len(windows)} SQLite held-out windows x 512 ({len(windows) * 511:,} scored tokens); calibration "
          f"{calib_info['rows']} x {calib_info['length']} Python-docs tokens; cpu pressure before: {pressure}; "
          f"after: {cpu_pressure()}")
    for label, res in results.items():
        print(f"\n{label} ({res['params'] / 1e6:.1f}M params)")
        print(f"{'':<30}{'perplexity':>11}{'bits/weight':>13}{'linear b/w':>12}{'gap closed':>12}{'seconds':>9}")
        for name, r in res["rows"].items():
            gap = f"{100 * r['gap_closed']:.0f}%" if "gap_closed" in r else ""
            lin = f"{r['linear_bits_per_weight']:.3f}" if "linear_bits_per_weight" in r else ""
            sec = f"{r['quantize_seconds']:.0f}" if "quantize_seconds" in r else ""
            print(f"{name:<30}{r['perplexity']:>11.3f}{r['bits_per_weight']:>13.3f}{lin:>12}{gap:>12}{sec:>9}")
    write_result(args.json, {"windows": len(windows), "calibration": calib_info, "models": results},
                 pressure_before=pressure)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
