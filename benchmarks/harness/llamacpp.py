"""llama.cpp (through llama-cpp-python) as the independent reference and comparator: full
logits for parity tests and perplexity (`LlamaCpp`, float32 KV cache), and the timed engine
`nano bench` runs beside LiteRT on the same prompts, decode count and threads (`LlamaEngine`,
llama.cpp's own defaults)."""

import contextlib
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.harness.core import prompt_tokens, time_generation
from benchmarks.harness.provenance import llamacpp_system_info
from nano.errors import NanoError


class LlamaCpp:
    """One llama.cpp context over a GGUF file; `window` is the longest sequence it will score."""

    def __init__(self, gguf_path: str | Path, *, window: int = 512, threads: int | None = None,
                 logits_all: bool = True):
        try:
            import llama_cpp
        except ImportError:
            raise NanoError("llama-cpp-python is not installed; run `make test` (or pip install llama-cpp-python) to get it") from None
        threads = threads or os.cpu_count() or 1
        with _quiet():
            self.llm = llama_cpp.Llama(model_path=str(gguf_path), n_ctx=window, n_batch=window,
                                       n_ubatch=window, logits_all=logits_all, n_threads=threads,
                                       n_threads_batch=threads, verbose=False,
                                       # float32 KV cache: llama.cpp's default f16 cache alone moves logits by ~1e-3
                                       type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32)
        self.window = window

    def tokenize(self, text: str, *, add_bos: bool = True) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=False)

    def logits(self, tokens) -> np.ndarray:
        """(T, V) float32 logits of every position of one sequence (T <= window)."""
        tokens = [int(t) for t in tokens]
        if len(tokens) > self.window:
            raise NanoError(f"sequence of {len(tokens)} tokens exceeds the llama.cpp window of {self.window}")
        self.llm.reset()
        self.llm.eval(tokens)
        return np.array(self.llm.scores[: len(tokens)], dtype=np.float32)

    def window_nll(self, tokens) -> np.ndarray:
        """-log p(tokens[i+1] | tokens[:i+1]) for every position: (T-1,) float64."""
        logits = self.logits(tokens)[:-1].astype(np.float64)
        logits -= logits.max(-1, keepdims=True)
        lse = np.log(np.exp(logits).sum(-1))
        return lse - logits[np.arange(len(logits)), np.asarray(tokens[1:])]

    def perplexity(self, windows) -> float:
        """exp of the mean over windows of each window's mean NLL (as `nano eval` averages)."""
        return float(np.exp(np.mean([self.window_nll(w).mean() for w in windows])))

    def eval_only(self, tokens) -> None:
        """Process a prompt (for timing); logits stay inside llama.cpp."""
        self.llm.reset()
        self.llm.eval([int(t) for t in tokens])

    def greedy(self, prompt, n: int) -> list[int]:
        """`n` greedy tokens after `prompt` (argmax of llama.cpp's own logits, KV cache reused)."""
        self.llm.reset()
        self.llm.eval([int(t) for t in prompt])
        out = []
        for _ in range(n):
            nxt = int(np.argmax(self.llm.scores[self.llm.n_tokens - 1]))
            out.append(nxt)
            self.llm.eval([nxt])
        return out


def quantize_gguf(src: str | Path, dst: str | Path, ftype: str, *, embed_type: str | None = None,
                  pure: bool = False, threads: int | None = None) -> Path:
    """llama.cpp's own quantizer (`llama-quantize`): ``ftype`` such as "Q4_0" or "Q4_K_M" (its
    per-tensor mix: K-quants fall back to Q5_0/Q8_0 where a row is not a multiple of 256),
    ``embed_type`` (e.g. "Q8_0") for the token embedding, ``pure`` for one type everywhere."""
    import llama_cpp


    code = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{ftype.upper()}", None)
    if code is None:
        raise NanoError(f"llama.cpp has no quantization type {ftype!r}; use e.g. Q4_0, Q4_K_M, Q8_0")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = code
    params.nthread = threads or os.cpu_count() or 1
    params.pure = pure
    if embed_type is not None:
        params.token_embedding_type = getattr(llama_cpp, f"GGML_TYPE_{embed_type.upper()}")
    dst = Path(dst)
    tmp = dst.with_name(f".{dst.name}.tmp")  # llama.cpp writes the file itself; renamed when complete
    try:
        with _quiet():
            status = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), params)
        if status != 0:
            raise NanoError(f"llama.cpp could not quantize {src} to {ftype} (status {status})")
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    return dst


def gguf_bits_per_weight(path: str | Path) -> tuple[float, int]:
    """(bits per weight over all tensors, file bytes) of a GGUF file."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    n = sum(int(t.n_elements) for t in reader.tensors)
    return 8 * sum(int(t.n_bytes) for t in reader.tensors) / n, Path(path).stat().st_size


@contextlib.contextmanager
def _quiet():
    """llama.cpp logs model loading to stderr from C; silence fd 2 while it loads."""
    try:
        fd = os.dup(2)
    except OSError:
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(fd, 2)
        os.close(fd)
        os.close(devnull)


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
            "vocab": eng.vocab, "kv_type": "f16", "system_info": llamacpp_system_info()}
