"""Where experiment scripts keep their work and their results.

Working files (checkpoints they make, exported models, cached rows) go under the Nano cache
(`$NANO_CACHE/bench/NAME`), never into the source tree; results are JSON files under
`benchmarks/results/`, committed, each with the provenance a figure needs to be traced: git
SHA, date, CPU model and flags, CPU pressure, the exact command and comparator versions.
"""

from pathlib import Path
from typing import Any

from benchmarks.harness.core import ROOT
from benchmarks.harness.provenance import provenance
from nano.files import write_json
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
