"""Training rows: the token stream cut into non-overlapping rows of `seq_len` tokens, every
stream token a label exactly once.

The model input of a row is BOS + row[:-1] (Gemma without BOS is far off: on the Python-docs
split its NLL rises from 2.53 to 3.54 nats), and the target at position t is row[t].

`nano.data.stream.TokenRows` reads the same rows on demand from a split's shards (training and
cache building use it); `training_rows` is the in-memory view of one array."""

import numpy as np


def training_rows(tokens: np.ndarray, seq_len: int) -> np.ndarray:
    """(N, seq_len) view of the stream cut into whole rows (a trailing partial row is dropped)."""
    n = len(tokens) // seq_len
    return tokens[: n * seq_len].reshape(n, seq_len)


def row_inputs(rows: np.ndarray, bos_id: int) -> np.ndarray:
    """Model inputs (int32) of `rows` (N, T): BOS + row[:-1], so position t predicts row[t]."""
    out = np.empty(rows.shape, np.int32)
    out[:, 0] = bos_id
    out[:, 1:] = rows[:, :-1]
    return out
