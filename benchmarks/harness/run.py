"""`nano bench`: latency of an exported model on this CPU (LiteRT CompiledModel, LiteRT-LM) next to
llama.cpp on a GGUF of the same weights, measured in the same run; optionally on a phone over adb.

Per runtime and prompt length P (also the context the decode steps run at, P .. P+decode_tokens):
time to first token (prefill of P tokens + one decode step), prefill tokens/s, decode ms/token
(median and p90 over all steps) and tokens/s. Each runtime runs in its own child process, so its
peak RSS is its own; LiteRT's first start (packing the weights into XNNPACK's cache) runs in a
process before the measured one, whose peak RSS is then what every later start of an app costs,
with where it resides at the end (packed weights, model-file pages, libraries, anonymous
memory). The decode bound is bandwidth / bytes read per token, with bytes = the weights
(the .tflite's size; llama.cpp's tensor bytes) + the KV cache up to the mean decode position (f32
for LiteRT, f16 for llama.cpp; a local layer's ring no more than its window); LiteRT's exported
graph attends over every slot of each cache, so its real traffic is higher than this ideal count. Timings on a shared machine are noisy: read ratios
measured in the same run, and the CPU pressure printed with them.
"""

import dataclasses
import statistics
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks.harness.core import cpu_info, cpu_pressure, memory_bandwidth, pool, run_child, timing_row
from benchmarks.harness.provenance import provenance
from nano.errors import NanoError

if TYPE_CHECKING:
    from benchmarks.harness.litert import Layout

DEFAULT_PROMPT_LENS = (128, 512, 896)  # + 128 decode steps fills a 1024-position cache
DEFAULT_DECODE_TOKENS = 128
Progress = Callable[[str, int, int], None]  # (stage, done, total), as in export.checkpoint


def parse_prompt_lens(text: str) -> tuple[int, ...]:
    """``"128,512"`` -> (128, 512); anything else is a one-line NanoError."""
    try:
        lens = tuple(int(p) for p in text.split(",") if p.strip())
    except ValueError:
        raise NanoError(f"--prompt-lens {text!r}: give integers like 128,512") from None
    if not lens or min(lens) < 1:
        raise NanoError(f"--prompt-lens {text!r}: give one or more lengths >= 1, e.g. 128,512")
    return lens


def _check_args(prompt_lens: Sequence[int], decode_tokens: int, repeats: int, threads: int) -> tuple[int, ...]:
    lens = tuple(int(p) for p in prompt_lens)
    if not lens or min(lens) < 1:
        raise NanoError(f"prompt_lens {list(prompt_lens)}: give one or more lengths >= 1, e.g. 128,512")
    for name, v in (("decode_tokens", decode_tokens), ("repeats", repeats), ("threads", threads)):
        if int(v) < 1:
            raise NanoError(f"{name} must be >= 1, got {v}")
    return lens


def _model_files(model_path: str | Path, tmp: Path) -> tuple[Path, Path | None]:
    """(.tflite to run, .litertlm or None): a bundle's own .tflite section, or a .tflite and the
    bundle export_checkpoint writes beside it."""
    from benchmarks.harness.litert import extract_tflite

    path = Path(model_path).absolute()  # children may run elsewhere
    if not path.is_file():
        raise NanoError(f"{path}: no such model file; export one with `nano export` (.tflite / .litertlm)")
    if path.suffix == ".litertlm":
        return extract_tflite(path, tmp / f"{path.stem}.tflite"), path
    if path.suffix != ".tflite":
        raise NanoError(f"{path}: expected a .tflite or .litertlm file")
    bundle = path.with_suffix(".litertlm")
    return path, bundle if bundle.is_file() else None


def bytes_per_token(weight_bytes: int, layout: "Layout", *, prompt_len: int, decode_tokens: int,
                    value_bytes: int = 4) -> float:
    """What the decode bound counts per step: the weights + the KV cache read at the mean
    decode position (prompt_len + decode_tokens / 2)."""
    return weight_bytes + layout.kv_bytes_read(prompt_len + decode_tokens / 2, value_bytes=value_bytes)


def _add_bounds(entry: dict, *, layout: "Layout", value_bytes: int, bandwidth_gb_s: float, decode_tokens: int) -> None:
    for row in entry["rows"]:
        nbytes = bytes_per_token(entry["weight_bytes"], layout, prompt_len=row["prompt_len"],
                                 decode_tokens=decode_tokens, value_bytes=value_bytes)
        row["bytes_per_token"] = nbytes
        row["bandwidth_limit_tok_s"] = bandwidth_gb_s * 1e9 / nbytes
        row["fraction_of_limit"] = row["decode_tok_s"] / row["bandwidth_limit_tok_s"]


def _speedups(runtimes: dict, base: str = "llama_cpp") -> dict[str, list[dict]]:
    """this / llama.cpp for tokens/s, llama.cpp / this for TTFT: > 1 means this runtime is faster."""
    if base not in runtimes:
        return {}
    ref = {r["prompt_len"]: r for r in runtimes[base]["rows"]}
    out = {}
    for name, entry in runtimes.items():
        if name in (base, "android"):
            continue
        out[name] = [{"prompt_len": r["prompt_len"],
                      "decode": r["decode_tok_s"] / ref[r["prompt_len"]]["decode_tok_s"],
                      "prefill": r["prefill_tok_s"] / ref[r["prompt_len"]]["prefill_tok_s"],
                      "ttft": ref[r["prompt_len"]]["ttft_ms"] / r["ttft_ms"]} for r in entry["rows"]]
    return out


def _merge(rounds: list[dict], summarize: Callable[[dict], dict]) -> dict:
    """One runtime's rounds: pooled timing rows, median scalars, the largest peak RSS."""
    out = {k: max(r[k] for r in rounds) if k.startswith("peak_rss") else statistics.median(r[k] for r in rounds)
           for k, v in rounds[0].items() if isinstance(v, float) or k.startswith("peak_rss")}
    out.update({k: v for k, v in rounds[0].items() if k not in out and k != "raw"})
    out["rows"] = [summarize(raw) for raw in pool([r["raw"] for r in rounds])]
    return out


def _two_starts(what: str, first: Callable[..., dict], measured: Callable[..., dict], path: str, *,
                cache: dict[str, str], common: dict, preload: Sequence[str], first_kwargs: dict | None = None) -> dict:
    """A runtime's first start (it packs the weights into its cache), then the measured start that
    reads them back, each in a process of its own; the first start's figures join the measured
    ones, its peak RSS as peak_rss_first_load_bytes."""
    cold = run_child(f"{what}, first start", first, path, threads=common["threads"], log_dir=common["log_dir"],
                     preload=preload, **cache, **(first_kwargs or {}))
    warm = run_child(what, measured, path, preload=preload, **cache, **common)
    extra = {k: v for k, v in cold.items() if k not in ("peak_rss_bytes", "baseline_rss_bytes")}
    return {**warm, **extra, "peak_rss_first_load_bytes": cold["peak_rss_bytes"]}


def run_bench(model_path: str | Path, *, threads: int = 2, prompt_lens: Sequence[int] = DEFAULT_PROMPT_LENS,
              decode_tokens: int = DEFAULT_DECODE_TOKENS, repeats: int = 3,
              compare_llamacpp: str | Path | None = None, android: bool = False,
              android_binary: str | Path | None = None, bandwidth_mib: int = 256,
              progress: Progress | None = None) -> dict[str, Any]:
    """Benchmark `model_path` (.tflite with prefill/decode signatures, or .litertlm); see the module
    docstring. `compare_llamacpp`: a GGUF of the same weights, timed the same way. `repeats`
    rounds, each running every runtime once in turn (fresh process, fresh caches), so a busy spell
    on a shared machine hits all runtimes alike; medians pool the rounds. Returns a JSON-ready
    dict with its provenance (git SHA, date, machine, command, versions, llama.cpp's system info);
    never asserts on time."""
    from benchmarks.harness.litert import (litertlm_first_run, litertlm_row, measure_compiled, measure_litertlm,
                                         pack_weight_cache, read_layout)
    from benchmarks.harness.llamacpp import measure_llamacpp

    lens = _check_args(prompt_lens, decode_tokens, repeats, threads)
    report = progress or (lambda *a: None)
    if compare_llamacpp is not None and not Path(compare_llamacpp).is_file():
        raise NanoError(f"{compare_llamacpp}: no such GGUF file; write one with "
                        "`nano export CKPT --out M.gguf`")
    with tempfile.TemporaryDirectory(prefix="nano-bench-") as tmp:
        tmp = Path(tmp)
        tflite, bundle = _model_files(model_path, tmp)
        layout = read_layout(tflite)
        if max(lens) + decode_tokens > layout.seq_len:
            raise NanoError(f"prompt of {max(lens)} + {decode_tokens} decode tokens exceeds the KV cache of "
                            f"{layout.seq_len} positions in {tflite}; use shorter prompt_lens / fewer decode_tokens "
                            "or export with a larger seq_len")
        if android:  # refuse before the desktop runs, not after
            from benchmarks.harness.android import phone_binary, pick_device

            if bundle is None:
                raise NanoError(f"{model_path}: the phone runs a .litertlm bundle; export with litertlm=True")
            pick_device()
            phone_binary(android_binary)
        common = dict(threads=threads, prompt_lens=lens, decode_tokens=decode_tokens, repeats=1, log_dir=tmp)
        jobs = {"litert_compiled": lambda i: _two_starts(
            "litert compiled", pack_weight_cache, measure_compiled, str(tflite),
            cache={"weight_cache": str(tmp / f"xnnpack-{i}.cache")}, common=common,
            preload=("ai_edge_litert.compiled_model",))}
        if bundle:
            jobs["litert_lm"] = lambda i: _two_starts(
                "litert-lm", litertlm_first_run, measure_litertlm, str(bundle),
                cache={"cache_dir": str(tmp / f"litertlm-{i}")}, common=common, preload=("litert_lm",),
                first_kwargs={"prompt_len": min(lens)})
        if compare_llamacpp:
            jobs["llama_cpp"] = lambda i: run_child("llama.cpp", measure_llamacpp, str(Path(compare_llamacpp).absolute()),
                                                    preload=("llama_cpp",), **common)
        total = 1 + repeats * len(jobs) + android
        pressure = cpu_pressure()
        report("memory bandwidth", 0, total)
        bandwidth = memory_bandwidth(threads=threads, mib=bandwidth_mib)
        rounds: dict[str, list[dict]] = {name: [] for name in jobs}
        for i in range(repeats):
            for j, (name, job) in enumerate(jobs.items()):
                report(f"{name} (round {i + 1}/{repeats})", 1 + i * len(jobs) + j, total)
                rounds[name].append(job(i))
        files = {"litert_compiled": (Path(model_path), tflite.stat().st_size, 4),  # f32 caches
                 "litert_lm": (bundle, tflite.stat().st_size, 4),
                 "llama_cpp": (compare_llamacpp and Path(compare_llamacpp), None, 2)}  # f16 cache
        runtimes: dict[str, dict] = {}
        for name, rs in rounds.items():
            entry = _merge(rs, litertlm_row if name == "litert_lm" else timing_row)
            path, weights, value_bytes = files[name]
            entry.update(file=str(path), file_bytes=path.stat().st_size,
                         kv_bytes_per_position=layout.kv_bytes_per_position * value_bytes // 4)
            entry.setdefault("weight_bytes", weights)  # llama.cpp reports its tensor bytes itself
            entry["rss_over_file"] = entry["peak_rss_bytes"] / entry["file_bytes"]
            # what the model adds to a process that already has the runtime's libraries loaded
            entry["model_rss_over_file"] = (entry["peak_rss_bytes"] - entry["baseline_rss_bytes"]) / entry["file_bytes"]
            _add_bounds(entry, layout=layout, value_bytes=value_bytes, bandwidth_gb_s=bandwidth["bandwidth_gb_s"],
                        decode_tokens=decode_tokens)
            runtimes[name] = entry
        if android:
            from benchmarks.harness.android import run_android

            report("android", total - 1, total)
            runtimes["android"] = run_android(bundle, binary=android_binary, threads=threads, prompt_lens=lens,
                                              decode_tokens=decode_tokens)
        report("done", total, total)
        model = {"path": str(model_path), "tflite_bytes": tflite.stat().st_size,
                 "litertlm": str(bundle) if bundle else None, **dataclasses.asdict(layout)}
    return {"provenance": provenance(pressure, llama_cpp=runtimes.get("llama_cpp", {}).get("system_info")),
            "model": model,
            "settings": {"threads": threads, "prompt_lens": list(lens), "decode_tokens": decode_tokens,
                         "repeats": repeats, "prompt": "seeded random ids (seed 0), greedy decode",
                         "litert_lm_note": "LiteRT-LM's own benchmark: its prompt zero-padded to P tokens, "
                                           "TTFT = prefill + one mean decode step, one decode rate per run"},
            "machine": {**cpu_info(), **bandwidth,
                        "cpu_pressure_before": pressure, "cpu_pressure_after": cpu_pressure()},
            "runtimes": runtimes, "speedup_vs_llama_cpp": _speedups(runtimes)}



def plot(result: dict, path: str | Path) -> Path:
    """Decode ms/token (median, p90 bar) and TTFT against prompt/context length, one line per runtime."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for name, entry in result["runtimes"].items():
        rows = entry["rows"]
        x = [r["prompt_len"] for r in rows]
        med = [r["decode_ms_median"] for r in rows]
        p90 = [r.get("decode_ms_p90", r["decode_ms_median"]) - r["decode_ms_median"] for r in rows]
        left.errorbar(x, med, yerr=[[0] * len(x), p90], marker="o", capsize=3, label=name)
        right.plot(x, [r["ttft_ms"] for r in rows], marker="o", label=name)
    left.set(xlabel="context length (tokens)", ylabel="decode ms/token (median, bar to p90)", title="decode latency",
             yscale="log")  # one stalled step must not flatten the others
    right.set(xlabel="prompt length (tokens)", ylabel="time to first token (ms)", title="TTFT")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend()
    s = result["settings"]
    fig.suptitle(f"{Path(result['model']['path']).name}: {s['threads']} threads, {result['machine']['cpu']}",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def format_report(result: dict) -> str:
    m, lines = result["machine"], []
    lines.append(f"{result['model']['path']}: seq_len {result['model']['seq_len']}, {m['cpu']} "
                 f"({m['cores']} cores), {result['settings']['threads']} threads, bandwidth {m['bandwidth_gb_s']:.1f} GB/s "
                 f"(read {m['read_gb_s']:.1f}, copy {m['copy_gb_s']:.1f})")
    lines.append(f"cpu pressure before: {m['cpu_pressure_before']}; after: {m['cpu_pressure_after']}")
    lines.append(f"{'runtime':<16}{'P':>5}{'TTFT ms':>9}{'prefill t/s':>12}{'dec ms med':>11}{'p90':>8}"
                 f"{'dec t/s':>9}{'limit t/s':>10}{'of limit':>9}")
    for name, e in result["runtimes"].items():
        for r in e["rows"]:
            limit = r.get("bandwidth_limit_tok_s")
            lines.append(f"{name:<16}{r['prompt_len']:>5}{r['ttft_ms'] or float('nan'):>9.1f}{r['prefill_tok_s']:>12.0f}"
                         f"{r.get('decode_ms_median', 1e3 / r['decode_tok_s']):>11.2f}{r.get('decode_ms_p90', float('nan')):>8.2f}"
                         f"{r['decode_tok_s']:>9.1f}{limit or float('nan'):>10.0f}{r.get('fraction_of_limit', float('nan')):>9.2f}")
    for name, e in result["runtimes"].items():
        if "peak_rss_bytes" in e:
            first = (f"; first load (packing) {e['peak_rss_first_load_bytes'] / 2**20:.0f}"
                     if "peak_rss_first_load_bytes" in e else "")
            lines.append(f"{name:<16} peak RSS {e['peak_rss_bytes'] / 2**20:.0f} MiB (before the model "
                         f"{e['baseline_rss_bytes'] / 2**20:.0f}{first}), file {e['file_bytes'] / 2**20:.1f} MiB, "
                         f"(peak - before)/file {e['model_rss_over_file']:.2f}")
            if e.get("rss_at_end_bytes"):
                parts = ", ".join(f"{k.replace('_', ' ')} {v / 2**20:.0f}" for k, v in e["rss_at_end_bytes"].items())
                lines.append(f"{'':<16} resident MiB at the end: {parts}")
    for name, rows in result["speedup_vs_llama_cpp"].items():
        parts = ", ".join(f"P={r['prompt_len']}: decode {r['decode']:.2f}x prefill {r['prefill']:.2f}x "
                          f"TTFT {r['ttft']:.2f}x" for r in rows)
        lines.append(f"{name} vs llama.cpp (>1 = faster): {parts}")
    return "\n".join(lines)
