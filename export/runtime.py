"""Run an exported .tflite with ai_edge_litert's Interpreter the way LiteRT-LM drives it: prompt
chunks of the prefill length (zero-padded tokens and positions), then one token per decode call,
the KV-cache outputs fed back as the next call's inputs."""

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from ai_edge_litert.interpreter import Interpreter

from nano.errors import NanoError


class LiteRTModel:
    def __init__(self, path: str | Path, *, num_threads: int = 2):
        if not Path(path).is_file():
            raise NanoError(f"{path}: no such .tflite file; export one with export_tflite")
        self.interpreter = Interpreter(model_path=str(path), num_threads=num_threads)
        self._prefill = self.interpreter.get_signature_runner("prefill")
        self._decode = self.interpreter.get_signature_runner("decode")
        inputs = self._prefill.get_input_details()
        self.prefill_len = int(inputs["tokens"]["shape"][1])
        self._caches = {k: tuple(v["shape"]) for k, v in inputs.items() if k.startswith("kv_cache_")}
        self.seq_len = int(inputs["kv_cache_k_0"]["shape"][2])
        self.reset()

    def reset(self) -> None:
        self.kv = {k: np.zeros(shape, np.float32) for k, shape in self._caches.items()}
        self.pos = 0

    def _run(self, runner, tokens: np.ndarray, input_pos: np.ndarray) -> np.ndarray:
        out = runner(tokens=tokens, input_pos=input_pos, **self.kv)
        logits = out.pop("logits")
        self.kv = out
        return logits[0, 0]

    def decode(self, token: int) -> np.ndarray:
        """Logits (V,) after `token` at the current position."""
        if self.pos >= self.seq_len:
            raise NanoError(f"context full ({self.seq_len} tokens); export with a larger seq_len or reset()")
        logits = self._run(self._decode, np.array([[token]], np.int32), np.array([self.pos], np.int32))
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
            logits = self._run(self._prefill, ids, pos)
            self.pos += len(chunk)
            i += len(chunk)
        for t in tokens[i:]:  # the tail near the end of the cache, one token at a time
            logits = self.decode(t)
        return logits
