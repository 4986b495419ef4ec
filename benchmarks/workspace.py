"""Where experiment scripts keep their work and their results.

Working files (checkpoints they make, exported models, cached rows) go under the Nano cache
(`$NANO_CACHE/bench/NAME`), never into the source tree; results are JSON files under
`benchmarks/results/`, committed, each with the provenance a figure needs to be traced: git
SHA, date, CPU model and flags, CPU pressure, the exact command and comparator versions.
"""

import datetime
import importlib.metadata
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchmarks.harness.core import cpu_info, cpu_pressure
from nano.files import write_json
from nano.paths import cache_dir

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
VERSIONS = ("jax", "ai-edge-litert", "litert-lm", "llama-cpp-python", "tensorflow-cpu")


def work_dir(name: str) -> Path:
    """`$NANO_CACHE/bench/NAME`, created."""
    path = cache_dir() / "bench" / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def result_path(name: str) -> Path:
    return RESULTS / f"{name}.json"


def provenance(pressure_before: str | None = None) -> dict[str, Any]:
    """Git SHA (and whether the tree had changes), UTC time, machine, command, library versions."""
    def git(*args: str) -> str:
        r = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True)
        return r.stdout.strip() if r.returncode == 0 else ""

    versions = {}
    for dist in VERSIONS:
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    return {"git_sha": git("rev-parse", "HEAD"), "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "command": " ".join([Path(sys.executable).name, "-m", _module(), *sys.argv[1:]]),
            "machine": cpu_info(), "cpu_pressure_before": pressure_before, "cpu_pressure_after": cpu_pressure(),
            "versions": versions}


def _module() -> str:
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    return spec.name if spec is not None else Path(sys.argv[0]).name


def write_result(path: str | Path, data: dict[str, Any], *, pressure_before: str | None = None) -> Path:
    """`data` plus its provenance, written atomically as JSON."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, {"provenance": provenance(pressure_before), **data})
    return path
