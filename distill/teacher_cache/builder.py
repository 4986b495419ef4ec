"""Build a teacher cache (`nano distill cache-teacher`): the teacher runs once over the training
rows, and its top-k (or sampled) targets are stored per token, compressed, one shard at a time.
A kill loses at most the shard in progress; a re-run with the same settings resumes.

Several processes (or hosts) may build one cache: process p of N labels shards p, p + N, ...,
independently (no coordinator); whichever finds every shard written writes the manifest."""

import functools
import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Array, Int

from distill.targets import SCHEMES, TeacherTargets, chunked_targets, shared_vocab_logits
from distill.teacher_cache.codec import ID_LIMIT, LOGPROB_STEP, encode_order, encode_targets, full_order, vocab_order
from distill.teacher_cache.fingerprint import sha256_file, sha256_tokens, teacher_fingerprint
from distill.teacher_cache.manifest import (FORMAT, MANIFEST, VERSION, VOCAB_ORDER, finished_manifest,
                                            missing_shards, num_shards, open_for_build, shard_name, shard_rows)
from distill.teacher_cache.rows import row_inputs
from nano import __version__
from nano.atomic import atomic_file
from nano.checkpoint import load_checkpoint, load_config, load_meta, load_tokenizer
from nano.config import ModelConfig
from nano.data.shards import TokenSplit
from nano.data.stream import TokenRows
from nano.errors import NanoError
from nano.files import write_json
from nano.model import Transformer

Progress = Callable[[int, int], None]  # (rows done, rows in total) of this process's shards


@functools.partial(nnx.jit, static_argnames=("k", "scheme", "chunk", "vocab"))
def teacher_targets(model: Transformer, inputs: Int[Array, "B T"], rows: Int[Array, "B"],
                    seed: Int[Array, ""], *, k: int, scheme: str, chunk: int, vocab: int | None = None) -> TeacherTargets:
    """One jitted teacher forward + target extraction for a batch of rows, over the first `vocab`
    ids of the teacher's logits (None: all of them)."""
    h, _ = model.hidden(inputs)
    logits = model.logits if vocab is None else lambda x: shared_vocab_logits(model.logits(x), vocab)
    return chunked_targets(logits, h, rows, k=k, scheme=scheme, seed=seed, chunk=chunk)


def build_cache(teacher_ckpt_dir: str | Path, data_dir: str | Path, out_dir: str | Path, *,
                split: str = "train", seq_len: int = 512, k: int = 128, scheme: str = "topk",
                seed: int = 0, max_rows: int | None = None, rows_per_shard: int = 64,
                batch_size: int = 4, process_id: int = 0, num_processes: int = 1,
                progress: Progress | None = None) -> dict[str, Any]:
    """Run the teacher over the first `max_rows` training rows of `split` and store its targets.

    Process `process_id` of `num_processes` labels shards i with i % num_processes == process_id;
    the processes share nothing but `out_dir` and need not run at once. The cache is the same,
    byte for byte, however many processes built it. Resumable: shards already written are kept,
    and a re-run with the same settings (any `num_processes`) builds only its missing ones.
    Returns the manifest: complete (listing every shard) once all shards exist, otherwise
    without shards (see `missing_shards`). Processes building at once must share
    `num_processes` and have distinct ids.
    """
    ckpt, out = Path(teacher_ckpt_dir), Path(out_dir)
    config, vocab = _validate(ckpt, seq_len=seq_len, k=k, scheme=scheme, max_rows=max_rows,
                              rows_per_shard=rows_per_shard, batch_size=batch_size,
                              process_id=process_id, num_processes=num_processes)
    tok_sha = load_meta(ckpt)["tokenizer_sha256"]
    data = TokenSplit.open(data_dir, split)
    data.check_tokenizer(tok_sha)
    rows = TokenRows(data.tokens, seq_len)  # read on demand from the shards
    total = len(rows) if max_rows is None else min(max_rows, len(rows))
    if total == 0:
        raise NanoError(f"{data_dir}: split {split!r} has {data.num_tokens} tokens, fewer than one row of seq_len={seq_len}")
    seen = vocab_order(data.tokens, vocab)  # the whole split: better ranks for small caches
    order_bytes = encode_order(seen)
    fresh = _fresh_manifest(ckpt, config, data, Path(data_dir), split=split, tok_sha=tok_sha, vocab=vocab,
                            order_bytes=order_bytes, seen=len(seen), scheme=scheme, k=k, seed=seed, seq_len=seq_len,
                            total=total, rows_per_shard=rows_per_shard)
    mine = range(process_id, num_shards(fresh), num_processes)
    # Leftover temp files of the files only this process writes (the shared ones: only when alone).
    shared = (MANIFEST, VOCAB_ORDER) if num_processes == 1 else ()
    manifest = open_for_build(out, fresh, stale=[*map(shard_name, mine), *shared])
    vpath = out / VOCAB_ORDER
    if not vpath.is_file() or sha256_file(vpath) != fresh["vocab_order"]["sha256"]:
        with atomic_file(vpath) as f:  # racing processes write the same bytes
            f.write(order_bytes)
    _, rank = full_order(seen, vocab)

    todo = [i for i in mine if not (out / shard_name(i)).is_file()]
    mine_rows = _rows_in(manifest, mine)
    done = mine_rows - _rows_in(manifest, todo)
    report = progress or (lambda done, total: None)
    report(done, mine_rows)
    model = load_checkpoint(ckpt) if todo else None
    for i in todo:
        lo, hi = shard_rows(manifest, i)
        targets = _label_shard(model, rows, lo, hi, bos_id=manifest["bos_id"], seed=seed, k=k, scheme=scheme,
                               vocab=vocab, batch_size=batch_size,
                               report=lambda n, done=done: report(done + n, mine_rows))
        with atomic_file(out / shard_name(i)) as f:  # its existence is the progress: no manifest update
            f.write(encode_targets(targets, scheme=scheme, rank=rank, rows=(lo, hi)))
        done += hi - lo
        report(done, mine_rows)
    if missing_shards(out, manifest):  # other processes' shards are still to come: one of them finishes
        return manifest | {"shards": [], "complete": False}
    manifest = finished_manifest(out, manifest)
    write_json(out / MANIFEST, manifest)  # idempotent: whoever gets here writes the same bytes
    return manifest


def _rows_in(manifest: dict[str, Any], shards) -> int:
    return sum(hi - lo for lo, hi in (shard_rows(manifest, i) for i in shards))


def _check(name: str, value: Any, *, ok: bool, why: str) -> None:
    if not ok:
        raise NanoError(f"build_cache: invalid {name}={value!r} ({why})")


def _validate(ckpt: Path, *, seq_len: int, k: int, scheme: str, max_rows: int | None, rows_per_shard: int,
              batch_size: int, process_id: int, num_processes: int) -> tuple[ModelConfig, int]:
    """The teacher's config and the vocabulary the cache stores (its tokenizer's), once the
    settings and the vocabularies suit the cache format."""
    _check("scheme", scheme, ok=scheme in SCHEMES, why=f"one of {', '.join(SCHEMES)}")
    _check("seq_len", seq_len, ok=seq_len >= 2, why="at least 2")
    _check("rows_per_shard", rows_per_shard, ok=rows_per_shard >= 1, why="at least 1")
    _check("batch_size", batch_size, ok=batch_size >= 1, why="at least 1")
    _check("max_rows", max_rows, ok=max_rows is None or max_rows >= 1, why="at least 1")
    _check("num_processes", num_processes, ok=num_processes >= 1, why="at least 1")
    _check("process_id", process_id, ok=0 <= process_id < num_processes, why=f"0..{num_processes - 1} for num_processes={num_processes}")
    config = load_config(ckpt)
    if not load_meta(ckpt).get("tokenizer_sha256"):
        raise NanoError(f"{ckpt / 'meta.json'}: no tokenizer_sha256; convert the teacher with `nano convert` so its tokenizer is known")
    vocab = load_tokenizer(ckpt).vocab_size  # logits past it are padding no token maps to
    if config.vocab_size < vocab:
        raise NanoError(f"{ckpt}: the teacher has {config.vocab_size} logits but its tokenizer {vocab} tokens; "
                        "pass a checkpoint whose tokenizer is the one it was trained with")
    _check("k", k, ok=1 <= k <= vocab, why=f"1..{vocab}, the teacher's vocabulary")
    if vocab > ID_LIMIT:
        raise NanoError(f"{ckpt}: vocabulary of {vocab} tokens; the teacher cache format stores ids below {ID_LIMIT}")
    return config, vocab


def _fresh_manifest(ckpt: Path, config: ModelConfig, data: TokenSplit, data_dir: Path, *, split: str, tok_sha: str,
                    vocab: int, order_bytes: bytes, seen: int, scheme: str, k: int, seed: int, seq_len: int,
                    total: int, rows_per_shard: int) -> dict[str, Any]:
    """The manifest of a new cache over the first `total` rows: identity, no shards yet. Nothing
    in it depends on when or by which process it is built (no timestamps, no rates)."""
    return {
        "format": FORMAT, "version": VERSION, "nano_version": __version__,
        "teacher": {"config": config.name, "fingerprint": teacher_fingerprint(ckpt), "checkpoint": str(ckpt.resolve())},
        "tokenizer_sha256": tok_sha, "vocab_size": vocab,
        "bos_id": int(data.manifest["tokenizer"]["bos_id"]),
        "targets": {"scheme": scheme, "k": k, "seed": seed, "logprob_step": LOGPROB_STEP},
        "rows": {"seq_len": seq_len, "total": total, "rows_per_shard": rows_per_shard,
                 "inputs": "bos + row[:-1]; position t predicts row[t]"},
        "data": {"dir": str(data_dir.resolve()), "split": split,
                 "manifest_sha256": sha256_file(data_dir / "manifest.json"),
                 "tokens": total * seq_len, "tokens_sha256": sha256_tokens(data.tokens, stop=total * seq_len)},
        "vocab_order": {"file": VOCAB_ORDER, "ids": seen, "bytes": len(order_bytes),
                        "sha256": hashlib.sha256(order_bytes).hexdigest()},
        "shards": [], "complete": False,
    }


def _label_shard(model: Transformer, rows: TokenRows, lo: int, hi: int, *, bos_id: int, seed: int, k: int,
                 scheme: str, vocab: int, batch_size: int, report: Callable[[int], None]) -> TeacherTargets:
    """Teacher targets (hi - lo, T, k) of rows [lo, hi), `batch_size` rows per forward.
    `report(n)` gets the rows done within the shard after each batch but the last."""
    seq_len = rows.seq_len
    chunk = max(1, min(seq_len, 128 // batch_size))  # ~128 positions of (V,) logits at a time
    parts = []
    for b in range(lo, hi, batch_size):
        idx = np.arange(b, min(b + batch_size, hi))
        padded = np.concatenate([idx, np.full(batch_size - len(idx), idx[-1])])  # one compiled shape
        t = teacher_targets(model, jnp.asarray(row_inputs(rows.take(padded), bos_id)),
                            jnp.asarray(padded, jnp.int32), jnp.int32(seed), k=k, scheme=scheme, chunk=chunk,
                            vocab=vocab)
        parts.append(jax.tree.map(lambda a: np.asarray(a)[: len(idx)], t))
        if idx[-1] + 1 < hi:
            report(int(idx[-1]) + 1 - lo)
    return TeacherTargets(*(np.concatenate(leaves) for leaves in zip(*parts)))
