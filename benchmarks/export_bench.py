"""An int4 checkpoint exported with `export_checkpoint`, timed next to llama.cpp running the same
int4 codes, on this CPU.

    .venv/bin/python -m benchmarks.export_bench [--models student,nano1] [--threads 2,1]
        [--ckpt DIR] [--json benchmarks/results/export_bench.json]

Models: `student` (the distilled student_20m of benchmarks.distill_vs_ce, GPTQ int4 by `nano
quantize`, made if missing) and `nano1` (full-size nano1, random weights, RTN int4 made by
benchmarks.quantize_nano1). `--ckpt DIR` benches that int4 checkpoint as the one model named in
--models instead (e.g. `make demo`'s runs/student_20m-int4, much quicker to make). For each:
export to .tflite + .litertlm under $NANO_CACHE/bench/export (reused while newer than the checkpoint), write the checkpoint's own codes as a GGUF (Q4_0 blocks,
a Q8_0 embedding: `nano export --out *.gguf`, reused while newer), then the harness's `run_bench`
per thread count: decode tok/s of
LiteRT's CompiledModel, LiteRT-LM and llama.cpp, the bandwidth-bound fraction, TTFT and each
runtime's peak RSS against its file. Results merge into the JSON by model and thread count, so
models can be run in separate invocations. Greedy parity of the bundles is
benchmarks/greedy_parity.py.
"""

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.harness.core import cpu_pressure
from benchmarks.workspace import result_path, work_dir, write_result
from nano.errors import NanoError
from nano.files import WEIGHTS

RAM_MARGIN = 4 * 2**30  # left free for the rest of the machine


@dataclasses.dataclass(frozen=True)
class Target:
    ckpt: Path
    source: Path | None  # float checkpoint to quantize (gptq) when ckpt is missing
    prompt_lens: tuple[int, ...]
    decode_tokens: int
    repeats: int


def targets() -> dict[str, Target]:
    return {
        "student": Target(out_dir() / "student_20m-gptq", work_dir("distill") / "distill" / "student", (128, 512), 128, 3),
        # ~75-140 ms/token: 32 steps after each prompt, 2 rounds keep a thread count near 10 min
        "nano1": Target(work_dir("nano1") / "nano1-rtn", None, (128, 512), 32, 2),
    }


def out_dir() -> Path:
    return work_dir("export")


def mem_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def _need_ram(what: str, need: int) -> None:
    have = mem_available()
    if need + RAM_MARGIN > have:
        raise NanoError(f"{what} needs about {need / 2**30:.1f} GiB of RAM and {RAM_MARGIN / 2**30:.0f} GiB must "
                        f"stay free; {have / 2**30:.1f} GiB available. Wait for other jobs to finish")


def _newer(path: Path, than: Path) -> bool:
    return path.is_file() and path.stat().st_mtime > than.stat().st_mtime


def ensure_gptq(ckpt: Path, source: Path | None) -> Path:
    """The quantized checkpoint `ckpt`; made by `nano quantize --method gptq` from the float
    checkpoint `source` if absent (`--overwrite` replaces a half-written one)."""
    from nano.qcheckpoint import is_quantized

    if is_quantized(ckpt):
        return ckpt
    if source is None or not (Path(source) / WEIGHTS).is_file():
        raise NanoError(f"{ckpt}: no quantized checkpoint and no float source to make it from")
    nano = shutil.which("nano", path=str(Path(sys.executable).parent)) or shutil.which("nano")
    if nano is None:
        raise NanoError("the `nano` command is not installed in this environment; pip install -e .")
    cmd = [nano, "quantize", str(source), "--out", str(ckpt), "--method", "gptq", "--eval-windows", "0",
           "--overwrite"]
    print("$", " ".join(cmd), flush=True)
    if subprocess.run(cmd).returncode != 0:
        raise NanoError(f"`{' '.join(cmd)}` failed; see its output above")
    return ckpt


def ensure_export(ckpt: Path, name: str) -> tuple[Path, Path, dict | None]:
    """(.tflite, .litertlm, export summary or None when both were reused)."""
    from export.checkpoint import (CONVERT_BYTES, CONVERT_BYTES_PER_LAYER, WEIGHT_RAM_FACTOR,
                                   export_checkpoint, stored_bytes)
    from nano.checkpoint import load_config
    from nano.qcheckpoint import read_manifest

    tflite = out_dir() / f"{name}.tflite"
    bundle = tflite.with_suffix(".litertlm")
    if _newer(tflite, ckpt / WEIGHTS) and _newer(bundle, ckpt / WEIGHTS):
        return tflite, bundle, None
    config = load_config(ckpt)
    _need_ram(f"exporting {ckpt}", CONVERT_BYTES + CONVERT_BYTES_PER_LAYER * config.num_layers
              + WEIGHT_RAM_FACTOR * stored_bytes(config, read_manifest(ckpt)["tensors"]))
    summary = export_checkpoint(ckpt, tflite, litertlm=True,
                                progress=lambda stage, done, total: print(f"  export [{done}/{total}] {stage}",
                                                                          flush=True))
    return tflite, bundle, summary


def ensure_gguf(ckpt: Path, name: str) -> Path:
    """The checkpoint's own int4/int8 codes as a llama.cpp GGUF (Q4_0 / Q8_0 blocks, bit for bit)."""
    from export.gguf import export_gguf

    path = out_dir() / f"{name}-exact-q4_0.gguf"
    if _newer(path, ckpt / WEIGHTS):
        return path
    print(f"  writing {path}", flush=True)
    return Path(export_gguf(ckpt, path)["gguf"])


def _other_jobs() -> str:
    """Other heavy jobs seen at measurement time (the quantize benchmark shares this machine)."""
    r = subprocess.run(["pgrep", "-af", "benchmarks.quantize "], capture_output=True, text=True)
    return r.stdout.strip()


def summarize(result: dict) -> dict[str, Any]:
    """The issue's figures out of one run_bench result."""
    rt = result["runtimes"]
    rows = []
    for i, P in enumerate(result["settings"]["prompt_lens"]):
        row: dict[str, Any] = {"prompt_len": P}
        for name, e in rt.items():
            r = e["rows"][i]
            row[name] = {"decode_tok_s": r["decode_tok_s"], "ttft_ms": r["ttft_ms"],
                         "prefill_tok_s": r["prefill_tok_s"], "fraction_of_limit": r["fraction_of_limit"],
                         "bandwidth_limit_tok_s": r["bandwidth_limit_tok_s"]}
        if "llama_cpp" in rt:
            base = rt["llama_cpp"]["rows"][i]["decode_tok_s"]
            row["decode_vs_llama_cpp"] = {n: rt[n]["rows"][i]["decode_tok_s"] / base for n in rt if n != "llama_cpp"}
        rows.append(row)
    memory = {}
    for name, e in rt.items():
        m = {"file_bytes": e["file_bytes"], "baseline_rss_bytes": e["baseline_rss_bytes"],
             "peak_rss_bytes": e["peak_rss_bytes"],
             "peak_over_file": (e["peak_rss_bytes"] - e["baseline_rss_bytes"]) / e["file_bytes"]}
        for k in ("peak_rss_first_load_bytes", "rss_at_end_bytes"):  # CompiledModel only
            if k in e:
                m[k] = e[k]
        memory[name] = m
    mach = result["machine"]
    return {"rows": rows, "memory": memory, "bandwidth_gb_s": mach["bandwidth_gb_s"],
            "cpu_pressure_before": mach["cpu_pressure_before"], "cpu_pressure_after": mach["cpu_pressure_after"]}


def _mib(b: float) -> str:
    return f"{b / 2**20:.0f}"


def format_summary(name: str, threads: int, s: dict, files: dict) -> str:
    short = {"litert_compiled": "compiled", "litert_lm": "litert-lm", "llama_cpp": "llama.cpp"}
    lines = [f"== {name}, {threads} thread(s), bandwidth {s['bandwidth_gb_s']:.1f} GB/s; "
             f"files MiB: " + ", ".join(f"{k} {_mib(v)}" for k, v in files.items()),
             f"   cpu pressure before: {s['cpu_pressure_before']}; after: {s['cpu_pressure_after']}",
             f"   {'runtime':<10}{'P':>5}{'dec t/s':>9}{'vs llama':>9}{'of limit':>9}{'TTFT ms':>9}{'prefill t/s':>12}"]
    for row in s["rows"]:
        for rt, short_name in short.items():
            if rt not in row:
                continue
            r, ratio = row[rt], row.get("decode_vs_llama_cpp", {}).get(rt)
            lines.append(f"   {short_name:<10}{row['prompt_len']:>5}{r['decode_tok_s']:>9.1f}"
                         f"{'' if ratio is None else f'{ratio:.2f}x':>9}{r['fraction_of_limit']:>9.2f}"
                         f"{r['ttft_ms']:>9.0f}{r['prefill_tok_s']:>12.0f}")
    for rt, m in s["memory"].items():
        warm = (f", first-load peak {_mib(m['peak_rss_first_load_bytes'])}"
                if "peak_rss_first_load_bytes" in m else "")
        if m.get("rss_at_end_bytes"):
            warm += "; resident at the end: " + ", ".join(f"{k} {_mib(v)}" for k, v in m["rss_at_end_bytes"].items())
        lines.append(f"   {short.get(rt, rt):<10} RSS MiB: baseline {_mib(m['baseline_rss_bytes'])}, peak "
                     f"{_mib(m['peak_rss_bytes'])}, (peak-baseline)/file {m['peak_over_file']:.2f}x{warm} "
                     f"(file {_mib(m['file_bytes'])})")
    return "\n".join(lines)


def _recipe(ckpt: Path) -> dict | None:
    path = ckpt / "quantization.json"
    return json.loads(path.read_text()).get("recipe") if path.is_file() else None


def run_model(name: str, t: Target, threads: Sequence[int]) -> dict[str, Any]:
    from benchmarks.harness.run import run_bench

    ckpt = ensure_gptq(t.ckpt, t.source)
    stem = ckpt.name  # files named after the checkpoint: a --ckpt run never reuses another's export
    tflite, bundle, export = ensure_export(ckpt, stem)
    gguf = ensure_gguf(ckpt, stem)
    files = {"checkpoint": (ckpt / WEIGHTS).stat().st_size, "tflite": tflite.stat().st_size,
             "litertlm": bundle.stat().st_size, "gguf": gguf.stat().st_size}
    meta = json.loads((ckpt / "meta.json").read_text()) if (ckpt / "meta.json").is_file() else {}
    out: dict[str, Any] = {"checkpoint": str(ckpt), "quantized_from": meta.get("quantized_from"),
                           "train_tokens": meta.get("train_config", {}).get("tokens"),
                           "quantization": _recipe(ckpt), "tflite": str(tflite), "litertlm": str(bundle),
                           "gguf": str(gguf), "file_bytes": files, "export": export, "bench": {}}
    for n in threads:
        other = _other_jobs()
        start = time.time()
        result = run_bench(tflite, threads=n, prompt_lens=t.prompt_lens, decode_tokens=t.decode_tokens,
                           repeats=t.repeats, compare_llamacpp=gguf,
                           progress=lambda stage, done, total: print(f"  bench {n}t [{done}/{total}] {stage}",
                                                                     flush=True))
        s = summarize(result)
        s.update(seconds=round(time.time() - start, 1), other_jobs=other, loadavg_after=os.getloadavg())
        out["bench"][str(n)] = {"summary": s, "result": result}
        print(format_summary(name, n, s, files), flush=True)
    return out


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="student,nano1")
    ap.add_argument("--threads", default="2,1", help="thread counts to bench, in order")
    ap.add_argument("--ckpt", type=Path, help="an int4 checkpoint to bench as the one model in --models")
    ap.add_argument("--json", type=Path, default=result_path("export_bench"))
    args = ap.parse_args(argv)
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    known = targets()
    unknown = [m for m in names if m not in known]
    if unknown or not names:
        raise SystemExit(f"error: --models {args.models!r}: choose from {', '.join(known)}")
    if args.ckpt is not None:
        if len(names) != 1:
            raise SystemExit(f"error: --ckpt {args.ckpt} needs one model in --models, e.g. --models student")
        if not (args.ckpt / WEIGHTS).is_file():
            raise SystemExit(f"error: --ckpt {args.ckpt}: no {WEIGHTS} there; give a `nano quantize` output")
        known[names[0]] = dataclasses.replace(known[names[0]], ckpt=args.ckpt.absolute(), source=None)
    try:
        threads = [int(x) for x in args.threads.split(",") if x.strip()]
    except ValueError:
        raise SystemExit(f"error: --threads {args.threads!r}: give integers like 2,1") from None
    saved = json.loads(args.json.read_text()) if args.json.is_file() else {}
    pressure = cpu_pressure()
    for name in names:
        print(f"== {name}", flush=True)
        try:
            res = run_model(name, known[name], threads)
        except NanoError as e:
            raise SystemExit(f"error: {name}: {e}") from None
        prev = saved.get(name, {})
        # keep what earlier runs measured that this one did not (other thread counts)
        saved[name] = {**prev, **res, "bench": {**prev.get("bench", {}), **res["bench"]}}
        saved.pop("provenance", None)
        llama = next((b["result"].get("provenance", {}).get("llama_cpp_system_info") for m in saved.values()
                      for b in m["bench"].values()), None)
        write_result(args.json, saved, pressure_before=pressure, llama_cpp=llama)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
