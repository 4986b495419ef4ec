"""The target shape of a prune, and the refusals: one line each, before any work is done."""

import dataclasses

from nano.config import ModelConfig, get_preset
from nano.errors import NanoError


@dataclasses.dataclass(frozen=True, kw_only=True)
class PruneTargets:
    """Unset fields keep the source's value. `drop_layers` names the blocks to remove
    (otherwise `num_layers` blocks are kept, chosen by `distill.prune.blocks`)."""

    d_model: int | None = None
    ffn_dim: int | None = None
    num_heads: int | None = None
    num_layers: int | None = None
    drop_layers: tuple[int, ...] | None = None

    @classmethod
    def from_preset(cls, name: str, source: ModelConfig) -> "PruneTargets":
        """A preset's shapes; what pruning cannot change (head_dim, KV heads, vocab) must match."""
        p = get_preset(name)
        for field in ("head_dim", "num_kv_heads", "vocab_size"):
            if getattr(p, field) != getattr(source, field):
                raise NanoError(f"--preset {name}: its {field} is {getattr(p, field)} but the source's is {getattr(source, field)}; pruning keeps {field}, give --d-model/--ffn/--heads/--layers instead")
        return cls(d_model=p.d_model, ffn_dim=p.ffn_dim, num_heads=p.num_heads, num_layers=p.num_layers)


def check_targets(source: ModelConfig, t: PruneTargets) -> PruneTargets:
    """`t` with every field resolved against `source`; NanoError on a shape pruning cannot reach."""
    flags = {"d_model": "--d-model", "ffn_dim": "--ffn", "num_heads": "--heads", "num_layers": "--layers"}
    L = source.num_layers
    drop = tuple(sorted(set(t.drop_layers))) if t.drop_layers is not None else None
    if drop is not None:
        bad = [i for i in drop if not 0 <= i < L]
        if bad:
            raise NanoError(f"--drop-layers {bad[0]}: the source has layers 0..{L - 1}")
        if t.num_layers is not None and t.num_layers != L - len(drop):
            raise NanoError(f"--layers {t.num_layers} disagrees with --drop-layers (which leaves {L - len(drop)}); give one of them")
    want = {f: getattr(t, f) if getattr(t, f) is not None else getattr(source, f) for f in flags}
    if drop is not None:
        want["num_layers"] = L - len(drop)
    for field, flag in flags.items():
        if want[field] < 1:
            raise NanoError(f"{flag} {want[field]}: keep at least 1")
        if want[field] > getattr(source, field):
            raise NanoError(f"{flag} {want[field]} is larger than the source's {getattr(source, field)}; pruning only removes units")
    if want["num_heads"] % source.num_kv_heads:
        raise NanoError(f"--heads {want['num_heads']} is not a multiple of the source's {source.num_kv_heads} KV heads (kept as they are); use a multiple of {source.num_kv_heads}")
    globals_ = [i for i in range(L) if source.is_global(i)]
    if drop is not None and globals_ and all(i in drop for i in globals_):
        raise NanoError(f"--drop-layers removes every global layer ({', '.join(map(str, globals_))}); keep at least one so the model still sees past its {source.window}-token window")
    return PruneTargets(**want, drop_layers=drop)
