"""`nano` command line: thin Typer commands over the library. Errors print one line, exit 1."""

import contextlib
import functools
import json
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from nano.errors import NanoError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Distill, quantize, export and benchmark Gemma-family models for phones.")
data_app = typer.Typer(no_args_is_help=True, help="Prepare real text as token shards.")
app.add_typer(data_app, name="data")

# Rich assumes 80 columns when not on a terminal; tables of model shapes need more.
_WIDTH = None if sys.stdout.isatty() else 160
console = Console(width=_WIDTH)
err_console = Console(stderr=True, width=_WIDTH)


def _friendly(fn):
    """Turn library errors into one red line and exit status 1 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except NanoError as e:
            err_console.print(f"[bold red]error:[/] {e}", markup=True, highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            err_console.print("[bold red]interrupted[/]; everything written so far is intact")
            raise typer.Exit(130) from None

    return wrapper


@contextlib.contextmanager
def progress_bar():
    """A rich progress bar and a `report(stage, done, total)` callback feeding it."""
    cols = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TimeRemainingColumn())
    with Progress(*cols, console=err_console, transient=False) as bar:
        tasks: dict[str, int] = {}

        def report(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
            bar.update(tasks[stage], completed=done, total=total)

        yield report


def _checkpoint(spec: str) -> Path:
    from nano.convert import resolve_teacher

    with err_console.status(f"resolving {spec}"):
        return resolve_teacher(spec)


@app.command()
@_friendly
def presets() -> None:
    """List the model presets with their parameter counts (computed without allocating)."""
    from nano.config import PRESETS
    from nano.model import abstract_model, param_count

    table = Table("preset", "params", "non-embedding", "d", "layers", "heads/kv", "head_dim", "ffn", "vocab")
    for name, c in PRESETS.items():
        total = param_count(abstract_model(c))
        table.add_row(name, f"{total / 1e6:,.1f}M", f"{(total - c.vocab_size * c.d_model) / 1e6:,.1f}M",
                      str(c.d_model), str(c.num_layers), f"{c.num_heads}/{c.num_kv_heads}", str(c.head_dim),
                      str(c.ffn_dim), f"{c.vocab_size:,}")
    console.print(table)


@app.command()
@_friendly
def convert(
    src: Annotated[str, typer.Argument(help="A .gguf file, a Hugging Face Gemma 2/3 safetensors folder, or `gemma3-270m` (the packaged teacher).")],
    out: Annotated[Path, typer.Option("--out", help="Output checkpoint directory.")],
    overwrite: Annotated[bool, typer.Option(help="Replace an existing --out.")] = False,
    dtype: Annotated[str, typer.Option(help="float32 or bfloat16.")] = "float32",
) -> None:
    """Import a teacher into a Nano checkpoint (safetensors + config + tokenizer)."""
    from nano.checkpoint import load_config, load_meta
    from nano.convert import convert as run

    with err_console.status(f"converting {src}"):
        path = run(src, out, overwrite=overwrite, dtype=dtype)
    c = load_config(path)
    console.print(f"wrote {path} ({c.name}: {c.num_layers} layers, d {c.d_model}, vocab {c.vocab_size:,})")
    skipped = load_meta(path).get("skipped_tensors")
    if skipped:
        kinds = ", ".join(f"{n} {k}" for k, n in skipped.items())
        console.print(f"note: skipped {kinds} tensors (not part of the text tower)")


@data_app.command("prepare")
@_friendly
def data_prepare(
    out: Annotated[Optional[Path], typer.Option(help="Output directory (default: the cache's data/default).")] = None,
    tokenizer: Annotated[str, typer.Option(help="Checkpoint whose tokenizer to use, or `gemma3-270m`.")] = "gemma3-270m",
    train: Annotated[Optional[list[str]], typer.Option(help="Training source(s): debian:PKG, folder:DIR or jsonl:FILE (default debian:python3.11-doc).")] = None,
    heldout: Annotated[Optional[list[str]], typer.Option(help="Held-out source(s), same forms (default debian:sqlite3-doc).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Rebuild even if --out holds another preparation.")] = False,
) -> None:
    """Clean, deduplicate and tokenize real text into memory-mapped train/held-out shards."""
    from nano.checkpoint import load_tokenizer
    from nano.data.prepare import default_data_dir, prepare
    from nano.data.sources import DEFAULT_SOURCES

    tok = load_tokenizer(_checkpoint(tokenizer))
    out = out or default_data_dir(tok.sha256)
    sources = {"train": train or [str(s) for s in DEFAULT_SOURCES["train"]],
               "heldout": heldout or [str(s) for s in DEFAULT_SOURCES["heldout"]]}
    with progress_bar() as report:
        manifest = prepare(out, tok, sources=sources, progress=report, overwrite=overwrite)
    table = Table("split", "documents", "tokens", "sources")
    for split, info in manifest.splits.items():
        table.add_row(split, f"{info['documents']:,}", f"{info['tokens']:,}", ", ".join(s["spec"] for s in info["sources"]))
    console.print(table)
    console.print(f"wrote {out}")


_SPLITS = {"held-out": "heldout", "heldout": "heldout", "train": "train"}


def _resolve_data(data: str, split: Optional[str], ckpt: Path) -> tuple[Path, str]:
    """`held-out`/`train` mean the default Debian-docs preparation for the checkpoint's
    tokenizer (prepared on first use); anything else is a prepared data directory."""
    from nano.checkpoint import load_tokenizer
    from nano.data.prepare import prepare_default

    if data in _SPLITS:
        tok = load_tokenizer(ckpt)
        with progress_bar() as report:
            return prepare_default(tok, progress=report), _SPLITS[data]
    return Path(data), _SPLITS.get(split or "heldout", split or "heldout")


@app.command("eval")
@_friendly
def eval_cmd(
    ckpt: Annotated[str, typer.Argument(help="Checkpoint directory or `gemma3-270m`.")],
    data: Annotated[str, typer.Option(help="`held-out`/`train` (the default prepared data) or a prepared data directory.")] = "held-out",
    split: Annotated[Optional[str], typer.Option(help="Split of a data directory (default heldout).")] = None,
    windows: Annotated[int, typer.Option(help="Number of windows, evenly spread over the split; 0 = all.")] = 40,
    window: Annotated[int, typer.Option(help="Window length (BOS + window-1 scored tokens).")] = 512,
    batch_size: Annotated[int, typer.Option(help="Windows per forward pass.")] = 1,
    json_out: Annotated[Optional[str], typer.Option("--json", help="Also write the result as JSON to this file (`-` = stdout).")] = None,
) -> None:
    """Held-out perplexity (every token scored) and scoring speed."""
    from nano.checkpoint import load_checkpoint, load_meta
    from nano.data.shards import TokenSplit, eval_windows
    from nano.eval import evaluate

    path = _checkpoint(ckpt)
    meta = load_meta(path)
    data_dir, split = _resolve_data(data, split, path)
    tokens = TokenSplit.open(data_dir, split)
    if meta.get("tokenizer_sha256"):
        tokens.check_tokenizer(meta["tokenizer_sha256"])
    bos = int(tokens.manifest["tokenizer"].get("bos_id", 2))
    wins = eval_windows(tokens.tokens, window=window, bos_id=bos, max_windows=windows or None)
    model = load_checkpoint(path)
    with progress_bar() as report:
        result = evaluate(model, wins, batch_size=batch_size,
                          progress=lambda d, t: report(f"scoring {split}", d, t))
    row = {"checkpoint": str(path), "model": model.config.name, "data": str(data_dir), "split": split,
           **result.as_dict()}
    table = Table("model", "split", "windows", "scored tokens", "perplexity", "tokens/s")
    table.add_row(model.config.name, split, f"{result.windows} x {result.window}", f"{result.scored_tokens:,}",
                  f"{result.perplexity:.3f}", f"{result.tokens_per_s:,.0f}")
    console.print(table)
    if json_out == "-":
        sys.stdout.write(json.dumps(row, indent=2) + "\n")
    elif json_out:
        from nano.files import write_json

        write_json(json_out, row)


@app.command()
@_friendly
def generate(
    ckpt: Annotated[str, typer.Argument(help="Checkpoint directory, `gemma3-270m`, or an exported .litertlm (run by LiteRT-LM).")],
    prompt: Annotated[str, typer.Option(help="Text to continue.")],
    max_tokens: Annotated[int, typer.Option(help="New tokens at most.")] = 64,
    temperature: Annotated[float, typer.Option(help="0 = greedy.")] = 0.0,
    top_k: Annotated[Optional[int], typer.Option(help="Sample from the k most likely tokens.")] = None,
    top_p: Annotated[Optional[float], typer.Option(help="Nucleus sampling mass.")] = None,
    seed: Annotated[int, typer.Option(help="Sampling seed.")] = 0,
) -> None:
    """Continue a prompt on the KV-cache path, streaming the text; a .litertlm runs on LiteRT-LM
    (what an app gets), so its text can be compared with the checkpoint's."""
    from nano.checkpoint import load_checkpoint, load_tokenizer
    from nano.generate import Sampling, generate as run

    if ckpt.endswith(".litertlm"):
        from export.runtime import litertlm_generate

        pieces = litertlm_generate(ckpt, prompt, max_tokens=max_tokens, temperature=temperature,
                                   top_k=top_k, top_p=top_p, seed=seed)
        console.print(prompt, end="", style="bold", highlight=False)
        for piece in pieces:
            console.print(piece, end="", highlight=False, markup=False)
        console.print()
        return
    path = _checkpoint(ckpt)
    tok = load_tokenizer(path)
    model = load_checkpoint(path)
    sampling = Sampling(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
    ids, text, stops = [], "", tok.stop_ids()
    console.print(prompt, end="", style="bold", highlight=False)
    for tid in run(model, tok.encode(prompt, add_bos=True), max_new_tokens=max_tokens,
                   sampling=sampling, stop_ids=stops):
        if tid in stops:
            break
        ids.append(tid)
        new = tok.decode(ids)
        console.print(new[len(text):], end="", highlight=False, markup=False)
        text = new
    console.print()


@app.command()
@_friendly
def quantize(
    ckpt: Annotated[str, typer.Argument(help="Float checkpoint directory or `gemma3-270m` (never modified).")],
    out: Annotated[Path, typer.Option(help="Output directory for the quantized checkpoint.")],
    method: Annotated[Optional[str], typer.Option(help="gptq | awq | mse | rtn (default gptq, or the recipe's).")] = None,
    bits: Annotated[Optional[int], typer.Option(help="4 or 8 (default 4).")] = None,
    group: Annotated[Optional[int], typer.Option(help="Weights per scale along the input (32/64/128); 0 = per channel.")] = None,
    asymmetric: Annotated[bool, typer.Option(help="Zero points (asymmetric) instead of symmetric codes.")] = False,
    embed: Annotated[Optional[str], typer.Option(help="Tied embedding / LM head: int8 (default, per row), int4 (GPTQ as the LM head on its calibration inputs, group 32), mixed (int4 group 64 GPTQ with the most frequent calibration tokens' rows at int8, in int4 group 32's bits; LiteRT only), int4-mse (no calibration) or float.")] = None,
    recipe: Annotated[Optional[Path], typer.Option(help="JSON recipe with per-tensor overrides (see quantize/recipe.py); options here override it.")] = None,
    calib: Annotated[Optional[str], typer.Option(help="Calibration text: a prepared data dir (train split), a text file, a folder, or a .jsonl (default: the prepared Python docs).")] = None,
    calib_rows: Annotated[int, typer.Option(help="Calibration rows.")] = 128,
    calib_len: Annotated[int, typer.Option(help="Tokens per calibration row.")] = 512,
    eval_windows: Annotated[int, typer.Option(help="Held-out windows (x512) scored before and after; 0 = skip.")] = 16,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing --out.")] = False,
) -> None:
    """Quantize a float checkpoint to int4/int8 (GPTQ, AWQ, MSE clipping or round-to-nearest)."""
    from nano.checkpoint import expected_shapes, load_config, load_tokenizer
    from nano.data.prepare import prepare_default
    from nano.data.shards import TokenSplit, eval_windows as windows_of
    from quantize.recipe import EMBED_INT4, Recipe, embed_mixed
    from quantize.run import quantize_checkpoint

    path = _checkpoint(ckpt)
    given = {k: v for k, v in dict(method=method, bits=bits).items() if v is not None}
    if group is not None:
        given["group"] = None if group == 0 else group
    if asymmetric:
        given["symmetric"] = False
    rec = Recipe.from_file(recipe, **given) if recipe is not None else Recipe.from_dict(given, source="options")
    if embed is not None:
        config = load_config(path)
        specs = {"int8": {"method": "rtn", "bits": 8, "group": None},
                 "int4": dict(EMBED_INT4), "mixed": embed_mixed(config.vocab_size, config.d_model),
                 "int4-mse": {"method": "mse", "bits": 4, "group": rec.default.group or 32}, "float": None}
        if embed not in specs:
            raise NanoError(f"--embed {embed!r}: use int8, int4, mixed, int4-mse or float")
        import dataclasses

        rec = dataclasses.replace(rec, overrides=(*rec.overrides, ("embed", specs[embed])))
    tok = load_tokenizer(path)
    needs_calib = rec.needs_calibration(expected_shapes(load_config(path)))
    data_dir = None
    if (calib is None and needs_calib) or eval_windows:  # the default Debian-docs preparation
        with progress_bar() as report:
            data_dir = prepare_default(tok, progress=report)
    wins = None
    if eval_windows:
        held = TokenSplit.open(data_dir, "heldout")
        wins = windows_of(held.tokens, window=512, bos_id=tok.bos_id, max_windows=eval_windows)
    with progress_bar() as report:
        summary = quantize_checkpoint(path, out, recipe=rec, calib=calib or data_dir, calib_rows=calib_rows,
                                      calib_len=calib_len, eval_windows=wins, overwrite=overwrite,
                                      progress=report)
    _print_quant_report(summary)
    console.print(f"wrote {out}")


@app.command()
@_friendly
def prune(
    ckpt: Annotated[str, typer.Argument(help="Float checkpoint directory or `gemma3-270m` (never modified).")],
    out: Annotated[Path, typer.Option(help="Output directory for the pruned float checkpoint (+ prune.json).")],
    d_model: Annotated[Optional[int], typer.Option(help="Embedding channels to keep.")] = None,
    ffn: Annotated[Optional[int], typer.Option(help="FFN neurons to keep per layer.")] = None,
    heads: Annotated[Optional[int], typer.Option(help="Query heads to keep per layer (a multiple of the KV heads).")] = None,
    layers: Annotated[Optional[int], typer.Option(help="Blocks to keep (chosen greedily by calibration NLL).")] = None,
    drop_layers: Annotated[Optional[str], typer.Option(help="Comma-separated blocks to remove instead of choosing them, e.g. 6,12,13.")] = None,
    preset: Annotated[Optional[str], typer.Option(help="Take d/ffn/heads/layers from a preset with the source's head_dim, KV heads and vocab.")] = None,
    data: Annotated[Optional[str], typer.Option(help="Prepared data dir (default: the Debian docs for the checkpoint's tokenizer).")] = None,
    calib_rows: Annotated[int, typer.Option(help="Calibration rows (train split).")] = 8,
    calib_len: Annotated[int, typer.Option(help="Tokens per calibration row.")] = 256,
    eval_windows: Annotated[int, typer.Option(help="Held-out windows (x512) scored before and after; 0 = skip.")] = 8,
    refit: Annotated[bool, typer.Option(help="Least-squares refit of o/down on calibration moments after pruning heads/neurons.")] = True,
    norm_correction: Annotated[bool, typer.Option(help="Rescale norm gains for the energy of dropped channels (--d-model).")] = True,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing --out.")] = False,
) -> None:
    """Prune blocks, query heads, FFN neurons and embedding channels by activation importance."""
    from distill.prune import PruneTargets, prune_checkpoint
    from nano.checkpoint import load_config, load_tokenizer
    from nano.data.prepare import prepare_default

    path = _checkpoint(ckpt)
    if preset is not None:
        targets = PruneTargets.from_preset(preset, load_config(path))
    else:
        drop = None
        if drop_layers is not None:
            try:
                drop = tuple(int(x) for x in drop_layers.split(",") if x.strip())
            except ValueError:
                raise NanoError(f"--drop-layers {drop_layers!r}: give comma-separated layer numbers, e.g. 6,12,13") from None
        targets = PruneTargets(d_model=d_model, ffn_dim=ffn, num_heads=heads, num_layers=layers, drop_layers=drop)
    if data is None:
        with progress_bar() as report:
            data = prepare_default(load_tokenizer(path), progress=report)
    with progress_bar() as report:
        doc = prune_checkpoint(path, out, targets=targets, data=data, calib_rows=calib_rows, calib_len=calib_len,
                               eval_windows_n=eval_windows, refit=refit, norm_correction=norm_correction,
                               overwrite=overwrite, progress=report)
    t, h = doc["targets"], doc["heldout"]
    table = Table("d_model", "ffn", "heads", "layers", "params", "held-out ppl before", "after")
    fmt = lambda v: "-" if v is None else f"{v:,.2f}"
    table.add_row(str(t["d_model"]), str(t["ffn_dim"]), str(t["num_heads"]), str(t["num_layers"]),
                  f"{doc['params']['before'] / 1e6:,.1f}M -> {doc['params']['after'] / 1e6:,.1f}M",
                  fmt(h["ppl_before"]), fmt(h["ppl_after"]))
    console.print(table)
    if "blocks" in doc:
        console.print(f"removed blocks {doc['blocks']['removed']}; global layers now {doc['blocks']['global_layers']}")
    console.print(f"wrote {out}")


def _print_quant_report(summary: dict) -> None:
    table = Table("tensor", "method", "bits/weight", "weight rel err", "output rel err")
    for name, row in summary["report"].items():
        out_err = row["output_rel_err"]
        method = row["method"] + (f" (+ {row['hot_rows']:,} int8 rows)" if row.get("hot_rows") else "")
        table.add_row(name, method, f"{row['bits_per_weight']:.3f}", f"{row['weight_rel_err']:.4f}",
                      "-" if out_err is None else f"{out_err:.5f}")
    console.print(table)
    t = summary["totals"]
    total = Table("params", "size", "float32 size", "bits/weight (all)", "bits/weight (linear)", "seconds",
                  "held-out ppl float", "quantized", "change")
    held = t["heldout"] or {}
    total.add_row(f"{t['params'] / 1e6:,.1f}M", f"{t['bytes'] / 2**20:,.1f} MiB", f"{t['float32_bytes'] / 2**20:,.1f} MiB",
                  f"{t['bits_per_weight']:.3f}", f"{t['linear_bits_per_weight']:.3f}", f"{t['quantize_seconds']:.1f}",
                  f"{held['ppl_float']:.3f}" if held else "-", f"{held['ppl_quantized']:.3f}" if held else "-",
                  f"{100 * held['ppl_change']:+.2f}%" if held else "-")
    console.print(total)


@app.command("export")
@_friendly
def export_cmd(
    ckpt: Annotated[str, typer.Argument(help="Float or quantized (`nano quantize`) checkpoint directory.")],
    out: Annotated[Path, typer.Option(help="Output .tflite (the .litertlm goes beside it), or .gguf for llama.cpp (a quantized checkpoint's codes as Q4_0/Q8_0, bit for bit).")],
    litertlm: Annotated[bool, typer.Option("--litertlm", help="Also bundle the .tflite, tokenizer and metadata into a .litertlm for LiteRT-LM.")] = False,
    seq_len: Annotated[Optional[int], typer.Option(help="KV-cache length (default min(max_seq_len, 1024)).")] = None,
    prefill_lens: Annotated[Optional[str], typer.Option(help="Prefill signature lengths, e.g. 8,64,128 (the default, capped at seq_len); the runtime picks them per prompt.")] = None,
    max_tokens: Annotated[Optional[int], typer.Option(help="LiteRT-LM max tokens (default seq_len).")] = None,
    ring_kv: Annotated[bool, typer.Option(help="Local (sliding-window) layers keep a ring of `window` KV positions in the .tflite (CompiledModel); the .litertlm keeps full caches, as LiteRT-LM needs.")] = True,
) -> None:
    """Export to LiteRT: one .tflite with `prefill_<T>` and `decode` signatures (our int4 codes inside);
    or, with --out *.gguf, to llama.cpp's format."""
    if out.suffix == ".gguf":
        from export.gguf import export_gguf

        summary = export_gguf(_checkpoint(ckpt), out)
        table = Table("file", "size", "quantized tensors", "types")
        table.add_row(summary["gguf"], f"{summary['gguf_bytes'] / 2**20:,.1f} MiB", str(summary["quantized_tensors"]),
                      ", ".join(summary["types"]))
        console.print(table)
        return
    _quiet_tensorflow()
    from export.checkpoint import export_checkpoint
    from export.tflite import parse_prefill_lens

    lens = None if prefill_lens is None else parse_prefill_lens(prefill_lens)
    with progress_bar() as report:
        summary = export_checkpoint(_checkpoint(ckpt), out, seq_len=seq_len, prefill_lens=lens,
                                    litertlm=litertlm, ring=ring_kv, max_tokens=max_tokens, progress=report)
    table = Table("file", "size", "seq_len", "prefill lengths", "quantized tensors", "seconds")
    kv = " (ring KV)" if summary["ring_kv"] else ""
    table.add_row(summary["tflite"] + kv, f"{summary['tflite_bytes'] / 2**20:,.1f} MiB", str(summary["seq_len"]),
                  ",".join(map(str, summary["prefill_lens"])), str(summary["quantized_tensors"]), f"{summary['seconds']:.1f}")
    if summary.get("litertlm"):
        table.add_row(summary["litertlm"], f"{summary['litertlm_bytes'] / 2**20:,.1f} MiB", "", "", "", "")
    console.print(table)


def _quiet_tensorflow() -> None:
    """Before TensorFlow loads: no C++ start-up chatter, and no oneDNN notice (printed through absl
    before its logging starts, so TF_CPP_MIN_LOG_LEVEL cannot hide it; export only traces the
    graph, it runs no TensorFlow kernels whose round-off oneDNN would change)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")


@app.command()
@_friendly
def bench(
    model: Annotated[Path, typer.Argument(help="An exported .tflite (its .litertlm beside it is run too) or a .litertlm.")],
    gguf: Annotated[Optional[Path], typer.Option(help="llama.cpp comparator: a GGUF of the same weights, timed in the same run.")] = None,
    threads: Annotated[int, typer.Option(help="CPU threads for every runtime.")] = 2,
    prompt_lens: Annotated[str, typer.Option(help="Prompt lengths (comma-separated); decode runs after each.")] = "128,512,896",
    decode_tokens: Annotated[int, typer.Option(help="Decode steps per prompt.")] = 128,
    repeats: Annotated[int, typer.Option(help="Rounds; each round runs every runtime once, in turn.")] = 3,
    android: Annotated[bool, typer.Option(help="Also run on the attached adb device (see benchmarks/harness/android.py).")] = False,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the full result as JSON.")] = None,
    plot_out: Annotated[Optional[Path], typer.Option("--plot", help="Write latency vs context length as a PNG.")] = None,
) -> None:
    """Latency on this CPU (LiteRT CompiledModel, LiteRT-LM) next to llama.cpp, with the bandwidth bound."""
    _quiet_tensorflow()
    from benchmarks.harness.run import format_report, parse_prompt_lens, plot, run_bench

    lens = parse_prompt_lens(prompt_lens)
    with progress_bar() as report:
        result = run_bench(model, threads=threads, prompt_lens=lens, decode_tokens=decode_tokens, repeats=repeats,
                           compare_llamacpp=gguf, android=android, progress=report)
    console.print(format_report(result), highlight=False, markup=False)
    if json_out:
        from nano.files import write_json

        write_json(json_out, result)
    if plot_out:
        plot(result, plot_out)


distill_app = typer.Typer(no_args_is_help=False, invoke_without_command=True,
                          help="Distill a student from a teacher's probabilities (see `nano distill --help`).")
app.add_typer(distill_app, name="distill")


@distill_app.callback()
@_friendly
def distill_cmd(
    ctx: typer.Context,
    out: Annotated[Optional[Path], typer.Option(help="Run directory (checkpoints, metrics, final student).")] = None,
    teacher: Annotated[Optional[str], typer.Option(help="`gemma3-270m`, a checkpoint dir, a teacher cache (`nano distill cache-teacher`), or `none` for plain cross-entropy.")] = None,
    student: Annotated[Optional[str], typer.Option(help="Student preset (see `nano presets`).")] = None,
    init: Annotated[Optional[str], typer.Option(help="Start the student from this checkpoint (e.g. `nano prune`'s) instead of a random preset.")] = None,
    data: Annotated[Optional[str], typer.Option(help="Prepared data dir (default: the Debian docs for the teacher's tokenizer).")] = None,
    tokens: Annotated[Optional[int], typer.Option(help="Training tokens.")] = None,
    config: Annotated[Optional[Path], typer.Option(help="JSON file with any TrainConfig fields; options given here override it.")] = None,
    seq_len: Annotated[Optional[int], typer.Option(help="Sequence length.")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Sequences per optimizer step.")] = None,
    grad_accum: Annotated[Optional[int], typer.Option(help="Micro-batches per step.")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Peak learning rate.")] = None,
    warmup_steps: Annotated[Optional[int], typer.Option(help="Linear warmup steps before the cosine decay.")] = None,
    loss: Annotated[Optional[str], typer.Option(help="forward_kl | reverse_kl | jsd.")] = None,
    temperature: Annotated[Optional[float], typer.Option(help="Distillation temperature.")] = None,
    alpha: Annotated[Optional[float], typer.Option(help="Weight of hard-label cross-entropy.")] = None,
    beta: Annotated[Optional[float], typer.Option(help="Generalized JSD beta.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed (init, data order).")] = None,
    compute_dtype: Annotated[Optional[str], typer.Option(help="auto (float32 on CPU, bfloat16 on accelerators), bfloat16 or float32.")] = None,
    freeze_embed: Annotated[bool, typer.Option("--freeze-embed", help="Keep the tied embedding / LM head as it starts (e.g. from --init): no gradient, no Adam moments.")] = False,
    qat: Annotated[bool, typer.Option("--qat", help="Quantization-aware: train --init (a `nano quantize` checkpoint) through its own 4/8-bit grid, learning weights and scales; writes a quantized checkpoint.")] = False,
    remat: Annotated[Optional[str], typer.Option(help="What each student block keeps for the backward pass: none, block (its input only: least memory, ~1/3 more compute) or dots (+ its weight matmuls' outputs).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run in --out from its last checkpoint.")] = False,
    coordinator: Annotated[Optional[str], typer.Option(envvar="NANO_COORDINATOR", help="Multi-process run: HOST:PORT of process 0 (which listens there).")] = None,
    num_processes: Annotated[Optional[int], typer.Option(envvar="NANO_NUM_PROCESSES", help="Multi-process run: how many processes.")] = None,
    process_id: Annotated[Optional[int], typer.Option(envvar="NANO_PROCESS_ID", help="Multi-process run: this process, 0..N-1.")] = None,
    coordinator_timeout: Annotated[float, typer.Option(envvar="NANO_COORDINATOR_TIMEOUT", help="Seconds to wait for the coordinator and the other processes.")] = 300,
) -> None:
    """Train a student on a teacher's probabilities; resumable (`--resume`) after any kill.
    Several processes (one per host) train one run with --coordinator/--num-processes/--process-id."""
    if ctx.invoked_subcommand is not None:
        return
    if out is None:
        raise NanoError("missing --out: the run directory for checkpoints, metrics and the final student")
    from distill.train import TrainConfig, start_run

    if init is not None and student is not None:
        raise NanoError("give --student (a random preset) or --init (a checkpoint to start from), not both")
    options = dict(teacher=teacher, student=student, init=init, data=data, tokens=tokens, seq_len=seq_len,
                   batch_size=batch_size, grad_accum=grad_accum, lr=lr, warmup_steps=warmup_steps, loss=loss, temperature=temperature,
                   alpha=alpha, beta=beta, seed=seed, compute_dtype=compute_dtype,
                   freeze_embed=freeze_embed or None, qat=qat or None, remat=remat)
    given = {k: v for k, v in options.items() if v is not None}  # what the command line sets
    if teacher == "none":
        given["teacher"] = None
    cfg = TrainConfig.from_file(config, **given) if config is not None else TrainConfig(**given)
    from distill.distributed import initialize, is_main_process

    initialize(coordinator, num_processes, process_id, timeout_s=coordinator_timeout)  # before any JAX call
    view, write_student = _qat(cfg) if cfg.qat else (None, None)
    with err_console.status("checking the teacher, data and student"):
        run = start_run(cfg, out, resume=resume, view=view)
    if not is_main_process():  # process 0 reports for the run
        run.train(write_student=write_student)
        return
    with training_bar(cfg.steps) as report:
        result = run.train(report, write_student=write_student)
    table = Table("steps", "loss", "held-out ppl", "tokens/s", "student")
    table.add_row(str(result["steps"]), f"{result.get('loss', float('nan')):.4f}",
                  f"{result.get('heldout_ppl', float('nan')):.2f}", f"{result.get('tokens_per_s', 0):,.0f}",
                  str(out / "student"))
    console.print(table)


def _qat(cfg):
    """(the WeightView of `cfg.init`'s quantized grid, the writer of the trained quantized checkpoint)."""
    import functools

    from distill.train import WeightView
    from export.tflite import check_qtensors
    from nano.checkpoint import expected_shapes, flat_params, load_config, load_tokenizer
    from nano.qcheckpoint import read_quantized
    from quantize import qat

    scales, grid = qat.start(cfg.init)
    try:  # hours of training must end in a checkpoint `nano export` writes: refuse its grid now
        check_qtensors(expected_shapes(load_config(cfg.init)), read_quantized(cfg.init)[1])
    except NanoError as e:
        raise NanoError(f"--init {cfg.init}: `nano export` cannot write its grid ({e}); quantize it with a "
                        "grid LiteRT holds (int4 per channel or grouped, int8 per channel, symmetric)") from None

    def write(model, trained_scales, path, meta):
        qat.save(path, init=cfg.init, model_params=flat_params(model), scales=trained_scales, grid=grid,
                 config=model.config, tokenizer=load_tokenizer(cfg.init), meta=meta)

    return WeightView(extra=scales, apply=functools.partial(qat.apply, grid=grid)), write


@distill_app.command("cache-teacher")
@_friendly
def cache_teacher(
    out: Annotated[Path, typer.Option(help="Cache directory (resumable: re-run to finish it).")],
    teacher: Annotated[str, typer.Option(help="Teacher checkpoint or `gemma3-270m`.")] = "gemma3-270m",
    data: Annotated[Optional[str], typer.Option(help="Prepared data dir (default: the Debian docs for the teacher's tokenizer).")] = None,
    split: Annotated[str, typer.Option(help="Split to label.")] = "train",
    seq_len: Annotated[int, typer.Option(help="Row length; train with the same --seq-len.")] = 512,
    k: Annotated[int, typer.Option(help="Token ids stored per position.")] = 128,
    scheme: Annotated[str, typer.Option(help="topk, or sample (Gemma 3: k draws from the teacher, unbiased).")] = "topk",
    seed: Annotated[int, typer.Option(help="Sampling seed (scheme=sample).")] = 0,
    rows: Annotated[Optional[int], typer.Option(help="Label only the first N rows (default: all).")] = None,
    batch_size: Annotated[int, typer.Option(help="Rows per teacher forward.")] = 4,
    num_processes: Annotated[Optional[int], typer.Option(help="Independent processes sharing the labelling (shard i goes to process i mod N); default $SLURM_NTASKS, else 1.")] = None,
    process_id: Annotated[Optional[int], typer.Option(help="This process's index, 0..N-1; default $SLURM_PROCID, else 0.")] = None,
) -> None:
    """Run the teacher once over the data and store compressed per-token targets for reuse."""
    from distill.teacher_cache import build_cache, missing_shards
    from nano.checkpoint import load_tokenizer
    from nano.data.prepare import prepare_default

    num_processes, process_id = _process_slot(num_processes, process_id)
    ckpt = _checkpoint(teacher)
    data_dir = Path(data) if data else prepare_default(load_tokenizer(ckpt))
    with progress_bar() as report:
        manifest = build_cache(ckpt, data_dir, out, split=split, seq_len=seq_len, k=k, scheme=scheme, seed=seed,
                               max_rows=rows, batch_size=batch_size, process_id=process_id,
                               num_processes=num_processes, progress=lambda d, t: report("teacher rows", d, t))
    if not manifest["complete"]:
        missing = len(missing_shards(out, manifest))
        console.print(f"process {process_id} of {num_processes}: its shards are in {out}; {missing} shards of other "
                      "processes still missing (the last process to finish writes the manifest)")
        return
    size = sum(e["bytes"] for e in manifest["shards"])
    tokens = manifest["rows"]["total"] * manifest["rows"]["seq_len"]
    console.print(f"wrote {out}: {tokens:,} tokens, k={k} {scheme}, {size / max(tokens, 1):.0f} bytes/token")


def _process_slot(num_processes: int | None, process_id: int | None) -> tuple[int, int]:
    """(--num-processes, --process-id), each defaulting to what a launcher sets (SLURM: one task
    per process), else 1 and 0; one line naming the option or variable when out of range."""
    def resolve(value: int | None, flag: str, env: str, default: int) -> tuple[int, str]:
        if value is not None:
            return value, flag
        raw = os.environ.get(env)
        if raw is None:
            return default, flag
        try:
            return int(raw), f"${env}"
        except ValueError:
            raise NanoError(f"${env}={raw!r} is not an integer; pass {flag}") from None

    n, n_from = resolve(num_processes, "--num-processes", "SLURM_NTASKS", 1)
    i, i_from = resolve(process_id, "--process-id", "SLURM_PROCID", 0)
    if n < 1:
        raise NanoError(f"{n_from} {n}: the number of processes must be at least 1")
    if not 0 <= i < n:
        raise NanoError(f"{i_from} {i} is out of range: process ids run 0..{n - 1} for {n_from} {n}")
    return n, i


@contextlib.contextmanager
def training_bar(total: int):
    cols = (TextColumn("step"), MofNCompleteColumn(), BarColumn(), TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())
    with Progress(*cols, console=err_console) as bar:
        task = bar.add_task("train", total=total, info="")

        def report(step: int, steps: int, m: dict[str, float]) -> None:
            info = f"loss {m.get('loss', 0):.4f}"
            if "kl" in m:
                info += f" kl {m['kl']:.4f}"
            info += f" {m.get('tokens_per_s', 0):,.0f} tok/s"
            if "heldout_ppl" in m:
                info += f" ppl {m['heldout_ppl']:.2f}"
            bar.update(task, completed=step, total=steps, info=info)

        yield report


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
