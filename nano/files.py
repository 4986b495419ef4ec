"""The files of a Nano checkpoint directory, and the JSON reader/writer every manifest uses.

    model.safetensors   the parameters (quantized ones as codes + scales)
    config.json         the ModelConfig
    meta.json           provenance (version, source, tokenizer sha256, ...)
    tokenizer.model     the SentencePiece model, when known
    quantization.json   only in quantized checkpoints: how each tensor was quantized
"""

import json
from pathlib import Path
from typing import Any

from nano.atomic import atomic_file
from nano.errors import NanoError

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
META = "meta.json"
TOKENIZER = "tokenizer.model"
QUANT = "quantization.json"


def read_json(path: str | Path, *, missing: str, fix: str = "") -> Any:
    """Parse a JSON file; a missing file raises NanoError(``missing``), bad JSON names the line."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise NanoError(missing) from None
    except json.JSONDecodeError as e:
        raise NanoError(f"{path}: invalid JSON ({e.msg} at line {e.lineno}){'; ' + fix if fix else ''}") from None


def write_json(path: str | Path, data: Any) -> None:
    with atomic_file(path, "w") as f:
        json.dump(data, f, indent=2, default=str)
        f.write("\n")
