"""What a measured figure needs to be traced: git SHA (and whether the tree had changes), UTC
date, CPU model and SIMD flags, CPU pressure, the exact command and the versions of the
libraries and comparators that ran (llama.cpp's own system info where llama.cpp ran)."""

import datetime
import importlib.metadata
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchmarks.harness.core import ROOT, cpu_info, cpu_pressure

VERSIONS = ("jax", "ai-edge-litert", "litert-lm", "llama-cpp-python", "tensorflow-cpu")


def _git(*args: str) -> str:
    r = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True)
    return r.stdout.strip() if r.returncode == 0 else ""


def command() -> str:
    """This process's command line as typed: `python -m MODULE ARGS` or `SCRIPT ARGS`."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is not None and spec.name != "__main__":
        return " ".join([Path(sys.executable).name, "-m", spec.name.removesuffix(".__main__"), *sys.argv[1:]])
    return " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])


def versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0]}
    for dist in VERSIONS:
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def llamacpp_system_info() -> str:
    """llama.cpp's `llama_print_system_info()`: the CPU features its build uses."""
    import llama_cpp

    return llama_cpp.llama_print_system_info().decode(errors="replace").strip()


def provenance(pressure_before: str | None = None, *, llama_cpp: str | None = None) -> dict[str, Any]:
    """The record above. `llama_cpp`: the system info of a llama.cpp that ran in another process;
    read here when this process loaded llama.cpp itself."""
    if llama_cpp is None and "llama_cpp" in sys.modules:
        llama_cpp = llamacpp_system_info()
    out = {"git_sha": _git("rev-parse", "HEAD"),
           "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
           "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
           "command": command(), "machine": cpu_info(),
           "cpu_pressure_before": pressure_before, "cpu_pressure_after": cpu_pressure(),
           "versions": versions()}
    if llama_cpp is not None:
        out["llama_cpp_system_info"] = llama_cpp
    return out
