"""The README's figure tables, regenerated from the committed result files.

    .venv/bin/python -m benchmarks.report [--check]

A generated table sits in README.md between

    <!-- table: KIND (benchmarks/results/A.json[, benchmarks/results/B.json]) -->
    ...
    <!-- end table -->

KIND names the renderer (one per kind of result); each table opens with the machine (CPU model,
SIMD flags), date and git SHA its figures come from. Without --check the README is rewritten in
place; with it, nothing is written and the exit status is 1 when a table differs from its files
(tests/test_report.py runs the same check).
"""

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nano.errors import NanoError

ROOT = Path(__file__).resolve().parents[1]
SHORT = {"litert_compiled": "LiteRT", "litert_lm": "LiteRT-LM", "llama_cpp": "llama.cpp"}
TABLE = re.compile(r"(<!-- table: (\w+) \(([^)]*)\) -->\n)(.*?)(<!-- end table -->)", re.S)


def _stalled(prov: dict[str, Any], seconds: float) -> str:
    """Share of a run's wall time during which some task waited for a CPU, from the kernel's
    cumulative CPU pressure counter (`total=` microseconds) read before and after it."""
    before, after = (re.search(r"total=(\d+)", prov[k] or "") for k in ("cpu_pressure_before", "cpu_pressure_after"))
    if not (before and after and seconds > 0):
        return "n/a"
    return f"{(int(after.group(1)) - int(before.group(1))) / 1e6 / seconds:.0%}"


def _machine(m: dict[str, Any]) -> str:
    return f"{m['cpu']} ({m['cores']} cores; {' '.join(m['cpu_flags']) or 'no AVX2'})"


def _run(prov: dict[str, Any]) -> str:
    """Date, commit and command of one result file."""
    dirty = " + uncommitted changes" if prov.get("git_dirty") else ""
    return f"{prov['date'][:16].replace('T', ' ')} UTC, git {prov['git_sha'][:10]}{dirty}: `{prov['command']}`"


def source_line(prov: dict[str, Any]) -> str:
    """Where a table's figures come from: machine, date, commit and command."""
    return f"*Measured on {_machine(prov['machine'])}, {_run(prov)}.*"


def render_export_bench(results: list[dict]) -> str:
    """benchmarks/export_bench.py: LiteRT CompiledModel and LiteRT-LM against llama.cpp, same run."""
    (res,) = results
    lines = [source_line(res["provenance"]), "",
             "| model, threads | prompt | decode tok/s: LiteRT / LiteRT-LM / llama.cpp | decode vs llama.cpp "
             "| TTFT ms: LiteRT / llama.cpp | TTFT vs llama.cpp | share of bandwidth bound (LiteRT / llama.cpp) |",
             "|---|---|---|---|---|---|---|"]
    notes = []
    for model, entry in res.items():
        if model == "provenance":
            continue
        for threads, run in entry["bench"].items():
            r = run["result"]
            for sp in r["speedup_vs_llama_cpp"]["litert_compiled"]:
                P = sp["prompt_len"]
                row = {name: next(x for x in e["rows"] if x["prompt_len"] == P) for name, e in r["runtimes"].items()}
                lite, lm, ll = row["litert_compiled"], row.get("litert_lm"), row["llama_cpp"]
                lines.append(f"| {model}, {threads} | {P} | {lite['decode_tok_s']:.0f} / "
                             f"{lm['decode_tok_s'] if lm else float('nan'):.0f} / {ll['decode_tok_s']:.0f} "
                             f"| {sp['decode']:.2f}× | {lite['ttft_ms']:.0f} / {ll['ttft_ms']:.0f} "
                             f"| {sp['ttft']:.2f}× | {lite['fraction_of_limit']:.0%} / {ll['fraction_of_limit']:.0%} |")
            prov = r["provenance"]
            memory = ", ".join(f"{SHORT[name]} {e['model_rss_over_file']:.2f}×" for name, e in r["runtimes"].items()
                               if name in SHORT)
            notes.append(f"{model} at {threads} thread{'s' * (threads != '1')}: bandwidth "
                         f"{r['machine']['bandwidth_gb_s']:.1f} GB/s, tasks waiting for a CPU "
                         f"{_stalled(prov, run['summary']['seconds'])} of the time; (peak RSS − RSS before the "
                         f"model) / file: {memory}")
    files = {m: e["file_bytes"] for m, e in res.items() if m != "provenance"}
    sizes = "; ".join(f"{m} {f['tflite'] / 2**20:.0f} MiB `.tflite` / {f['gguf'] / 2**20:.0f} MiB GGUF"
                      for m, f in files.items())
    lines += ["", f"(Medians over rounds; ratios > 1: faster than llama.cpp. {'. '.join(notes)}. Files: {sizes}.)"]
    return "\n".join(lines)


def render_nano1_plan(results: list[dict]) -> str:
    """benchmarks/nano1_plan.py: one compiled distillation step's memory, one row per file (rows
    may come from different commits: each names its own)."""
    gib = lambda b: f"{b / 2**30:.2f} GiB"
    m = results[0]["provenance"]["machine"]
    lines = [f"*Measured on {_machine(m)}; rows:*", ""]
    for i, r in enumerate(results, 1):
        prov = r["provenance"]
        other = "" if prov["machine"] == m else f"{prov['machine']['cpu']} ({prov['machine']['cores']} cores), "
        lines.append(f"{i}. {other}{_run(prov)}")
    lines += ["", "| row | student ← teacher | tokens per step | remat | logits chunks split over | blocks' weights read "
              "| student params + Adam state (all devices) | per device: arguments | temporaries | peak | compile s |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for i, r in enumerate(results, 1):
        a = r["args"]
        # files from before logits_spec (B, c, V mesh axes) and weights_in_order left both to XLA
        split = " / ".join(f"{dim} over {axis}" for dim, axis in zip("BcV", r.get("logits_spec", [])) if axis)
        lines.append(f"| {i} | {a['student']} ({r['student_params'] / 1e9:.2f}B) ← {a['teacher']} "
                     f"({r['teacher_params'] / 1e9:.2f}B) | {a['batch_size']} × {a['seq_len']} "
                     f"| {a.get('remat', 'none')} | {split or 'XLA’s choice'} "
                     f"| {'in order' if r.get('weights_in_order') else 'XLA’s choice'} | {gib(r['state_bytes'])} "
                     f"| {gib(r['per_device_argument_bytes'])} | {gib(r['per_device_temp_bytes'])} "
                     f"| {gib(r['per_device_peak_bytes'])} | {r['compile_seconds']:.0f} |")
    fits = [str(i) for i, r in enumerate(results, 1) if r["per_device_peak_bytes"] <= 16 * 2**30]
    lines += ["", f"(Peak ≤ 16 GiB per device: rows {', '.join(fits) or 'none'}.)"]
    return "\n".join(lines)


def render_long_context(results: list[dict]) -> str:
    """benchmarks/long_context.py: decode at a short and a long context, ring vs full KV caches."""
    (r,) = results
    lines = [source_line(r["provenance"]), "",
             "| KV caches | KV MiB | " + " | ".join(f"decode tok/s at {p} | TTFT ms at {p}"
                                                  for p in r["runs"]["ring"]["rows"]) + " |",
             "|---|---|" + "---|---|" * len(r["runs"]["ring"]["rows"])]
    for name, run in r["runs"].items():
        cells = " | ".join(f"{row['decode_tok_s']:.1f} | {row['ttft_ms']:.0f}" for row in run["rows"].values())
        lines.append(f"| {name} | {run['kv_bytes'] / 2**20:.0f} | {cells} |")
    s = r["summary"]
    lines += ["", f"({r['model']} int4 at seq_len {r['seq_len']}, CompiledModel, "
                  f"{r['runs']['ring']['machine']['threads']} threads. Ring: decode at the long context / the short one {s['ring_decode_long_over_short']:.2f}×; "
                  f"full caches {s['full_decode_long_over_short']:.2f}× (the full graph attends over every slot "
                  f"at any position); ring over full at the long context {s['ring_over_full_decode_long']:.2f}×; "
                  f"KV memory {s['kv_full_over_ring']:.1f}× smaller.)"]
    return "\n".join(lines)


def render_ring_parity(results: list[dict]) -> str:
    """benchmarks/ring_parity.py: the teacher's greedy picks with the ring cache vs full caches."""
    (r,) = results
    return "\n".join([source_line(r["provenance"]), "",
                      "| model | window | positions | identical greedy picks | max top-logit difference "
                      "| distinct picks |", "|---|---|---|---|---|---|",
                      f"| {r['model']} | {r['window']} | {r['positions']:,} | {'yes' if r['identical_picks'] else 'no'} "
                      f"| {r['max_abs_top_logit_difference']:.1e} | {r['distinct_picks']} |"])


def render_quantize_embed(results: list[dict]) -> str:
    """benchmarks/quantize_embed.py: every tensor 4-bit, the tied embedding by each method."""
    (r,) = results
    rows = r["rows"]
    lines = [source_line(r["provenance"]), "",
             "| embedding (linear layers: int4 g32 GPTQ) | held-out ppl | bits/weight (all tensors) "
             "| gap closed vs pure Q4_0 | embedding weight error | LM-head output error |",
             "|---|---|---|---|---|---|",
             f"| float32 (no quantization) | {rows['float32']['perplexity']:.3f} | 32 | | | |",
             f"| llama.cpp Q4_0, every tensor | {r['q4_0_pure_perplexity']:.3f} | 4.506 | | | |"]
    for name, row in rows.items():
        if name == "float32":
            continue
        group = "per row" if row["group"] is None else f"g{row['group']}"
        how = {"rtn": "round-to-nearest", "mse": "MSE clipping", "gptq": "GPTQ as the LM head"}[row["method"]]
        if row["method"] == "gptq":
            how += f", damp {row['damp']}" + ("" if row["act_order"] else ", no act-order")
            if row.get("lookup"):
                how += f", rows damped by lookup frequency × {row['lookup']:g}"
        lines.append(f"| int4 {group}, {how} | {row['perplexity']:.3f} | {row['bits_per_weight']:.3f} "
                     f"| {100 * row['gap_closed']:.1f}% | {row['weight_rel_err']:.4f} "
                     f"| {row['head_output_rel_err']:.4f} |")
    lines += ["", f"({r['windows']} SQLite held-out windows × 512; calibration {r['calibration']['rows']} × "
                  f"{r['calibration']['length']} Python-docs tokens; the pure-Q4_0 perplexity is "
                  "`benchmarks/quantize.py`'s llama.cpp figure on the same windows.)"]
    return "\n".join(lines)


def render_prune(results: list[dict]) -> str:
    """benchmarks/prune.py: pruned + recovered students of Gemma 3 270M, a random-init twin."""
    (r,) = results
    rows = r["rows"]
    teacher = rows["teacher"]
    lines = [source_line(r["provenance"]), "",
             "| model | params | held-out ppl: pruned → recovered | int4 ppl (× teacher int4) | int4 decode tok/s "
             "(× teacher int4) | share of bandwidth bound | .tflite MiB | CPU time to make |",
             "|---|---|---|---|---|---|---|---|"]
    for name, row in rows.items():
        d = row.get("decode", {})
        ppl = (f"{row['pruned_perplexity']:,.1f} → {row['perplexity']:.2f}" if "pruned_perplexity" in row
               else f"{row['perplexity']:.2f}" + (" (float)" if name == "teacher" else ""))
        if "same_shape_as" in row:
            ppl = f"random init → {row['perplexity']:,.1f} ({row['perplexity_vs_pruned_twin']:.1f}× {row['same_shape_as']})"
        int4 = (f"{row['int4_perplexity']:.2f} ({row['int4_perplexity_vs_teacher_int4']:.2f}×)"
                if "int4_perplexity" in row else "")
        dec = f"{d['decode_tok_s']:.1f} ({d['vs_teacher_int4']:.2f}×)" if d else "as " + row.get("same_shape_as", "")
        bound = f"{d['fraction_of_bound']:.0%}" if d else ""
        mib = f"{row['file_bytes'] / 2**20:.0f}" if "file_bytes" in row else ""
        cpu = f"{row['make_cpu_s'] / 60:.1f} min" if row["make_cpu_s"] else "—"
        lines.append(f"| {name} | {row['params'] / 1e6:.0f}M | {ppl} | {int4} | {dec} | {bound} | {mib} | {cpu} |")
    hits = [n for n, x in rows.items() if "decode" in x and not n.startswith("teacher")
            and x["decode"]["vs_teacher_int4"] >= 1.5 and x["int4_perplexity_vs_teacher_int4"] <= 1.5]
    lines += ["", f"({r['windows']} SQLite held-out windows × {r['window']}; recovery {r['tokens']:,} tokens per "
                  f"student; decode: prompt {r['prompt_len']}, median of {r['rounds']} rounds × {r['decode_steps']} "
                  f"steps, {r['threads']} threads, LiteRT CompiledModel, all models in the same loop; bound at "
                  f"{r['bandwidth_gb_s']:.1f} GB/s. Teacher float {teacher['perplexity']:.2f}. Target ≥ 1.5× "
                  "decode at ≤ 1.5× perplexity: " + (f"met by {', '.join(hits)}.)" if hits else "not met by any row.)")]
    return "\n".join(lines)


def render_recovery(results: list[dict]) -> str:
    """benchmarks/recovery.py: the d512 student healed with each recovery lever, same tokens."""
    (r,) = results
    lines = [source_line(r["provenance"]), "",
             "| recovery of d512 | held-out ppl | training tok/s | wall | CPU time (× online) |",
             "|---|---|---|---|---|"]
    for name, row in r["rows"].items():
        extra = ""
        if "labelling" in row:
            extra = (f"; + labelling once (k = {row['k']}): {row['labelling']['wall_s'] / 60:.1f} min wall, "
                     f"{row['labelling']['cpu_s'] / 60:.1f} min CPU")
        if "from" in row:
            extra = f" (from `{row['from']}`)"
        lines.append(f"| {name} | {row['perplexity']:.2f} | {row['tokens_per_s']:.1f} | {row['wall_s'] / 60:.1f} min "
                     f"| {row['cpu_s'] / 60:.1f} min ({row['cpu_vs_online']:.2f}×){extra} |")
    lines += ["", f"({r['tokens']:,} tokens each, 4 × 256 per step, lr 1e-4; {r['windows']} SQLite held-out windows.)"]
    return "\n".join(lines)


def render_qat(results: list[dict]) -> str:
    """benchmarks/qat.py: every tensor 4-bit, post-training (GPTQ) and quantization-aware, next to
    llama.cpp's own quantizations of the same float weights; with out-of-domain columns when the
    run scored the second held-out text."""
    (r,) = results
    rows, base = r["rows"], r["rows"]["float"]["perplexity"]
    ood = "heldout_ood" in r
    ood_head, ood_rule = (" out-of-domain ppl | × float |", "---|---|") if ood else ("", "")
    lines = [source_line(r["provenance"]), "",
             f"| model | held-out ppl | × float |{ood_head} bits/weight (all tensors) | CPU time to make |",
             f"|---|---|---|{ood_rule}---|---|"]

    def cells(row: dict) -> str:
        out = f"{row['perplexity']:.3f} | {row['perplexity'] / base:.3f} |"
        return out + (f" {row['perplexity_ood']:.3f} | {row['vs_float_ood']:.3f} |" if ood else "")

    names = {"float": "float32 (no quantization)", "gptq": "GPTQ int4 g32, embedding GPTQ'd as the LM head"}
    for name, row in rows.items():
        curve = " → ".join(f"{c['heldout_ppl_8']:.2f}" for c in row.get("curve", []) if c["heldout_ppl_8"])
        scales = "" if row.get("view_lr", 1) == 1 else f", scales at lr × {row['view_lr']:g}"
        label = names.get(name) or (f"+ QAT, {row['tokens']:,} tokens at lr {row['lr']:g}{scales} "
                                    f"(curve on 8 windows every 4 steps: {curve})")
        cpu = f"{row['cpu_s'] / 60:.1f} min" if "cpu_s" in row else ""
        lines.append(f"| {label} | {cells(row)} {row['bits_per_weight']:.3f} | {cpu} |")
    for name, row in r["llama_cpp"].items():
        lines.append(f"| {name} (same float weights) | {cells(row)} {row['bits_per_weight']:.3f} | |")
    held = f"{r['windows']} SQLite held-out windows × {r['window']}"
    if ood:
        held += f"; out of domain: as many windows of `{r['heldout_ood']['source']}` (quotations and verse)"
    lines += ["", f"({held}; QAT: {r['batch_size']} × {r['seq_len']} "
                  "tokens per step, forward KL from the online float teacher, float32; CPU time of the `nano` "
                  "command that made the row from the previous one.)"]
    return "\n".join(lines)


QUANTIZE_LABELS = {
    "float": "float32 (no quantization)",
    "gptq": "Nano GPTQ, int8 embedding",
    "awq": "Nano AWQ, int8 embedding",
    "mse": "Nano MSE clipping, int8 embedding",
    "rtn": "Nano round-to-nearest, int8 embedding",
    "int4-last": "Nano GPTQ, int4 g32 embedding GPTQ'd last (as the quantized layers' LM head)",
    "int4": "Nano GPTQ, `--embed int4` (int4 g32, GPTQ'd first, as the float model's LM head)",
    "mixed": "Nano GPTQ, **`--embed mixed`** (int4 g64 + the most frequent tokens' rows int8)",
}


def render_quantize(results: list[dict]) -> str:
    """benchmarks/quantize.py: post-training and quantization-aware 4-bit rows next to llama.cpp's
    own quantizations of the same float weights, on the in-domain and out-of-domain held-out texts."""
    (r,) = results
    lines = [source_line(r["provenance"])]
    names = {"teacher": "Gemma 3 270M (its float weights are the dequantized Q4_K_M file)",
             "student": "the pruned student of `make demo` (d512, recovered on 8,192 tokens; never quantized)"}
    for label, m in r["models"].items():
        lines += ["", f"**{names.get(label, label)}**", "",
                  "| weights | held-out ppl | × float | gap closed | out-of-domain ppl | × float | gap closed "
                  "| bits/weight (all tensors) | CPU time to make |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for name, row in [*m["rows"].items(), *m["llama_cpp"].items()]:
            if name == "qat":
                curve = " → ".join(f"{c['heldout_ppl_8']:.2f}" for c in row["curve"] if c["heldout_ppl_8"])
                text = (f"+ QAT (`--qat --freeze-embed`) from the `--embed mixed` row, {row['tokens']:,} tokens at lr "
                        f"{row['lr']:g} (8-window curve: {curve})")
            else:
                text = QUANTIZE_LABELS.get(name, f"{name} (same float weights)")
            gap = lambda tag: f"{100 * row['gap_closed' + tag]:.1f}%" if "gap_closed" + tag in row else ""
            cpu = f"{row['cpu_s'] / 60:.1f} min" if "cpu_s" in row else ""
            lines.append(f"| {text} | {row['perplexity']:.3f} | {row['perplexity_vs_float']:.3f} | {gap('')} "
                         f"| {row['perplexity_ood']:.3f} | {row['perplexity_ood_vs_float']:.3f} | {gap('_ood')} "
                         f"| {row['bits_per_weight']:.3f} | {cpu} |")
    lines += ["", f"({r['windows']} SQLite held-out windows × {r['window']}; out of domain: as many windows of "
                  f"`{r['heldout_ood']['source']}` (quotations and verse). Gap closed: share of the llama.cpp Q4_0 → "
                  "float perplexity gap, against pure Q4_0 for the rows with a 4-bit embedding and Q4_0 with a Q8_0 "
                  "embedding for the others. Calibration: "
                  f"{r['calibration']}. CPU time: user + system seconds of the `nano` command that made the row.)"]
    return "\n".join(lines)


def render_stream_rss(results: list[dict]) -> str:
    """benchmarks/stream_rss.py: peak RSS of a short `nano distill` against the training split's size."""
    (r,) = results
    mib = lambda run: f"{run['peak_rss_bytes'] / 2**20:,.0f} MiB"
    lines = [source_line(r["provenance"]), "",
             f"| training tokens | shards (on disk) | rows of {r['seq_len']} | peak RSS of `nano distill`, each run |",
             "|---|---|---|---|"]
    for run in r["runs"]:
        lines.append(f"| {run['tokens']:,} | {run['shards']} ({run['disk_bytes'] / 2**30:.2f} GiB) | {run['rows']:,} "
                     f"| {' / '.join(map(mib, run['repeats']))} |")
    big = r["runs"][-1]
    lines += ["", f"(Student `{r['student']}`, no teacher, {r['steps']} steps × {r['batch_size']} × {r['seq_len']}, "
                  f"eval off. Highest peak at {big['tokens']:,} tokens minus highest at {r['runs'][0]['tokens']:,}: "
                  f"{r['growth_bytes'] / 2**20:+,.0f} MiB; of what grows with the data, the epoch's order is "
                  f"4 bytes per row, {4 * big['rows'] / 2**20:.0f} MiB. Concatenating the shards and building every "
                  f"row's inputs, as before, held 8 bytes per token: {8 * big['tokens'] / 2**30:,.1f} GiB.)"]
    return "\n".join(lines)


# Dense bf16 peak per chip (vendor datasheets) and the MFU a launch recipe assumes.
ACCELERATORS = {"8 × H100 SXM": 8 * 989e12, "TPU v5e-8": 8 * 197e12}
ASSUMED_MFU = 0.40
PLAN_TOKENS = 10e9


def render_launch(results: list[dict]) -> str:
    """The throughput a launch recipe implies for each planned step (benchmarks/nano1_plan.py's
    files): 6 FLOPs per student parameter and 2 per teacher parameter per token, at ASSUMED_MFU."""
    lines = [source_line(results[0]["provenance"]) + " (parameter counts)", "",
             "| student ← teacher | GFLOP per token | "
             + " | ".join(f"{name}: tokens/s, hours for {PLAN_TOKENS / 1e9:.0f}B tokens" for name in ACCELERATORS)
             + " |", "|---" * (2 + len(ACCELERATORS)) + "|"]
    seen = set()
    for r in results:
        a = r["args"]
        if (a["student"], a["teacher"]) in seen:
            continue
        seen.add((a["student"], a["teacher"]))
        flops = 6 * r["student_params"] + 2 * r["teacher_params"]
        cells = []
        for peak in ACCELERATORS.values():
            rate = ASSUMED_MFU * peak / flops
            cells.append(f"{rate:,.0f} tok/s, {PLAN_TOKENS / rate / 3600:,.0f} h")
        lines.append(f"| {a['student']} ({r['student_params'] / 1e9:.2f}B) ← {a['teacher']} "
                     f"({r['teacher_params'] / 1e9:.2f}B) | {flops / 1e9:.1f} | " + " | ".join(cells) + " |")
    lines += ["", f"(Arithmetic on the parameter counts in the files above: (6 × student + 2 × teacher) FLOPs per "
                  f"token at {ASSUMED_MFU:.0%} MFU of the dense bf16 peak ({', '.join(f'{k} {v / 1e15:.2f} PFLOP/s' for k, v in ACCELERATORS.items())}); "
                  "attention FLOPs and the held-out evaluations are left out. Not a measurement.)"]
    return "\n".join(lines)


RENDERERS: dict[str, Callable[[list[dict]], str]] = {"export_bench": render_export_bench,
                                                      "launch": render_launch,
                                                      "qat": render_qat, "quantize": render_quantize,
                                                      "stream_rss": render_stream_rss,
                                                      "recovery": render_recovery,
                                                      "prune": render_prune,
                                                      "quantize_embed": render_quantize_embed,
                                                      "nano1_plan": render_nano1_plan,
                                                      "long_context": render_long_context,
                                                      "ring_parity": render_ring_parity}


def render(kind: str, paths: list[str], root: Path = ROOT) -> str:
    if kind not in RENDERERS:
        raise NanoError(f"README table kind {kind!r} has no renderer; use one of {', '.join(RENDERERS)}")
    results = []
    for p in paths:
        path = root / p
        if not path.is_file():
            raise NanoError(f"{p}: result file missing; run the benchmark that writes it, or drop its table")
        results.append(json.loads(path.read_text()))
    return RENDERERS[kind](results)


def tables(text: str) -> list[tuple[str, list[str], str]]:
    """(kind, result paths, current body) of every generated table in `text`."""
    return [(m.group(2), [p.strip() for p in m.group(3).split(",")], m.group(4).rstrip("\n"))
            for m in TABLE.finditer(text)]


def regenerate(text: str, root: Path = ROOT) -> str:
    """`text` with every generated table rendered afresh from its files."""
    def sub(m: re.Match) -> str:
        body = render(m.group(2), [p.strip() for p in m.group(3).split(",")], root)
        return f"{m.group(1)}{body}\n{m.group(5)}"

    return TABLE.sub(sub, text)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="only compare; exit 1 when a table is stale")
    args = ap.parse_args(argv)
    readme = ROOT / "README.md"
    text = readme.read_text()
    try:
        new = regenerate(text)
    except NanoError as e:
        raise SystemExit(f"error: {e}") from None
    stale = [kind for (kind, _, old), (_, _, fresh) in zip(tables(text), tables(new)) if old != fresh]
    if args.check:
        print(f"stale tables: {', '.join(stale)}" if stale else f"{len(tables(text))} tables current")
        sys.exit(1 if stale else 0)
    readme.write_text(new)
    print(f"README.md: {len(tables(new))} tables, {len(stale)} rewritten ({', '.join(stale) or 'none changed'})")


if __name__ == "__main__":
    main()
