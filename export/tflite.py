"""`export_tflite`: a Nano Transformer -> one .tflite with `prefill_<T>` and `decode` signatures for
LiteRT / LiteRT-LM, float32 or with Nano's own int4/int8 weights in the file (see export.graph for
the signature layout and export.flatbuffer for the weight format).

The graph is converted without its weights (they are signature inputs), then each weight is
written into the file as it is given: memory is the conversion's (~0.9 GiB for nano1, whatever
its weights) plus the weights as given and at most one stored copy of them; a quantized weight is
never made float (converting the float model took ~10x its float32 size)."""

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from export import flatbuffer
from export.graph import EMBED_SLOT, EMBED_TABLES, convert
from nano.atomic import atomic_file
from nano.checkpoint import expected_shapes, flat_params
from nano.config import ModelConfig
from nano.errors import NanoError
from nano.model import Transformer
from nano.params import EMBED, as_matrix, is_matrix, matrix_shape
from nano.qtensor import QTensor, SplitQTensor, qrange

# KV-cache length when the model allows it: every layer attends over all S positions (masked),
# and nano1's float32 caches at 1024 take 21 x 2 x 1024 x 256 x 4 B = 44 MB.
DEFAULT_SEQ_LEN = 1024
# One prefill signature per length (those above seq_len become seq_len), all on the same weights;
# the runtime picks them per prompt (export.runtime.plan_prefill), so a 20-token prompt pays for
# 24 positions, not 128. No 512: on the 2-core Xeon (AVX2) one 512 chunk of student_20m took 5-8%
# longer than four of 128 (and 64 MiB more activations); add it with --prefill-lens where it pays.
# Each signature adds ~1-3 s to the conversion and the quantization parameters of its tensors
# (3 MiB for student_20m's per-channel int8 embedding).
DEFAULT_PREFILL_LENS = (8, 64, 128)


def parse_prefill_lens(text: str) -> tuple[int, ...]:
    """``"8,64,128"`` -> (8, 64, 128); anything else is a one-line NanoError."""
    try:
        return tuple(int(p) for p in text.split(",") if p.strip())
    except ValueError:
        raise NanoError(f"--prefill-lens {text!r}: give integers like 8,64,128") from None


def default_lengths(config: ModelConfig, seq_len: int | None = None,
                    prefill_lens: Sequence[int] | None = None) -> tuple[int, tuple[int, ...]]:
    """(seq_len, sorted prefill lengths), validated; defaults min(max_seq_len, 1024) and
    DEFAULT_PREFILL_LENS capped at seq_len."""
    S = min(config.max_seq_len, DEFAULT_SEQ_LEN) if seq_len is None else seq_len
    if not 1 <= S <= config.max_seq_len:
        raise NanoError(f"seq_len {S} must be in [1, {config.max_seq_len}] (the model's max_seq_len); "
                        "pass a smaller --seq-len")
    if prefill_lens is None:
        return S, tuple(sorted({min(T, S) for T in DEFAULT_PREFILL_LENS}))
    lens = [int(T) for T in prefill_lens]
    if not lens:
        raise NanoError("prefill_lens is empty; give one or more lengths, e.g. --prefill-lens 8,64,128")
    bad = [T for T in lens if not 1 <= T <= S]
    if bad:
        raise NanoError(f"prefill length {bad[0]} must be in [1, seq_len={S}]; pass smaller --prefill-lens")
    twice = sorted({T for T in lens if lens.count(T) > 1})
    if twice:
        raise NanoError(f"prefill length {twice[0]} is given twice; pass distinct --prefill-lens")
    return S, tuple(sorted(lens))


def _parts(name: str, qt: QTensor | SplitQTensor, want: tuple[int, int]) -> list[tuple[str, QTensor, tuple[int, int]]]:
    """(name, QTensor, expected (in, out)) of each stored part: one, or a split embedding's two."""
    if not isinstance(qt, SplitQTensor):
        return [(name, qt, want)]
    if name != EMBED:
        raise NanoError(f"{name}: only the tied embedding can be split into int8 and int4 rows")
    if qt.shape != want:
        raise NanoError(f"{name}: split QTensor of shape {qt.shape}, expected {want}")
    k = len(qt.ids)
    return [(EMBED_TABLES[0], qt.hot, (want[0], k)), (EMBED_TABLES[1], qt.cold, (want[0], want[1] - k))]


def check_qtensors(shapes: Mapping[str, tuple[int, ...]], qtensors: Mapping[str, QTensor | SplitQTensor]) -> None:
    """Refuse QTensors LiteRT cannot hold; `shapes` are the model's parameter shapes."""
    for full, whole in qtensors.items():
        if full not in shapes or not is_matrix(full):
            raise NanoError(f"qtensors: {full!r} is not a kernel or the embedding of this model; "
                            "use names like 'layers.0.attn.q.kernel' or 'embed'")
        for name, qt, want in _parts(full, whole, matrix_shape(full, shapes[full])):
            _check_qtensor(name, qt, want)


def _check_qtensor(name: str, qt: QTensor, want: tuple[int, int]) -> None:
    """One stored INT4/INT8 tensor of (in, out) shape `want`."""
    if tuple(qt.q.shape) != want:
        raise NanoError(f"{name}: QTensor codes have shape {tuple(qt.q.shape)}, expected {want} "
                        "(in, out; the embedding is quantized as embed.T)")
    if not qt.symmetric:
        raise NanoError(f"{name}: asymmetric QTensor; LiteRT int4/int8 weights are symmetric, "
                        "quantize with symmetric=True")
    if qt.bits not in (4, 8) or (qt.bits == 8 and qt.group is not None):
        raise NanoError(f"{name}: {qt.bits}-bit with group {qt.group} is not supported; "
                        "use 4 bits (per channel or grouped) or 8 bits per channel (group=None)")
    lo, hi = qrange(qt.bits, True)
    if qt.q.size and (qt.q.min() < lo or qt.q.max() > hi):
        raise NanoError(f"{name}: codes outside [{lo}, {hi}] for {qt.bits} bits; clip the codes")
    if qt.group is not None and (qt.group <= 0 or want[0] % qt.group):
        raise NanoError(f"{name}: group {qt.group} does not divide the input width {want[0]}; "
                        "quantize with a group that does, or group=None")
    groups = 1 if qt.group is None else want[0] // qt.group
    if qt.scale.shape != (groups, want[1]):
        raise NanoError(f"{name}: scale shape {qt.scale.shape} does not match group {qt.group} "
                        f"of a {want} weight; expected {(groups, want[1])}")
    if not np.all(np.isfinite(qt.scale)) or np.any(qt.scale < 0):
        raise NanoError(f"{name}: scales must be finite and >= 0 (negative ones come from "
                        "convention='q4_0'); quantize with convention='max7'")
    if qt.group is not None:
        flatbuffer.blockwise_scales(name, qt)  # refuse before the slow conversion


def check_params(config: ModelConfig, floats: Mapping[str, np.ndarray], qtensors: Mapping[str, QTensor],
                 *, source: str | None = None) -> None:
    """Every parameter of `config` exactly once, in `floats` (model layout) or `qtensors`;
    errors start with `source` (the file they came from) when given."""
    at = f"{source}: " if source else ""
    shapes = expected_shapes(config)
    try:
        check_qtensors(shapes, qtensors)
    except NanoError as e:
        raise NanoError(f"{at}{e}") from None
    given = [*floats, *qtensors]
    missing, extra = sorted(set(shapes) - set(given)), sorted(set(given) - set(shapes))
    twice = sorted(set(floats) & set(qtensors))
    if missing or extra or twice:
        what = (f"missing tensor {missing[0]!r}" if missing else f"unexpected tensor {extra[0]!r}" if extra
                else f"tensor {twice[0]!r} given both as float and quantized")
        raise NanoError(f"{at}{what} for model {config.name!r}; pass each parameter once")
    for name, w in floats.items():
        if tuple(w.shape) != shapes[name]:
            raise NanoError(f"{at}tensor {name!r} has shape {tuple(w.shape)}, model {config.name!r} "
                            f"expects {shapes[name]}")


def export_params(config: ModelConfig, out: str | Path, *, floats: Mapping[str, np.ndarray],
                  qtensors: Mapping[str, QTensor], seq_len: int | None = None,
                  prefill_lens: Sequence[int] | None = None, source: str | None = None, ring: bool = False) -> Path:
    """Write `out` (.tflite) from the model's parameters: `qtensors` (Nano names -> QTensors of
    the (in, out) kernel, of embed.T for the embedding) stored as INT4/INT8, every other
    parameter from `floats` (model layout) as float32; `source` (a checkpoint) starts error
    messages. `ring`: local layers' KV caches are rings of `window` positions (CompiledModel
    runs it; LiteRT-LM needs one cache length). No float copy of a quantized weight is made."""
    S, lens = default_lengths(config, seq_len, prefill_lens)
    check_params(config, floats, qtensors, source=source)
    gains = {k: v for k, v in floats.items() if not is_matrix(k)}
    split = qtensors.get(EMBED)
    hot_rows = len(split.ids) if isinstance(split, SplitQTensor) else 0
    tfl = flatbuffer.load(convert(config, gains, seq_len=S, prefill_lens=lens, ring=ring, hot_rows=hot_rows))
    weights: dict[str, flatbuffer.Weight] = {k: v for k, v in qtensors.items() if k != EMBED or not hot_rows}
    if hot_rows:
        weights |= {EMBED_TABLES[0]: split.hot, EMBED_TABLES[1]: split.cold,
                    EMBED_SLOT: np.argsort(split.order).astype(np.int32)}  # token -> its row in [hot | cold]
    for name, w in floats.items():
        if is_matrix(name):  # kernels as (out, in) views: the writer copies one tensor at a time
            weights[name] = as_matrix(name, np.asarray(w, np.float32)).T
    flatbuffer.place_weights(tfl, weights, tables=2 if hot_rows else 1)
    with atomic_file(out) as f:
        flatbuffer.write(tfl, f)
    return Path(out)


def export_tflite(model: Transformer, out: str | Path, *, seq_len: int | None = None,
                  prefill_lens: Sequence[int] | None = None,
                  qtensors: Mapping[str, QTensor] | None = None, ring: bool = False) -> Path:
    """Write `out` (.tflite): float32, or with the weights in `qtensors` as INT4/INT8 tensors.

    `qtensors` maps Nano parameter names (`layers.3.attn.q.kernel`, `embed`) to QTensors of the
    (in, out) kernel (of embed.T for the embedding); other weights stay float32. The file holds
    exactly those codes and scales, so it computes what the dequantized model does, up to the
    on-the-fly int8 quantization of activations in LiteRT's dynamic-range kernels.
    """
    qtensors = dict(qtensors or {})
    floats = {k: v for k, v in flat_params(model).items() if k not in qtensors}
    return export_params(model.config, out, floats=floats, qtensors=qtensors, seq_len=seq_len,
                         prefill_lens=prefill_lens, ring=ring)


def read_qtensors(path: str | Path) -> dict[str, QTensor]:
    """The INT4/INT8 weights stored in an exported .tflite, as QTensors keyed by Nano name."""
    path = Path(path)
    if not path.is_file():
        raise NanoError(f"{path}: no such .tflite file; export one with export_tflite")
    return flatbuffer.read_quantized(flatbuffer.load(path.read_bytes()))
