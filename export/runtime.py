"""Run exported models: a .tflite's prefill/decode signatures the way LiteRT-LM drives them
(`ChunkedLM`, on the Python Interpreter in `LiteRTModel`), and a .litertlm bundle in LiteRT-LM
itself (`litertlm_generate`)."""

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from ai_edge_litert.interpreter import Interpreter

from nano.errors import NanoError


class ChunkedLM:
    """prefill/decode as LiteRT-LM drives the exported signatures, over `_run(signature, tokens,
    input_pos) -> logits (V,)` that a runtime provides: prompt chunks of `prefill_len` while a
    whole chunk fits the cache (zero-padded tokens and positions), then one token at a time."""

    seq_len: int
    prefill_len: int
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
        T, i = self.prefill_len, 0
        while i < len(tokens) and self.pos + T <= self.seq_len:  # a chunk must fit in the cache
            chunk = tokens[i:i + T]
            ids, pos = np.zeros((1, T), np.int32), np.zeros((T,), np.int32)
            ids[0, :len(chunk)] = chunk
            pos[:len(chunk)] = np.arange(self.pos, self.pos + len(chunk))
            logits = self._run("prefill", ids, pos)
            self.pos += len(chunk)
            i += len(chunk)
        for t in tokens[i:]:  # the tail near the end of the cache, one token at a time
            logits = self.decode(t)
        return logits


class LiteRTModel(ChunkedLM):
    """The Python Interpreter's signature runners; the KV caches are copied in and out per call."""

    def __init__(self, path: str | Path, *, num_threads: int = 2):
        if not Path(path).is_file():
            raise NanoError(f"{path}: no such .tflite file; export one with export_tflite")
        self.interpreter = Interpreter(model_path=str(path), num_threads=num_threads)
        self._prefill = self.interpreter.get_signature_runner("prefill")
        self._decode = self.interpreter.get_signature_runner("decode")
        inputs = self._prefill.get_input_details()
        self.prefill_len = int(inputs["tokens"]["shape"][1])
        self._caches = {k: tuple(v["shape"]) for k, v in inputs.items() if k.startswith("kv_cache_")}
        self.seq_len = max(shape[2] for shape in self._caches.values())  # local layers may hold a ring
        self.reset()

    def reset(self) -> None:
        self.kv = {k: np.zeros(shape, np.float32) for k, shape in self._caches.items()}
        self.pos = 0

    def _run(self, signature: str, tokens: np.ndarray, input_pos: np.ndarray) -> np.ndarray:
        runner = self._prefill if signature == "prefill" else self._decode
        out = runner(tokens=tokens, input_pos=input_pos, **self.kv)
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
