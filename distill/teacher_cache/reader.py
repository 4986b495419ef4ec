"""Read a teacher cache: dense per-row targets for the distillation loss, checksummed shards."""

import hashlib
import lzma
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from distill.targets import PAD_LOGPROB, TeacherTargets
from distill.teacher_cache.codec import decode_order, decode_targets, full_order
from distill.teacher_cache.fingerprint import sha256_file, sha256_tokens
from distill.teacher_cache.manifest import (FORMAT, MANIFEST, REBUILD, VERSION, VOCAB_ORDER, incomplete_message,
                                            read_manifest)
from nano.data.stream import TokenStream
from nano.errors import NanoError


class TeacherCache:
    """Read side: `targets(rows)` -> dense (ids, logprobs, weights, lse) for the loss.

    Shards are checksummed when read; the last `keep` decoded shards stay in memory, so a
    trainer should draw a batch's rows from few shards, or keep them all."""

    def __init__(self, path: Path, manifest: dict[str, Any], order: np.ndarray, *, keep: int = 2):
        self.path, self.manifest, self._order, self._keep = path, manifest, order, keep
        self._decoded: OrderedDict[int, TeacherTargets] = OrderedDict()

    @classmethod
    def open(cls, path: str | Path, *, tokenizer_sha256: str, teacher_fingerprint: str | None = None,
             keep: int = 2) -> "TeacherCache":
        """The complete cache at `path`, refused unless built for this tokenizer (and teacher)."""
        path = Path(path)
        m = read_manifest(path / MANIFEST)
        if (m["format"], m["version"]) != (FORMAT, VERSION):
            raise NanoError(f"{path / MANIFEST}: teacher-cache format {m['format']} v{m['version']}, this Nano reads {FORMAT} v{VERSION}; delete {path} and {REBUILD}")
        if m["tokenizer_sha256"] != tokenizer_sha256:
            raise NanoError(f"{path}: teacher cache built with tokenizer {m['tokenizer_sha256']} but the student uses {tokenizer_sha256}; "
                            "build a cache for this tokenizer with `nano distill cache-teacher`")
        if teacher_fingerprint is not None and m["teacher"]["fingerprint"] != teacher_fingerprint:
            raise NanoError(f"{path}: teacher cache built from teacher {m['teacher']['fingerprint']}, not {teacher_fingerprint}; "
                            "pass the teacher it was built from, or build a cache for this one with `nano distill cache-teacher`")
        if not m["complete"]:
            raise NanoError(incomplete_message(path, m))
        vpath = path / VOCAB_ORDER
        try:
            raw = vpath.read_bytes()
            if hashlib.sha256(raw).hexdigest() != m["vocab_order"]["sha256"]:
                raise ValueError("sha256 mismatch")
            seen = decode_order(raw)
        except (OSError, ValueError, lzma.LZMAError) as exc:
            raise NanoError(f"{vpath}: missing or corrupt ({exc}); delete {path} and {REBUILD}") from None
        order, _ = full_order(seen, m["vocab_size"])
        return cls(path, m, order, keep=keep)

    @property
    def num_rows(self) -> int:
        return self.manifest["rows"]["total"]

    @property
    def seq_len(self) -> int:
        return self.manifest["rows"]["seq_len"]

    @property
    def k(self) -> int:
        return self.manifest["targets"]["k"]

    @property
    def scheme(self) -> str:
        return self.manifest["targets"]["scheme"]

    def _shard(self, i: int) -> TeacherTargets:
        """Shard `i` decoded to leaves (rows, seq_len, k), from memory if recently used."""
        if i in self._decoded:
            self._decoded.move_to_end(i)
            return self._decoded[i]
        entry = self.manifest["shards"][i]
        file = self.path / entry["file"]
        try:
            data = file.read_bytes()
        except OSError:
            raise NanoError(f"{file}: teacher-cache shard missing; {REBUILD}") from None
        if len(data) != entry["bytes"] or hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise NanoError(f"{file}: teacher-cache shard is corrupt (sha256 mismatch); delete it and {REBUILD}")
        step = self.manifest["targets"]["logprob_step"]
        t = decode_targets(data, scheme=self.scheme, order=self._order, step=step)
        lo, hi = entry["rows"]
        t = TeacherTargets(*(a.reshape(hi - lo, self.seq_len, *a.shape[1:]) for a in t))
        self._decoded[i] = t
        while len(self._decoded) > self._keep:
            self._decoded.popitem(last=False)
        return t

    def verify(self) -> None:
        """Check every shard's size and sha256 now (before training starts), not lazily."""
        for entry in self.manifest["shards"]:
            file = self.path / entry["file"]
            if not file.is_file():
                raise NanoError(f"{file}: teacher-cache shard missing; {REBUILD}")
            if file.stat().st_size != entry["bytes"] or sha256_file(file) != entry["sha256"]:
                raise NanoError(f"{file}: teacher-cache shard is corrupt (sha256 mismatch); delete it and {REBUILD}")

    def targets(self, row_indices) -> TeacherTargets:
        """Leaves (R, seq_len, k) (lse: (R, seq_len)) for the given training-row indices (R,)."""
        rows = np.asarray(row_indices, np.int64).reshape(-1)
        if rows.size and (rows.min() < 0 or rows.max() >= self.num_rows):
            raise IndexError(f"row index out of range 0..{self.num_rows - 1}")
        per = self.manifest["rows"]["rows_per_shard"]
        out = TeacherTargets(np.zeros((len(rows), self.seq_len, self.k), np.int32),
                             np.full((len(rows), self.seq_len, self.k), PAD_LOGPROB, np.float32),
                             np.zeros((len(rows), self.seq_len, self.k), np.float32),
                             np.zeros((len(rows), self.seq_len), np.float32))
        for i in np.unique(rows // per):
            sel = np.flatnonzero(rows // per == i)
            t = self._shard(int(i))
            for dst, src in zip(out, t):
                dst[sel] = src[rows[sel] - i * per]
        return out

    def check_data(self, tokens: np.ndarray | TokenStream) -> None:
        """Refuse a token stream (N,) whose cached rows differ from the ones the teacher saw."""
        n = self.manifest["data"]["tokens"]
        if len(tokens) < n or sha256_tokens(tokens, stop=n) != self.manifest["data"]["tokens_sha256"]:
            raise NanoError(f"{self.path}: teacher cache was built on other tokens than this data "
                            f"({self.manifest['data']['split']} of {self.manifest['data']['dir']}); re-prepare that data or rebuild the cache")
