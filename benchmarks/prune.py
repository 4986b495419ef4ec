"""Students pruned from Gemma 3 270M (`nano prune` + `nano distill --init`), one run, same
held-out windows, same decode timing.

    .venv/bin/python -m benchmarks.prune [--tokens 8192] [--windows 40] [--rounds 5]
        [--json benchmarks/results/prune.json]

Rows, each scored on the same SQLite held-out windows (BOS + 511 tokens):
  teacher               float, then GPTQ int4 (`nano quantize`, int8 embedding) and with the
                        calibrated 4-bit embedding (`--embed int4`)
  depth-12              12 of 18 blocks (greedy on calibration NLL)
  ffn-1024              FFN neurons 2048 -> 1024 in every block (+ least-squares refit of down)
  d512                  embedding channels 640 -> 512 (tied embedding, every norm and projection)
For each pruned shape: perplexity straight after `nano prune`, after recovery (`nano distill
--init`, the demo's recipe: forward KL from the online teacher, `--tokens` at 4 x 256, lr 1e-4),
and at GPTQ int4 (int8 embedding, the default); ffn-1024 and d512 also with the 4-bit embedding
(`name+embed4`). `random-d512` is the d512 shape from random
weights trained the same way on the same tokens (at the from-scratch default lr 3e-3): the
Minitron comparison. It has d512's shape, hence its file size and decode speed.

Every int4 model is exported to .tflite (ring KV, seq_len 1024) and its LiteRT CompiledModel
decode is timed in one loop: `--rounds` rounds, each running every model once in turn in a fresh
process (prompt 128, 64 greedy steps, 2 threads), so all rows share the machine's state; decode
tok/s is the median step, also as a ratio to the teacher's int4 file and as a share of the
bandwidth bound (bandwidth / (file bytes + KV bytes read)). CPU time is the user + system
seconds of the commands that made a row (prune, distill, quantize; not evaluation or export).
Work files live in $NANO_CACHE/bench/prune; a killed run resumes where it stopped (each step's
output is written atomically by the `nano` command that makes it; their costs in stages.json).
"""

import argparse
import os
import statistics
import time
from pathlib import Path
from typing import Any

from benchmarks.harness.core import cpu_pressure
from benchmarks.workspace import Stages, result_path, work_dir, write_result
from nano.files import read_json

SHAPES = {"depth-12": ["--layers", "12"], "ffn-1024": ["--ffn", "1024"], "d512": ["--d-model", "512"]}
TWIN = "d512"  # the shape also trained from random weights
EMBED4 = ("ffn-1024", "d512")  # shapes also quantized with the 4-bit embedding (the faster candidates)
SEQ_LEN = 256
RECOVER = ["--seq-len", str(SEQ_LEN), "--batch-size", "4", "--warmup-steps", "2"]  # every distill run here
HEAL_LR = ["--lr", "1e-4"]  # from a pruned start; the random twin keeps the from-scratch default
PROMPT, DECODE_STEPS, THREADS = 128, 64, 2


def _json(path: Path) -> Any:
    return read_json(path, missing=f"{path}: missing; run `python -m benchmarks.prune` to make it")


def random_twin(pruned: Path, out: Path, seed: int = 0) -> Path:
    """A checkpoint with `pruned`'s config, tokenizer and meta, from random weights (the
    initialisation `nano distill --student` gives a preset)."""
    from flax import nnx

    from nano.checkpoint import load_config, load_meta, load_tokenizer, save_checkpoint
    from nano.model import Transformer

    if not out.is_dir():
        model = Transformer(load_config(pruned), rngs=nnx.Rngs(seed))
        save_checkpoint(out, model, tokenizer=load_tokenizer(pruned),
                        meta={**load_meta(pruned), "init": f"random (seed {seed})"})
    return out


def make_models(work: Path, teacher: Path, *, tokens: int, windows: int) -> tuple[dict, dict]:
    """(rows, int4 files): every checkpoint made and scored; rows by name."""
    st = Stages(work)
    rows: dict[str, dict[str, Any]] = {}
    files: dict[str, Path] = {}

    def quantize(name: str, src: Path, *extra: str) -> dict:
        q = work / f"{name}-int4"
        cost = st.run(f"quantize-{name}", q, "quantize", src, "--out", q, "--method", "gptq", "--eval-windows", 0,
                      "--overwrite", *extra)
        tfl = work / f"{name}-int4.tflite"
        st.run(f"export-{name}", tfl, "export", q, "--out", tfl)
        files[name] = tfl
        return {"int4_perplexity": st.perplexity(f"{name}-int4", q, windows), "quantize_cpu_s": cost["cpu_s"],
                "file_bytes": tfl.stat().st_size}

    rows["teacher"] = {"perplexity": st.perplexity("teacher", teacher, windows), "make_cpu_s": 0.0,
                       **quantize("teacher", teacher)}
    rows["teacher+embed4"] = {"perplexity": rows["teacher"]["perplexity"], "make_cpu_s": 0.0,
                              **quantize("teacher+embed4", teacher, "--embed", "int4")}
    for name, opts in SHAPES.items():
        pruned, run = work / f"{name}-pruned", work / f"distill-{name}"
        prune = st.run(f"prune-{name}", pruned, "prune", teacher, "--out", pruned, *opts, "--overwrite")
        recover = st.run(f"distill-{name}", run / "student", "distill", "--init", pruned, "--teacher", teacher,
                         "--tokens", tokens, *HEAL_LR, *RECOVER, "--out", run, "--resume")
        student = run / "student"
        row = {"options": opts, "pruned_perplexity": st.perplexity(f"{name}-pruned", pruned, windows),
               "perplexity": st.perplexity(name, student, windows),
               "prune_cpu_s": prune["cpu_s"], "recover_cpu_s": recover["cpu_s"], "recover_wall_s": recover["wall_s"],
               "config": _json(pruned / "config.json"), **quantize(name, student)}
        row["make_cpu_s"] = row["prune_cpu_s"] + row["recover_cpu_s"]
        rows[name] = row
        if name in EMBED4:
            rows[f"{name}+embed4"] = {"perplexity": row["perplexity"], "make_cpu_s": row["make_cpu_s"],
                                      **quantize(f"{name}+embed4", student, "--embed", "int4")}
        if name == TWIN:
            init, run = random_twin(pruned, work / f"random-{name}-init"), work / f"distill-random-{name}"
            cost = st.run(f"distill-random-{name}", run / "student", "distill", "--init", init, "--teacher", teacher,
                          "--tokens", tokens, *RECOVER, "--out", run, "--resume")
            rows[f"random-{name}"] = {"options": ["random init", *opts], "perplexity":
                                      st.perplexity(f"random-{name}", run / "student", windows),
                                      "make_cpu_s": cost["cpu_s"], "recover_wall_s": cost["wall_s"],
                                      "same_shape_as": name}
    return rows, files


def params(ckpt: Path) -> int:
    from nano.checkpoint import load_config
    from nano.model import abstract_model, param_count

    return param_count(abstract_model(load_config(ckpt)))


def time_decode(files: dict[str, Path], *, rounds: int, log_dir: Path) -> dict[str, dict]:
    """Per model: median decode step over `rounds` rounds (every model once per round, in turn,
    each in a fresh process after a first start that packed its XNNPACK weight cache)."""
    from benchmarks.harness.core import run_child
    from benchmarks.harness.litert import measure_compiled, pack_weight_cache

    caches = {n: str(log_dir / f"{n}.xnnpack_cache") for n in files}
    for name, path in files.items():
        Path(caches[name]).unlink(missing_ok=True)
        run_child(f"{name} first start", pack_weight_cache, str(path), threads=THREADS, weight_cache=caches[name],
                  log_dir=str(log_dir), preload=("ai_edge_litert.compiled_model",))
    steps: dict[str, list[float]] = {n: [] for n in files}
    for r in range(rounds):
        for name, path in files.items():
            print(f"  decode round {r + 1}/{rounds}: {name}", flush=True)
            out = run_child(name, measure_compiled, str(path), threads=THREADS, prompt_lens=[PROMPT],
                            decode_tokens=DECODE_STEPS, repeats=1, weight_cache=caches[name], log_dir=str(log_dir),
                            preload=("ai_edge_litert.compiled_model",))
            steps[name] += out["raw"][0]["steps_s"]
    return {n: {"decode_tok_s": 1 / statistics.median(s), "decode_steps": len(s)} for n, s in steps.items()}


def add_bounds(decode: dict[str, dict], files: dict[str, Path], bandwidth_gb_s: float) -> None:
    """Share of the bandwidth bound, counted as `nano bench` counts it (the file's bytes as weights)."""
    from benchmarks.harness.litert import read_layout
    from benchmarks.harness.run import bytes_per_token

    for name, d in decode.items():
        nbytes = bytes_per_token(files[name].stat().st_size, read_layout(files[name]), prompt_len=PROMPT,
                                 decode_tokens=DECODE_STEPS)
        d["bytes_per_token"] = nbytes
        d["fraction_of_bound"] = d["decode_tok_s"] / (bandwidth_gb_s * 1e9 / nbytes)


def plot(result: dict, path: Path) -> Path:
    """Held-out perplexity against int4 decode speed (both relative to the teacher's int4 file)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    rows, base = result["rows"], result["rows"]["teacher"]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    seen = set()
    for name, r in rows.items():
        if "decode" not in r:
            continue
        x = r["decode"]["vs_teacher_int4"]
        kind = "teacher, int4" if name.startswith("teacher") else "student, recovered, int4"
        ax.scatter([x], [r["int4_perplexity"]], color="C3" if name.startswith("teacher") else "C0",
                   label=None if kind in seen else kind)
        seen.add(kind)
        ax.annotate(name, (x, r["int4_perplexity"]), textcoords="offset points", xytext=(5, 3), fontsize=8)
        if "pruned_perplexity" in r:
            ax.scatter([x], [r["pruned_perplexity"]], color="C7", marker="x",
                       label=None if "pruned" in seen else "pruned, before recovery (float)")
            seen.add("pruned")
    ax.axvline(1.5, color="C2", lw=0.8, ls="--")
    ax.axhline(1.5 * base["int4_perplexity"], color="C2", lw=0.8, ls="--")
    ax.set_xlabel("int4 LiteRT decode speed / teacher int4 (same run)")
    ax.set_ylabel("held-out perplexity (log)")
    ax.set_yscale("log")
    ax.set_yticks([15, 20, 30, 50, 100, 200])
    ax.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title("Gemma 3 270M pruned + recovered; target: right of and below the dashed lines", fontsize=9)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=8192, help="recovery tokens per student (the demo's)")
    ap.add_argument("--windows", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", type=Path, default=result_path("prune"))
    ap.add_argument("--plot-only", action="store_true", help="redraw the PNG beside --json from it")
    args = ap.parse_args()
    png = args.json.with_suffix(".png")
    if args.plot_only:
        print(f"wrote {plot(_json(args.json), png)}")
        return

    from benchmarks.harness.core import memory_bandwidth
    from benchmarks.heldout import teacher_heldout

    held = teacher_heldout(args.windows)  # converts the teacher, prepares the data
    work = work_dir(f"prune-{args.tokens}")
    pressure_before = cpu_pressure()
    t0 = time.perf_counter()
    rows, files = make_models(work, held.teacher, tokens=args.tokens, windows=args.windows)
    bandwidth = memory_bandwidth(threads=THREADS)
    decode = time_decode(files, rounds=args.rounds, log_dir=work)
    add_bounds(decode, files, bandwidth["bandwidth_gb_s"])
    for name, d in decode.items():
        d["vs_teacher_int4"] = d["decode_tok_s"] / decode["teacher"]["decode_tok_s"]
        rows[name]["decode"] = d
    base = rows["teacher"]
    for r in rows.values():
        r["perplexity_vs_teacher"] = r["perplexity"] / base["perplexity"]
        if "int4_perplexity" in r:
            r["int4_perplexity_vs_teacher_int4"] = r["int4_perplexity"] / base["int4_perplexity"]
    for name, r in rows.items():
        r["params"] = params(work / f"{name}-int4" if "int4_perplexity" in r else work / f"distill-{name}" / "student")
    twin = rows[f"random-{TWIN}"]
    twin["perplexity_vs_pruned_twin"] = twin["perplexity"] / rows[TWIN]["perplexity"]
    result = {"tokens": args.tokens, "windows": args.windows, "window": 512, "rounds": args.rounds,
              "prompt_len": PROMPT, "decode_steps": DECODE_STEPS, "threads": THREADS,
              "bandwidth_gb_s": bandwidth["bandwidth_gb_s"], "seconds": time.perf_counter() - t0, "rows": rows}
    write_result(args.json, result, pressure_before=pressure_before)
    plot(result, png)
    print(f"{'row':<16}{'ppl':>9}{'pruned':>9}{'int4 ppl':>10}{'decode':>9}{'vs T':>7}{'bound':>7}{'MiB':>7}{'CPU s':>8}")
    for name, r in rows.items():
        d = r.get("decode", {})
        print(f"{name:<16}{r['perplexity']:>9.2f}{r.get('pruned_perplexity', float('nan')):>9.1f}"
              f"{r.get('int4_perplexity', float('nan')):>10.2f}{d.get('decode_tok_s', float('nan')):>9.1f}"
              f"{d.get('vs_teacher_int4', float('nan')):>7.2f}{d.get('fraction_of_bound', float('nan')):>7.0%}"
              f"{r.get('file_bytes', float('nan')) / 2**20:>7.0f}{r['make_cpu_s']:>8.0f}")
    print(f"wrote {args.json} and {png}")


if __name__ == "__main__":
    main()
