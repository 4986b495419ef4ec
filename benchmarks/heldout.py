"""The benchmarks' shared yardstick: Gemma 3 270M (the packaged teacher), its tokenizer, the default
prepared data (Python docs train, SQLite docs held-out) and BOS-prefixed held-out windows; and an
out-of-domain held-out of another kind of text (quotations and verse, Debian `fortunes`)."""

import dataclasses
from pathlib import Path

import numpy as np


@dataclasses.dataclass(frozen=True)
class Heldout:
    teacher: Path  # the teacher checkpoint
    tokenizer: object
    data: Path  # the prepared data directory
    windows: np.ndarray  # (N, 512) held-out token windows, BOS first
    ood_data: Path | None = None  # the out-of-domain preparation (its held-out split), when asked for
    ood_windows: np.ndarray | None = None  # (N, 512) windows of it, BOS first


OOD_SOURCE = "debian:fortunes"


def teacher_heldout(max_windows: int, *, window: int = 512, ood: bool = False) -> Heldout:
    """Converts the teacher and prepares the data on first use (as `make demo` does); with `ood`,
    also `nano data prepare --heldout debian:fortunes` into the cache's data/ood-fortunes-*."""
    from nano.checkpoint import load_tokenizer
    from nano.convert import resolve_teacher
    from nano.data.prepare import prepare, prepare_default
    from nano.data.shards import TokenSplit, eval_windows
    from nano.data.sources import DEFAULT_SOURCES
    from nano.paths import cache_dir

    def windows_of(data: Path) -> np.ndarray:
        return eval_windows(TokenSplit.open(data, "heldout").tokens, window=window, bos_id=tok.bos_id,
                            max_windows=max_windows)

    teacher = resolve_teacher("gemma3-270m")
    tok = load_tokenizer(teacher)
    data = Path(prepare_default(tok))
    held = Heldout(teacher=Path(teacher), tokenizer=tok, data=data, windows=windows_of(data))
    if not ood:
        return held
    ood_data = cache_dir() / "data" / f"ood-fortunes-{tok.sha256[:12]}"
    prepare(ood_data, tok, sources={"train": [str(s) for s in DEFAULT_SOURCES["train"]], "heldout": [OOD_SOURCE]})
    return dataclasses.replace(held, ood_data=ood_data, ood_windows=windows_of(ood_data))


def llama_cpp_row(f32: Path, out: Path, ftype: str | None, windows: dict[str, np.ndarray], *,
                  embed_type: str | None = None, pure: bool = False) -> dict:
    """llama.cpp's own quantization `ftype` of the F32 GGUF `f32`, written to `out` (None: `f32`
    itself), scored by llama.cpp on each named set of windows: {name: perplexity, ...,
    "bits_per_weight", "file_bytes"}."""
    from benchmarks.harness.llamacpp import LlamaCpp, gguf_bits_per_weight, quantize_gguf

    path = f32 if ftype is None else out
    if ftype is not None:
        quantize_gguf(f32, out, ftype, embed_type=embed_type, pure=pure)
    scorer = LlamaCpp(path, window=next(iter(windows.values())).shape[1])
    row = {name: scorer.perplexity(w) for name, w in windows.items()}
    del scorer  # frees the model before the next one loads
    bpw, size = gguf_bits_per_weight(path)
    return row | {"bits_per_weight": bpw, "file_bytes": size}
