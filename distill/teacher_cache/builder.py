"""Build a teacher cache (`nano distill cache-teacher`): the teacher runs once over the training
rows, and its top-k (or sampled) targets are stored per token, compressed, one shard at a time.
A kill loses at most the shard in progress; a re-run with the same settings resumes."""

import functools
import hashlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Array, Int

from distill.targets import SCHEMES, TeacherTargets, chunked_targets
from distill.teacher_cache.codec import (ID_LIMIT, LOGPROB_STEP, encode_order, encode_targets, full_order,
                                         vocab_order)
from distill.teacher_cache.fingerprint import sha256_file, sha256_tokens, teacher_fingerprint
from distill.teacher_cache.manifest import FORMAT, MANIFEST, VERSION, VOCAB_ORDER, open_for_build, shard_name
from distill.teacher_cache.rows import row_inputs, training_rows
from nano import __version__
from nano.atomic import atomic_file
from nano.checkpoint import load_checkpoint, load_config, load_meta
from nano.config import ModelConfig
from nano.data.shards import TokenSplit
from nano.errors import NanoError
from nano.files import write_json
from nano.model import Transformer

Progress = Callable[[int, int], None]  # (rows done, rows in total)


@functools.partial(nnx.jit, static_argnames=("k", "scheme", "chunk"))
def teacher_targets(model: Transformer, inputs: Int[Array, "B T"], rows: Int[Array, "B"],
                    seed: Int[Array, ""], *, k: int, scheme: str, chunk: int) -> TeacherTargets:
    """One jitted teacher forward + target extraction for a batch of rows."""
    h, _ = model.hidden(inputs)
    return chunked_targets(model.logits, h, rows, k=k, scheme=scheme, seed=seed, chunk=chunk)


def build_cache(teacher_ckpt_dir: str | Path, data_dir: str | Path, out_dir: str | Path, *,
                split: str = "train", seq_len: int = 512, k: int = 128, scheme: str = "topk",
                seed: int = 0, max_rows: int | None = None, rows_per_shard: int = 64,
                batch_size: int = 4, progress: Progress | None = None) -> dict[str, Any]:
    """Run the teacher over the first `max_rows` training rows of `split` and store its targets.

    Resumable: finished shards are kept, and a re-run with the same settings builds only the
    missing ones. Returns the manifest. Only one process may build into `out_dir` at a time.
    """
    ckpt, out = Path(teacher_ckpt_dir), Path(out_dir)
    config = _validate(ckpt, seq_len=seq_len, k=k, scheme=scheme, max_rows=max_rows,
                       rows_per_shard=rows_per_shard, batch_size=batch_size)
    tok_sha = load_meta(ckpt).get("tokenizer_sha256")
    if not tok_sha:
        raise NanoError(f"{ckpt / 'meta.json'}: no tokenizer_sha256; convert the teacher with `nano convert` so its tokenizer is known")
    data = TokenSplit.open(data_dir, split)
    data.check_tokenizer(tok_sha)
    rows = training_rows(data.tokens, seq_len)
    total = len(rows) if max_rows is None else min(max_rows, len(rows))
    if total == 0:
        raise NanoError(f"{data_dir}: split {split!r} has {data.num_tokens} tokens, fewer than one row of seq_len={seq_len}")
    seen = vocab_order(data.tokens, config.vocab_size)  # the whole split: better ranks for small caches
    order_bytes = encode_order(seen)
    fresh = _fresh_manifest(ckpt, config, data, Path(data_dir), split=split, tok_sha=tok_sha, order_bytes=order_bytes,
                            seen=len(seen), scheme=scheme, k=k, seed=seed, seq_len=seq_len, total=total,
                            rows_per_shard=rows_per_shard)
    manifest = open_for_build(out, fresh)
    vpath = out / VOCAB_ORDER
    if not vpath.is_file() or sha256_file(vpath) != fresh["vocab_order"]["sha256"]:
        with atomic_file(vpath) as f:
            f.write(order_bytes)
    _, rank = full_order(seen, config.vocab_size)

    num_shards = -(-total // rows_per_shard)
    have = {e["rows"][0] // rows_per_shard: e for e in manifest["shards"]
            if (out / e["file"]).is_file() and (out / e["file"]).stat().st_size == e["bytes"]}
    done = sum(e["rows"][1] - e["rows"][0] for e in have.values())
    report = progress or (lambda done, total: None)
    report(done, total)
    model = None
    for i in range(num_shards):
        if i in have:
            continue
        lo, hi = i * rows_per_shard, min((i + 1) * rows_per_shard, total)
        compiling = model is None  # the build's first batch compiles: keep it out of the rate
        if model is None:
            model = load_checkpoint(ckpt)
        targets, rate = _label_shard(model, rows, lo, hi, bos_id=manifest["bos_id"], seed=seed, k=k,
                                     scheme=scheme, batch_size=batch_size, compiling=compiling,
                                     report=lambda n, done=done: report(done + n, total))
        blob = encode_targets(targets, scheme=scheme, rank=rank, rows=(lo, hi))
        with atomic_file(out / shard_name(i)) as f:
            f.write(blob)
        have[i] = {"file": shard_name(i), "rows": [lo, hi], "bytes": len(blob),
                   "sha256": hashlib.sha256(blob).hexdigest(), "teacher_tokens_per_s": rate}
        manifest["shards"] = [have[j] for j in sorted(have)]
        manifest["complete"] = len(have) == num_shards
        write_json(out / MANIFEST, manifest)  # after the shard: a kill loses at most the shard in progress
        done += hi - lo
        report(done, total)
    if not manifest["complete"]:  # every shard was already there: just record it
        manifest["complete"] = True
        write_json(out / MANIFEST, manifest)
    return manifest


def _check(name: str, value: Any, *, ok: bool, why: str) -> None:
    if not ok:
        raise NanoError(f"build_cache: invalid {name}={value!r} ({why})")


def _validate(ckpt: Path, *, seq_len: int, k: int, scheme: str, max_rows: int | None,
              rows_per_shard: int, batch_size: int) -> ModelConfig:
    """The teacher's config, once the settings and its vocabulary suit the cache format."""
    _check("scheme", scheme, ok=scheme in SCHEMES, why=f"one of {', '.join(SCHEMES)}")
    _check("seq_len", seq_len, ok=seq_len >= 2, why="at least 2")
    _check("rows_per_shard", rows_per_shard, ok=rows_per_shard >= 1, why="at least 1")
    _check("batch_size", batch_size, ok=batch_size >= 1, why="at least 1")
    _check("max_rows", max_rows, ok=max_rows is None or max_rows >= 1, why="at least 1")
    config = load_config(ckpt)
    _check("k", k, ok=1 <= k <= config.vocab_size, why=f"1..{config.vocab_size}, the teacher's vocabulary")
    if config.vocab_size > ID_LIMIT:
        raise NanoError(f"{ckpt}: vocabulary of {config.vocab_size} tokens; the teacher cache format stores ids below {ID_LIMIT}")
    return config


def _fresh_manifest(ckpt: Path, config: ModelConfig, data: TokenSplit, data_dir: Path, *, split: str, tok_sha: str,
                    order_bytes: bytes, seen: int, scheme: str, k: int, seed: int, seq_len: int, total: int,
                    rows_per_shard: int) -> dict[str, Any]:
    """The manifest of a new cache over the first `total` rows: identity, no shards yet."""
    return {
        "format": FORMAT, "version": VERSION, "nano_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "teacher": {"config": config.name, "fingerprint": teacher_fingerprint(ckpt), "checkpoint": str(ckpt.resolve())},
        "tokenizer_sha256": tok_sha, "vocab_size": config.vocab_size,
        "bos_id": int(data.manifest["tokenizer"]["bos_id"]),
        "targets": {"scheme": scheme, "k": k, "seed": seed, "logprob_step": LOGPROB_STEP},
        "rows": {"seq_len": seq_len, "total": total, "rows_per_shard": rows_per_shard,
                 "inputs": "bos + row[:-1]; position t predicts row[t]"},
        "data": {"dir": str(data_dir.resolve()), "split": split,
                 "manifest_sha256": sha256_file(data_dir / "manifest.json"),
                 "tokens": total * seq_len, "tokens_sha256": sha256_tokens(data.tokens[: total * seq_len])},
        "vocab_order": {"file": VOCAB_ORDER, "ids": seen, "bytes": len(order_bytes),
                        "sha256": hashlib.sha256(order_bytes).hexdigest()},
        "shards": [], "complete": False,
    }


def _label_shard(model: Transformer, rows: np.ndarray, lo: int, hi: int, *, bos_id: int, seed: int, k: int,
                 scheme: str, batch_size: int, compiling: bool,
                 report: Callable[[int], None]) -> tuple[TeacherTargets, float | None]:
    """Teacher targets (hi - lo, T, k) of `rows` (N, T) [lo, hi), `batch_size` rows per forward,
    and the teacher's tokens/s (None if the only batch was the `compiling` one). `report(n)`
    gets the rows done within the shard after each batch but the last."""
    seq_len = rows.shape[1]
    chunk = max(1, min(seq_len, 128 // batch_size))  # ~128 positions of (V,) logits at a time
    parts, timed, seconds = [], 0, 0.0
    for b in range(lo, hi, batch_size):
        idx = np.arange(b, min(b + batch_size, hi))
        padded = np.concatenate([idx, np.full(batch_size - len(idx), idx[-1])])  # one compiled shape
        start = time.perf_counter()
        t = teacher_targets(model, jnp.asarray(row_inputs(rows[padded], bos_id)),
                            jnp.asarray(padded, jnp.int32), jnp.int32(seed), k=k, scheme=scheme, chunk=chunk)
        parts.append(jax.tree.map(lambda a: np.asarray(a)[: len(idx)], t))
        if not compiling:
            timed, seconds = timed + len(idx), seconds + time.perf_counter() - start
        compiling = False
        if idx[-1] + 1 < hi:
            report(int(idx[-1]) + 1 - lo)
    targets = TeacherTargets(*(np.concatenate(leaves) for leaves in zip(*parts)))
    return targets, round(timed * seq_len / seconds, 1) if timed else None
