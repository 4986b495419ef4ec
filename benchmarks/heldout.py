"""The benchmarks' shared yardstick: Gemma 3 270M (the packaged teacher), its tokenizer, the default
prepared data (Python docs train, SQLite docs held-out) and BOS-prefixed held-out windows."""

import dataclasses
from pathlib import Path

import numpy as np


@dataclasses.dataclass(frozen=True)
class Heldout:
    teacher: Path  # the teacher checkpoint
    tokenizer: object
    data: Path  # the prepared data directory
    windows: np.ndarray  # (N, 512) held-out token windows, BOS first


def teacher_heldout(max_windows: int, *, window: int = 512) -> Heldout:
    """Converts the teacher and prepares the data on first use (as `make demo` does)."""
    from nano.checkpoint import load_tokenizer
    from nano.convert import resolve_teacher
    from nano.data.prepare import prepare_default
    from nano.data.shards import TokenSplit, eval_windows

    teacher = resolve_teacher("gemma3-270m")
    tok = load_tokenizer(teacher)
    data = prepare_default(tok)
    windows = eval_windows(TokenSplit.open(data, "heldout").tokens, window=window, bos_id=tok.bos_id,
                           max_windows=max_windows)
    return Heldout(teacher=Path(teacher), tokenizer=tok, data=Path(data), windows=windows)
