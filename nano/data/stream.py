"""A split's token shards read as one stream without concatenating them, and fixed-length rows
of that stream read on demand: memory holds the rows asked for, whatever the corpus size."""

from collections.abc import Sequence

import numpy as np

from nano.errors import NanoError


class TokenStream:
    """The shards of a split (memory-mapped uint32 .npy files) as one token stream.

    `len`, an index, or a step-1 slice: a slice inside one shard is a view of it (a memmap
    stays on disk), a slice across shards a copy of that range only. Whole-stream work (hashing,
    counting) should read it in chunks."""

    def __init__(self, shards: Sequence[np.ndarray]):
        self.shards = tuple(shards)
        self.bounds = np.cumsum([0, *(len(s) for s in self.shards)], dtype=np.int64)  # (S+1,): each shard's start, then the total

    @classmethod
    def of(cls, tokens: "TokenStream | np.ndarray") -> "TokenStream":
        """`tokens` as a stream: itself, or a 1-D array as a single shard (no copy)."""
        return tokens if isinstance(tokens, TokenStream) else cls([np.asarray(tokens).reshape(-1)])

    @property
    def dtype(self) -> np.dtype:
        return self.shards[0].dtype if self.shards else np.dtype(np.uint32)

    def __len__(self) -> int:
        return int(self.bounds[-1])

    def __getitem__(self, key: int | slice):
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            if step != 1:
                raise IndexError(f"TokenStream slices take step 1, got {step}")
            return self.read(start, stop)
        i = int(key) + (len(self) if int(key) < 0 else 0)
        if not 0 <= i < len(self):
            raise IndexError(f"token {key} out of range for a stream of {len(self)}")
        s = self._shard_of(i)
        return self.shards[s][i - self.bounds[s]]

    def read(self, start: int, stop: int) -> np.ndarray:
        """Tokens [start, stop) (within 0..len): a view inside one shard, else a copy of the range."""
        if stop <= start:
            return np.zeros(0, self.dtype)
        pieces = []
        while start < stop:
            s = self._shard_of(start)
            end = min(stop, int(self.bounds[s + 1]))
            pieces.append(self.shards[s][start - self.bounds[s]: end - self.bounds[s]])
            start = end
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)

    def _shard_of(self, i: int) -> int:
        """The shard holding token `i` (empty shards are skipped)."""
        return int(np.searchsorted(self.bounds, i, side="right")) - 1


class TokenRows:
    """Rows of `seq_len` tokens read on demand: row i is stream[i*seq_len : (i+1)*seq_len], a
    row may straddle two shards, and a trailing partial row is dropped (the rows of
    `distill.teacher_cache.training_rows` over the concatenated stream). Holds the stream (its
    memmaps), never a copy; `num_rows` keeps only the first rows."""

    def __init__(self, tokens: TokenStream | np.ndarray, seq_len: int, *, num_rows: int | None = None):
        if seq_len < 1:
            raise NanoError(f"rows of seq_len={seq_len} tokens: seq_len must be at least 1")
        self.stream, self.seq_len = TokenStream.of(tokens), seq_len
        whole = len(self.stream) // seq_len
        self.num_rows = whole if num_rows is None else max(0, min(num_rows, whole))

    @classmethod
    def from_array(cls, rows: np.ndarray) -> "TokenRows":
        """Rows of an (N, T) array, read from it (a view when it is contiguous)."""
        return cls(np.asarray(rows).reshape(-1), np.shape(rows)[1])

    def __len__(self) -> int:
        return self.num_rows

    def head(self, num_rows: int) -> "TokenRows":
        """The first `num_rows` rows (all of them if there are fewer)."""
        return TokenRows(self.stream, self.seq_len, num_rows=min(num_rows, self.num_rows))

    def take(self, idx) -> np.ndarray:
        """(n, seq_len) int32: rows `idx` (n,), reading only those tokens."""
        idx = np.asarray(idx, np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= self.num_rows):
            raise IndexError(f"row index out of range 0..{self.num_rows - 1}")
        out = np.empty((len(idx), self.seq_len), np.int32)
        for j, i in enumerate(idx.tolist()):
            out[j] = self.stream.read(i * self.seq_len, (i + 1) * self.seq_len)
        return out
