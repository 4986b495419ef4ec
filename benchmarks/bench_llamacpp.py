"""llama.cpp (llama-cpp-python) as the comparator: the same prompts, decode count, threads and
timing loop as the LiteRT runner, on a GGUF of the same weights."""

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.bench_core import prompt_tokens, time_generation
from nano.errors import NanoError


class LlamaEngine:
    """One llama.cpp context; logits of the last token only (what generation needs), read in place."""

    def __init__(self, gguf: str | Path, *, threads: int, n_ctx: int):
        import llama_cpp

        self._lib = llama_cpp
        # llama.cpp's defaults otherwise (f16 KV cache, batch 512): how people run it.
        self.llm = llama_cpp.Llama(model_path=str(gguf), n_ctx=n_ctx, n_batch=min(512, n_ctx),
                                   n_ubatch=min(512, n_ctx), n_threads=threads, n_threads_batch=threads,
                                   logits_all=False, verbose=False)
        self.vocab = self.llm.n_vocab()

    def _logits(self) -> np.ndarray:
        return np.ctypeslib.as_array(self._lib.llama_get_logits_ith(self.llm.ctx, -1), shape=(self.vocab,))

    def reset(self) -> None:
        self.llm.reset()

    def prefill(self, tokens: Sequence[int]) -> np.ndarray:
        self.llm.eval([int(t) for t in tokens])
        return self._logits()

    def decode(self, token: int) -> np.ndarray:
        self.llm.eval([token])
        return self._logits()


def measure_llamacpp(gguf: str, *, threads: int, prompt_lens: Sequence[int], decode_tokens: int,
                     repeats: int, seed: int = 0) -> dict[str, Any]:
    """Load, warm up, time each prompt length. Runs in a child process."""
    if not Path(gguf).is_file():
        raise NanoError(f"{gguf}: no such GGUF file; write one with nano.gguf_io.write_gguf(..., weight_type='q4_0')")
    t = time.perf_counter()
    try:
        eng = LlamaEngine(gguf, threads=threads, n_ctx=max(prompt_lens) + decode_tokens)
    except ValueError as e:  # llama-cpp-python's "Failed to load model from file"
        raise NanoError(f"{gguf}: llama.cpp cannot load it ({e}); write it with nano.gguf_io.write_gguf") from None
    load = time.perf_counter() - t
    eng.prefill(prompt_tokens(min(prompt_lens), eng.vocab, seed))  # warm-up
    for _ in range(4):
        eng.decode(1)
    raw = [time_generation(eng, prompt_tokens(P, eng.vocab, seed), decode_tokens, repeats) for P in prompt_lens]
    return {"load_s": load, "raw": raw, "weight_bytes": int(eng._lib.llama_model_size(eng.llm.model)),
            "vocab": eng.vocab, "kv_type": "f16"}
