"""Nano's 4-bit quantization (post-training and quantization-aware) next to llama.cpp's own, on the
same float weights and the same two held-out texts.

    .venv/bin/python -m benchmarks.quantize [--models teacher,student] [--rows gptq,...]
        [--student-rows gptq,int4,mixed,qat] [--qat-tokens 16384] [--windows 40]
        [--json benchmarks/results/quantize.json]

Models:
  teacher   Gemma 3 270M as imported (its "float" weights are the dequantized Q4_K_M file, so
            llama.cpp's Q4_K_M lands back on the grids it came from; see the README)
  student   the pruned student of `make demo` (`nano prune --d-model 512`, recovered by
            `nano distill --init` on 8,192 tokens): weights never quantized, a fair field for Q4_K_M

Rows, each a `nano` command run in $NANO_CACHE/bench/quantize/<model> (a row whose product exists
is skipped, so a killed run resumes; wall and CPU seconds in stages.json):
  float             no quantization
  gptq, awq, mse, rtn
                    `nano quantize --method M`: int4 g32 linear layers, the embedding int8 per row
  int4-last         every tensor int4 g32, the embedding GPTQ'd as the LM head of the quantized
                    layers (what `--embed int4` did before `embed_first`)
  int4              `--embed int4`: the same, but the embedding first, on the float model's head
                    inputs, so the layers are calibrated on its quantized lookups
  mixed             `--embed mixed`: the embedding int4 g64 with the most frequent calibration
                    tokens' rows at int8, in int4 g32's bits (4.5 a weight)
  qat               `nano distill --init <mixed> --qat --freeze-embed`: the linear layers trained
                    through their grid on the online float teacher (`--qat-tokens`, 4 x 256 a step)
Every row is scored by `nano eval` on `--windows` SQLite held-out windows (BOS + 511 tokens) and
as many of the out-of-domain quotations and verse (`nano data prepare --heldout debian:fortunes`).
llama.cpp: the model's F32 GGUF, and llama.cpp's own quantizer on it (pure Q4_0: every tensor,
4.5 bits/weight; Q4_0 with a Q8_0 embedding; Q4_K_M), scored by llama.cpp on the same windows.
"Gap closed" is the share of the Q4_0 -> float perplexity gap a row closes, against the Q4_0 file
with the same embedding precision (pure Q4_0 for the rows with a 4-bit embedding).
"""

import argparse
import json
import time
from pathlib import Path

from benchmarks.harness.core import cpu_pressure
from benchmarks.heldout import OOD_SOURCE
from benchmarks.workspace import Stages, result_path, work_dir, write_result
from nano.files import read_json

QUANTIZE = {  # row -> `nano quantize` options (a recipe file where a flag has no option)
    "gptq": ["--method", "gptq"],
    "awq": ["--method", "awq"],
    "mse": ["--method", "mse"],
    "rtn": ["--method", "rtn"],
    "int4-last": ["--method", "gptq", "--embed", "int4", "--recipe", {"embed_first": False}],
    "int4": ["--method", "gptq", "--embed", "int4"],
    "mixed": ["--method", "gptq", "--embed", "mixed"],
}
ALL_4BIT = ("int4-last", "int4", "mixed", "qat")  # rows with the embedding at 4 bits too
QAT_FROM = "mixed"
QAT_LR = "5e-5"
LLAMA_CPP = [  # (row, ftype, embedding type, pure)
    ("llama.cpp F32", None, None, False),
    ("llama.cpp Q4_0 (pure)", "Q4_0", None, True),
    ("llama.cpp Q4_0, embed Q8_0", "Q4_0", "Q8_0", False),
    ("llama.cpp Q4_K_M", "Q4_K_M", None, False),
]
STUDENT_TOKENS = 8192  # make demo's recovery of the pruned student


def make_student(work: Path, teacher: Path) -> Path:
    """`make demo`'s pruned student: d_model 512, recovered on 8,192 tokens."""
    from benchmarks.prune import HEAL_LR, RECOVER

    st = Stages(work)
    pruned, run = work / "d512-pruned", work / "distill-d512"
    st.run("prune", pruned, "prune", teacher, "--out", pruned, "--d-model", 512, "--overwrite")
    st.run("distill", run / "student", "distill", "--init", pruned, "--teacher", teacher, "--tokens", STUDENT_TOKENS,
           *HEAL_LR, *RECOVER, "--out", run, "--resume")
    return run / "student"


def quantized_bits(ckpt: Path) -> float:
    return float(read_json(ckpt / "quantization.json", missing=f"{ckpt}: not quantized")["totals"]["bits_per_weight"])


def bench_model(ckpt: Path, teacher: Path, rows_wanted: list[str], held, work: Path, *, windows: int,
                qat_tokens: int) -> dict:
    """Every wanted row of one float checkpoint, llama.cpp's rows of the same weights."""
    from benchmarks.heldout import llama_cpp_row
    from benchmarks.qat import BATCH, CURVE, SEQ_LEN
    from nano.checkpoint import flat_params, load_checkpoint, load_tokenizer
    from nano.files import write_json
    from nano.gguf_io import write_gguf

    st = Stages(work)

    def scores(key: str, path: Path) -> dict[str, float]:
        return {"perplexity": st.perplexity(key, path, windows),
                "perplexity_ood": st.perplexity(f"{key}-ood", path, windows, data=held.ood_data)}

    rows: dict[str, dict] = {"float": {**scores("float", ckpt), "bits_per_weight": 32.0}}
    for name in [r for r in rows_wanted if r in QUANTIZE]:
        out = work / name
        args = []
        for a in QUANTIZE[name]:
            if isinstance(a, dict):  # a recipe file
                recipe = work / f"{name}-recipe.json"
                recipe.write_text(json.dumps(a))
                a = recipe
            args.append(a)
        cost = st.run(f"quantize-{name}", out, "quantize", ckpt, "--out", out, *args, "--eval-windows", 0,
                      "--overwrite")
        rows[name] = {**scores(name, out), "bits_per_weight": quantized_bits(out), "options": list(map(str, args)),
                      **cost}
        print(f"  {name}: {rows[name]['perplexity']:.3f} / {rows[name]['perplexity_ood']:.3f}", flush=True)
    if "qat" in rows_wanted:
        init, run = work / QAT_FROM, work / f"qat-{qat_tokens}"
        if not (init / "quantization.json").is_file():
            raise SystemExit(f"error: the qat row starts from the {QAT_FROM!r} row; add it to --rows")
        config = work / "qat-run.json"
        config.write_text(json.dumps(CURVE))
        cost = st.run(f"qat-{qat_tokens}", run / "student", "distill", "--init", init, "--qat", "--freeze-embed",
                      "--teacher", teacher, "--tokens", qat_tokens, "--seq-len", SEQ_LEN, "--batch-size", BATCH,
                      "--warmup-steps", 2, "--lr", QAT_LR, "--config", config, "--out", run, "--resume")
        curve = [{"step": r["step"], "tokens": r["step"] * SEQ_LEN * BATCH, "loss": r["loss"],
                  "heldout_ppl_8": r.get("heldout_ppl")}
                 for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())]
        rows["qat"] = {**scores(f"qat-{qat_tokens}", run / "student"), "bits_per_weight":
                       quantized_bits(run / "student"), "from": QAT_FROM, "tokens": qat_tokens, "lr": float(QAT_LR),
                       **cost, "curve": curve}
        print(f"  qat: {rows['qat']['perplexity']:.3f} / {rows['qat']['perplexity_ood']:.3f}", flush=True)

    llama_path = work / "llama_cpp.json"
    llama = read_json(llama_path, missing="") if llama_path.is_file() else {}
    f32 = work / "model-f32.gguf"
    sets = {"perplexity": held.windows, "perplexity_ood": held.ood_windows}
    for name, ftype, embed_type, pure in LLAMA_CPP:
        if set(sets) <= llama.get(name, {}).keys():
            continue
        if not f32.is_file():
            model = load_checkpoint(ckpt)
            write_gguf(f32, flat_params(model), model.config, load_tokenizer(ckpt))
            del model
        slug = "".join(c if c.isalnum() else "_" for c in name)
        llama[name] = llama_cpp_row(f32, work / f"{slug}.gguf", ftype, sets, embed_type=embed_type, pure=pure)
        write_json(llama_path, llama)
        print(f"  {name}: {llama[name]['perplexity']:.3f} / {llama[name]['perplexity_ood']:.3f}", flush=True)

    base = rows["float"]
    for name, r in [*rows.items(), *llama.items()]:
        for key in ("perplexity", "perplexity_ood"):
            r[f"{key}_vs_float"] = r[key] / base[key]
        if name in rows and name != "float":
            ref = "llama.cpp Q4_0 (pure)" if name in ALL_4BIT else "llama.cpp Q4_0, embed Q8_0"
            r["gap_closed_vs"] = ref
            for key, tag in (("perplexity", ""), ("perplexity_ood", "_ood")):
                q = llama[ref][key]
                r[f"gap_closed{tag}"] = (q - r[key]) / (q - base[key])
    return {"checkpoint": str(ckpt), "rows": rows, "llama_cpp": llama}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="teacher,student")
    ap.add_argument("--rows", default=",".join([*QUANTIZE, "qat"]), help="the teacher's rows")
    ap.add_argument("--student-rows", default="gptq,int4,mixed,qat")
    ap.add_argument("--qat-tokens", type=int, default=16384)
    ap.add_argument("--windows", type=int, default=40)
    ap.add_argument("--json", type=Path, default=result_path("quantize"))
    args = ap.parse_args()

    from benchmarks.heldout import teacher_heldout

    rows = {"teacher": args.rows.split(","), "student": args.student_rows.split(",")}
    unknown = [r for r in [*rows["teacher"], *rows["student"]] if r not in QUANTIZE and r != "qat"]
    if unknown:
        raise SystemExit(f"error: unknown row {unknown[0]!r}; use {', '.join([*QUANTIZE, 'qat'])}")
    held = teacher_heldout(args.windows, ood=True)
    work = work_dir("quantize")
    pressure = cpu_pressure()
    t0 = time.perf_counter()
    models = {}
    for label in args.models.split(","):
        if label not in ("teacher", "student"):
            raise SystemExit(f"error: unknown model {label!r}; use teacher, student")
        ckpt = held.teacher if label == "teacher" else make_student(work_dir("quantize/student-make"), held.teacher)
        print(f"{label}: {ckpt}", flush=True)
        models[label] = bench_model(ckpt, held.teacher, rows[label], held, work_dir(f"quantize/{label}"),
                                    windows=args.windows, qat_tokens=args.qat_tokens)
    result = {"windows": args.windows, "window": 512, "heldout_ood": {"source": OOD_SOURCE, "data": str(held.ood_data)},
              "calibration": "nano quantize's default: 128 x 512 tokens of the Python docs (train split)",
              "models": models, "seconds": time.perf_counter() - t0}
    write_result(args.json, result, pressure_before=pressure)
    for label, m in models.items():
        print(f"\n{label}")
        print(f"{'row':<28}{'ppl':>9}{'x float':>9}{'ood ppl':>9}{'x float':>9}{'bits/w':>8}{'gap':>7}{'CPU s':>8}")
        for name, r in [*m["rows"].items(), *m["llama_cpp"].items()]:
            gap = f"{100 * r['gap_closed']:.0f}%" if "gap_closed" in r else ""
            print(f"{name:<28}{r['perplexity']:>9.3f}{r['perplexity_vs_float']:>9.3f}{r['perplexity_ood']:>9.3f}"
                  f"{r['perplexity_ood_vs_float']:>9.3f}{r['bits_per_weight']:>8.3f}{gap:>7}"
                  f"{r.get('cpu_s', float('nan')):>8.0f}")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
