"""Content hashes that tie a teacher cache to the teacher weights and tokens it was built from."""

import hashlib
from pathlib import Path

import numpy as np

from nano.checkpoint import load_config
from nano.data.stream import TokenStream
from nano.errors import NanoError
from nano.files import WEIGHTS

CHUNK = 1 << 24  # bytes of a file, or tokens of a stream, hashed (or counted) at a time


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def sha256_tokens(tokens: np.ndarray | TokenStream, stop: int | None = None) -> str:
    """sha256 of the stream's first `stop` tokens (all by default) as uint32 LE, read `CHUNK`
    tokens at a time (memmaps stay on disk; a sharded stream is never concatenated)."""
    stop = len(tokens) if stop is None else min(stop, len(tokens))
    h = hashlib.sha256()
    for i in range(0, stop, CHUNK):
        h.update(np.ascontiguousarray(tokens[i:min(i + CHUNK, stop)], dtype="<u4").tobytes())
    return h.hexdigest()


def teacher_fingerprint(ckpt: str | Path) -> str:
    """`<config name>/sha256:<hex of model.safetensors>`. The full hash (~1.6 s per GB) is cheap
    next to the teacher pass it guards, and unlike size+mtime it survives copies and
    re-conversions that produce the same weights, while any changed weight is caught."""
    path = Path(ckpt) / WEIGHTS
    if not path.is_file():
        raise NanoError(f"{ckpt}: missing {WEIGHTS}; pass a Nano checkpoint of the teacher (see `nano convert`)")
    return f"{load_config(ckpt).name}/sha256:{sha256_file(path)}"
