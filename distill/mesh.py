"""Device mesh and sharding rules: a ('data', 'fsdp') mesh. Batches split over both axes;
every parameter (and its optimizer moments) split over 'fsdp' along its largest divisible
dimension, so per-device memory falls with the fsdp size (ZeRO-3 style)."""

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from nano.errors import NanoError


def make_mesh(data: int = 1, fsdp: int | None = None) -> Mesh:
    """A (data, fsdp) mesh over the first data*fsdp devices; `fsdp=None`: all the rest. Each
    process's devices come together, so each process feeds one block of the batch."""
    n = jax.device_count()
    fsdp = fsdp or max(n // data, 1)
    if data < 1 or data * fsdp > n:
        raise NanoError(f"mesh data={data} x fsdp={fsdp} needs {data * fsdp} devices, {n} available; lower --mesh-data/--mesh-fsdp")
    devices = sorted(jax.devices(), key=lambda d: d.process_index)  # stable: a process's own order kept
    return Mesh(np.asarray(devices[: data * fsdp]).reshape(data, fsdp), ("data", "fsdp"))


def param_spec(shape: tuple[int, ...], fsdp: int) -> P:
    """Shard the largest dimension divisible by `fsdp`; replicate small or indivisible arrays."""
    if fsdp == 1 or not shape:
        return P()
    for axis in sorted(range(len(shape)), key=lambda a: -shape[a]):
        if shape[axis] % fsdp == 0 and shape[axis] >= fsdp:
            spec = [None] * len(shape)
            spec[axis] = "fsdp"
            return P(*spec)
    return P()


def tree_shardings(tree, mesh: Mesh):
    fsdp = mesh.shape["fsdp"]
    return jax.tree.map(lambda x: NamedSharding(mesh, param_spec(tuple(x.shape), fsdp)), tree)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(("data", "fsdp")))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def vocab_sharding(mesh: Mesh) -> NamedSharding:
    """(B, c, V) logits chunks: rows over 'data', the vocabulary over 'fsdp' as the tied embedding
    is split (`param_spec`), so the LM head's weight gradient stays split. Left to XLA, each device
    gathered the whole embedding and summed a full (V, D) float32 gradient per chunk (nano1: 4 GiB)."""
    return NamedSharding(mesh, P("data", None, "fsdp"))
