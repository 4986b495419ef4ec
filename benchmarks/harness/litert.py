"""LiteRT on the desktop CPU: the exported .tflite through the CompiledModel/TensorBuffer API, and
a .litertlm bundle through LiteRT-LM's own benchmark.

The CompiledModel runner keeps one TensorBuffer per KV-cache tensor and passes it as both input
and output of every prefill_<T> and `decode`, so the cache is updated in place (a ring cache gets
a second buffer, see CompiledLM): the Interpreter's signature runner instead copies every cache in
and out on each step (2-3 ms/step measured)."""

import dataclasses
import mmap
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from ai_edge_litert import schema_py_generated as fb

from benchmarks.harness.core import prompt_tokens, rss_by_mapping, time_generation
from export.runtime import ChunkedLM, prefill_signatures
from nano.errors import NanoError

FIX = "export it with export_tflite or `nano export`"


@dataclasses.dataclass(frozen=True)
class Layout:
    """What the benchmark needs to know of an exported model, read from its signatures."""
    seq_len: int  # context: the longest KV cache (dim 2 of [1, K, S, H]; rings of local layers are shorter)
    prefill_lens: tuple[int, ...]  # tokens per call of each prefill signature, ascending
    prefill_sigs: tuple[str, ...]  # their keys, in the same order
    layers: int
    kv_heads: int
    head_dim: int
    vocab: int
    cache_lens: tuple[int, ...] = ()  # positions each layer's cache holds (a local layer's ring: its window)

    @property
    def kv_bytes_per_position(self) -> int:
        """float32 K and V of every layer for one position."""
        return 2 * self.layers * self.kv_heads * self.head_dim * 4

    def kv_bytes_read(self, context: float, *, value_bytes: int = 4) -> float:
        """K and V bytes an ideal decode step reads at `context` cached positions: each layer reads
        what its cache can hold of them (a ring no more than its window)."""
        lens = self.cache_lens or (self.seq_len,) * self.layers
        return 2 * self.kv_heads * self.head_dim * value_bytes * sum(min(context, n) for n in lens)


def _tensors(model, sig) -> tuple[dict[str, tuple], dict[str, tuple]]:
    sub = model.Subgraphs(sig.SubgraphIndex())

    def shapes(n, get):
        out = {}
        for j in range(n):
            m = get(j)
            out[m.Name().decode()] = tuple(int(d) for d in sub.Tensors(m.TensorIndex()).ShapeAsNumpy())
        return out

    return shapes(sig.InputsLength(), sig.Inputs), shapes(sig.OutputsLength(), sig.Outputs)


def read_layout(path: str | Path) -> Layout:
    """Check that `path` is a Nano prefill_<T>/decode .tflite and return its layout; reads only the
    flatbuffer's tables (memory-mapped), never the weights."""
    path = Path(path)
    if not path.is_file():
        raise NanoError(f"{path}: no such model file; {FIX}")
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        if len(buf) < 8 or not fb.Model.ModelBufferHasIdentifier(buf, 0):
            raise NanoError(f"{path}: not a .tflite flatbuffer; {FIX}")
        model = fb.Model.GetRootAs(buf, 0)
        io = {(sig := model.SignatureDefs(i)).SignatureKey().decode(): _tensors(model, sig)
              for i in range(model.SignatureDefsLength())}
    prefill = prefill_signatures(path, {k: ins.get("input_pos", (0,))[0] for k, (ins, _) in io.items()})
    decode_kv = io["decode"][0]
    for s in (*prefill.values(), "decode"):
        ins, outs = io[s]
        kv = sorted(n for n in ins if n.startswith("kv_cache_"))
        need = {"tokens", "input_pos", "kv_cache_k_0", "kv_cache_v_0"} - set(ins)
        if need or "logits" not in outs or any(outs.get(n) != ins[n] for n in kv):
            raise NanoError(f"{path}: signature {s!r} lacks tokens/input_pos/kv_cache_{{k,v}}_i inputs, logits "
                            f"or matching kv_cache outputs; {FIX}")
        first = decode_kv["kv_cache_k_0"]  # every cache [1, K, S_i, H], as decode's
        if any(len(ins[n]) != 4 or ins[n] != decode_kv.get(n) or (ins[n][:2], ins[n][3]) != (first[:2], first[3])
               for n in kv):
            raise NanoError(f"{path}: signature {s!r} has KV caches of different or non-[1, K, S, H] shapes; {FIX}")
        if ins["tokens"] != (1, ins["input_pos"][0]):
            raise NanoError(f"{path}: signature {s!r} takes tokens {ins['tokens']} for {ins['input_pos'][0]} "
                            f"positions; {FIX}")
    ins, outs = io["decode"]
    _, K, _, H = ins["kv_cache_k_0"]
    S = max(shape[2] for n, shape in ins.items() if n.startswith("kv_cache_"))  # local layers may hold a ring
    if ins["tokens"] != (1, 1):
        raise NanoError(f"{path}: decode must take one token; {FIX}")
    layers = sum(1 for n in ins if n.startswith("kv_cache_k_"))
    cache_lens = tuple(ins[f"kv_cache_k_{i}"][2] for i in range(layers))
    return Layout(seq_len=S, prefill_lens=tuple(prefill), prefill_sigs=tuple(prefill.values()), layers=layers,
                  kv_heads=K, head_dim=H, vocab=outs["logits"][-1], cache_lens=cache_lens)


class CompiledLM(ChunkedLM):
    """prefill/decode on LiteRT's CompiledModel (XNNPACK), caches in place; the chunking of
    export.runtime.ChunkedLM, so it gives LiteRTModel's logits for the same tokens."""

    def __init__(self, path: str | Path, *, threads: int = 2, weight_cache: str | Path | None = None):
        from ai_edge_litert.compiled_model import CompiledModel
        from ai_edge_litert.options import CpuOptions, Options

        self.layout = read_layout(path)
        self.seq_len = self.layout.seq_len
        self.prefill_sigs = dict(zip(self.layout.prefill_lens, self.layout.prefill_sigs))
        cpu = CpuOptions(num_threads=threads, xnnpack_weight_cache_path=str(weight_cache or ""))
        self.model = CompiledModel.from_file(str(path), options=Options(cpu_options=cpu))
        names = self.model.get_signature_list()["decode"]["inputs"]
        self.kv = {n: self.model.create_input_buffer_by_name("decode", n) for n in names if n.startswith("kv_cache_")}
        # A ring cache (a local layer's, shorter than the context) is read whole before the chunk
        # is written into it, so its output must not alias its input: it gets a second buffer,
        # swapped with the first after each call. Full caches are updated in place.
        self._spare = {n: self.model.create_input_buffer_by_name("decode", n) for n in self.kv
                       if self.kv[n].get_tensor_details()["shape"][2] < self.seq_len}
        self.io = {s: ({n: self.model.create_input_buffer_by_name(s, n) for n in ("tokens", "input_pos")},
                       {"logits": self.model.create_output_buffer_by_name(s, "logits")})
                   for s in (*self.layout.prefill_sigs, "decode")}
        self._zeros = {n: np.zeros(b.get_tensor_details()["shape"], np.float32) for n, b in self.kv.items()}
        self.reset()

    def reset(self) -> None:
        for name, buf in self.kv.items():
            buf.write(self._zeros[name])
        self.pos = 0

    def close(self) -> None:
        self.kv, self._spare, self.io = {}, {}, {}
        self.model.close()

    def _run(self, sig: str, tokens: np.ndarray, pos: np.ndarray) -> np.ndarray:
        ins, outs = self.io[sig]
        ins["tokens"].write(tokens)
        ins["input_pos"].write(pos)
        written = {**self.kv, **self._spare}
        self.model.run_by_name(sig, {**ins, **self.kv}, {**outs, **written})
        for n in self._spare:
            self.kv[n], self._spare[n] = self._spare[n], self.kv[n]
        return outs["logits"].read(self.layout.vocab, np.float32)


def pack_weight_cache(path: str, *, threads: int, weight_cache: str) -> dict[str, Any]:
    """The first load (a phone app's first start): XNNPACK packs the weights and writes its cache.
    Runs in a child process of its own, so its packing peak stays out of the measured run."""
    t = time.perf_counter()
    lm = CompiledLM(path, threads=threads, weight_cache=weight_cache)
    load = time.perf_counter() - t
    lm.close()
    return {"load_s_cold": load}


def measure_compiled(path: str, *, threads: int, prompt_lens: Sequence[int], decode_tokens: int,
                     repeats: int, weight_cache: str, seed: int = 0) -> dict[str, Any]:
    """Load from the XNNPACK weight cache `pack_weight_cache` wrote (every later start of an app),
    warm up, then time each prompt length. Runs in a fresh child process, so its peak RSS is the
    steady state of the runtime; where it goes (weights mmapped from the model file and from the
    packed cache, libraries, anonymous memory) is read at the end."""
    t = time.perf_counter()
    lm = CompiledLM(path, threads=threads, weight_cache=weight_cache)
    load = time.perf_counter() - t
    vocab = lm.layout.vocab
    lm.prefill(prompt_tokens(min(prompt_lens), vocab, seed))  # warm-up: first runs allocate
    for _ in range(4):
        lm.decode(1)
    raw = [time_generation(lm, prompt_tokens(P, vocab, seed), decode_tokens, repeats) for P in prompt_lens]
    rss = rss_by_mapping({"model_file": path, "weight_cache": weight_cache})
    return {"load_s_warm": load, "raw": raw, "rss_at_end_bytes": rss}


def extract_tflite(litertlm: str | Path, out: str | Path) -> Path:
    """Copy the prefill/decode .tflite section of a .litertlm bundle to `out`."""
    from export.litertlm import read_sections

    sections = [s for s in read_sections(litertlm) if s.kind == "TFLiteModel"]
    if not sections:
        raise NanoError(f"{litertlm}: the bundle holds no .tflite model; re-export with litertlm=True")
    section = next((s for s in sections if "prefill_decode" in (s.model_type or "")), sections[0])
    with open(litertlm, "rb") as src, open(out, "wb") as dst:
        src.seek(section.begin)
        left = section.end - section.begin
        while left:
            block = src.read(min(left, 1 << 24))
            if not block:
                raise NanoError(f"{litertlm}: truncated bundle; re-export it")
            dst.write(block)
            left -= len(block)
    return Path(out)


def _litertlm_run(path: str, *, threads: int, prompt_len: int, decode_tokens: int, cache_dir: str):
    import litert_lm

    Path(cache_dir).mkdir(parents=True, exist_ok=True)  # LiteRT-LM fails on a missing cache dir
    return litert_lm.Benchmark(model_path=str(path), backend=litert_lm.Backend.CPU(thread_count=threads),
                               prefill_tokens=prompt_len, decode_tokens=decode_tokens, cache_dir=cache_dir).run()


def litertlm_first_run(path: str, *, threads: int, prompt_len: int, cache_dir: str) -> dict[str, Any]:
    """LiteRT-LM's first start: packs the weights into its cache in `cache_dir`. A child process of
    its own, so the packing peak stays out of the measured runs."""
    r = _litertlm_run(path, threads=threads, prompt_len=prompt_len, decode_tokens=4, cache_dir=cache_dir)
    return {"init_s_cold": r.init_time_in_second}


def measure_litertlm(path: str, *, threads: int, prompt_lens: Sequence[int], decode_tokens: int,
                     repeats: int, cache_dir: str) -> dict[str, Any]:
    """LiteRT-LM's native benchmark: a fresh engine per run (reading the weight cache
    `litertlm_first_run` wrote), its prompt zero-padded to P tokens. Raw figures of `repeats` runs
    per prompt length. Runs in a child process."""
    raw = []
    for P in prompt_lens:
        runs = [_litertlm_run(path, threads=threads, prompt_len=P, decode_tokens=decode_tokens, cache_dir=cache_dir)
                for _ in range(repeats)]
        raw.append({"prompt_len": P, "ttft_s": [r.time_to_first_token_in_second for r in runs],
                    "prefill_tok_s": [r.last_prefill_tokens_per_second for r in runs],
                    "decode_tok_s": [r.last_decode_tokens_per_second for r in runs],
                    "init_s": [r.init_time_in_second for r in runs]})
    return {"raw": raw}


def litertlm_row(raw: dict) -> dict[str, Any]:
    """Medians over runs; LiteRT-LM reports one mean decode rate per run (no per-step p90)."""
    decode = statistics.median(raw["decode_tok_s"])
    return {"prompt_len": raw["prompt_len"], "ttft_ms": statistics.median(raw["ttft_s"]) * 1e3,
            "prefill_tok_s": statistics.median(raw["prefill_tok_s"]), "decode_tok_s": decode,
            "decode_ms_median": 1e3 / decode, "init_s": statistics.median(raw["init_s"])}
