"""Run exported models: a .tflite's prefill_<T>/decode signatures the way LiteRT-LM drives them
(`ChunkedLM`, on the Python Interpreter in `LiteRTModel`), and a .litertlm bundle in LiteRT-LM
itself (`litertlm_generate`)."""

from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
from ai_edge_litert.interpreter import Interpreter

from nano.errors import NanoError


PREFILL = "prefill"  # LiteRT-LM runs every signature whose key starts with this (prefill_128, ...)


def plan_prefill(lens: Iterable[int], n: int, room: int) -> list[tuple[int, int]]:
    """The prefill calls for `n` prompt tokens with `room` cache positions left, as LiteRT-LM's CPU
    executor chooses them (GetOptimizedPrefillWorkGroups, greedy chunking): from the longest
    signature that fits the room down, as many full chunks of each length as fit, then the
    remainder zero-padded in the shortest one. [(signature length T, real tokens k <= T)]; a
    tail it leaves (at most T_min - 1 tokens, only near the end of the cache) runs through decode."""
    plan = []
    usable = sorted((T for T in set(lens) if T <= room), reverse=True)
    for T in usable:
        full = min(n // T, room // T)
        plan += [(T, T)] * full
        n, room = n - full * T, room - full * T
        if n and T == usable[-1] and T <= room:
            plan.append((T, n))
            n = 0
    return plan


class ChunkedLM:
    """prefill/decode as LiteRT-LM drives the exported signatures, over `_run(signature, tokens,
    input_pos) -> logits (V,)` that a runtime provides: the prompt in chunks chosen by
    `plan_prefill` from `prefill_sigs` (zero-padded tokens and positions), then one token at a time."""

    seq_len: int
    prefill_sigs: dict[int, str]  # chunk length T -> signature key
    pos: int

    def _run(self, signature: str, tokens: np.ndarray, input_pos: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def decode(self, token: int) -> np.ndarray:
        """Logits (V,) after `token` at the current position."""
        if self.pos >= self.seq_len:
            raise NanoError(f"context full ({self.seq_len} tokens); export with a larger seq_len or reset()")
        logits = self._run("decode", np.array([[token]], np.int32), np.array([self.pos], np.int32))
        self.pos += 1
        return logits

    def prefill(self, tokens: Sequence[int]) -> np.ndarray:
        """Logits (V,) after the last of `tokens`, written in chunks from the current position."""
        tokens = [int(t) for t in tokens]
        if not tokens:
            raise NanoError("empty prompt: give at least one token")
        if self.pos + len(tokens) > self.seq_len:
            raise NanoError(f"{len(tokens)} tokens at position {self.pos} exceed the context of "
                            f"{self.seq_len}; export with a larger seq_len or shorten the prompt")
        i = 0
        for T, k in plan_prefill(self.prefill_sigs, len(tokens), self.seq_len - self.pos):
            ids, pos = np.zeros((1, T), np.int32), np.zeros((T,), np.int32)  # (1, T), (T,)
            ids[0, :k] = tokens[i:i + k]
            pos[:k] = np.arange(self.pos, self.pos + k)
            logits = self._run(self.prefill_sigs[T], ids, pos)
            self.pos += k
            i += k
        for t in tokens[i:]:  # the tail near the end of the cache, one token at a time
            logits = self.decode(t)
        return logits


def prefill_signatures(path: str | Path, lengths: Mapping[str, int]) -> dict[int, str]:
    """{T: key} of the prefill signatures among `lengths` (signature key -> input_pos length), as
    LiteRT-LM finds them; a file without them or without `decode` is a one-line NanoError."""
    sigs = {T: key for key, T in sorted(lengths.items()) if key.startswith(PREFILL)}
    if not sigs or "decode" not in lengths:
        raise NanoError(f"{path}: no prefill_<T> / decode signatures (has {sorted(lengths) or 'none'}); "
                        "export it with export_tflite or `nano export`")
    return dict(sorted(sigs.items()))


class LiteRTModel(ChunkedLM):
    """The Python Interpreter's signature runners; the KV caches are copied in and out per call."""

    def __init__(self, path: str | Path, *, num_threads: int = 2):
        if not Path(path).is_file():
            raise NanoError(f"{path}: no such .tflite file; export one with export_tflite")
        self.interpreter = Interpreter(model_path=str(path), num_threads=num_threads)
        keys = self.interpreter.get_signature_list()
        runners = {k: self.interpreter.get_signature_runner(k) for k in keys}
        inputs = {k: r.get_input_details() for k, r in runners.items()}
        self.prefill_sigs = prefill_signatures(path, {k: int(ins["input_pos"]["shape"][0]) if "input_pos" in ins
                                                      else 0 for k, ins in inputs.items()})
        self._runners = {k: runners[k] for k in (*self.prefill_sigs.values(), "decode")}
        self._caches = {k: tuple(v["shape"]) for k, v in inputs["decode"].items() if k.startswith("kv_cache_")}
        if "kv_cache_k_0" not in self._caches:
            raise NanoError(f"{path}: signature 'decode' has no kv_cache_k_0 input; export it with export_tflite")
        self.seq_len = max(shape[2] for shape in self._caches.values())  # local layers may hold a ring
        self.reset()

    def reset(self) -> None:
        self.kv = {k: np.zeros(shape, np.float32) for k, shape in self._caches.items()}
        self.pos = 0

    def _run(self, signature: str, tokens: np.ndarray, input_pos: np.ndarray) -> np.ndarray:
        out = self._runners[signature](tokens=tokens, input_pos=input_pos, **self.kv)
        logits = out.pop("logits")
        self.kv = out
        return logits[0, 0]


_ALL_TOKENS = 1 << 30  # LiteRT-LM clamps top_k to the vocabulary


def litertlm_generate(path: str | Path, prompt: str, *, max_tokens: int, temperature: float = 0.0,
                      top_k: int | None = None, top_p: float | None = None, seed: int = 0,
                      threads: int = 2) -> Iterator[str]:
    """Text pieces of LiteRT-LM continuing `prompt` with the `.litertlm` bundle at `path`: what an
    app embedding the bundle generates. LiteRT-LM prepends the bundle's start token (Nano's BOS)
    and stops at its stop tokens; greedy (top-1) when temperature is 0. XNNPACK's weight cache goes
    beside the bundle, so the second run loads fast. Bad input is refused before any text."""
    path = Path(path)
    if not path.is_file():
        raise NanoError(f"{path}: no such .litertlm file; make one with `nano export CKPT --out M.tflite --litertlm`")
    if max_tokens < 1:
        raise NanoError(f"max_tokens {max_tokens} must be >= 1")
    try:
        import litert_lm
    except ImportError:
        raise NanoError("running a .litertlm needs litert-lm; pip install litert-lm==0.18.1") from None
    from litert_lm_builder.runtime.proto import llm_metadata_pb2

    from export.litertlm import read_section, read_sections

    sections = {s.kind: s for s in read_sections(path)}  # a clear error for a damaged file, before LiteRT-LM logs its own
    if not {"TFLiteModel", "SP_Tokenizer", "LlmMetadataProto"} <= set(sections):
        raise NanoError(f"{path}: the bundle lacks a model, tokenizer or metadata (has {sorted(sections)}); "
                        "re-export it with `nano export --litertlm`")
    context = llm_metadata_pb2.LlmMetadata.FromString(read_section(path, sections["LlmMetadataProto"])).max_num_tokens
    litert_lm.set_min_log_severity(litert_lm.LogSeverity.ERROR)
    sampler = (litert_lm.SamplerConfig(top_k=1) if temperature == 0 else
               # LiteRT-LM treats a missing top_k as 1 (greedy): ask for the whole vocabulary
               litert_lm.SamplerConfig(top_k=top_k or _ALL_TOKENS, top_p=top_p, temperature=temperature,
                                       seed=seed))
    try:
        engine = litert_lm.Engine(str(path), backend=litert_lm.Backend.CPU(thread_count=threads))
    except Exception as e:  # LiteRT-LM raises bare RuntimeErrors with its status text
        raise NanoError(f"{path}: LiteRT-LM cannot load it ({_first_line(e)}); re-export it with "
                        "`nano export --litertlm`") from None
    n = len(engine.tokenize(prompt)) + 1  # + the start token
    if context and n >= context:
        engine.close()
        raise NanoError(f"the prompt is {n} tokens with the start token; {path} holds {context} (prompt and "
                        "new tokens together): shorten the prompt or re-export with a larger --seq-len")
    return _stream(path, engine, prompt, max_tokens, sampler)


def _stream(path: Path, engine, prompt: str, max_tokens: int, sampler) -> Iterator[str]:
    try:
        session = engine.create_session(apply_prompt_template=False, max_output_tokens=max_tokens,
                                        sampler_config=sampler)
        try:
            session.run_prefill([prompt])
            for chunk in session.run_decode_async():
                yield chunk.texts[0] if chunk.texts else ""
        except RuntimeError as e:
            raise NanoError(f"{path}: LiteRT-LM failed ({_first_line(e)})") from None
        finally:
            session.close()
    finally:
        engine.close()


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
