"""What every runtime in `nano bench` shares: a child process per runtime (so each peak RSS is its
own), one timing loop for all engines, summary statistics and the machine's memory bandwidth."""

import importlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from nano.errors import NanoError

ROOT = Path(__file__).resolve().parents[2]  # the repository: children import benchmarks.* from it
CHILD_TIMEOUT_S = 3600  # a hung native runtime must not hang the benchmark
CHILD = "import sys; from benchmarks.harness.core import _child; _child(*sys.argv[1:3])"


def peak_rss_bytes() -> int:
    """Peak RSS of this process's memory map. Not getrusage: ru_maxrss survives exec, so a child
    of a big parent would report the parent's size."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # no /proc: an upper bound


def rss_by_mapping(files: dict[str, str | Path]) -> dict[str, int]:
    """Resident bytes now, split into the named `files` (label -> path; mmapped weights), other
    files (the runtime's libraries) and anonymous memory (heap, arenas, caches, stacks)."""
    where = {str(Path(p).resolve()): label for label, p in files.items()}
    out = dict.fromkeys([*files, "libraries", "anonymous"], 0)
    label = "anonymous"
    try:
        lines = Path("/proc/self/smaps").read_text().splitlines()
    except OSError:
        return {}
    for line in lines:
        head = line.split(maxsplit=5)
        if head and "-" in head[0] and not head[0].endswith(":"):  # a mapping's header line
            path = head[5] if len(head) > 5 and head[5].startswith("/") else None
            label = "anonymous" if path is None else where.get(path, "libraries")
        elif head and head[0] == "Rss:":
            out[label] += int(head[1]) * 1024
    return out


def run_child(what: str, fn: Callable[..., dict], *args, log_dir: str | Path, preload: Sequence[str] = (),
              **kwargs) -> dict:
    """fn(*args, **kwargs) (JSON-able arguments) in a fresh interpreter, so its peak RSS is its own;
    the returned dict gains peak_rss_bytes and baseline_rss_bytes: the RSS once the modules in
    `preload` (the runtime's libraries) are imported, before fn loads a model. A new interpreter
    rather than multiprocessing: nothing of the caller's main module is re-run."""
    stem = "".join(c if c.isalnum() else "_" for c in what)
    spec, result, log = (Path(log_dir) / f"{stem}{s}" for s in (".spec.json", ".result.json", ".log"))
    spec.write_text(json.dumps({"module": fn.__module__, "name": fn.__qualname__, "args": args, "kwargs": kwargs,
                                "preload": list(preload)}))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    try:
        with log.open("wb") as out:  # native runtimes log to stderr: keep it to quote on failure
            code = subprocess.run([sys.executable, "-c", CHILD, str(spec), str(result)], stdout=out,
                                  stderr=subprocess.STDOUT, env=env, timeout=CHILD_TIMEOUT_S).returncode
    except subprocess.TimeoutExpired:
        raise NanoError(f"{what}: no result after {CHILD_TIMEOUT_S} s; use fewer prompt_lens / decode_tokens "
                        "or check the runtime's log") from None
    if not result.is_file():  # died without a word: a native crash or the OOM killer
        tail = _last_line(log)
        raise NanoError(f"{what}: the benchmark process died (exit code {code}{'; ' + tail if tail else ''}); "
                        "check free memory and the model file")
    kind, payload = json.loads(result.read_text())
    if kind == "ok":
        return payload
    raise NanoError(payload if kind == "nano" else f"{what}: {payload}")


def _child(spec_path: str, result_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    fn = getattr(importlib.import_module(spec["module"]), spec["name"])
    for module in spec["preload"]:
        importlib.import_module(module)
    baseline = peak_rss_bytes()  # interpreter + numpy + the runtime's libraries, no model yet
    try:
        out = fn(*spec["args"], **spec["kwargs"])
        out.update(peak_rss_bytes=peak_rss_bytes(), baseline_rss_bytes=baseline)
        msg = ("ok", out)
    except NanoError as e:
        msg = ("nano", str(e))
    except Exception as e:  # a runtime's own exception: pass its first line on
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        msg = ("error", f"{type(e).__name__}: {first}")
    Path(result_path).write_text(json.dumps(msg))


def _last_line(path: Path) -> str:
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1][:200] if lines else ""


class Engine(Protocol):
    """One runtime's generation loop: logits (V,) after each call."""

    def reset(self) -> None: ...

    def prefill(self, tokens: Sequence[int]) -> np.ndarray: ...

    def decode(self, token: int) -> np.ndarray: ...


def prompt_tokens(n: int, vocab: int, seed: int = 0) -> list[int]:
    """The same pseudo-random prompt for every runtime of a model (ids above the specials)."""
    return [int(t) for t in np.random.default_rng(seed).integers(4, vocab, size=n)]


def time_generation(engine: Engine, prompt: Sequence[int], decode_tokens: int, repeats: int) -> dict[str, Any]:
    """Raw seconds of `repeats` x (prefill `prompt`, `decode_tokens` greedy steps). A step is what
    a generator does: argmax of the last logits, run that token, read the new logits. TTFT is the
    prefill plus the first step."""
    raw: dict[str, Any] = {"prompt_len": len(prompt), "prefill_s": [], "ttft_s": [], "steps_s": []}
    for _ in range(repeats):
        engine.reset()
        t0 = time.perf_counter()
        logits = engine.prefill(prompt)
        t1 = time.perf_counter()
        steps = []
        for _ in range(decode_tokens):
            t = time.perf_counter()
            logits = engine.decode(int(np.argmax(logits)))
            steps.append(time.perf_counter() - t)
        raw["prefill_s"].append(t1 - t0)
        raw["ttft_s"].append(t1 - t0 + steps[0])
        raw["steps_s"] += steps
    return raw


def pool(rounds: Sequence[Sequence[dict]]) -> list[dict]:
    """Raw rows of several rounds, lists concatenated per prompt length."""
    out = {}
    for rows in rounds:
        for row in rows:
            acc = out.setdefault(row["prompt_len"], {"prompt_len": row["prompt_len"]})
            for k, v in row.items():
                if isinstance(v, list):
                    acc[k] = acc.get(k, []) + v
    return list(out.values())


def timing_row(raw: dict) -> dict[str, Any]:
    """Medians (and the decode p90) of pooled raw timings."""
    P, steps = raw["prompt_len"], raw["steps_s"]
    decode_ms = statistics.median(steps) * 1e3
    return {"prompt_len": P,
            "ttft_ms": statistics.median(raw["ttft_s"]) * 1e3,
            "prefill_tok_s": statistics.median(P / s for s in raw["prefill_s"]),
            "decode_ms_median": decode_ms,
            "decode_ms_p90": float(np.percentile(steps, 90)) * 1e3,
            "decode_tok_s": 1e3 / decode_ms,
            "decode_steps": len(steps)}


def memory_bandwidth(*, threads: int = 2, mib: int = 256, runs: int = 5) -> dict[str, Any]:
    """Streaming bandwidth in GB/s (1e9 B/s), medians over `runs` after a warm-up: a threaded sum
    of a `mib` MiB float32 array (read) and a copy (read + write bytes). The higher one is the
    figure used for the decode bound: the best streaming rate this machine showed."""
    a = np.ones(mib * 2**20 // 4, np.float32)
    b = np.zeros_like(a)  # touched now, so the copies below do not time page faults
    parts = np.array_split(a, threads)

    def rate(fn, nbytes):
        fn()
        out = []
        for _ in range(runs):
            t = time.perf_counter()
            fn()
            out.append(nbytes / (time.perf_counter() - t) / 1e9)
        return statistics.median(out), out

    with ThreadPoolExecutor(threads) as pool:  # numpy releases the GIL inside reductions
        read, read_runs = rate(lambda: list(pool.map(np.sum, parts)), a.nbytes)
    copy, copy_runs = rate(lambda: np.copyto(b, a), 2 * a.nbytes)
    return {"bandwidth_gb_s": max(read, copy), "read_gb_s": read, "copy_gb_s": copy,
            "read_runs": read_runs, "copy_runs": copy_runs, "mib": mib, "threads": threads}


SIMD_FLAGS = ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
              "avx_vnni", "amx_tile", "amx_int8", "amx_bf16")  # the ones the CPU kernels choose by


def cpu_info() -> dict[str, Any]:
    """CPU model, core count and the SIMD flags that decide which kernels run: ratios measured on
    one kind of CPU do not transfer to another, so every figure carries these."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())  # the first processor's
    except OSError:
        pass
    flags = set(fields.get("flags", "").split())
    return {"cpu": fields.get("model name") or platform.processor() or platform.machine(),
            "cores": os.cpu_count(), "cpu_flags": [f for f in SIMD_FLAGS if f in flags]}


def cpu_pressure() -> str:
    """The kernel's CPU pressure line: how contended the machine was while timing."""
    try:
        return Path("/proc/pressure/cpu").read_text().splitlines()[0]
    except (OSError, IndexError):
        return "n/a"

