"""`export_checkpoint`: a float or quantized Nano checkpoint -> .tflite (and a .litertlm bundle).

A quantized checkpoint's own int4/int8 codes and scales are written into the file bit-exactly
(export_tflite's `qtensors`), so the phone runs exactly what `nano quantize` measured; its weights
are never dequantized, so exporting needs about the graph conversion plus a few times the
quantized size (nano1 at int4 fits a 24 GiB machine)."""

import math
import os
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file
from tensorflow.lite.python.convert_phase import ConverterError

from export.litertlm import llm_metadata, write_litertlm
from export.tflite import default_lengths, export_params
from nano.checkpoint import expected_shapes, load_config, load_tokenizer
from nano.config import ModelConfig
from nano.errors import NanoError
from nano.files import TOKENIZER, WEIGHTS
from nano.qcheckpoint import is_quantized, read_manifest, read_quantized
from nano.qtensor import QTensor

Progress = Callable[[str, int, int], None]  # (stage, done, total), as in quantize.run
# Peak RSS of an export = imports and the weightless graph conversion (0.8 GiB for student_20m's
# 10 layers, 0.9 GiB for nano1's 21) + a multiple of the stored weights: unpacked int8 codes,
# their packed copy and the checkpoint read alongside (nano1 rtn int4: 3.95 GiB peak for 1.19 GiB
# stored, 2.6x) or a float checkpoint and its one-tensor-at-a-time copies (student_20m: 1.7x).
CONVERT_BYTES = 2**30
CONVERT_BYTES_PER_LAYER = 2**24
WEIGHT_RAM_FACTOR = 3


def total_ram() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def stored_bytes(config: ModelConfig, entries: Mapping[str, Mapping[str, Any]]) -> int:
    """About the bytes of the weights in the .tflite: the tensors in `entries` (quantization.json's)
    as codes plus scales, every other parameter float32."""
    total = 0
    for name, shape in expected_shapes(config).items():
        e = entries.get(name)
        if e is None:
            total += 4 * math.prod(shape)
        else:
            n_in, n_out = e["matrix_shape"]
            parts = [(n_out, e)] if not e.get("hot") else [(n_out - e["hot"]["rows"], e), (e["hot"]["rows"], e["hot"])]
            total += sum(n_in * n * p["bits"] // 8 + 4 * n * (1 if p["group"] is None else n_in // p["group"])
                         for n, p in parts)
    return total


def _check_memory(config: ModelConfig, entries: Mapping[str, Mapping[str, Any]]) -> None:
    stored = stored_bytes(config, entries)
    need = CONVERT_BYTES + CONVERT_BYTES_PER_LAYER * config.num_layers + WEIGHT_RAM_FACTOR * stored
    have = total_ram()
    if need > have:
        raise NanoError(f"model {config.name!r}: exporting it needs about {need / 2**30:.1f} GiB of RAM "
                        f"({stored / 2**30:.1f} GiB of weights), this machine has {have / 2**30:.0f} GiB; "
                        "quantize it first (`nano quantize`), or export on a larger machine")


def _symmetric_only(ckpt: Path, qtensors: dict[str, QTensor]) -> None:
    bad = sorted(name for name, qt in qtensors.items() if not qt.symmetric)
    if bad:
        raise NanoError(f"{ckpt}: {len(bad)} quantized tensor(s) are asymmetric (first {bad[0]!r}); LiteRT "
                        "stores symmetric int4/int8 only: re-run `nano quantize` with symmetric: true")


def load_for_export(ckpt: str | Path) -> tuple[dict[str, np.ndarray], dict[str, QTensor]]:
    """(float parameters, QTensors) of a checkpoint as stored: a quantized one's codes are not
    dequantized, a float one is not built into a model."""
    ckpt = Path(ckpt)
    if is_quantized(ckpt):
        floats, qtensors, _ = read_quantized(ckpt)
        _symmetric_only(ckpt, qtensors)
        return floats, qtensors
    path = ckpt / WEIGHTS
    if not path.is_file():
        raise NanoError(f"{ckpt}: missing {WEIGHTS}; the checkpoint is incomplete, re-run the command that wrote it")
    try:
        return load_file(str(path)), {}
    except (SafetensorError, OSError, ValueError) as e:
        raise NanoError(f"{path}: unreadable safetensors file ({e})") from None


def export_checkpoint(ckpt: str | Path, out: str | Path, *, seq_len: int | None = None,
                      prefill_lens: Sequence[int] | None = None, litertlm: bool = False, ring: bool = False,
                      max_tokens: int | None = None, progress: Progress | None = None) -> dict[str, Any]:
    """Write `out` (.tflite, a prefill signature per length in `prefill_lens`) from checkpoint
    `ckpt`; with `litertlm`, also `out` with suffix .litertlm (the .tflite, the checkpoint's
    tokenizer.model, BOS as start token, the tokenizer's stop ids, `max_tokens` (default seq_len)
    as the context limit). `ring`: the .tflite's local layers keep rings of `window` cache
    positions; the bundle keeps full caches, which LiteRT-LM needs. Returns a summary."""
    start = time.perf_counter()
    ckpt, out = Path(ckpt), Path(out)
    report = progress or (lambda *a: None)
    if out.suffix != ".tflite":
        raise NanoError(f"--out {out}: must end in .tflite (the .litertlm bundle goes beside it)")
    config = load_config(ckpt)
    S, lens = default_lengths(config, seq_len, prefill_lens)
    max_tokens = S if max_tokens is None else max_tokens
    if not 1 <= max_tokens <= S:
        raise NanoError(f"max_tokens {max_tokens} must be in [1, seq_len={S}] (the KV cache holds seq_len "
                        "tokens); lower --max-tokens or raise --seq-len")
    tokenizer = load_tokenizer(ckpt) if litertlm else None  # refuse before the slow conversion
    _check_memory(config, read_manifest(ckpt)["tensors"] if is_quantized(ckpt) else {})
    stages = 3 if litertlm else 2
    report("load checkpoint", 0, stages)
    floats, qtensors = load_for_export(ckpt)
    report("convert to .tflite", 1, stages)
    try:
        export_params(config, out, floats=floats, qtensors=qtensors, seq_len=S, prefill_lens=lens,
                      source=str(ckpt), ring=ring)
    except ConverterError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise NanoError(f"{ckpt}: the TFLite converter cannot export model {config.name!r} ({first}); "
                        "its config uses an op LiteRT's builtins lack, export a supported preset") from None
    summary: dict[str, Any] = {
        "checkpoint": str(ckpt), "model": config.name, "tflite": str(out), "tflite_bytes": out.stat().st_size,
        "seq_len": S, "prefill_lens": list(lens), "ring_kv": ring, "quantized_tensors": len(qtensors),
        "litertlm": None, "litertlm_bytes": None, "max_tokens": max_tokens}
    if litertlm:
        report("bundle .litertlm", 2, stages)
        bundle = out.with_suffix(".litertlm")
        meta = llm_metadata(start_id=tokenizer.bos_id, stop_ids=tokenizer.stop_ids(), max_tokens=max_tokens)
        with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
            model = out
            if ring:  # LiteRT-LM takes its context length from layer 0's cache: it needs full caches
                model = export_params(config, Path(tmp) / out.name, floats=floats, qtensors=qtensors, seq_len=S,
                                      prefill_lens=lens, source=str(ckpt))
            write_litertlm(bundle, tflite=model, tokenizer=ckpt / TOKENIZER, metadata=meta, name=config.name)
        summary.update(litertlm=str(bundle), litertlm_bytes=bundle.stat().st_size)
    report("done", stages, stages)
    summary["seconds"] = round(time.perf_counter() - start, 2)
    return summary
