"""Compile a training step at full size without allocating it: abstract (ShapeDtypeStruct)
state with shardings, lowered and compiled on the current mesh, memory read back from XLA.
This is how a 1.8B `nano1` step is checked on a CPU with forced host devices."""

import dataclasses
import time

import jax
import jax.numpy as jnp
from flax import nnx

from distill.mesh import batch_sharding, make_mesh, tree_shardings, vocab_sharding
from distill.train import TrainConfig, jit_train_step, make_train_step, optimizer
from nano.config import ModelConfig, get_preset
from nano.model import Transformer


def _abstract(tree, shardings):
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def _bytes(tree) -> int:
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))


@dataclasses.dataclass(frozen=True)
class StepPlan:
    devices: int
    mesh: dict[str, int]
    student_params: int
    teacher_params: int
    state_bytes: int  # student params + optimizer state, all devices together
    per_device_argument_bytes: int
    per_device_temp_bytes: int
    per_device_output_bytes: int
    per_device_peak_bytes: int  # arguments + temporaries (outputs alias donated state)
    compile_seconds: float
    logits_spec: tuple  # mesh axes of each (B, c, V) logits chunk (distill.mesh.vocab_sharding)
    weights_in_order: bool  # each block's weights read once the block before has its input (step_loss)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def plan_step(cfg: TrainConfig, *, teacher_config: ModelConfig | None) -> StepPlan:
    mesh = make_mesh(cfg.mesh_data, cfg.mesh_fsdp)
    dtype = cfg.compute_jnp_dtype
    student = nnx.eval_shape(lambda: Transformer(get_preset(cfg.student), rngs=nnx.Rngs(0), dtype=dtype))
    graphdef, params = nnx.split(student, nnx.Param)
    tx = optimizer(cfg)
    state = {"params": params, "opt_state": jax.eval_shape(tx.init, params)}
    state_sh = tree_shardings(state, mesh)
    teacher_graphdef, teacher_params = None, {}
    if teacher_config is not None:
        teacher = nnx.eval_shape(lambda: Transformer(teacher_config, rngs=nnx.Rngs(0), dtype=dtype,
                                                     param_dtype=jnp.bfloat16))
        teacher_graphdef, teacher_params = nnx.split(teacher, nnx.Param)
    teacher_sh = tree_shardings(teacher_params, mesh)
    shape, bs = (cfg.batch_size, cfg.seq_len), batch_sharding(mesh)
    batch = {"inputs": jax.ShapeDtypeStruct(shape, jnp.int32, sharding=bs),
             "labels": jax.ShapeDtypeStruct(shape, jnp.int32, sharding=bs),
             "mask": jax.ShapeDtypeStruct(shape, jnp.float32, sharding=bs)}
    step = make_train_step(cfg, graphdef, teacher_graphdef, tx, mesh=mesh)
    jitted = jit_train_step(step, mesh, state_sh, teacher_sh)
    t = time.perf_counter()
    compiled = jitted.lower(_abstract(state, state_sh), _abstract(teacher_params, teacher_sh), batch).compile()
    seconds = time.perf_counter() - t
    mem = compiled.memory_analysis()
    count = lambda tree: sum(x.size for x in jax.tree.leaves(tree))
    return StepPlan(
        devices=mesh.size, mesh=dict(mesh.shape), student_params=count(params), teacher_params=count(teacher_params),
        state_bytes=_bytes(state), per_device_argument_bytes=mem.argument_size_in_bytes,
        per_device_temp_bytes=mem.temp_size_in_bytes, per_device_output_bytes=mem.output_size_in_bytes,
        per_device_peak_bytes=mem.argument_size_in_bytes + mem.temp_size_in_bytes, compile_seconds=seconds,
        logits_spec=tuple(vocab_sharding(mesh).spec), weights_in_order=True)
