"""Multi-process runs on JAX's own runtime (`jax.distributed`): join the other processes before
any other JAX call, then a few helpers for code that runs in every process but writes once."""

import socket
import time

import jax
import numpy as np
from jax.sharding import NamedSharding

from nano.errors import NanoError


def initialize(coordinator: str | None, num_processes: int | None, process_id: int | None, *,
               timeout_s: float) -> bool:
    """Join a multi-process run; True if one was joined. Arguments first, then JAX's own
    detection (SLURM, Open MPI, Kubernetes, Cloud TPU) where the environment describes more than
    one process; otherwise (or `num_processes=1`) a single process and nothing to do."""
    if num_processes == 1 and coordinator is None and process_id in (None, 0):
        return False
    detected = _detected_process_count()
    if (coordinator, num_processes, process_id) == (None, None, None) and detected <= 1:
        return False
    if detected <= 1:
        missing = [flag for flag, v in (("--coordinator", coordinator), ("--num-processes", num_processes),
                                        ("--process-id", process_id)) if v is None]
        if missing:
            raise NanoError(f"multi-process run: missing {', '.join(missing)}; give --coordinator HOST:PORT, --num-processes and --process-id together")
    if num_processes is not None and process_id is not None and not 0 <= process_id < num_processes:
        raise NanoError(f"--process-id {process_id} must lie in 0..{num_processes - 1} (--num-processes {num_processes})")
    address = None if coordinator is None else _host_port(coordinator)
    if jax.distributed.is_initialized():
        return True
    deadline = time.monotonic() + timeout_s
    if address is not None and process_id != 0:  # process 0 is the coordinator: nothing to wait for
        _wait_for_coordinator(coordinator, address, deadline)
    try:
        jax.distributed.initialize(coordinator, num_processes, process_id,
                                   initialization_timeout=max(1, round(deadline - time.monotonic())))
    except (RuntimeError, ValueError) as e:  # JAX already in use here, or a cluster it half detected
        raise NanoError(f"multi-process run: {e} (start `nano distill` in a fresh process with --coordinator, --num-processes and --process-id)") from None
    return True


def _detected_process_count() -> int:
    """Processes of the cluster environment JAX would detect (1 if none). JAX has no public
    call for this; its ClusterEnv registry is what `jax.distributed.initialize()` consults."""
    from jax._src import clusters

    for env in clusters.ClusterEnv._cluster_types:
        if not env.opt_in_only_method and env.is_env_present():
            return env.get_process_count()
    return 1


def _host_port(coordinator: str) -> tuple[str, int]:
    host, sep, port = coordinator.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise NanoError(f"--coordinator {coordinator!r}: give HOST:PORT, e.g. 10.0.0.1:1234")
    return host.strip("[]"), int(port)  # [::1]:1234 -> ::1


def _wait_for_coordinator(coordinator: str, address: tuple[str, int], deadline: float) -> None:
    """Until `deadline`, until the coordinator accepts connections: JAX's own client aborts the
    process (no exception) when the coordinator never answers."""
    while True:
        try:
            with socket.create_connection(address, timeout=max(0.1, min(2.0, deadline - time.monotonic()))):
                return
        except OSError:
            if time.monotonic() >= deadline:
                raise NanoError(f"--coordinator {coordinator}: no answer within the timeout; start process 0 there first, check the address, or raise --coordinator-timeout") from None
            time.sleep(0.2)


def is_main_process() -> bool:
    """Process 0 writes the run's files (metrics, TensorBoard, the final student)."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Wait until every process reaches `name` (nothing to wait for in a single process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def to_host(tree):
    """`tree`'s arrays as whole host arrays. Every process must call it (a collective when
    arrays span processes: jax.device_get only reads this process's devices)."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(tree, tiled=True)


def put_global(tree, shardings):
    """`tree`, the same values in every process, placed with `shardings`: each process copies only
    its own devices' shards (jax.device_put would first gather every array from every process to
    check that they agree, which at full size costs a whole copy of the model per process)."""
    if jax.process_count() == 1:
        return jax.device_put(tree, shardings)

    def put(x, sharding):
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(put, tree, shardings)


def process_rows(sharding: NamedSharding, batch: int) -> slice:
    """This process's rows of a (batch, ...) array split over its first axis by `sharding`: one
    contiguous block (the mesh lists each process's devices together)."""
    spans = sorted({(s[0].start or 0, batch if s[0].stop is None else s[0].stop)
                    for s in sharding.addressable_devices_indices_map((batch,)).values()})
    for (_, stop), (start, _) in zip(spans, spans[1:]):
        if stop != start:
            raise NanoError(f"this process's devices hold rows {spans} of the batch, not one block; build the mesh with each process's devices together")
    return slice(spans[0][0], spans[-1][1])
