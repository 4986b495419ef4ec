"""Where Nano keeps derived artefacts (assembled teacher, converted checkpoints, Debian text)."""

import os
from pathlib import Path


def cache_dir() -> Path:
    """`$NANO_CACHE`, else `~/.cache/nano`; created on first use."""
    path = Path(os.environ.get("NANO_CACHE") or Path.home() / ".cache" / "nano")
    path.mkdir(parents=True, exist_ok=True)
    return path
