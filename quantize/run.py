"""`nano quantize`: a float checkpoint in, a quantized checkpoint and a report out."""

from __future__ import annotations

import datetime
import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from nano.checkpoint import load_checkpoint, load_config, load_meta, load_tokenizer, open_streamed
from nano.errors import NanoError
from nano.files import WEIGHTS
from nano.qcheckpoint import is_quantized, read_manifest, save_quantized, size_totals, tensor_bytes

from .pipeline import plan, quantize_model
from .recipe import NO_CALIBRATION, Recipe

Progress = Callable[[str, int, int], None]


def calibration_tokens(calib: str | Path, tokenizer, *, rows: int = 128, length: int = 512,
                       split: str = "train") -> tuple[np.ndarray, dict[str, Any]]:
    """(rows, length) BOS-prefixed windows spread evenly over the calibration text.

    ``calib``: a prepared data directory (its ``split``; it must use the model's tokenizer), a
    text file (.txt .md .rst .html), a folder of them, or a JSONL file of ``{"text": ...}``.
    """
    windows, info, _ = calibration_text(calib, tokenizer, rows=rows, length=length, split=split)
    return windows, info


def calibration_text(calib: str | Path, tokenizer, *, rows: int = 128, length: int = 512,
                     split: str = "train") -> tuple[np.ndarray, dict[str, Any], np.ndarray]:
    """`calibration_tokens`' windows and info, and the (V,) token counts of the whole text (what
    picks the embedding's hot rows: the rows alone see too few distinct tokens), read shard by
    shard."""
    from nano.data.shards import TokenSplit, eval_windows
    from nano.data.sources import Source, file_to_text, read_documents

    if rows <= 0 or length < 2:
        raise NanoError(f"calibration: rows {rows} / length {length} must be >= 1 / >= 2; use 128 x 512")
    path = Path(calib)
    if (path / "manifest.json").is_file():
        data = TokenSplit.open(path, split)
        data.check_tokenizer(tokenizer.sha256)
        stream, source = data.tokens, {"data": str(path), "split": split}
    elif path.is_dir() or path.suffix == ".jsonl":
        src = Source("folder" if path.is_dir() else "jsonl", str(path))
        docs = [d.text for d in read_documents(src)]
        stream, source = _encode(docs, tokenizer), {"text": str(path), "documents": len(docs)}
    elif path.is_file():
        stream, source = _encode([file_to_text(path)], tokenizer), {"text": str(path), "documents": 1}
    else:
        raise NanoError(f"--calib {calib}: not found; pass a prepared data dir, a text file or a folder of text")
    if len(stream) < length - 1:
        raise NanoError(f"--calib {calib}: {len(stream)} tokens, fewer than one {length}-token row; "
                        "give more text or a smaller --calib-len")
    windows = eval_windows(stream, window=length, bos_id=tokenizer.bos_id, max_windows=rows)
    digest = hashlib.sha256(windows.tobytes()).hexdigest()
    counts = _token_counts(stream, tokenizer.vocab_size)
    return windows, {**source, "rows": len(windows), "length": length, "tokens": int(windows.size),
                     "tokens_sha256": digest, "tokenizer_sha256": tokenizer.sha256,
                     "text_tokens": int(len(stream))}, counts


def _token_counts(stream, vocab: int, chunk: int = 1 << 24) -> np.ndarray:
    """(vocab,) occurrences of each id in a token stream (a prepared split's shards, or an array)."""
    counts = np.zeros(vocab, np.float64)
    for shard in getattr(stream, "shards", [stream]):
        for i in range(0, len(shard), chunk):
            c = np.bincount(np.asarray(shard[i:i + chunk]), minlength=vocab)
            if len(c) > vocab:
                raise NanoError(f"calibration text holds token id {len(c) - 1}, outside the tokenizer's {vocab}; "
                                "prepare it with this model's tokenizer")
            counts += c
    return counts


def _encode(texts: list[str], tokenizer) -> np.ndarray:
    ids: list[int] = []
    for text in texts:
        ids.extend(tokenizer.encode(text))
        ids.append(tokenizer.eos_id)
    return np.asarray(ids, np.uint32)


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def quantize_checkpoint(ckpt: str | Path, out: str | Path, *, recipe: Recipe, calib: str | Path | None = None,
                        calib_rows: int = 128, calib_len: int = 512, eval_windows: np.ndarray | None = None,
                        overwrite: bool = False, progress: Progress | None = None) -> dict[str, Any]:
    """Quantize checkpoint ``ckpt`` into ``out``; return the summary written to quantization.json.

    ``eval_windows`` (N, W) token ids: held-out perplexity before and after goes in the report.
    The input checkpoint is only read.
    """
    from nano.eval import evaluate

    ckpt, out = Path(ckpt), Path(out)
    if is_quantized(ckpt):
        src = read_manifest(ckpt).get("source", {}).get("checkpoint", "the float checkpoint it was made from")
        raise NanoError(f"{ckpt}: already quantized; quantize the float checkpoint ({src}) instead")
    if out.resolve() == ckpt.resolve():
        raise NanoError(f"--out {out} is the input checkpoint; choose another directory (the input is never modified)")
    config = load_config(ckpt)
    tokenizer = load_tokenizer(ckpt)
    # Without a held-out evaluation (it runs the whole model) the blocks are read one at a time
    # as they are quantized: peak memory is the embedding plus one block, not the model.
    blocks = None
    if eval_windows is None:
        model, blocks = open_streamed(ckpt, param_dtype=np.float32)
    else:
        model = load_checkpoint(ckpt, param_dtype=np.float32)
    calib_tokens, calib_info, counts = None, None, None
    specs = plan(model, recipe)  # bad groups/overrides fail here, before calibration work
    if not specs:
        raise NanoError("recipe: no tensor is quantized (every override is \"float\"?)")
    if recipe.needs_calibration(specs):
        if calib is None:
            raise NanoError(NO_CALIBRATION)
        calib_tokens, calib_info, counts = calibration_text(calib, tokenizer, rows=calib_rows, length=calib_len)

    report = progress or (lambda *a: None)
    before = after = None
    if eval_windows is not None:
        before = evaluate(model, eval_windows, progress=lambda d, t: report("held-out ppl (float)", d, t))
    result = quantize_model(model, recipe, calib_tokens, progress=progress, blocks=blocks, frequencies=counts)
    if eval_windows is not None:
        after = evaluate(model, eval_windows, progress=lambda d, t: report("held-out ppl (quantized)", d, t))

    q_bytes = {name: tensor_bytes(name, qt) for name, qt in result.qtensors.items()}
    tensors = {name: {**row, "params": result.qtensors[name].size, "bytes": q_bytes[name],
                      "bits_per_weight": 8 * q_bytes[name] / result.qtensors[name].size}
               for name, row in result.report.items()}
    summary = {
        "source": {"checkpoint": str(ckpt), "model": config.name,
                   "weights_sha256": _file_sha256(ckpt / WEIGHTS)},
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "recipe": recipe.to_dict(),
        "calibration": calib_info,
        "totals": {
            **size_totals(result.floats, result.qtensors, q_bytes),
            "quantize_seconds": round(result.seconds, 2),
            "calibration_forward_seconds": round(result.forward_seconds, 2),
            "heldout": None if before is None else {
                "windows": before.windows, "window": before.window, "scored_tokens": before.scored_tokens,
                "ppl_float": before.perplexity, "ppl_quantized": after.perplexity,
                "ppl_change": after.perplexity / before.perplexity - 1,
            },
        },
        "report": tensors,
    }
    meta = {**{k: v for k, v in load_meta(ckpt).items() if k not in ("created", "quantized")},
            "quantized_from": str(ckpt)}
    save_quantized(out, config=config, float_params=result.floats, qtensors=result.qtensors,
                   tensor_info={n: {k: v for k, v in r.items() if k in ("method", "weight_rel_err",
                                                                           "output_rel_err", "seconds")}
                                for n, r in result.report.items()},
                   manifest={k: v for k, v in summary.items() if k != "report"},
                   tokenizer=tokenizer, meta=meta, overwrite=overwrite)
    return summary

