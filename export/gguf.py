"""A quantized checkpoint as a GGUF llama.cpp runs, holding the checkpoint's own codes bit for bit.

ggml's Q4_0 block is 32 weights sharing one float16 step d, stored as nibbles n with
w = (n - 8) * d; Q8_0 is 32 int8 codes q with w = q * d. So a symmetric 4-bit tensor with groups
of 32 is Q4_0 (d = its scale, n = code + 8) and a symmetric 8-bit tensor, per channel or with
groups of 32, is Q8_0 (every block of a row takes the row's scale), whenever each scale is exact
in float16 (Nano's scales are bf16, so only ones outside float16's normal range are not). GPTQ
or AWQ int4 then runs in llama.cpp (and whatever reads GGUF) with nothing requantized; anything
else is refused with the recipe that would fit. Norm gains stay F32.
"""

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from nano.errors import NanoError
from nano.qtensor import QTensor, SplitQTensor

BLOCK = 32  # weights per Q4_0 / Q8_0 block


def _f16_steps(name: str, qt: QTensor) -> np.ndarray:
    s = np.asarray(qt.scale, np.float32)
    f16 = s.astype(np.float16)
    bad = int(np.sum(f16.astype(np.float32) != s))
    if bad:
        raise NanoError(f"{name}: {bad} scale(s) are not exact in float16 (ggml's block scale); "
                        "such a tensor cannot go into a GGUF unchanged")
    return f16


def ggml_blocks(name: str, qt: QTensor) -> tuple[str, np.ndarray]:
    """("q4_0" | "q8_0", uint8 (out, in / 32 * block bytes)): the (in, out) QTensor's codes as
    ggml blocks along the input, one row per output; NanoError when they cannot be exact."""
    fix = "quantize with --bits 4 --group 32 (or int8 per channel / group 32), symmetric"
    if isinstance(qt, SplitQTensor):
        raise NanoError(f"{name}: int8 rows inside an int4 tensor (`--embed mixed`) have no GGUF form (a ggml "
                        "tensor has one block type); export it as .tflite, or quantize with --embed int4 for a GGUF")
    if not qt.symmetric:
        raise NanoError(f"{name}: asymmetric codes have no ggml Q4_0/Q8_0 equivalent; {fix}")
    n_in, n_out = qt.q.shape
    if n_in % BLOCK:
        raise NanoError(f"{name}: input width {n_in} is not a multiple of ggml's block of {BLOCK}")
    if qt.bits == 4 and qt.group == BLOCK:
        kind = "q4_0"
    elif qt.bits == 8 and qt.group in (None, BLOCK):
        kind = "q8_0"
    else:
        raise NanoError(f"{name}: {qt.bits}-bit codes with group {qt.group} are not a ggml block type; {fix}")
    d = _f16_steps(name, qt)  # (groups, out)
    d = np.repeat(d, n_in // BLOCK if qt.group is None else 1, axis=0).T  # (out, blocks)
    codes = np.ascontiguousarray(qt.q.T).reshape(n_out, n_in // BLOCK, BLOCK)  # (out, blocks, 32)
    if kind == "q4_0":
        n = (codes.astype(np.int16) + 8).astype(np.uint8)
        body = n[..., :16] | (n[..., 16:] << 4)  # byte j: weight j low, weight j + 16 high
    else:
        body = codes.astype(np.int8).view(np.uint8)
    blocks = np.concatenate([d[..., None].view(np.uint8), body], axis=-1)  # (out, blocks, 2 + body)
    return kind, blocks.reshape(n_out, -1)


def export_gguf(ckpt: str | Path, out: str | Path) -> dict[str, Any]:
    """Write `out` (.gguf) from a checkpoint: a quantized one's codes as Q4_0/Q8_0 exactly (see the
    module doc), a float one as F32. Returns a summary (file, bytes, tensor types)."""
    from nano.checkpoint import load_config, load_tokenizer
    from nano.gguf_io import write_gguf
    from nano.qcheckpoint import is_quantized, read_quantized

    ckpt, out = Path(ckpt), Path(out)
    if out.suffix != ".gguf":
        raise NanoError(f"--out {out}: must end in .gguf")
    if out.resolve().parent == ckpt.resolve():
        raise NanoError(f"--out {out}: write the GGUF outside the checkpoint directory")
    config, tokenizer = load_config(ckpt), load_tokenizer(ckpt)
    if is_quantized(ckpt):
        floats, qtensors, _ = read_quantized(ckpt)
        raw: Mapping[str, tuple[str, np.ndarray]] = {n: ggml_blocks(n, qt) for n, qt in qtensors.items()}
    else:
        from nano.checkpoint import flat_params, load_checkpoint

        floats, raw = flat_params(load_checkpoint(ckpt)), {}
    write_gguf(out, floats, config, tokenizer, raw=raw, name=config.name)
    types = sorted({kind for kind, _ in raw.values()}) or ["f32"]
    return {"gguf": str(out), "gguf_bytes": out.stat().st_size, "quantized_tensors": len(raw), "types": types}
