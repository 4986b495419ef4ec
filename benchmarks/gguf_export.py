"""Our int4 inside llama.cpp: the teacher quantized by `nano quantize` (GPTQ, int4 g32 + int8
embedding), exported by `nano export --out *.gguf` as Q4_0/Q8_0 blocks holding the same codes,
scored by llama.cpp next to llama.cpp's own Q4_0 + Q8_0-embedding file of the same float weights:
the same tensor types, hence the same size and speed, so the difference is the quantizer.

    .venv/bin/python -m benchmarks.gguf_export [--windows 40] [--json benchmarks/results/gguf_export.json]

Rows (perplexity on the same SQLite held-out windows, every token scored):
  nano float32 / llama.cpp F32          the float weights in each engine
  nano GPTQ (dequantized)               `nano eval` of the quantized checkpoint
  llama.cpp on nano GPTQ (exact GGUF)   the same codes run by llama.cpp
  llama.cpp Q4_0 + Q8_0 embedding       llama.cpp's quantizer on the F32 GGUF
The quantized checkpoint is made once under $NANO_CACHE/bench/gguf (about 5 minutes) and reused.
"""

import argparse
import time
from pathlib import Path

from benchmarks.harness.core import cpu_pressure
from benchmarks.workspace import result_path, work_dir, write_result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--windows", type=int, default=40)
    ap.add_argument("--json", type=Path, default=result_path("gguf_export"))
    args = ap.parse_args()

    from benchmarks.export_bench import ensure_gptq
    from benchmarks.harness.llamacpp import LlamaCpp, gguf_bits_per_weight, quantize_gguf
    from benchmarks.heldout import teacher_heldout
    from export.gguf import export_gguf
    from nano.checkpoint import flat_params, load_checkpoint
    from nano.errors import NanoError
    from nano.eval import evaluate
    from nano.gguf_io import write_gguf

    held = teacher_heldout(args.windows)
    windows = held.windows
    try:
        ckpt = ensure_gptq(work_dir("gguf") / "gemma3-270m-gptq", held.teacher)
    except NanoError as e:
        raise SystemExit(f"error: {e}") from None
    work = work_dir("gguf")
    pressure = cpu_pressure()

    rows: dict[str, dict] = {}

    def nano_row(name: str, path: Path) -> None:
        t = time.perf_counter()
        rows[name] = {"perplexity": evaluate(load_checkpoint(path), windows).perplexity,
                      "seconds": time.perf_counter() - t}
        print(f"  {name}: {rows[name]['perplexity']:.3f}", flush=True)

    def llama_row(name: str, gguf: Path) -> None:
        t = time.perf_counter()
        scorer = LlamaCpp(gguf, window=windows.shape[1])
        ppl = scorer.perplexity(windows)
        del scorer
        bpw, size = gguf_bits_per_weight(gguf)
        rows[name] = {"perplexity": ppl, "bits_per_weight": bpw, "file_bytes": size,
                      "seconds": time.perf_counter() - t}
        print(f"  {name}: {rows[name]['perplexity']:.3f} at {bpw:.3f} bits/weight", flush=True)

    f32 = work / "teacher-f32.gguf"
    if not f32.is_file():
        model = load_checkpoint(held.teacher)
        write_gguf(f32, flat_params(model), model.config, held.tokenizer, name="gemma3-270m")
        del model
    theirs = work / "teacher-q4_0-embed_q8_0.gguf"
    quantize_gguf(f32, theirs, "Q4_0", embed_type="Q8_0")  # llama.cpp's own quantizer, every run
    t = time.perf_counter()
    ours = Path(export_gguf(ckpt, work / "teacher-nano-gptq.gguf")["gguf"])
    export_s = time.perf_counter() - t

    nano_row("nano float32", held.teacher)
    llama_row("llama.cpp F32", f32)
    nano_row("nano GPTQ (dequantized)", ckpt)
    llama_row("llama.cpp on nano GPTQ (exact GGUF)", ours)
    llama_row("llama.cpp Q4_0 + Q8_0 embedding", theirs)
    f, q = rows["llama.cpp F32"]["perplexity"], rows["llama.cpp Q4_0 + Q8_0 embedding"]["perplexity"]
    rows["llama.cpp on nano GPTQ (exact GGUF)"]["gap_closed"] = (
        (q - rows["llama.cpp on nano GPTQ (exact GGUF)"]["perplexity"]) / (q - f))

    print(f"\n{len(windows)} SQLite held-out windows x {windows.shape[1]}; export {export_s:.1f} s; "
          f"cpu pressure before: {pressure}; after: {cpu_pressure()}")
    print(f"{'':<40}{'perplexity':>11}{'bits/weight':>13}{'MiB':>8}{'gap closed':>12}")
    for name, r in rows.items():
        bpw = f"{r['bits_per_weight']:.3f}" if "bits_per_weight" in r else ""
        mib = f"{r['file_bytes'] / 2**20:.0f}" if "file_bytes" in r else ""
        gap = f"{100 * r['gap_closed']:.0f}%" if "gap_closed" in r else ""
        print(f"{name:<40}{r['perplexity']:>11.3f}{bpw:>13}{mib:>8}{gap:>12}")
    write_result(args.json, {"windows": len(windows), "checkpoint": str(ckpt), "export_seconds": export_s,
                             "rows": rows}, pressure_before=pressure)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
