"""Does the exported bundle say what `nano generate` says? Greedy continuations of a distilled
student under LiteRT-LM against nano.generate, for its float export and its int4 export.

    .venv/bin/python -m benchmarks.greedy_parity [--float CKPT] [--quantized CKPT] [--tokens 64]
        [--json benchmarks/results/greedy_parity.json]

Per prompt and model:
- free-running text: nano.generate on the checkpoint (a quantized one dequantized) against
  LiteRT-LM on the `.litertlm` (`export.runtime.litertlm_generate`, what an app runs);
- teacher-forced: LiteRT's CompiledModel on the same .tflite fed nano's greedy tokens, so every
  step is compared (top-1 agreement, max |logit difference|), with nano's top-1 minus top-2 margin
  at each step: a disagreement at a margin below the logit noise is a near-tie, not a bug.

Float weights run in float32 on both sides. Int4/int8 weights run in XNNPACK's dynamic-range
kernels, which quantize each activation row to int8 on the fly (no float-activation path for
quantized weights on CPU): that noise flips near-ties, after which free-running texts part ways.
Defaults: the student of benchmarks.distill_vs_ce and its GPTQ int4 from benchmarks.export_bench.
Bundles are exported under $NANO_CACHE/bench/export when missing or older than their checkpoint.
"""

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.export_bench import ensure_export, targets
from benchmarks.harness.core import cpu_pressure
from benchmarks.workspace import result_path, work_dir, write_result
from nano.errors import NanoError
from nano.files import WEIGHTS

PROMPTS = ("SQLite is", "The Python interpreter", "CREATE TABLE t1(a, b);", "A list comprehension",
           "The following example shows", "To open a database connection,")


def nano_greedy(model, tok, prompt: str, n: int) -> tuple[list[int], list[int], np.ndarray]:
    """(prompt ids with BOS, nano's greedy tokens, nano's logits (steps, V) that chose them)."""
    import jax.numpy as jnp

    from nano.generate import generate

    ids = [tok.bos_id] + tok.encode(prompt)
    want = list(generate(model, ids, max_new_tokens=n, stop_ids=tok.stop_ids()))
    logits, _ = model(jnp.asarray([ids + want[:-1]], jnp.int32))
    return ids, want, np.asarray(logits[0, len(ids) - 1:], np.float32)


def margins(logits: np.ndarray) -> np.ndarray:
    """Top-1 minus top-2 logit per row."""
    top2 = np.sort(logits, axis=-1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


def teacher_forced(tflite: Path, ids: list[int], want: list[int], threads: int) -> np.ndarray:
    """LiteRT's logits (steps, V) at each of nano's greedy steps, fed nano's tokens."""
    from benchmarks.harness.litert import CompiledLM

    lm = CompiledLM(tflite, threads=threads)
    try:
        out = [lm.prefill(ids)]
        for t in want[:-1]:
            out.append(lm.decode(t))
    finally:
        lm.close()
    return np.stack(out)


def first_text_divergence(tok, want: list[int], text: str) -> int | None:
    """Index of the first of nano's tokens whose text LiteRT-LM's `text` does not continue; None if
    the texts are equal."""
    stops = set(tok.stop_ids())
    want = [t for t in want if t not in stops]
    if tok.decode(want) == text:
        return None
    for i in range(len(want)):
        if not text.startswith(tok.decode(want[:i + 1])):
            return i
    return len(want)  # LiteRT-LM went on after nano stopped


def compare(ckpt: Path, tflite: Path, bundle: Path, prompts: Sequence[str], n: int, threads: int) -> dict[str, Any]:
    from export.runtime import litertlm_generate
    from nano.checkpoint import load_checkpoint, load_tokenizer

    tok, model = load_tokenizer(ckpt), load_checkpoint(ckpt)
    rows = []
    for prompt in prompts:
        ids, want, ref = nano_greedy(model, tok, prompt, n)
        margin = margins(ref)
        got = teacher_forced(tflite, ids, want, threads)
        agree = np.argmax(got, -1) == np.asarray(want)
        text = "".join(litertlm_generate(bundle, prompt, max_tokens=n, threads=threads))
        nano_text = tok.decode([t for t in want if t not in set(tok.stop_ids())])
        split = first_text_divergence(tok, want, text)
        rows.append({
            "prompt": prompt, "nano_text": nano_text, "litert_lm_text": text, "same_text": split is None,
            "first_divergence_token": split,
            "nano_margin_at_divergence": None if split is None or split >= len(margin) else float(margin[split]),
            "teacher_forced_top1_agree": int(agree.sum()), "steps": len(want),
            "max_abs_logit_diff": float(np.abs(got - ref).max()),
            "disagreement_margins": [float(m) for m in margin[~agree]],
            "nano_min_margin": float(margin.min())})
    return {"checkpoint": str(ckpt), "tflite": str(tflite), "litertlm": str(bundle), "rows": rows}


def format_result(name: str, r: dict) -> str:
    lines = [f"== {name}: {r['checkpoint']}",
             f"   {'prompt':<32}{'same text':>10}{'diverges at':>12}{'margin there':>13}"
             f"{'TF top-1':>10}{'max|dlogit|':>12}{'min margin':>11}"]
    for row in r["rows"]:
        split = "" if row["first_divergence_token"] is None else str(row["first_divergence_token"])
        m = row["nano_margin_at_divergence"]
        lines.append(f"   {row['prompt'][:31]:<32}{str(row['same_text']):>10}{split:>12}"
                     f"{'' if m is None else f'{m:.3f}':>13}"
                     f"{row['teacher_forced_top1_agree']:>5}/{row['steps']:<4}{row['max_abs_logit_diff']:>12.1e}"
                     f"{row['nano_min_margin']:>11.3f}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--float", dest="float_ckpt", type=Path, default=None)
    ap.add_argument("--quantized", type=Path, default=None)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=result_path("greedy_parity"))
    args = ap.parse_args(argv)
    args.float_ckpt = args.float_ckpt or work_dir("distill") / "distill" / "student"
    args.quantized = args.quantized or targets()["student"].ckpt
    pressure = cpu_pressure()
    out: dict[str, Any] = {"tokens": args.tokens, "prompts": list(PROMPTS)}
    try:
        for name, ckpt in (("float", args.float_ckpt), ("int4", args.quantized)):
            if not (ckpt / WEIGHTS).is_file():
                raise NanoError(f"{ckpt}: no checkpoint; run benchmarks.distill_vs_ce / export_bench or pass --{'float' if name == 'float' else 'quantized'}")
            tflite, bundle, _ = ensure_export(ckpt, f"{ckpt.name}-{name}")
            out[name] = compare(ckpt, tflite, bundle, PROMPTS, args.tokens, args.threads)
            print(format_result(name, out[name]), flush=True)
    except NanoError as e:
        raise SystemExit(f"error: {e}") from None
    write_result(args.json, out, pressure_before=pressure)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
