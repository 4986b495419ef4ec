"""Model configuration: one frozen, keyword-only dataclass and its named presets.

Parameter counts (embedding included, tied LM head) are asserted in tests/test_config.py
through `jax.eval_shape`, so these comments cannot drift.
"""

import dataclasses
import json
import math
from typing import Any

from nano.errors import NanoError

GEMMA3_VOCAB = 262_144
GEMMA3_MM_VOCAB = 262_208  # Gemma 3 4B/12B/27B (multimodal checkpoints): 64 unused rows more
GEMMA2_VOCAB = 256_000


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """A Gemma-2/3-family decoder-only transformer.

    Layer `i` is global (full attention, `rope_global_base`) when `(i + 1) % attn_pattern == 0`,
    otherwise local (sliding window of `window` tokens, `rope_local_base`): Gemma 2 uses a
    pattern of 2 (local, global, ...), Gemma 3 a pattern of 6 (five local, one global).
    """

    name: str
    vocab_size: int
    d_model: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    ffn_dim: int
    window: int  # sliding window of local layers, in tokens (the query itself included)
    attn_pattern: int  # every `attn_pattern`-th layer is global
    rope_local_base: float = 10_000.0
    rope_global_base: float = 10_000.0
    # Linear RoPE scaling of the global layers only: their positions are divided by it (Gemma 3
    # 4B/12B/27B: 8, `rope_scaling: {"rope_type": "linear", "factor": 8.0}`); local layers unscaled.
    rope_global_scale: float = 1.0
    query_pre_attn_scalar: float | None = None  # queries scaled by its -1/2 power; None: head_dim
    attn_softcap: float | None = None  # Gemma 2: 50
    final_softcap: float | None = None  # Gemma 2: 30
    qk_norm: bool = False  # Gemma 3: RMSNorm on queries and keys (per head)
    norm_eps: float = 1e-6
    max_seq_len: int = 8192  # default KV-cache length
    # Explicit global layers (e.g. after `nano prune` removed blocks, each keeps its type);
    # None: every `attn_pattern`-th layer.
    global_layers: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        checks = {
            "vocab_size": self.vocab_size > 0,
            "d_model": self.d_model > 0,
            "num_layers": self.num_layers > 0,
            "num_heads": self.num_heads > 0 and self.num_heads % max(self.num_kv_heads, 1) == 0,
            "num_kv_heads": 0 < self.num_kv_heads <= self.num_heads,
            "head_dim": self.head_dim > 0 and self.head_dim % 2 == 0,
            "ffn_dim": self.ffn_dim > 0,
            "window": self.window > 0,
            "attn_pattern": self.attn_pattern > 0,
            "rope_global_scale": self.rope_global_scale > 0,
            "query_pre_attn_scalar": self.query_pre_attn_scalar is None or self.query_pre_attn_scalar > 0,
            "global_layers": self.global_layers is None or (
                list(self.global_layers) == sorted(set(self.global_layers))
                and all(0 <= i < self.num_layers for i in self.global_layers)),
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise NanoError(f"model config {self.name!r}: invalid {', '.join(bad)} (heads must be a multiple of kv heads, head_dim even, sizes positive, global_layers sorted layer indices)")

    @property
    def attn_scale(self) -> float:
        return (self.query_pre_attn_scalar or self.head_dim) ** -0.5

    def is_global(self, layer: int) -> bool:
        if self.global_layers is not None:
            return layer in self.global_layers
        return (layer + 1) % self.attn_pattern == 0

    @property
    def regular_pattern(self) -> bool:
        """Whether the layer types follow `attn_pattern` (what llama.cpp and HF configs assume)."""
        return all(self.is_global(i) == ((i + 1) % self.attn_pattern == 0) for i in range(self.num_layers))

    @property
    def family(self) -> str:
        return "gemma3" if self.qk_norm else "gemma2"

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "config") -> "ModelConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise NanoError(f"{source}: unknown model config field(s) {unknown}; valid fields: {sorted(names)}")
        if isinstance(data.get("global_layers"), list):
            data = {**data, "global_layers": tuple(data["global_layers"])}
        try:
            return cls(**data)
        except TypeError as e:  # a required field is missing
            raise NanoError(f"{source}: {e}") from None


def _gemma3(**kw: Any) -> ModelConfig:
    base = dict(vocab_size=GEMMA3_VOCAB, window=512, attn_pattern=6, rope_local_base=10_000.0,
                rope_global_base=1_000_000.0, qk_norm=True)
    return ModelConfig(**{**base, **kw})


PRESETS: dict[str, ModelConfig] = {
    # Released Gemma models (shapes from their configs).
    "gemma3_270m": _gemma3(  # 268,098,176 params (100.3M non-embedding)
        name="gemma3_270m", d_model=640, num_layers=18, num_heads=4, num_kv_heads=1, head_dim=256,
        ffn_dim=2048, query_pre_attn_scalar=256, max_seq_len=32_768),
    "gemma3_1b": _gemma3(  # 999,885,952 params
        name="gemma3_1b", d_model=1152, num_layers=26, num_heads=4, num_kv_heads=1, head_dim=256,
        ffn_dim=6912, query_pre_attn_scalar=256, max_seq_len=32_768),
    # The text towers of the multimodal Gemma 3 checkpoints (google/gemma-3-{4b,12b,27b}-pt/-it,
    # `text_config` of their config.json): a 262,208-row embedding (262,144 tokenizer ids + 64
    # unused rows), 1,024-token window, linear RoPE scaling x8 on global layers, 128k context.
    # Google's totals (4.30B / 12.2B / 27.4B) add the SigLIP vision tower (~417M) and projector.
    "gemma3_4b": _gemma3(  # 3,880,263,168 params (text tower)
        name="gemma3_4b", vocab_size=GEMMA3_MM_VOCAB, d_model=2560, num_layers=34, num_heads=8,
        num_kv_heads=4, head_dim=256, ffn_dim=10_240, window=1024, query_pre_attn_scalar=256,
        rope_global_scale=8.0, max_seq_len=131_072),
    "gemma3_12b": _gemma3(  # 11,766,034,176 params (text tower)
        name="gemma3_12b", vocab_size=GEMMA3_MM_VOCAB, d_model=3840, num_layers=48, num_heads=16,
        num_kv_heads=8, head_dim=256, ffn_dim=15_360, window=1024, query_pre_attn_scalar=256,
        rope_global_scale=8.0, max_seq_len=131_072),
    # The 27B scales queries by (d_model / heads)**-0.5 = 168**-0.5, not head_dim (128)**-0.5.
    "gemma3_27b": _gemma3(  # 27,009,346,304 params (text tower)
        name="gemma3_27b", vocab_size=GEMMA3_MM_VOCAB, d_model=5376, num_layers=62, num_heads=32,
        num_kv_heads=16, head_dim=128, ffn_dim=21_504, window=1024, query_pre_attn_scalar=168,
        rope_global_scale=8.0, max_seq_len=131_072),
    "gemma2_2b": ModelConfig(  # 2,614,341,888 params
        name="gemma2_2b", vocab_size=GEMMA2_VOCAB, d_model=2304, num_layers=26, num_heads=8,
        num_kv_heads=4, head_dim=256, ffn_dim=9216, window=4096, attn_pattern=2,
        query_pre_attn_scalar=256, attn_softcap=50.0, final_softcap=30.0, max_seq_len=8192),
    # Gemini-Nano-shaped students: multi-query attention (one KV head: the smallest KV cache,
    # the main on-device memory cost after weights), head_dim 256 and GeGLU FFN at 4x width as in
    # Gemma, Gemma 3's 5:1 local/global pattern with a 512-token window (KV reads per decoded
    # token stay flat on 5 of 6 layers), and Gemma 3's 262k vocabulary so Gemma 3 teachers'
    # logits apply directly. Depth/width follow Gemma's aspect ratios; both ship at 4 bits.
    "nano1": _gemma3(  # 1,792,201,216 params (1.8B; 1.255B non-embedding)
        name="nano1", d_model=2048, num_layers=21, num_heads=8, num_kv_heads=1, head_dim=256,
        ffn_dim=8192, query_pre_attn_scalar=256, max_seq_len=8192),
    "nano2": _gemma3(  # 3,277,103,616 params (3.25B; 2.606B non-embedding)
        name="nano2", d_model=2560, num_layers=28, num_heads=10, num_kv_heads=1, head_dim=256,
        ffn_dim=10_240, query_pre_attn_scalar=256, max_seq_len=8192),
    # Small students sized for a 2-core CPU (non-embedding params in the name).
    "student_20m": _gemma3(  # 121,815,680 params (21.2M non-embedding)
        name="student_20m", d_model=384, num_layers=10, num_heads=6, num_kv_heads=1, head_dim=64,
        ffn_dim=1536, query_pre_attn_scalar=64, max_seq_len=2048),
    "student_60m": _gemma3(  # 193,226,752 params (59.0M non-embedding)
        name="student_60m", d_model=512, num_layers=12, num_heads=8, num_kv_heads=1, head_dim=64,
        ffn_dim=2816, query_pre_attn_scalar=64, max_seq_len=2048),
    # Tiny model for tests: every feature on (GQA, 5 local + 1 global layer, short window).
    "tiny": _gemma3(  # 255,744 params
        name="tiny", vocab_size=512, d_model=64, num_layers=6, num_heads=4, num_kv_heads=2,
        head_dim=16, ffn_dim=128, window=8, query_pre_attn_scalar=16, max_seq_len=64),
}


def match_preset(fields: dict[str, Any], *, default: str) -> str:
    """The name of the preset with exactly these shapes (eps compared loosely: GGUF stores f32)."""
    for name, preset in PRESETS.items():
        want = dataclasses.asdict(preset)
        if all(math.isclose(want[k], v, rel_tol=1e-6) if k == "norm_eps" else want[k] == v
               for k, v in fields.items() if k != "name"):
            return name
    return default


def get_preset(name: str) -> ModelConfig:
    try:
        return PRESETS[name.replace("-", "_")]
    except KeyError:
        raise NanoError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}") from None
