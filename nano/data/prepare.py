"""Sources → cleaned, deduplicated, tokenized shards + manifest.json (built atomically)."""

import hashlib
import json
import re
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

import numpy as np

import nano
from nano.atomic import atomic_dir, atomic_file
from nano.data.sources import DEFAULT_SOURCES, Source, describe, read_documents
from nano.errors import NanoError
from nano.paths import cache_dir

SHARD_TOKENS = 1 << 24  # 16M tokens = 64 MiB of uint32 per shard
MIN_DOC_WORDS = 20
MIN_PARAGRAPH_WORDS = 4  # shorter shared paragraphs ("For example:", "}") carry no held-out content
BOILERPLATE_SHARE, BOILERPLATE_MIN_DOCS = 0.05, 10  # a paragraph in this many of a split's documents is chrome
SHINGLE_WORDS = 13
TRAIN = "train"  # the split deduplicated against every other split
PIPELINE = 1  # bump when cleaning/dedup changes, so older data dirs are rebuilt rather than reused

Progress = Callable[[str, int, int], None]


class TokenizerLike(Protocol):
    eos_id: int
    bos_id: int
    vocab_size: int
    sha256: str

    def encode(self, text: str) -> list[int]: ...


@dataclass(frozen=True)
class Manifest:
    pipeline: int
    nano_version: str
    created: str
    tokenizer: dict[str, Any]  # sha256, vocab_size, bos_id, eos_id
    splits: dict[str, dict[str, Any]]  # sources, documents, tokens, text_bytes, shards, dedup, ...
    overlap: dict[str, Any]  # 13-word-shingle overlap of each held-out split with train

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Manifest":
        return cls(**{k: data[k] for k in ("pipeline", "nano_version", "created", "tokenizer", "splits", "overlap")})


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def _digest(text: str) -> bytes:
    return hashlib.blake2b(_norm(text).encode(), digest_size=16).digest()


def _paragraphs(text: str) -> list[str]:
    return [p for p in re.split(r"\n[ \t]*\n", text) if p.strip()]


def _shingles(docs: Sequence[str], vocab: dict[str, int]) -> np.ndarray:
    """Unique 64-bit hashes of every 13-word window (lowercased) inside each document."""
    out = []
    for doc in docs:
        ids = np.array([vocab.setdefault(w, len(vocab)) for w in doc.lower().split()], dtype=np.uint64)
        if len(ids) < SHINGLE_WORDS:
            continue
        h = np.zeros(len(ids) - SHINGLE_WORDS + 1, dtype=np.uint64)
        for k in range(SHINGLE_WORDS):  # polynomial hash; uint64 arithmetic wraps
            h = h * np.uint64(1_000_003) + ids[k : len(ids) - SHINGLE_WORDS + 1 + k]
        out.append(h)
    return np.unique(np.concatenate(out)) if out else np.zeros(0, dtype=np.uint64)


def _drop_paragraphs(texts: list[str], digests: set[bytes]) -> tuple[list[str], int, int, int]:
    """Remove paragraphs (of at least MIN_PARAGRAPH_WORDS words) whose digest is in `digests`.

    Returns (texts, paragraphs dropped, their bytes, documents that fell under MIN_DOC_WORDS and went too).
    """
    out, dropped, dropped_bytes, emptied = [], 0, 0, 0
    for text in texts:
        paragraphs = _paragraphs(text)
        keep = [p for p in paragraphs if len(p.split()) < MIN_PARAGRAPH_WORDS or _digest(p) not in digests]
        if len(keep) < len(paragraphs):
            dropped += len(paragraphs) - len(keep)
            dropped_bytes += sum(len(p.encode()) for p in paragraphs) - sum(len(p.encode()) for p in keep)
            text = "\n\n".join(keep)
        if len(text.split()) >= MIN_DOC_WORDS:
            out.append(text)
        else:
            emptied += 1
    return out, dropped, dropped_bytes, emptied


def _existing(out_dir: Path) -> Manifest | None:
    path = out_dir / "manifest.json"
    if not path.is_file():
        return None
    try:
        manifest = Manifest.from_dict(json.loads(path.read_text()))
    except (ValueError, KeyError, TypeError):
        return None
    complete = all((out_dir / s / f).is_file() for s, info in manifest.splits.items() for f in info["shards"])
    return manifest if complete else None


def _encode(tokenizer: TokenizerLike, texts: list[str], report: Progress, stage: str) -> Iterator[list[int]]:
    """Token ids per document, in batches of ~4 MB so progress moves and encode_batch can use its threads."""
    batch_fn = getattr(tokenizer, "encode_batch", None)
    start = 0
    while start < len(texts):
        end, size = start, 0
        while end < len(texts) and (end == start or size < 4_000_000):
            size += len(texts[end])
            end += 1
        chunk = texts[start:end]
        yield from (batch_fn(chunk) if batch_fn else [tokenizer.encode(t) for t in chunk])
        report(stage, end, len(texts))
        start = end


def _write_split(
    split_dir: Path, texts: list[str], tokenizer: TokenizerLike, report: Progress, stage: str, shard_tokens: int
) -> tuple[list[str], int]:
    """Shards of uint32 ids (each document followed by EOS) + doc_offsets.npy; returns (shard names, tokens)."""
    split_dir.mkdir(parents=True)
    offsets, shards, buffer, buffered = [0], [], [], 0
    eos = np.array([tokenizer.eos_id], dtype=np.uint32)

    def write(stream: np.ndarray) -> None:
        shards.append(f"tokens-{len(shards):05d}.npy")
        np.save(split_dir / shards[-1], stream)

    for ids in _encode(tokenizer, texts, report, stage):
        buffer += [np.asarray(ids, dtype=np.uint32), eos]
        buffered += len(ids) + 1
        offsets.append(offsets[-1] + len(ids) + 1)
        if buffered >= shard_tokens:  # documents may straddle shards: offsets index the whole stream
            stream = np.concatenate(buffer)
            while len(stream) >= shard_tokens:
                write(stream[:shard_tokens])
                stream = stream[shard_tokens:]
            buffer, buffered = [stream], len(stream)
    if buffered:
        write(np.concatenate(buffer))
    np.save(split_dir / "doc_offsets.npy", np.array(offsets, dtype=np.int64))
    return shards, offsets[-1]


def _read(plan: dict[str, list[Source]], report: Progress) -> tuple[dict[str, list[str]], dict[str, dict[str, Any]]]:
    """Read and clean every source; drop tiny documents and exact duplicates within each split."""
    docs: dict[str, list[str]] = {}
    info: dict[str, dict[str, Any]] = {}
    for split, srcs in plan.items():
        seen: set[bytes] = set()
        docs[split], entries, tiny, dups = [], [], 0, 0
        for src in srcs:
            kept = 0
            for doc in read_documents(src, lambda d, t, stage=f"read {split} {src}": report(stage, d, t)):
                if len(doc.text.split()) < MIN_DOC_WORDS:
                    tiny += 1
                elif (key := _digest(doc.text)) in seen:
                    dups += 1
                else:
                    seen.add(key)
                    docs[split].append(doc.text)
                    kept += 1
            if kept == 0:
                raise NanoError(f"{src}: no documents of at least {MIN_DOC_WORDS} words found; check the path and file types")
            entries.append(describe(src) | {"documents": kept})
        info[split] = {"sources": entries, "dedup": {"tiny_documents_dropped": tiny, "duplicate_documents_dropped": dups}}
    return docs, info


def _dedup(docs: dict[str, list[str]], info: dict[str, dict[str, Any]], report: Progress) -> None:
    """Drop boilerplate paragraphs per split, then train paragraphs that occur in any other split."""
    report("dedup", 0, len(docs))
    for n, split in enumerate(docs, 1):
        texts = docs[split]
        # Page chrome repeated across many documents ("See also lists of Objects, ...") is not text.
        df = Counter(d for t in texts for d in {_digest(p) for p in _paragraphs(t) if len(p.split()) >= MIN_PARAGRAPH_WORDS})
        common = {d for d, k in df.items() if k >= max(BOILERPLATE_MIN_DOCS, BOILERPLATE_SHARE * len(texts))}
        docs[split], dropped, _, emptied = _drop_paragraphs(texts, common)
        info[split]["dedup"] |= {"boilerplate_paragraphs_dropped": dropped, "documents_emptied": emptied}
        report("dedup", n, len(docs))
    if TRAIN in docs and len(docs) > 1:  # keep held-out clean
        held = {_digest(p) for split, texts in docs.items() if split != TRAIN for t in texts for p in _paragraphs(t)}
        docs[TRAIN], dropped, dropped_bytes, emptied = _drop_paragraphs(docs[TRAIN], held)
        info[TRAIN]["dedup"]["documents_emptied"] += emptied
        info[TRAIN]["dedup"] |= {"paragraphs_dropped": dropped, "paragraph_bytes_dropped": dropped_bytes}


def _overlap(docs: dict[str, list[str]], info: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Leakage check after dedup: share of each other split's 13-word shingles also present in train."""
    overlap: dict[str, Any] = {"shingle_words": SHINGLE_WORDS}
    if TRAIN in docs and len(docs) > 1:
        vocab: dict[str, int] = {}
        train = _shingles(docs[TRAIN], vocab)
        for split in [s for s in docs if s != TRAIN]:
            sh = _shingles(docs[split], vocab)
            shared = int(np.isin(sh, train, assume_unique=True).sum())
            overlap[split] = {"shingles": len(sh), "in_train": shared, "rate": shared / max(len(sh), 1)}
            info[split]["shingle_overlap_with_train"] = overlap[split]["rate"]
    return overlap


def prepare(
    out_dir: str | Path,
    tokenizer: TokenizerLike,
    *,
    sources: Mapping[str, Sequence[Source | str]] | None = None,
    progress: Progress | None = None,
    overwrite: bool = False,
    shard_tokens: int = SHARD_TOKENS,
) -> Manifest:
    """Build `out_dir/{split}/tokens-*.npy`, `doc_offsets.npy` and `manifest.json`; a no-op when already built.

    `sources` maps split → sources (default: python3.11-doc → train, sqlite3-doc → heldout).
    `progress(stage, done, total)` stages: "read <split> <source>", "dedup", "tokenize <split>".
    The directory is built beside `out_dir` and renamed into place, so an interrupted run leaves nothing.
    """
    out_dir = Path(out_dir)
    sources = sources or DEFAULT_SOURCES
    plan = {split: [s if isinstance(s, Source) else Source.parse(s) for s in srcs] for split, srcs in sources.items()}
    if (old := _existing(out_dir)) is not None:
        old_specs = {split: [x["spec"] for x in i["sources"]] for split, i in old.splits.items()}
        specs = {split: [str(s) for s in srcs] for split, srcs in plan.items()}
        if (old.pipeline, old.tokenizer["sha256"], old_specs) == (PIPELINE, tokenizer.sha256, specs):
            return old
        if not overwrite:
            raise NanoError(
                f"{out_dir} was prepared with another tokenizer, other sources or an older pipeline; "
                "pass --overwrite or choose another --out"
            )
    elif out_dir.exists() and any(out_dir.iterdir()) and not overwrite:  # never replace what isn't ours
        raise NanoError(f"{out_dir}: output directory exists and is not empty; pass --overwrite or choose another --out")
    if tokenizer.vocab_size > 2**32:
        raise NanoError(f"tokenizer vocabulary of {tokenizer.vocab_size} does not fit uint32 shards")
    report: Progress = progress or (lambda stage, done, total: None)

    docs, info = _read(plan, report)
    _dedup(docs, info, report)
    overlap = _overlap(docs, info)
    tok = {"sha256": tokenizer.sha256, "vocab_size": int(tokenizer.vocab_size)}
    tok |= {"bos_id": int(tokenizer.bos_id), "eos_id": int(tokenizer.eos_id)}
    with atomic_dir(out_dir, overwrite=True) as tmp:
        for split, texts in docs.items():
            shards, total = _write_split(tmp / split, texts, tokenizer, report, f"tokenize {split}", shard_tokens)
            info[split] |= {
                "documents": len(texts),
                "tokens": total,
                "text_bytes": sum(len(t.encode()) for t in texts),
                "shards": shards,
                "tokenizer_sha256": tok["sha256"],
                "vocab_size": tok["vocab_size"],
            }
        manifest = Manifest(
            pipeline=PIPELINE,
            nano_version=nano.__version__,
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            tokenizer=tok,
            splits=info,
            overlap=overlap,
        )
        with atomic_file(tmp / "manifest.json", "w") as f:
            json.dump(manifest.to_dict(), f, indent=2)
    return manifest


def default_data_dir(tokenizer_sha256: str) -> Path:
    """Where the default preparation (the Debian docs) lives: one per tokenizer."""
    return cache_dir() / "data" / f"default-{tokenizer_sha256[:12]}"


def prepare_default(tokenizer: TokenizerLike, *, progress: Progress | None = None) -> Path:
    """The default train/held-out preparation for `tokenizer`, built on first use."""
    out = default_data_dir(tokenizer.sha256)
    prepare(out, tokenizer, progress=progress)
    return out
