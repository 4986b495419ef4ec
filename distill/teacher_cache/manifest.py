"""The cache directory and its manifest, which makes a build resumable.

Layout of a cache directory:
  manifest.json     identity (teacher, tokenizer, data, k, scheme, seed, seq_len, format) and
                    the list of finished shards with row ranges, sizes and sha256
  vocab-order.bin   the vocabulary order (see `codec`), ~46 KB for the Python-docs split
  shard-00000.bin   rows [0, rows_per_shard), then the next range, ... (see `codec`)
"""

import json
from pathlib import Path
from typing import Any

from nano.errors import NanoError
from nano.files import write_json

FORMAT = "nano-teacher-cache"
VERSION = 1
MANIFEST = "manifest.json"
VOCAB_ORDER = "vocab-order.bin"
REBUILD = "re-run `nano distill cache-teacher` to rebuild it"


def shard_name(i: int) -> str:
    return f"shard-{i:05d}.bin"


def identity(m: dict[str, Any]) -> dict[str, Any]:
    """What must match for a re-run to resume into an existing cache."""
    return {"format": (m.get("format"), m.get("version")), "teacher": m["teacher"]["fingerprint"],
            "tokenizer_sha256": m["tokenizer_sha256"], "bos_id": m["bos_id"], "targets": m["targets"],
            "rows": m["rows"], "data split": m["data"]["split"], "data tokens": m["data"]["tokens_sha256"],
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


def open_for_build(out: Path, fresh: dict[str, Any]) -> dict[str, Any]:
    """The manifest to continue from: the existing one if it has the same identity, else `fresh`
    (then written). Removes temp files of a killed build; refuses a directory that is not ours."""
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
    old = read_manifest(path)
    want, have = identity(fresh), identity(old)
    for key in want:
        if want[key] != have[key]:
            raise NanoError(f"{path}: existing teacher cache has a different {key} ({have[key]} vs {want[key]}); "
                            f"choose another --out, or delete {out} to rebuild it")
    old["data"]["dir"] = fresh["data"]["dir"]  # the same tokens may have moved
    return old
