"""Offline teacher-target cache for distillation (`nano distill cache-teacher`).

The teacher runs once over the training rows; its top-k (or sampled) targets are stored per
token, compressed, and reused by every distillation run.

Rows: `training_rows` cuts the token stream into non-overlapping rows of `seq_len` tokens; every
stream token is a label exactly once. The model input of a row is `row_inputs`: BOS + row[:-1]
(Gemma without BOS is far off: on the Python-docs split its NLL rises from 2.53 to 3.54 nats),
and the target at position t is the teacher's distribution over row[t].

Layout of `out_dir`:
  manifest.json     identity (teacher, tokenizer, data, k, scheme, seed, seq_len, format) and
                    the list of finished shards with row ranges, sizes and sha256
  vocab-order.bin   xz of uint32 LE: token ids seen in the data split, most frequent first.
                    Ids are stored as ranks in this order (the rest follow by id), which makes
                    the sorted-id gaps smaller
  shard-00000.bin   rows [0, rows_per_shard), then the next range, ...

Shard file: MAGIC, u32 LE header length, JSON header {rows, positions, k, streams}, then one xz
blob (LZMA2, lc=lp=pb=0) per stream. Each stream is a uint32 array stored as byte planes
(least significant first, only as many planes as its maximum needs):
  n      entries per position (k for top-k; the distinct sampled ids for `sample`)
  gap    per position, the ranks of its ids sorted ascending, delta-coded (first from 0)
  q      round(-logprob / LOGPROB_STEP) of each entry, in the same order
  count  sample count - 1 of each entry (`sample` only; exact)
  lse    float32 bits of the teacher's logsumexp per position
Log-probs are the only lossy field: |error| <= LOGPROB_STEP / 2 = 1/64 nats.

Measured on Gemma 3 270M over 16 rows x 512 tokens of the Python-docs split (one shard):
top-k 125 / 243 / 471 bytes/token at k = 64 / 128 / 256, sampled k=128 76 bytes/token (28
distinct ids per token); KL(renormalised top-k || dequantized) 2.4e-5 nats mean, 9.5e-5 max.
Per cache add the vocabulary order (~46 KB here) and the manifest.
"""

import functools
import hashlib
import json
import lzma
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Array, Int

from distill.targets import PAD_LOGPROB, SCHEMES, TeacherTargets, chunked_targets
from nano import __version__
from nano.atomic import atomic_file
from nano.checkpoint import WEIGHTS, load_checkpoint, load_config, load_meta, write_json
from nano.data.shards import TokenSplit
from nano.errors import NanoError
from nano.model import Transformer

FORMAT = "nano-teacher-cache"
VERSION = 1
MANIFEST = "manifest.json"
VOCAB_ORDER = "vocab-order.bin"
LOGPROB_STEP = 1 / 32  # KL(renormalised top-128 || quantized) ~2e-5 nats mean on Gemma 3 270M
MAGIC = b"NANOTC\x00\x01"
REBUILD = "re-run `nano distill cache-teacher` to rebuild it"
Q_MAX = (1 << 22) - 2  # log-probs below -Q_MAX * LOGPROB_STEP (-131,072 nats) are clamped
Q_MAX_MASK = (1 << 22) - 1
_KEY_ID, _KEY_Q = 20, 42  # decode sort key: count | q | id bit fields (ids < 2^20, k < 2^21)
_FILTERS = [{"id": lzma.FILTER_LZMA2, "preset": 6, "lc": 0, "lp": 0, "pb": 0}]
_HASH_CHUNK = 1 << 24

Progress = Callable[[int, int], None]


# ---- rows -------------------------------------------------------------------------------------

def training_rows(tokens: np.ndarray, seq_len: int) -> np.ndarray:
    """(N, seq_len) view of the stream cut into whole rows (a trailing partial row is dropped)."""
    n = len(tokens) // seq_len
    return tokens[: n * seq_len].reshape(n, seq_len)


def row_inputs(rows: np.ndarray, bos_id: int) -> np.ndarray:
    """Model inputs (int32) of `rows`: BOS + row[:-1], so position t predicts row[t]."""
    out = np.empty(rows.shape, np.int32)
    out[:, 0] = bos_id
    out[:, 1:] = rows[:, :-1]
    return out


# ---- fingerprints -----------------------------------------------------------------------------

def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_HASH_CHUNK):
            h.update(block)
    return h.hexdigest()


def teacher_fingerprint(ckpt: str | Path) -> str:
    """`<config name>/sha256:<hex of model.safetensors>`. The full hash (~1.6 s per GB) is cheap
    next to the teacher pass it guards, and unlike size+mtime it survives copies and
    re-conversions that produce the same weights, while any changed weight is caught."""
    path = Path(ckpt) / WEIGHTS
    if not path.is_file():
        raise NanoError(f"{ckpt}: missing {WEIGHTS}; pass a Nano checkpoint of the teacher (see `nano convert`)")
    return f"{load_config(ckpt).name}/sha256:{_sha256_file(path)}"


def _sha256_tokens(tokens: np.ndarray) -> str:
    h = hashlib.sha256()
    for i in range(0, len(tokens), _HASH_CHUNK):
        h.update(np.ascontiguousarray(tokens[i:i + _HASH_CHUNK], dtype="<u4").tobytes())
    return h.hexdigest()


# ---- vocabulary order -------------------------------------------------------------------------

def vocab_order(tokens: np.ndarray, vocab_size: int) -> np.ndarray:
    """Token ids seen in `tokens`, most frequent first (ties by id): uint32."""
    counts = np.zeros(vocab_size, np.int64)
    for i in range(0, len(tokens), _HASH_CHUNK):  # bincount of a huge memmap in bounded memory
        counts += np.bincount(tokens[i:i + _HASH_CHUNK], minlength=vocab_size)[:vocab_size]
    seen = np.flatnonzero(counts)
    return seen[np.argsort(-counts[seen], kind="stable")].astype(np.uint32)


def _full_order(seen: np.ndarray, vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(rank -> id, id -> rank): the seen ids first, then the others by id."""
    rest = np.ones(vocab_size, bool)
    rest[seen] = False
    order = np.concatenate([seen.astype(np.int64), np.flatnonzero(rest)])
    rank = np.empty(vocab_size, np.int64)
    rank[order] = np.arange(vocab_size)
    return order, rank


# ---- shard codec ------------------------------------------------------------------------------

def _planes(a: np.ndarray) -> tuple[int, bytes]:
    a = np.ascontiguousarray(a, dtype="<u4")
    width = max(1, (int(a.max(initial=0)).bit_length() + 7) // 8)
    return width, a.view(np.uint8).reshape(-1, 4)[:, :width].T.tobytes()


def _unplanes(buf: bytes, width: int, count: int) -> np.ndarray:
    out = np.zeros((count, 4), np.uint8)
    out[:, :width] = np.frombuffer(buf, np.uint8).reshape(width, count).T
    return out.view("<u4").reshape(count)


def encode_targets(t: TeacherTargets, *, scheme: str, rank: np.ndarray, step: float = LOGPROB_STEP,
                   rows: tuple[int, int] = (0, 0)) -> bytes:
    """Compress host targets with leaves (..., k) / (...) into one shard file's bytes."""
    k = t.ids.shape[-1]
    ids = np.asarray(t.ids).reshape(-1, k).astype(np.int64)
    lp = np.asarray(t.logprobs, np.float64).reshape(-1, k)
    valid = lp > PAD_LOGPROB / 2
    n = valid.sum(1)
    r = np.where(valid, rank[ids], len(rank))  # padding sorts last
    o = np.argsort(r, axis=1, kind="stable")
    keep = np.arange(k) < n[:, None]
    sr = np.take_along_axis(r, o, 1)
    streams = {
        "n": n,
        "gap": np.diff(sr, axis=1, prepend=0)[keep],
        "q": np.clip(np.rint(-np.take_along_axis(lp, o, 1)[keep] / step), 0, Q_MAX).astype(np.int64),
    }
    if scheme == "sample":
        counts = np.rint(np.asarray(t.weights, np.float64).reshape(-1, k) * k).astype(np.int64)
        streams["count"] = np.take_along_axis(counts, o, 1)[keep] - 1
    streams["lse"] = np.asarray(t.lse, np.float32).reshape(-1).view(np.uint32)
    header: dict[str, Any] = {"rows": list(rows), "positions": len(n), "k": k, "streams": []}
    blobs = []
    for name, values in streams.items():
        width, raw = _planes(values)
        blobs.append(lzma.compress(raw, format=lzma.FORMAT_XZ, check=lzma.CHECK_NONE, filters=_FILTERS))
        header["streams"].append([name, width, len(values), len(blobs[-1])])
    head = json.dumps(header, separators=(",", ":")).encode()
    return b"".join([MAGIC, len(head).to_bytes(4, "little"), head, *blobs])


def decode_targets(data: bytes, *, scheme: str, order: np.ndarray, step: float = LOGPROB_STEP) -> TeacherTargets:
    """Dense numpy targets (P, k) of one shard, each position ordered by descending weight, then
    descending log-prob, then id; padding: id 0, PAD_LOGPROB, weight 0."""
    if data[:len(MAGIC)] != MAGIC:
        raise ValueError("not a teacher-cache shard (bad magic)")
    off = len(MAGIC) + 4
    size = int.from_bytes(data[len(MAGIC):off], "little")
    header = json.loads(data[off:off + size])
    off += size
    s: dict[str, np.ndarray] = {}
    for name, width, count, nbytes in header["streams"]:
        s[name] = _unplanes(lzma.decompress(data[off:off + nbytes]), width, count).astype(np.int64)
        off += nbytes
    k, n = header["k"], s["n"]
    P = len(n)
    pos = np.repeat(np.arange(P), n)
    starts = np.cumsum(n) - n
    col = np.arange(len(pos)) - starts[pos]
    csum = np.cumsum(s["gap"])
    ids = order[csum - np.concatenate([[0], csum])[starts][pos]]
    # One sortable key per slot: fewer counts, then larger q (lower log-prob), then larger id
    # sort later; padding (count 0, q past Q_MAX) sorts last.
    key = np.full((P, k), (k << _KEY_Q) | ((Q_MAX + 1) << _KEY_ID), np.int64)
    counts = s["count"] + 1 if scheme == "sample" else 0
    key[pos, col] = ((k - counts) << _KEY_Q) | (s["q"] << _KEY_ID) | ids
    key.sort(axis=1)
    valid = (key >> _KEY_ID) & Q_MAX_MASK <= Q_MAX
    out_ids = np.where(valid, key & ((1 << _KEY_ID) - 1), 0).astype(np.int32)
    out_lp = np.where(valid, -((key >> _KEY_ID) & Q_MAX_MASK) * step, PAD_LOGPROB).astype(np.float32)
    if scheme == "sample":
        weights = np.where(valid, (k - (key >> _KEY_Q)) / k, 0).astype(np.float32)
    else:  # the top-k probabilities renormalised (padding: exp(PAD - max) == 0)
        e = np.exp(out_lp - out_lp[:, :1])
        weights = e / e.sum(1, keepdims=True)
    return TeacherTargets(out_ids, out_lp, weights, s["lse"].astype(np.uint32).view(np.float32))


# ---- teacher pass -----------------------------------------------------------------------------

@functools.partial(nnx.jit, static_argnames=("k", "scheme", "chunk"))
def teacher_targets(model: Transformer, inputs: Int[Array, "B T"], rows: Int[Array, "B"],
                    seed: Int[Array, ""], *, k: int, scheme: str, chunk: int) -> TeacherTargets:
    """One jitted teacher forward + target extraction for a batch of rows."""
    h, _ = model.hidden(inputs)
    return chunked_targets(model.logits, h, rows, k=k, scheme=scheme, seed=seed, chunk=chunk)


# ---- manifest ---------------------------------------------------------------------------------

def _shard_name(i: int) -> str:
    return f"shard-{i:05d}.bin"


def _identity(m: dict[str, Any]) -> dict[str, Any]:
    """What must match for a re-run to resume into an existing cache."""
    return {"format": (m.get("format"), m.get("version")), "teacher": m["teacher"]["fingerprint"],
            "tokenizer_sha256": m["tokenizer_sha256"], "bos_id": m["bos_id"], "targets": m["targets"],
            "rows": m["rows"], "data split": m["data"]["split"], "data tokens": m["data"]["tokens_sha256"],
            "vocab order": m["vocab_order"]["sha256"]}


def _read_manifest(path: Path) -> dict[str, Any]:
    try:
        m = json.loads(path.read_text())
        _identity(m)
        return m
    except FileNotFoundError:
        raise NanoError(f"{path}: missing; build the cache with `nano distill cache-teacher`") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise NanoError(f"{path}: unreadable teacher-cache manifest ({' '.join(str(exc).split())}); delete the cache directory and {REBUILD}") from None


def _check(name: str, value: Any, *, ok: bool, why: str) -> None:
    if not ok:
        raise NanoError(f"build_cache: invalid {name}={value!r} ({why})")


def build_cache(teacher_ckpt_dir: str | Path, data_dir: str | Path, out_dir: str | Path, *,
                split: str = "train", seq_len: int = 512, k: int = 128, scheme: str = "topk",
                seed: int = 0, max_rows: int | None = None, rows_per_shard: int = 64,
                batch_size: int = 4, progress: Progress | None = None) -> dict[str, Any]:
    """Run the teacher over the first `max_rows` training rows of `split` and store its targets.

    Resumable: finished shards are kept, and a re-run with the same settings builds only the
    missing ones. Returns the manifest. Only one process may build into `out_dir` at a time.
    """
    ckpt, out = Path(teacher_ckpt_dir), Path(out_dir)
    _check("scheme", scheme, ok=scheme in SCHEMES, why=f"one of {', '.join(SCHEMES)}")
    _check("seq_len", seq_len, ok=seq_len >= 2, why="at least 2")
    _check("rows_per_shard", rows_per_shard, ok=rows_per_shard >= 1, why="at least 1")
    _check("batch_size", batch_size, ok=batch_size >= 1, why="at least 1")
    _check("max_rows", max_rows, ok=max_rows is None or max_rows >= 1, why="at least 1")
    config = load_config(ckpt)
    _check("k", k, ok=1 <= k <= config.vocab_size, why=f"1..{config.vocab_size}, the teacher's vocabulary")
    if config.vocab_size > 1 << _KEY_ID:
        raise NanoError(f"{ckpt}: vocabulary of {config.vocab_size} tokens; the teacher cache format stores ids below {1 << _KEY_ID}")
    tok_sha = load_meta(ckpt).get("tokenizer_sha256")
    if not tok_sha:
        raise NanoError(f"{ckpt / 'meta.json'}: no tokenizer_sha256; convert the teacher with `nano convert` so its tokenizer is known")
    data = TokenSplit.open(data_dir, split)
    data.check_tokenizer(tok_sha)
    rows = training_rows(data.tokens, seq_len)
    total = len(rows) if max_rows is None else min(max_rows, len(rows))
    if total == 0:
        raise NanoError(f"{data_dir}: split {split!r} has {data.num_tokens} tokens, fewer than one row of seq_len={seq_len}")
    covered = data.tokens[: total * seq_len]
    seen = vocab_order(data.tokens, config.vocab_size)  # the whole split: better ranks for small caches
    order_bytes = lzma.compress(seen.astype("<u4").tobytes(), check=lzma.CHECK_NONE)
    fresh = {
        "format": FORMAT, "version": VERSION, "nano_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "teacher": {"config": config.name, "fingerprint": teacher_fingerprint(ckpt), "checkpoint": str(ckpt.resolve())},
        "tokenizer_sha256": tok_sha, "vocab_size": config.vocab_size,
        "bos_id": int(data.manifest["tokenizer"]["bos_id"]),
        "targets": {"scheme": scheme, "k": k, "seed": seed, "logprob_step": LOGPROB_STEP},
        "rows": {"seq_len": seq_len, "total": total, "rows_per_shard": rows_per_shard,
                 "inputs": "bos + row[:-1]; position t predicts row[t]"},
        "data": {"dir": str(Path(data_dir).resolve()), "split": split,
                 "manifest_sha256": _sha256_file(Path(data_dir) / "manifest.json"),
                 "tokens": total * seq_len, "tokens_sha256": _sha256_tokens(covered)},
        "vocab_order": {"file": VOCAB_ORDER, "ids": len(seen), "bytes": len(order_bytes),
                        "sha256": hashlib.sha256(order_bytes).hexdigest()},
        "shards": [], "complete": False,
    }
    manifest = _open_for_build(out, fresh)
    vpath = out / VOCAB_ORDER
    if not vpath.is_file() or _sha256_file(vpath) != fresh["vocab_order"]["sha256"]:
        with atomic_file(vpath) as f:
            f.write(order_bytes)
    _, rank = _full_order(seen, config.vocab_size)

    num_shards = -(-total // rows_per_shard)
    have = {e["rows"][0] // rows_per_shard: e for e in manifest["shards"]
            if (out / e["file"]).is_file() and (out / e["file"]).stat().st_size == e["bytes"]}
    done = sum(e["rows"][1] - e["rows"][0] for e in have.values())
    if progress:
        progress(done, total)
    model, compiled = None, False
    chunk = max(1, min(seq_len, 128 // batch_size))  # ~128 positions of (V,) logits at a time
    for i in range(num_shards):
        if i in have:
            continue
        lo, hi = i * rows_per_shard, min((i + 1) * rows_per_shard, total)
        if model is None:
            model = load_checkpoint(ckpt)
        parts, timed, seconds = [], 0, 0.0
        for b in range(lo, hi, batch_size):
            idx = np.arange(b, min(b + batch_size, hi))
            padded = np.concatenate([idx, np.full(batch_size - len(idx), idx[-1])])  # one compiled shape
            start = time.perf_counter()
            t = teacher_targets(model, jnp.asarray(row_inputs(rows[padded], manifest["bos_id"])),
                                jnp.asarray(padded, jnp.int32), jnp.int32(seed), k=k, scheme=scheme, chunk=chunk)
            parts.append(jax.tree.map(lambda a: np.asarray(a)[: len(idx)], t))
            if compiled:  # the first call compiles: keep it out of the rate
                timed, seconds = timed + len(idx), seconds + time.perf_counter() - start
            compiled = True
            if progress and idx[-1] + 1 < hi:
                progress(done + int(idx[-1]) + 1 - lo, total)
        targets = TeacherTargets(*(np.concatenate(leaves) for leaves in zip(*parts)))
        blob = encode_targets(targets, scheme=scheme, rank=rank, rows=(lo, hi))
        with atomic_file(out / _shard_name(i)) as f:
            f.write(blob)
        have[i] = {"file": _shard_name(i), "rows": [lo, hi], "bytes": len(blob),
                   "sha256": hashlib.sha256(blob).hexdigest(),
                   "teacher_tokens_per_s": round(timed * seq_len / seconds, 1) if timed else None}
        manifest["shards"] = [have[j] for j in sorted(have)]
        manifest["complete"] = len(have) == num_shards
        write_json(out / MANIFEST, manifest)  # after the shard: a kill loses at most the shard in progress
        done += hi - lo
        if progress:
            progress(done, total)
    if not manifest["complete"]:  # every shard was already there: just record it
        manifest["complete"] = True
        write_json(out / MANIFEST, manifest)
    return manifest


def _open_for_build(out: Path, fresh: dict[str, Any]) -> dict[str, Any]:
    """The manifest to continue from: the existing one if it has the same identity, else `fresh`."""
    if out.exists() and not out.is_dir():
        raise NanoError(f"{out}: exists and is not a directory; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    ours = (MANIFEST, VOCAB_ORDER, "shard-")
    for tmp in out.glob(".*.tmp"):  # temp files of a killed build (atomic_file names them .<name>.*.tmp)
        if tmp.name[1:].startswith(ours):
            tmp.unlink(missing_ok=True)
    path = out / MANIFEST
    if not path.is_file():
        if any(p for p in out.iterdir() if not p.name.startswith(ours)):
            raise NanoError(f"{out}: directory is not empty and holds no teacher cache ({MANIFEST}); choose another --out")
        write_json(path, fresh)
        return fresh
    old = _read_manifest(path)
    want, have = _identity(fresh), _identity(old)
    for key in want:
        if want[key] != have[key]:
            raise NanoError(f"{path}: existing teacher cache has a different {key} ({have[key]} vs {want[key]}); "
                            f"choose another --out, or delete {out} to rebuild it")
    old["data"]["dir"] = fresh["data"]["dir"]  # the same tokens may have moved
    return old


# ---- reader -----------------------------------------------------------------------------------

class TeacherCache:
    """Read side: `targets(rows)` -> dense (ids, logprobs, weights, lse) for the loss.

    Shards are checksummed when read; the last `keep` decoded shards stay in memory, so a
    trainer should shuffle shard order, then rows within a shard (see `shard_rows`).
    """

    def __init__(self, path: Path, manifest: dict[str, Any], order: np.ndarray, *, keep: int = 2):
        self.path, self.manifest, self._order, self._keep = path, manifest, order, keep
        self._decoded: OrderedDict[int, TeacherTargets] = OrderedDict()

    @classmethod
    def open(cls, path: str | Path, *, tokenizer_sha256: str, teacher_fingerprint: str | None = None,
             keep: int = 2) -> "TeacherCache":
        path = Path(path)
        m = _read_manifest(path / MANIFEST)
        if (m["format"], m["version"]) != (FORMAT, VERSION):
            raise NanoError(f"{path / MANIFEST}: teacher-cache format {m['format']} v{m['version']}, this Nano reads {FORMAT} v{VERSION}; delete {path} and {REBUILD}")
        if m["tokenizer_sha256"] != tokenizer_sha256:
            raise NanoError(f"{path}: teacher cache built with tokenizer {m['tokenizer_sha256']} but the student uses {tokenizer_sha256}; "
                            "build a cache for this tokenizer with `nano distill cache-teacher`")
        if teacher_fingerprint is not None and m["teacher"]["fingerprint"] != teacher_fingerprint:
            raise NanoError(f"{path}: teacher cache built from teacher {m['teacher']['fingerprint']}, not {teacher_fingerprint}; "
                            "pass the teacher it was built from, or build a cache for this one with `nano distill cache-teacher`")
        if not m["complete"]:
            done = sum(e["rows"][1] - e["rows"][0] for e in m["shards"])
            raise NanoError(f"{path}: teacher cache incomplete ({done} of {m['rows']['total']} rows); re-run `nano distill cache-teacher` to finish it")
        vpath = path / VOCAB_ORDER
        try:
            raw = vpath.read_bytes()
            if hashlib.sha256(raw).hexdigest() != m["vocab_order"]["sha256"]:
                raise ValueError("sha256 mismatch")
            seen = np.frombuffer(lzma.decompress(raw), "<u4")
        except (OSError, ValueError, lzma.LZMAError) as exc:
            raise NanoError(f"{vpath}: missing or corrupt ({exc}); delete {path} and {REBUILD}") from None
        order, _ = _full_order(seen, m["vocab_size"])
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

    @property
    def shard_rows(self) -> list[tuple[int, int]]:
        return [tuple(e["rows"]) for e in self.manifest["shards"]]

    def _shard(self, i: int) -> TeacherTargets:
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
            if file.stat().st_size != entry["bytes"] or _sha256_file(file) != entry["sha256"]:
                raise NanoError(f"{file}: teacher-cache shard is corrupt (sha256 mismatch); delete it and {REBUILD}")

    def targets(self, row_indices) -> TeacherTargets:
        """Leaves (R, seq_len, k) (lse: (R, seq_len)) for the given training-row indices."""
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

    def check_data(self, tokens: np.ndarray) -> None:
        """Refuse a token stream whose cached rows differ from the ones the teacher saw."""
        n = self.manifest["data"]["tokens"]
        if len(tokens) < n or _sha256_tokens(tokens[:n]) != self.manifest["data"]["tokens_sha256"]:
            raise NanoError(f"{self.path}: teacher cache was built on other tokens than this data "
                            f"({self.manifest['data']['split']} of {self.manifest['data']['dir']}); re-prepare that data or rebuild the cache")
