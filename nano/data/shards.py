"""Reading side of `nano data prepare`: token streams, document offsets, evaluation windows."""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nano.data.stream import TokenRows, TokenStream
from nano.errors import NanoError


def _load(path: Path, dtype: type, mmap: bool) -> np.ndarray:
    try:
        arr = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except FileNotFoundError:
        raise NanoError(f"{path}: missing; re-run `nano data prepare`") from None
    except (OSError, ValueError, EOFError) as exc:
        raise NanoError(f"{path}: not a readable .npy file ({' '.join(str(exc).split())}); re-run `nano data prepare`") from None
    if arr.dtype != dtype or arr.ndim != 1:
        raise NanoError(f"{path}: expected a 1-D {np.dtype(dtype).name} array, found {arr.ndim}-D {arr.dtype}; re-run `nano data prepare`")
    return arr


@dataclass(frozen=True)
class TokenSplit:
    data_dir: Path
    split: str
    tokens: TokenStream  # uint32 stream: every document followed by EOS, over the memory-mapped shards (never concatenated)
    doc_offsets: np.ndarray  # int64: start of each document, then the total
    manifest: dict[str, Any]

    @property
    def num_tokens(self) -> int:
        return len(self.tokens)

    @classmethod
    def open(cls, data_dir: str | Path, split: str) -> "TokenSplit":
        data_dir = Path(data_dir)
        path = data_dir / "manifest.json"
        try:
            manifest = json.loads(path.read_text())
            info = manifest["splits"]
        except FileNotFoundError:
            raise NanoError(f"{path}: missing; run `nano data prepare --out {data_dir}` first") from None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise NanoError(f"{path}: unreadable or corrupt ({' '.join(str(exc).split())}); re-run `nano data prepare`") from None
        if split not in info:
            raise NanoError(f"{path}: no split {split!r} (have: {', '.join(sorted(info))})")
        shards = [_load(data_dir / split / name, np.uint32, mmap=True) for name in info[split]["shards"]]
        tokens = TokenStream(shards)
        offsets = _load(data_dir / split / "doc_offsets.npy", np.int64, mmap=False)
        expected = info[split].get("tokens")
        if (
            len(offsets) == 0
            or offsets[0] != 0
            or offsets[-1] != len(tokens)
            or np.any(np.diff(offsets) < 0)
            or (expected is not None and expected != len(tokens))
        ):
            raise NanoError(
                f"{data_dir / split / 'doc_offsets.npy'}: offsets do not match the {len(tokens)} tokens in the shards "
                f"(manifest says {expected}); re-run `nano data prepare`"
            )
        return cls(data_dir, split, tokens, offsets, manifest)

    def check_tokenizer(self, sha256: str) -> None:
        """Refuse data tokenized with a different vocabulary than the model's."""
        have = self.manifest.get("tokenizer", {}).get("sha256")
        if have != sha256:
            raise NanoError(
                f"data dir {self.data_dir} was tokenized with tokenizer {have} but the model uses {sha256}; "
                "re-run `nano data prepare`"
            )


def eval_windows(tokens: TokenStream | np.ndarray, *, window: int, bos_id: int, max_windows: int | None = None) -> np.ndarray:
    """(N, window) int32: BOS + non-overlapping chunks of `window - 1` tokens, so every token is scored once.

    With `max_windows`, picks that many chunks evenly spaced over the whole stream (deterministic);
    a trailing partial chunk is dropped.
    """
    if window < 2:
        raise NanoError(f"--window must be at least 2 (BOS + one scored token), got {window}")
    chunks = TokenRows(tokens, window - 1)
    count = len(chunks)
    rows = np.arange(count, dtype=np.int64)
    if max_windows is not None and count > max_windows:
        # First and last chunk included, the rest evenly between (distinct since count > max_windows).
        rows = np.arange(max_windows, dtype=np.int64) * (count - 1) // max(max_windows - 1, 1)
    out = np.empty((len(rows), window), dtype=np.int32)
    out[:, 0] = bos_id
    out[:, 1:] = chunks.take(rows)  # reads only the chosen chunks of the shards
    return out
