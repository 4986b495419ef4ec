"""What a full-size training step needs in memory: rematerialisation of the student's blocks
(`TrainConfig.remat`, `nano distill --remat`) and reading each block's weights in order
(`hidden(in_order=True)`) give the values of the plain forward, the flag goes through config, CLI
and resume; on a mesh the LM head stays split over the vocabulary (`distill.mesh.vocab_sharding`)."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from typer.testing import CliRunner

from distill.train import TrainConfig, step_loss
from nano.cli import app
from nano.config import get_preset
from nano.errors import NanoError
from nano.model import Transformer, init_cache


def _loss_and_grads(remat: str):
    student, teacher = (Transformer(get_preset("tiny"), rngs=nnx.Rngs(s)) for s in (0, 5))
    graphdef, params = nnx.split(student, nnx.Param)
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 512, (2, 17)), jnp.int32)
    cfg = TrainConfig(student="tiny", remat=remat)

    def loss(params):
        return step_loss(nnx.merge(graphdef, params), teacher, tokens[:, :-1], tokens[:, 1:],
                         jnp.ones((2, 16), jnp.float32), None, cfg)[0]

    return jax.jit(jax.value_and_grad(loss))(params)


def test_remat_gives_the_loss_and_gradients_of_no_remat():
    """tiny preset, float32, forward KL to a tiny teacher, both policies: ~15 s."""
    ref_loss, ref_grads = _loss_and_grads("none")
    for remat in ("block", "dots"):
        loss, grads = _loss_and_grads(remat)
        assert abs(float(loss) - float(ref_loss)) <= 1e-6, remat
        for g, r in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads), strict=True):
            np.testing.assert_allclose(np.asarray(g), np.asarray(r), atol=1e-6, rtol=0, err_msg=remat)


def test_weights_read_in_order_give_the_same_values():
    """`hidden(in_order=True)` only orders reads: the plain forward's values and gradients, exactly,
    with each remat policy (tiny, float32): ~10 s."""
    model = Transformer(get_preset("tiny"), rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model, nnx.Param)
    tokens = jnp.asarray(np.random.default_rng(1).integers(0, 512, (2, 16)), jnp.int32)

    def objective(params, remat, in_order):
        return jnp.sum(jnp.sin(nnx.merge(graphdef, params).hidden(tokens, remat=remat, in_order=in_order)[0]))

    run = jax.jit(jax.value_and_grad(objective), static_argnums=(1, 2))
    ref_value, ref_grads = run(params, "none", False)
    for remat in ("none", "block", "dots"):
        value, grads = run(params, remat, True)
        assert float(value) == float(ref_value), remat
        for g, r in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads), strict=True):
            np.testing.assert_array_equal(np.asarray(g), np.asarray(r), err_msg=remat)


def test_remat_refusals():
    with pytest.raises(NanoError, match=r"remat 'all' \(none, block, dots\)"):
        TrainConfig(remat="all")
    model = Transformer(get_preset("tiny"), rngs=nnx.Rngs(0))
    tokens = jnp.zeros((1, 4), jnp.int32)
    with pytest.raises(NanoError, match="remat 'layer': choose one of none, block, dots"):
        model.hidden(tokens, remat="layer")
    with pytest.raises(NanoError, match="'none' with a cache"):
        model.hidden(tokens, cache=init_cache(model.config, length=8), remat="block")


def _distill(teacher, data, out, *extra):
    args = ["distill", "--teacher", str(teacher), "--data", str(data), "--out", str(out), "--student", "tiny",
            "--seq-len", "32", "--batch-size", "4", "--tokens", str(4 * 32 * 2), *extra]
    return CliRunner().invoke(app, args)


def test_remat_flag_round_trips_and_old_runs_resume(tmp_path, tiny_ckpt, tiny_data):
    """Two-step tiny runs through the CLI, in process: ~15 s."""
    run = tmp_path / "run"
    result = _distill(tiny_ckpt, tiny_data, run, "--remat", "block")
    assert result.exit_code == 0, result.output
    saved = json.loads((run / "train_config.json").read_text())
    assert saved["remat"] == "block" and TrainConfig(**saved).remat == "block"
    # A run started before the field existed resumes at its default ("none")...
    (run / "train_config.json").write_text(json.dumps({k: v for k, v in saved.items() if k != "remat"}))
    result = _distill(tiny_ckpt, tiny_data, run, "--resume")
    assert result.exit_code == 0, result.output
    # ...and remat changes memory, not values: a run may resume under another setting.
    result = _distill(tiny_ckpt, tiny_data, run, "--resume", "--remat", "dots")
    assert result.exit_code == 0, result.output
    assert json.loads((run / "train_config.json").read_text())["remat"] == "dots"
    result = _distill(tiny_ckpt, tiny_data, tmp_path / "bad", "--remat", "all")
    assert result.exit_code == 1 and "remat 'all' (none, block, dots)" in " ".join(result.output.split())


LAYOUT = textwrap.dedent("""
    import json
    import jax, jax.numpy as jnp
    from flax import nnx
    from distill.mesh import batch_sharding, make_mesh, tree_shardings
    from distill.plan import _abstract
    from distill.train import TrainConfig, jit_train_step, make_train_step, optimizer
    from nano.config import get_preset
    from nano.model import Transformer
    cfg = TrainConfig(student="tiny", tokens=10**6, seq_len=16, batch_size=8, mesh_fsdp=8)
    mesh = make_mesh(1, 8)
    model = lambda: nnx.split(nnx.eval_shape(lambda: Transformer(get_preset("tiny"), rngs=nnx.Rngs(0))), nnx.Param)
    (graphdef, params), (teacher_graphdef, teacher_params) = model(), model()
    tx = optimizer(cfg)
    state = {"params": params, "opt_state": jax.eval_shape(tx.init, params)}
    state_sh, teacher_sh = tree_shardings(state, mesh), tree_shardings(teacher_params, mesh)
    batch = {k: jax.ShapeDtypeStruct((8, 16), d, sharding=batch_sharding(mesh))
             for k, d in (("inputs", jnp.int32), ("labels", jnp.int32), ("mask", jnp.float32))}
    for laid_out in (False, True):
        step = make_train_step(cfg, graphdef, teacher_graphdef, tx, mesh=mesh if laid_out else None)
        compiled = jit_train_step(step, mesh, state_sh, teacher_sh).lower(
            _abstract(state, state_sh), _abstract(teacher_params, teacher_sh), batch).compile()
        # a whole (V, D) float32 embedding or its gradient on a device?
        print(json.dumps(["f32[512,64]" in compiled.as_text(), compiled.memory_analysis().temp_size_in_bytes]))
""")


def test_lm_head_gradient_stays_split_over_the_vocabulary():
    """tiny preset (V = 512, D = 64) on a 1 x 8 mesh of forced host devices, XLA's layout of the
    logits then ours: two compiles, ~30 s of CPU."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", LAYOUT], env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (xla_full, xla_temp), (ours_full, ours_temp) = map(json.loads, proc.stdout.strip().splitlines()[-2:])
    assert xla_full and not ours_full
    assert ours_temp < xla_temp
