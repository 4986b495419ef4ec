"""Every tensor 4-bit on Gemma 3 270M: the tied embedding / LM head quantized by several methods on
the same GPTQ'd layers, scored on the same held-out windows.

    .venv/bin/python -m benchmarks.quantize_embed [--windows 40] [--rows gptq-g32,mse-g32,...]

One `quantize_model` run makes the layers: every linear layer int4 group-32 GPTQ (the default
recipe; calibration 128 x 512 Python-docs tokens) and the embedding by `--embed int4`
(`quantize.recipe.EMBED_INT4`: GPTQ'd last, as the LM head, on the final-norm hidden states of the
quantized layers). Its layers and the head's input moments are cached in the Nano cache; every
other row re-solves only the embedding from the float one on those moments, so the rows differ in
the embedding alone. For the uncalibrated rows (rtn, mse) the layers were calibrated on float
lookups (`nano quantize --embed int4-mse` quantizes the embedding first instead; the README's
earlier 20.764 is that).

Per row: held-out perplexity, bits/weight (all tensors, as `nano quantize` counts them), the
embedding's relative weight error (the lookup role) and relative output error on the head's
calibration inputs (the LM-head role), and the share of the pure-Q4_0 -> float gap closed.
llama.cpp's pure Q4_0 perplexity on these windows is taken from `benchmarks/quantize.py`'s run
(`--q4-0`, default 26.788; deterministic), the float one is measured here.
"""

import argparse
import hashlib
import json
import time
from pathlib import Path

import jax.numpy as jnp
import ml_dtypes
import numpy as np

from benchmarks.harness.core import cpu_pressure
from benchmarks.workspace import result_path, work_dir, write_result

# name -> (method, group, damp, act_order, clip_steps, lookup); damp/act_order/clip/lookup only for
# gptq; lookup: each row also damped by its token's calibration frequency (quantize.tied)
ROWS = {
    "gptq-g32": ("gptq", 32, 0.01, True, 20, 0.0),  # = `--embed int4` (EMBED_INT4 with the default recipe)
    "rtn-g32": ("rtn", 32, None, None, None, None),
    "mse-g32": ("mse", 32, None, None, None, None),
    "gptq-g64": ("gptq", 64, 0.01, True, 20, 0.0),
    "gptq-row": ("gptq", None, 0.01, True, 20, 0.0),
    "gptq-g32-damp0.1": ("gptq", 32, 0.1, True, 20, 0.0),
    "gptq-g32-damp1": ("gptq", 32, 1.0, True, 20, 0.0),
    "gptq-g32-no-act-order": ("gptq", 32, 0.01, False, 20, 0.0),
    "gptq-g32-lookup0.01": ("gptq", 32, 0.01, True, 20, 0.01),
    "gptq-g32-lookup0.1": ("gptq", 32, 0.01, True, 20, 0.1),
    "gptq-g32-lookup1": ("gptq", 32, 0.01, True, 20, 1.0),
}


def _key(*arrays: np.ndarray, extra: str = "") -> str:
    h = hashlib.sha256(extra.encode())
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def gptq_layers(ckpt: Path, calib: np.ndarray, cache: Path) -> dict:
    """Quantize once with `--embed int4`; cache the dequantized parameters and the head's moments."""
    from nano.checkpoint import flat_params, load_checkpoint
    from quantize.pipeline import quantize_model
    from quantize.recipe import EMBED_INT4, Recipe, TensorSpec

    if not (cache / "done.json").is_file():
        cache.mkdir(parents=True, exist_ok=True)
        recipe = Recipe(default=TensorSpec(method="gptq", bits=4, group=32), overrides=(("embed", EMBED_INT4),))
        model = load_checkpoint(ckpt)
        t0 = time.perf_counter()
        result = quantize_model(model, recipe, calib,
                                progress=lambda what, i, n: print(f"  {what} {i}/{n}", flush=True))
        seconds = time.perf_counter() - t0
        np.savez(cache / "qmodel.npz", **flat_params(model))
        st = result.head_stats
        np.savez(cache / "head_stats.npz", gram=st.gram, abs_sum=st.abs_sum, n=st.n)
        qe = result.qtensors["embed"]
        np.savez(cache / "embed_gptq_g32.npz", q=qe.q, scale=qe.scale)
        (cache / "done.json").write_text(json.dumps({"quantize_seconds": seconds, "recipe": recipe.to_dict()}))
    return json.loads((cache / "done.json").read_text())


def solve_rows(names: list[str], rows: dict, done, teacher: Path, cache: Path, windows: np.ndarray,
               calib: np.ndarray, q4: float) -> None:
    """Quantize the embedding as each row says, on the cached layers, and score it."""
    from nano.checkpoint import load_checkpoint, load_config, model_from_flat
    from nano.eval import evaluate
    from nano.qcheckpoint import tensor_bytes
    from nano.qtensor import QTensor, dequantize
    from quantize.int4 import quantize
    from quantize.mse import quantize_mse
    from quantize.stats import InputStats
    from quantize.tied import solve_tied, token_counts

    femb = np.asarray(load_checkpoint(teacher).embed[...], np.float32).copy()
    flat = dict(np.load(cache / "qmodel.npz"))
    model = model_from_flat(load_config(teacher), flat, source=str(cache))
    counts = token_counts(calib, femb.shape[0])  # the lookups the calibration made
    hs = np.load(cache / "head_stats.npz")
    head = InputStats(femb.shape[1])
    head.add_moments(hs["gram"], hs["abs_sum"], int(hs["n"]))
    n_params = sum(a.size for a in flat.values())
    float_bytes = sum(a.nbytes for n, a in flat.items() if n.endswith(".scale"))
    linear_bytes = 4.5 / 8 * sum(a.size for n, a in flat.items() if n.endswith(".kernel"))  # int4 g32
    del flat

    for name in names:
        method, group, damp, act_order, clip, lookup = ROWS[name]
        if name in rows:
            continue
        t0 = time.perf_counter()
        kw = dict(bits=4, group=group, scale_dtype=ml_dtypes.bfloat16, name="embed")
        if name == "gptq-g32":  # what quantize_model made
            z = np.load(cache / "embed_gptq_g32.npz")
            qt = QTensor(q=z["q"], scale=z["scale"], zero=None, bits=4, group=32)
        elif method == "gptq":
            qt = solve_tied(head, femb.T, counts, lookup=lookup, damp=damp, act_order=act_order, clip_steps=clip, **kw)
        elif method == "mse":
            qt = quantize_mse(femb.T, steps=20, **kw)
        else:
            qt = quantize(femb.T, **kw)
        seconds = time.perf_counter() - t0
        wh = dequantize(qt)
        model.embed[...] = jnp.asarray(wh.T)
        bpw = 8 * (float_bytes + linear_bytes + tensor_bytes("embed", qt)) / n_params
        ppl = evaluate(model, windows).perplexity
        done(name, {"perplexity": ppl, "bits_per_weight": bpw,
                    "embed_bits_per_weight": 8 * tensor_bytes("embed", qt) / qt.size,
                    "method": method, "group": group, "damp": damp, "act_order": act_order, "clip_steps": clip,
                    "lookup": lookup,
                    "weight_rel_err": float(np.linalg.norm(femb.T - wh) / np.linalg.norm(femb)),
                    "head_output_rel_err": head.output_error(femb.T, wh),
                    "gap_closed": (q4 - ppl) / (q4 - rows["float32"]["perplexity"]),
                    "embed_seconds": round(seconds, 1)})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--windows", type=int, default=40)
    ap.add_argument("--calib-rows", type=int, default=128)
    ap.add_argument("--rows", default=",".join(ROWS))
    ap.add_argument("--q4-0", type=float, default=26.788, help="llama.cpp pure Q4_0 perplexity on these windows")
    ap.add_argument("--json", type=Path, default=result_path("quantize_embed"))
    args = ap.parse_args()

    from benchmarks.heldout import teacher_heldout
    from nano.checkpoint import load_checkpoint
    from nano.eval import evaluate
    from quantize.run import calibration_tokens

    names = args.rows.split(",")
    unknown = [n for n in names if n not in ROWS]
    if unknown:
        raise SystemExit(f"error: unknown row {unknown[0]!r}; use {', '.join(ROWS)}")
    held = teacher_heldout(args.windows)
    windows = held.windows
    calib, calib_info = calibration_tokens(held.data, held.tokenizer, rows=args.calib_rows, length=512)
    workdir = work_dir("quantize_embed")
    cache = workdir / f"layers-{_key(calib, extra=str(held.teacher))}"
    pressure = cpu_pressure()
    layers = gptq_layers(held.teacher, calib, cache)

    rows_path = workdir / f"rows-{_key(windows, calib, extra=str(held.teacher))}.json"
    rows: dict = json.loads(rows_path.read_text()) if rows_path.is_file() else {}

    def done(name: str, row: dict) -> None:
        rows[name] = row
        rows_path.write_text(json.dumps(rows, indent=1))
        print(f"  {name}: {json.dumps(row)}", flush=True)

    if "float32" not in rows:
        done("float32", {"perplexity": evaluate(load_checkpoint(held.teacher), windows).perplexity,
                         "bits_per_weight": 32.0})
    names = [n for n in names if n not in rows]
    if names:  # finished rows are cached: a killed run resumes, a finished one only writes the table
        solve_rows(names, rows, done, held.teacher, cache, windows, calib, args.q4_0)
    print(f"\n{len(windows)} SQLite held-out windows x 512; calibration {calib_info['rows']} x 512 Python-docs "
          f"tokens; layers: int4 g32 GPTQ ({layers['quantize_seconds']:.0f} s); llama.cpp pure Q4_0 {args.q4_0}")
    print(f"{'embedding':<24}{'perplexity':>11}{'bits/weight':>13}{'gap closed':>12}{'weight err':>12}{'head err':>10}")
    for name, r in rows.items():
        gap = f"{100 * r['gap_closed']:.1f}%" if "gap_closed" in r else ""
        we = f"{r['weight_rel_err']:.4f}" if "weight_rel_err" in r else ""
        he = f"{r['head_output_rel_err']:.4f}" if "head_output_rel_err" in r else ""
        print(f"{name:<24}{r['perplexity']:>11.3f}{r['bits_per_weight']:>13.3f}{gap:>12}{we:>12}{he:>10}")
    write_result(args.json, {"windows": len(windows), "calibration": calib_info, "q4_0_pure_perplexity": args.q4_0,
                             "layers": layers, "rows": rows}, pressure_before=pressure)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
