"""`nano prune`: source checkpoint -> pruned float checkpoint + prune.json, atomically.

Order: blocks first (greedy on the full-width model), then widths, ranked on the activations of
the depth-pruned model (the ones the kept units will actually see)."""

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np

from distill.prune import blocks, importance, slicing
from distill.prune.targets import PruneTargets, check_targets
from nano.checkpoint import flat_params, load_checkpoint, load_config, load_meta, load_tokenizer, model_from_flat, save_checkpoint
from nano.data.shards import TokenSplit, eval_windows
from nano.errors import NanoError
from nano.eval import evaluate
from nano.qcheckpoint import is_quantized

PRUNE_JSON = "prune.json"


def _round(x) -> list:
    return [float(f"{v:.6g}") for v in np.asarray(x, np.float64).reshape(-1)]


def prune_model(model, targets: PruneTargets, calib: np.ndarray, *, refit: bool = True,
                norm_correction: bool = True, progress: Callable[[str, int, int], None] | None = None):
    """(pruned model, report) for resolved `targets` (see `check_targets`) and calibration rows
    (N, T) of BOS-prefixed tokens."""
    report_: dict[str, Any] = {}
    step = (lambda stage: (lambda d, t: progress(stage, d, t))) if progress else (lambda stage: None)
    c = model.config
    flat = {k: np.asarray(v) for k, v in flat_params(model).items()}
    # ---- blocks ----
    if targets.num_layers < c.num_layers:
        if targets.drop_layers is not None:
            removed, rounds = list(targets.drop_layers), []
        else:
            removed, rounds = blocks.greedy_removal(model, calib, c.num_layers - targets.num_layers,
                                                    progress=step("scoring blocks"))
        keep = [i for i in range(c.num_layers) if i not in removed]
        flat, c = slicing.drop_blocks(flat, c, keep)
        model = model_from_flat(c, flat, source="pruned blocks")
        report_["blocks"] = {"removed": removed, "kept": keep, "global_layers": [j for j in range(c.num_layers) if c.is_global(j)],
                             "greedy_calibration_nll": [{str(k): round(v, 5) for k, v in r.items()} for r in rounds]}
    width = (targets.ffn_dim < c.ffn_dim, targets.num_heads < c.num_heads, targets.d_model < c.d_model)
    if not any(width):
        return model, report_
    imp = importance.measure(model, calib, progress=step("measuring importance"))
    new = {"ffn_dim": targets.ffn_dim, "num_heads": targets.num_heads, "d_model": targets.d_model}
    if width[0]:
        kept = []
        for i, st in enumerate(imp.layers):
            k = slicing.top_k(st["ffn"], targets.ffn_dim)
            slicing.slice_ffn(flat, i, k, gram=st["down_gram"] if refit else None)
            kept.append(k.tolist())
        report_["ffn"] = {"importance": [_round(st["ffn"]) for st in imp.layers], "kept": kept, "refit": refit}
    if width[1]:
        kept = []
        for i, st in enumerate(imp.layers):
            k = slicing.top_heads(st["heads"], targets.num_heads, c.num_kv_heads)
            slicing.slice_heads(flat, i, k, c.head_dim, gram=st["o_gram"] if refit else None)
            kept.append(k.tolist())
        report_["heads"] = {"importance": [_round(st["heads"]) for st in imp.layers], "kept": kept, "refit": refit}
    if width[2]:
        scores = imp.channels()
        k = slicing.top_k(scores, targets.d_model)
        scale = {}
        if norm_correction:
            for i, st in enumerate(imp.layers):
                for name, energy in st["norm_in"].items():
                    scale[f"layers.{i}.{name}.scale"] = slicing.energy_share_scale(energy, k)
            scale["final_norm.scale"] = slicing.energy_share_scale(imp.final["norm_in"], k)
        slicing.slice_channels(flat, c, k, norm_scale=scale)
        report_["channels"] = {"importance": _round(scores), "kept": k.tolist(),
                               "embed_scale": math.sqrt(c.d_model / targets.d_model),
                               "norm_correction": {n: round(v, 6) for n, v in scale.items()}}
    import dataclasses

    c = dataclasses.replace(c, **new)
    return model_from_flat(c, flat, source="pruned widths"), report_


def prune_checkpoint(ckpt: str | Path, out: str | Path, *, targets: PruneTargets, data: str | Path,
                     calib_rows: int = 8, calib_len: int = 256, eval_windows_n: int = 8, eval_window: int = 512,
                     refit: bool = True, norm_correction: bool = True, overwrite: bool = False,
                     progress: Callable[[str, int, int], None] | None = None) -> dict[str, Any]:
    """Prune `ckpt` (never modified) into `out`; returns the report written as out/prune.json."""
    ckpt, out = Path(ckpt), Path(out)
    if is_quantized(ckpt):
        raise NanoError(f"{ckpt}: is a quantized checkpoint (quantization.json); prune the float checkpoint it came from, then quantize")
    if out.resolve() == ckpt.resolve():
        raise NanoError(f"--out {out} is the input checkpoint; choose another directory")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise NanoError(f"{out}: output directory exists and is not empty; pass --overwrite or choose another --out")
    source = load_config(ckpt)
    resolved = check_targets(source, targets)
    if min(calib_rows, calib_len - 1) < 1:
        raise NanoError(f"--calib-rows {calib_rows} / --calib-len {calib_len}: need at least 1 row of 2 tokens")
    tok = load_tokenizer(ckpt)
    meta = load_meta(ckpt)
    train, held = TokenSplit.open(data, "train"), TokenSplit.open(data, "heldout")
    for split in (train, held):
        split.check_tokenizer(meta.get("tokenizer_sha256", tok.sha256))
    calib = eval_windows(train.tokens, window=calib_len, bos_id=tok.bos_id, max_windows=calib_rows)
    if len(calib) == 0:
        raise NanoError(f"{data}: the train split is shorter than one {calib_len}-token calibration row; lower --calib-len")
    wins = eval_windows(held.tokens, window=eval_window, bos_id=tok.bos_id, max_windows=eval_windows_n) if eval_windows_n else None
    model = load_checkpoint(ckpt)
    t0 = time.perf_counter()
    before = evaluate(model, wins).perplexity if wins is not None and len(wins) else None
    pruned, report_ = prune_model(model, resolved, calib, refit=refit, norm_correction=norm_correction,
                                  progress=progress)
    after = evaluate(pruned, wins).perplexity if wins is not None and len(wins) else None
    c = pruned.config
    if c != source:
        import dataclasses

        pruned.config = dataclasses.replace(c, name=f"{source.name}_pruned")
    params = lambda m: sum(int(np.prod(v.shape)) for v in flat_params(m).values())
    doc = {
        "source": str(ckpt), "source_config": source.name,
        "targets": {k: getattr(resolved, k) for k in ("d_model", "ffn_dim", "num_heads", "num_layers")},
        "params": {"before": params(model), "after": params(pruned)},
        "calibration": {"data": str(data), "split": "train", "rows": int(len(calib)), "len": calib_len},
        "heldout": {"windows": 0 if wins is None else int(len(wins)), "window": eval_window,
                    "ppl_before": before, "ppl_after": after},
        "refit": refit, "norm_correction": norm_correction,
        "seconds": round(time.perf_counter() - t0, 1),
        **report_,
    }
    save_checkpoint(out, pruned, tokenizer=tok, overwrite=overwrite, extra_json={PRUNE_JSON: doc},
                    meta={"pruned_from": str(ckpt)})
    return doc
