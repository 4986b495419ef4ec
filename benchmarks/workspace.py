"""Where experiment scripts keep their work and their results.

Working files (checkpoints they make, exported models, cached rows) go under the Nano cache
(`$NANO_CACHE/bench/NAME`), never into the source tree; results are JSON files under
`benchmarks/results/`, committed, each with the provenance a figure needs to be traced: git
SHA, date, CPU model and flags, CPU pressure, the exact command and comparator versions.
"""

import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.harness.core import ROOT
from benchmarks.harness.provenance import provenance
from nano.errors import NanoError
from nano.files import read_json, write_json
from nano.paths import cache_dir

RESULTS = ROOT / "benchmarks" / "results"


def work_dir(name: str) -> Path:
    """`$NANO_CACHE/bench/NAME`, created."""
    path = cache_dir() / "bench" / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def result_path(name: str) -> Path:
    return RESULTS / f"{name}.json"


def write_result(path: str | Path, data: dict[str, Any], *, pressure_before: str | None = None,
                 llama_cpp: str | None = None) -> Path:
    """`data` plus its provenance (benchmarks.harness.provenance), written atomically as JSON;
    `llama_cpp`: llama.cpp's system info when a llama.cpp comparator ran."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, {"provenance": provenance(pressure_before, llama_cpp=llama_cpp), **data})
    return path


class Stages:
    """Runs `nano` commands whose output path is their product; a command whose product exists is
    skipped and its cost (wall and CPU seconds) read back from stages.json."""

    def __init__(self, work: Path):
        self.work, self.file = work, work / "stages.json"
        self.done: dict[str, dict] = read_json(self.file, missing="") if self.file.is_file() else {}
        self.nano = shutil.which("nano", path=str(Path(sys.executable).parent)) or "nano"

    def run(self, key: str, product: Path, *args: str) -> dict[str, float]:
        if product.exists() and key in self.done:
            return self.done[key]
        cmd = [self.nano, *map(str, args)]
        print(f"$ {' '.join(cmd)}", flush=True)
        before, t0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
        log = self.work / f"{key}.log"
        with log.open("wb") as out:
            code = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT).returncode
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if code != 0 or not product.exists():
            tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
            raise NanoError(f"{key}: `{' '.join(cmd)}` failed (exit {code}): {tail[0]}; full log {log}")
        self.done[key] = {"wall_s": time.perf_counter() - t0,
                          "cpu_s": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)}
        write_json(self.file, self.done)
        return self.done[key]

    def perplexity(self, key: str, ckpt: Path, windows: int, data: str | Path = "held-out") -> float:
        """`nano eval` of `ckpt` on `windows` windows of `data` (the default held-out, or a prepared directory)."""
        out = self.work / f"{key}.heldout.json"
        self.run(f"eval-{key}", out, "eval", ckpt, "--data", data, "--windows", windows, "--json", out)
        return float(read_json(out, missing=f"{out}: missing after `nano eval`")["perplexity"])
