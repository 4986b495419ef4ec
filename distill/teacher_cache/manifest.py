"""The cache directory and its manifest, which makes a build resumable.

Layout of a cache directory:
  manifest.json     identity (teacher, tokenizer, data, k, scheme, seed, seq_len, format),
                    written first with no shards; once every shard exists, rewritten with the
                    list of shards (row ranges, sizes, sha256) and complete: true
  vocab-order.bin   the vocabulary order (see `codec`), ~46 KB for the Python-docs split
  shard-00000.bin   rows [0, rows_per_shard), then the next range, ... (see `codec`)

A shard file is written atomically, so one that exists is finished: the files themselves are
the build's progress, which lets independent processes each write their own shards.
"""

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from distill.teacher_cache.fingerprint import sha256_file
from nano.errors import NanoError
from nano.files import write_json

FORMAT = "nano-teacher-cache"
VERSION = 1
MANIFEST = "manifest.json"
VOCAB_ORDER = "vocab-order.bin"
REBUILD = "re-run `nano distill cache-teacher` to rebuild it"


def shard_name(i: int) -> str:
    return f"shard-{i:05d}.bin"


def num_shards(m: dict[str, Any]) -> int:
    return -(-m["rows"]["total"] // m["rows"]["rows_per_shard"])


def shard_rows(m: dict[str, Any], i: int) -> tuple[int, int]:
    """The training rows [lo, hi) of shard `i`."""
    per = m["rows"]["rows_per_shard"]
    return i * per, min((i + 1) * per, m["rows"]["total"])


def missing_shards(out: Path, m: dict[str, Any]) -> list[int]:
    """Indices of the shards of `m` that are not yet written in `out`."""
    return [i for i in range(num_shards(m)) if not (out / shard_name(i)).is_file()]


def incomplete_message(out: Path, m: dict[str, Any]) -> str:
    """One line for a reader that finds the cache unfinished: what is missing, and why it may be."""
    missing = missing_shards(out, m)
    if not missing:
        return (f"{out}: teacher cache not finished: every shard is written but {MANIFEST} does not list them yet "
                "(the last process may be writing it); wait, or re-run `nano distill cache-teacher` to finish it")
    names = ", ".join(shard_name(i) for i in missing[:3]) + (f", ... ({len(missing) - 3} more)" if len(missing) > 3 else "")
    return (f"{out}: teacher cache incomplete: {len(missing)} of {num_shards(m)} shards missing ({names}); other "
            "processes may still be building it: wait for them, or re-run `nano distill cache-teacher` to finish it")


def finished_manifest(out: Path, m: dict[str, Any]) -> dict[str, Any]:
    """`m` listing every shard as it is on disk (all must exist), complete. The same files give
    the same bytes, whichever process writes it."""
    shards = []
    for i in range(num_shards(m)):
        path = out / shard_name(i)
        shards.append({"file": path.name, "rows": list(shard_rows(m, i)), "bytes": path.stat().st_size,
                       "sha256": sha256_file(path)})
    return m | {"shards": shards, "complete": True}


def identity(m: dict[str, Any]) -> dict[str, Any]:
    """What must match for a re-run to resume into an existing cache."""
    return {"format": (m.get("format"), m.get("version")), "teacher": m["teacher"]["fingerprint"],
            "tokenizer_sha256": m["tokenizer_sha256"], "vocab_size": m["vocab_size"], "bos_id": m["bos_id"],
            "targets": m["targets"], "rows": m["rows"], "data split": m["data"]["split"],
            "data tokens": m["data"]["tokens_sha256"],
            "vocab order": m["vocab_order"]["sha256"]}


def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest at `path`; NanoError if it is missing or lacks an identity field."""
    try:
        m = json.loads(path.read_text())
        identity(m)
        return m
    except FileNotFoundError:
        raise NanoError(f"{path}: missing; build the cache with `nano distill cache-teacher`") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise NanoError(f"{path}: unreadable teacher-cache manifest ({' '.join(str(exc).split())}); delete the cache directory and {REBUILD}") from None


def _target(path: Path) -> str:
    """The file a temp file of `atomic_file` (.<name>.<random>.tmp) is for; else the name itself."""
    name = path.name
    return name[1:].rsplit(".", 2)[0] if name.startswith(".") and name.endswith(".tmp") else name


def open_for_build(out: Path, fresh: dict[str, Any], *, stale: Iterable[str]) -> dict[str, Any]:
    """The manifest to continue from: the existing one if it has the same identity, else `fresh`
    (then written); refuses a directory that is not ours. Then removes the temp files a killed
    build left of the files named in `stale` (only those this process writes: another process
    may be writing the rest)."""
    if out.exists() and not out.is_dir():
        raise NanoError(f"{out}: exists and is not a directory; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    path = out / MANIFEST
    if path.is_file():
        manifest = read_manifest(path)
        want, have = identity(fresh), identity(manifest)
        for key in want:
            if want[key] != have[key]:
                raise NanoError(f"{path}: existing teacher cache has a different {key} ({have[key]} vs {want[key]}); "
                                f"choose another --out, or delete {out} to rebuild it")
        manifest["data"]["dir"] = fresh["data"]["dir"]  # the same tokens may have moved
    else:
        names = [_target(p) for p in out.iterdir()]
        if any(not n.startswith((MANIFEST, VOCAB_ORDER, "shard-")) for n in names):
            raise NanoError(f"{out}: directory is not empty and holds no teacher cache ({MANIFEST}); choose another --out")
        if any(n.startswith("shard-") and n.endswith(".bin") for n in names):  # its manifest was deleted
            raise NanoError(f"{out}: holds teacher-cache shards but no {MANIFEST}, so not which settings made them; "
                            "delete the directory to rebuild it, or choose another --out")
        write_json(path, fresh)  # racing processes write the same bytes
        manifest = fresh
    stale = set(stale)
    for tmp in out.glob(".*.tmp"):
        if _target(tmp) in stale:
            tmp.unlink(missing_ok=True)
    return manifest
