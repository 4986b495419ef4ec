"""Structured pruning of a float checkpoint (`nano prune`): blocks, query heads, FFN neurons and
embedding channels, ranked by importance measured on calibration activations (the model's taps),
with training-free corrections; the result is an ordinary float checkpoint plus `prune.json`.

- `targets`: the target shape and every refusal (checked before anything is computed).
- `importance`: one pass over calibration rows collecting per-unit statistics.
- `blocks`: which blocks go (greedy, by calibration NLL with the block skipped).
- `slicing`: cut the arrays (and refit / rescale what remains).
- `run`: the whole command, written atomically.
"""

from distill.prune.run import prune_checkpoint
from distill.prune.targets import PruneTargets

__all__ = ["PruneTargets", "prune_checkpoint"]
