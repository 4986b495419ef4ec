"""Which tensor gets which quantization: a default plus ordered glob overrides.

    {"method": "gptq", "bits": 4, "group": 32, "symmetric": true,
     "overrides": {"embed": {"method": "rtn", "bits": 8, "group": null},
                   "layers.0.*": {"bits": 8},
                   "layers.*.mlp.down.kernel": "float"},
     "damp": 0.01, "act_order": true}

Quantizable tensors are the linear kernels (``*.kernel``) and the tied embedding ``embed``;
norm gains always stay float. Overrides are fnmatch globs over parameter names, applied in
order (later wins); a value is a partial spec or ``"float"`` (keep the tensor unquantized).
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nano.errors import NanoError
from nano.files import read_json
from nano.params import is_matrix

METHODS = ("rtn", "mse", "gptq", "awq")
CALIBRATED = ("gptq", "awq")  # methods that need activations
# `--embed int4`: the tied embedding at 4 bits, GPTQ'd as the LM head (its Hessian is the final-norm
# hidden states' x^T x, see pipeline.py); group 32 so it is Q4_0 in a GGUF and blockwise int4 in LiteRT.
EMBED_INT4 = {"method": "gptq", "bits": 4, "group": 32}
NO_CALIBRATION = ("gptq/awq (and the embedding's hot_rows, which count its tokens) need calibration text; "
                  "pass --calib (a prepared data dir or text files)")
HOT_BITS = 8  # `hot_rows`: the embedding rows of the most frequent calibration tokens, int8 per row


def embed_mixed(vocab: int, d_model: int, *, group: int = 64) -> dict[str, Any]:
    """`--embed mixed`: the tied embedding GPTQ'd as the LM head at int4 `group` with the rows of the
    most frequent calibration tokens at int8 per row, as many as keep the embedding within the bits
    of int4 group 32 (bf16 scales: 4 + 16/32 bits a weight): 17,133 rows for Gemma 3 270M."""
    budget = (4 + 16 / 32) * d_model                       # bits of one int4 g32 row
    cold = (4 + 16 / group) * d_model                      # int4 `group` row
    hot = HOT_BITS * d_model + 16 + 32                     # int8 row, one bf16 scale, its int32 id
    return {"method": "gptq", "bits": 4, "group": group, "hot_rows": int(vocab * (budget - cold) // (hot - cold))}


@dataclasses.dataclass(frozen=True, kw_only=True)
class TensorSpec:
    method: str = "gptq"
    bits: int = 4
    group: int | None = 32  # None = one scale per output channel
    symmetric: bool = True
    # Embedding only: the rows of this many most frequent calibration tokens at int8 per row, the
    # rest on this spec's grid (a nano.qtensor.SplitQTensor; LiteRT export only, no GGUF form).
    hot_rows: int = 0

    def check(self, where: str) -> "TensorSpec":
        if self.method not in METHODS:
            raise NanoError(f"{where}: method {self.method!r} is unknown; use one of {', '.join(METHODS)}")
        if self.bits not in (4, 8):
            raise NanoError(f"{where}: bits {self.bits!r} is not supported; use 4 or 8")
        if self.group is not None and (isinstance(self.group, bool) or not isinstance(self.group, int)
                                       or self.group <= 0 or self.group % 2):
            raise NanoError(f"{where}: group {self.group!r} must be a positive even integer or null "
                            "(per channel); use 32, 64 or 128")
        if not isinstance(self.symmetric, bool):
            raise NanoError(f"{where}: symmetric must be true or false")
        if isinstance(self.hot_rows, bool) or not isinstance(self.hot_rows, int) or self.hot_rows < 0:
            raise NanoError(f"{where}: hot_rows {self.hot_rows!r} must be an integer >= 0 (0 = no int8 rows)")
        return self

    def label(self) -> str:
        g = "channel" if self.group is None else f"g{self.group}"
        hot = f" + {self.hot_rows:,} int8 rows" if self.hot_rows else ""
        return f"{self.method} int{self.bits} {g}{'' if self.symmetric else ' asym'}{hot}"


SPEC_FIELDS = {f.name for f in dataclasses.fields(TensorSpec)}


@dataclasses.dataclass(frozen=True, kw_only=True)
class Recipe:
    default: TensorSpec = TensorSpec()
    # (glob, partial spec or None = keep float), in order; the embedding is 8-bit by default
    # (it is 62% of Gemma 3 270M and its lookups see no calibration; llama.cpp keeps it Q8_0/Q6_K).
    overrides: tuple[tuple[str, Mapping[str, Any] | None], ...] = (
        ("embed", {"method": "rtn", "bits": 8, "group": None}),)
    damp: float = 0.01  # GPTQ: fraction of mean(diag H) added to the diagonal
    act_order: bool = True  # GPTQ: quantize inputs by decreasing Hessian diagonal (static groups)
    # GPTQ and AWQ: least-squares clip search over this many ratios for each group's scale (GPTQ
    # reference's `mse` option, AWQ's clipping step); 1 = plain min-max scales.
    clip_steps: int = 20
    awq_grid: int = 20  # AWQ: alpha values tried in [0, 1]
    mse_steps: int = 20  # MSE: clip ratios tried in [min_ratio, 1]
    # GPTQ of the tied embedding as the LM head: each row also damped by lookup x its token's
    # calibration frequency x vocab (the lookup role; quantize.tied); 0 = plain GPTQ.
    lookup: float = 0.0
    # A GPTQ'd embedding is solved first, on the float model's final hidden states, so that every
    # layer is calibrated on its quantized lookups (else last, on the quantized layers' states).
    # Gemma 3 270M, every tensor 4-bit: 18.64 first against 18.80 last (--embed int4), 17.94 against
    # 18.05 (--embed mixed), 40 held-out windows.
    embed_first: bool = True

    def __post_init__(self):
        self.default.check("recipe")
        for glob, fields in self.overrides:
            if fields is not None:
                self._merge(self.default, fields, f"recipe override {glob!r}")
        if self.damp < 0:
            raise NanoError(f"recipe: damp {self.damp} must be >= 0; use 0.01")
        for flag in ("act_order", "embed_first"):
            if not isinstance(getattr(self, flag), bool):
                raise NanoError(f"recipe: {flag} must be true or false")
        if self.lookup < 0:
            raise NanoError(f"recipe: lookup {self.lookup} must be >= 0; use 0 (plain GPTQ) or e.g. 0.1")

    @staticmethod
    def _merge(base: TensorSpec, fields: Mapping[str, Any], where: str) -> TensorSpec:
        unknown = sorted(set(fields) - SPEC_FIELDS)
        if unknown:
            raise NanoError(f"{where}: unknown field {unknown[0]!r}; use {', '.join(sorted(SPEC_FIELDS))}")
        return dataclasses.replace(base, **fields).check(where)

    def spec_for(self, name: str) -> TensorSpec | None:
        """The spec of parameter ``name``, or None when it stays float."""
        spec: TensorSpec | None = self.default
        for glob, fields in self.overrides:
            if fnmatch.fnmatchcase(name, glob):
                spec = None if fields is None else self._merge(self.default if spec is None else spec,
                                                                fields, f"recipe override {glob!r}")
        return spec

    def needs_calibration(self, names) -> bool:
        """Whether a weight matrix among parameter ``names`` gets a method that reads activations, or
        hot rows, which count the calibration tokens."""
        return any(is_matrix(n) and (s := self.spec_for(n)) is not None and (s.method in CALIBRATED or s.hot_rows)
                   for n in names)

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self.default),
                "overrides": {g: ("float" if f is None else dict(f)) for g, f in self.overrides},
                "damp": self.damp, "act_order": self.act_order, "clip_steps": self.clip_steps,
                "awq_grid": self.awq_grid,
                "mse_steps": self.mse_steps, "lookup": self.lookup, "embed_first": self.embed_first}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "recipe") -> "Recipe":
        if not isinstance(data, Mapping):
            raise NanoError(f"{source}: a recipe is a JSON object")
        flags = ("damp", "act_order", "clip_steps", "awq_grid", "mse_steps", "lookup", "embed_first")
        known = SPEC_FIELDS | {"overrides", *flags}
        unknown = sorted(set(data) - known)
        if unknown:
            raise NanoError(f"{source}: unknown field {unknown[0]!r}; use {', '.join(sorted(known))}")
        kw: dict[str, Any] = {k: data[k] for k in flags if k in data}
        default = TensorSpec(**{k: data[k] for k in SPEC_FIELDS if k in data}).check(source)
        if "overrides" in data:
            raw = data["overrides"]
            if not isinstance(raw, Mapping):
                raise NanoError(f"{source}: overrides must be an object of glob -> spec or \"float\"")
            over = []
            for glob, fields in raw.items():
                if fields == "float":
                    over.append((glob, None))
                elif isinstance(fields, Mapping):
                    over.append((glob, dict(fields)))
                else:
                    raise NanoError(f"{source}: override {glob!r} must be an object or \"float\"")
            kw["overrides"] = tuple(over)
        try:
            return cls(default=default, **kw)
        except TypeError as e:
            raise NanoError(f"{source}: {e}") from None

    @classmethod
    def from_file(cls, path: str | Path, **cli: Any) -> "Recipe":
        """Read a JSON recipe; ``cli`` (method/bits/group/...) overrides its top-level fields."""
        data = read_json(path, missing=f"{path}: recipe file not found")
        if not isinstance(data, dict):
            raise NanoError(f"{path}: a recipe is a JSON object")
        return cls.from_dict({**data, **cli}, source=str(path))

