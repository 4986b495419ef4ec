"""The training loop on tiny models: schedule, data order, exact resume, sharding."""

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

from distill.train import TrainConfig, Trainer, _epoch_order, batch_rows, lr_schedule
from nano.checkpoint import save_checkpoint
from nano.config import get_preset
from nano.data.stream import TokenRows, TokenStream
from nano.errors import NanoError
from nano.model import Transformer

ROWS = np.random.default_rng(0).integers(0, 512, (64, 32)).astype(np.uint32)


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory):
    return save_checkpoint(tmp_path_factory.mktemp("t") / "teacher", Transformer(get_preset("tiny"), rngs=nnx.Rngs(5)))


def _cfg(teacher, **kw):
    base = dict(student="tiny", teacher=teacher and str(teacher), tokens=8 * 32 * 6, seq_len=32, batch_size=8,
                grad_accum=2, checkpoint_every=2, eval_every=3, warmup_steps=2)
    return TrainConfig(**{**base, **kw})


def test_schedule_and_data_order_are_pure_functions_of_step():
    cfg = TrainConfig(tokens=100 * 8 * 256, lr=1e-3, warmup_steps=10, min_lr_ratio=0.1)
    s = lr_schedule(cfg)
    assert float(s(0)) == 0.0 and float(s(10)) == pytest.approx(1e-3)
    assert float(s(cfg.steps)) == pytest.approx(1e-4)
    a = np.concatenate([batch_rows(10, step, 4, seed=3) for step in range(5)])  # 20 rows = 2 epochs
    assert sorted(a[:10]) == list(range(10)) and sorted(a[10:20]) == list(range(10))
    np.testing.assert_array_equal(batch_rows(10, 3, 4, seed=3), a[12:16])


def _batch_rows_uncached(num_rows, step, batch, seed):
    """batch_rows as runs before the memoised epoch order drew it: a fresh permutation per step."""
    start, out = step * batch, []
    while len(out) < batch:
        epoch, offset = divmod(start + len(out), num_rows)
        perm = np.random.default_rng([seed, epoch]).permutation(num_rows)
        out.extend(perm[offset: offset + batch - len(out)].tolist())
    return np.asarray(out, dtype=np.int64)


@pytest.mark.parametrize("num_rows, batch, seed", [(10, 4, 3), (7, 3, 0), (5, 8, 1), (1000, 64, 7), (70_001, 8192, 11)])
def test_batch_rows_equal_the_uncached_order(num_rows, batch, seed):
    steps = [*range(3 * num_rows // batch + 2), 10_000, 3, 0]  # epochs in order, a jump ahead, and back (a resume)
    for step in steps:
        np.testing.assert_array_equal(batch_rows(num_rows, step, batch, seed),
                                      _batch_rows_uncached(num_rows, step, batch, seed))
    assert not _epoch_order(num_rows, seed, 0).flags.writeable  # shared by every caller


def test_batches_from_shards_equal_the_array_rows(tmp_path):
    flat = ROWS.reshape(-1)
    stream = TokenStream([flat[:100], flat[100:1000], flat[1000:]])  # cuts inside rows 3 and 31
    cfg = _cfg(None)
    from_array = Trainer(cfg, tmp_path / "a", teacher_ckpt=None, rows=ROWS, eval_windows=None, bos_id=2)
    from_shards = Trainer(cfg, tmp_path / "b", teacher_ckpt=None, rows=TokenRows(stream, 32), eval_windows=None, bos_id=2)
    for step in range(cfg.steps):
        a, b = from_array.batch(step)[0], from_shards.batch(step)[0]
        want = ROWS[batch_rows(64, step, 8, cfg.seed)].astype(np.int32)
        for batch in (a, b):
            np.testing.assert_array_equal(batch["labels"], want)
            np.testing.assert_array_equal(batch["inputs"], np.concatenate([np.full((8, 1), 2), want[:, :-1]], 1))
            assert batch["inputs"].dtype == batch["labels"].dtype == jnp.int32


def _losses(out):
    return [json.loads(ln)["loss"] for ln in (out / "metrics.jsonl").read_text().splitlines()]


def test_resume_replays_the_uninterrupted_run(tmp_path, tiny_teacher):
    cfg = _cfg(tiny_teacher)
    full = Trainer(cfg, tmp_path / "full", teacher_ckpt=tiny_teacher, rows=ROWS, eval_windows=None)
    full.run()

    class Killed(Exception):
        pass

    def die_after_5(step, steps, metrics):
        if step == 5:  # checkpoint at 4; step 5 ran and logged, then the process "dies"
            raise Killed

    first = Trainer(cfg, tmp_path / "cut", teacher_ckpt=tiny_teacher, rows=ROWS, eval_windows=None)
    with pytest.raises(Killed):
        first.run(progress=die_after_5)
    second = Trainer(cfg, tmp_path / "cut", teacher_ckpt=tiny_teacher, rows=ROWS, eval_windows=None)
    start = second.restore_latest()
    assert start == 4
    second.run(start=start)
    assert _losses(tmp_path / "cut") == _losses(tmp_path / "full")  # bit-identical curve
    assert [json.loads(ln)["step"] for ln in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()] == list(range(1, 7))


def test_cross_entropy_baseline_and_vocab_mismatch(tmp_path, tiny_teacher):
    cfg = _cfg(None, tokens=8 * 32 * 2)
    last = Trainer(cfg, tmp_path / "ce", teacher_ckpt=None, rows=ROWS, eval_windows=ROWS[:2, :16].astype(np.int32)).run()
    assert "ce" in last and "heldout_ppl" in last
    with pytest.raises(NanoError, match="512-token vocabulary but student preset 'student_20m' has 262,144"):
        Trainer(_cfg(tiny_teacher, student="student_20m"), tmp_path / "x", teacher_ckpt=tiny_teacher,
                rows=ROWS, eval_windows=None)


def test_compute_dtype_auto_is_float32_on_cpu_and_an_explicit_choice_wins():
    assert jax.default_backend() == "cpu"
    assert TrainConfig().compute_dtype == "auto"
    assert TrainConfig().resolved().compute_dtype == "float32" and TrainConfig().compute_jnp_dtype == jnp.float32
    assert TrainConfig(compute_dtype="bfloat16").resolved().compute_dtype == "bfloat16"
    assert TrainConfig(compute_dtype="bfloat16").compute_jnp_dtype == jnp.bfloat16
    with pytest.raises(NanoError, match=r"compute_dtype 'fp16' \(auto, bfloat16, float32\)"):
        TrainConfig(compute_dtype="fp16")


def test_config_errors(tmp_path):
    with pytest.raises(NanoError, match="loss 'kl'"):
        TrainConfig(loss="kl")
    (tmp_path / "c.json").write_text(json.dumps({"studnet": "tiny"}))
    with pytest.raises(NanoError, match=r"unknown field\(s\) \['studnet'\]"):
        TrainConfig.from_file(tmp_path / "c.json")


SHARDED = textwrap.dedent("""
    import json, sys, numpy as np
    from flax import nnx
    from distill.train import TrainConfig, Trainer
    from nano.checkpoint import save_checkpoint
    from nano.config import get_preset
    from nano.model import Transformer
    out, data, fsdp = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    teacher = save_checkpoint(out + "/teacher", Transformer(get_preset("tiny"), rngs=nnx.Rngs(5)), overwrite=True)
    rows = np.random.default_rng(0).integers(0, 512, (64, 32)).astype(np.int32)
    cfg = TrainConfig(student="tiny", teacher=str(teacher), tokens=8 * 32 * 3, seq_len=32, batch_size=8,
                      compute_dtype="float32", checkpoint_every=100, mesh_data=data, mesh_fsdp=fsdp)
    trainer = Trainer(cfg, out + "/run", teacher_ckpt=teacher, rows=rows, eval_windows=None)
    spec = trainer.state["params"]["layers"][0]["mlp"]["up"]["kernel"].value.sharding.spec
    print(json.dumps({"losses": [trainer.run()["loss"]] + [json.loads(l)["loss"] for l in open(out + "/run/metrics.jsonl")], "spec": str(spec)}))
""")


def test_sharded_equals_single_device(tmp_path):
    """8 forced host devices: a (2 data x 4 fsdp) mesh gives the single-device losses to 1e-5."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    results = {}
    for data, fsdp in ((1, 1), (2, 4)):
        out = tmp_path / f"m{data}x{fsdp}"
        proc = subprocess.run([sys.executable, "-c", SHARDED, str(out), str(data), str(fsdp)], env=env,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
        results[(data, fsdp)] = json.loads(proc.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(results[(2, 4)]["losses"], results[(1, 1)]["losses"], atol=1e-5, rtol=0)
    assert "fsdp" in results[(2, 4)]["spec"] and "fsdp" not in results[(1, 1)]["spec"]


def test_onpolicy_steps_train_on_student_samples(tmp_path, tiny_teacher):
    cfg = _cfg(tiny_teacher, onpolicy=0.5, tokens=8 * 32 * 4, grad_accum=1)
    trainer = Trainer(cfg, tmp_path / "gkd", teacher_ckpt=tiny_teacher, rows=ROWS, eval_windows=None)
    trainer.run()
    records = [json.loads(ln) for ln in (tmp_path / "gkd" / "metrics.jsonl").read_text().splitlines()]
    flags = [r["onpolicy"] for r in records]
    assert True in flags and False in flags  # the seeded coin picks both kinds
    assert all(np.isfinite(r["loss"]) for r in records)
    assert (tmp_path / "gkd" / "tensorboard").is_dir()
    with pytest.raises(NanoError, match="onpolicy needs an online teacher"):
        TrainConfig(teacher=None, onpolicy=0.5)


PLAN = textwrap.dedent("""
    import json
    from distill.plan import plan_step
    from distill.train import TrainConfig
    from nano.config import get_preset
    cfg = TrainConfig(student="tiny", teacher="x", tokens=10**6, seq_len=64, batch_size=8, mesh_data=2, mesh_fsdp=4)
    print(json.dumps(plan_step(cfg, teacher_config=get_preset("tiny")).as_dict()))
""")


def test_step_plan_compiles_sharded_without_allocating():
    """The machinery behind benchmarks/nano1_plan.py, on the tiny preset and 8 host devices."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", PLAN], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    plan = json.loads(proc.stdout.strip().splitlines()[-1])
    assert plan["devices"] == 8 and plan["mesh"] == {"data": 2, "fsdp": 4}
    assert plan["student_params"] == 255_744
    # parameters + AdamW moments in float32, split 4 ways by fsdp (small tensors replicated)
    assert plan["per_device_argument_bytes"] < plan["state_bytes"] / 2
    assert plan["per_device_peak_bytes"] > 0


def test_freeze_embed_keeps_the_embedding_and_trains_the_rest(tmp_path, tiny_teacher):
    init = save_checkpoint(tmp_path / "init", Transformer(get_preset("tiny"), rngs=nnx.Rngs(9)))
    start = nnx.state(Transformer(get_preset("tiny"), rngs=nnx.Rngs(9)), nnx.Param)
    cfg = _cfg(tiny_teacher, init=str(init), freeze_embed=True, tokens=8 * 32 * 2, lr=1e-2, warmup_steps=0)
    trainer = Trainer(cfg, tmp_path / "run", teacher_ckpt=tiny_teacher, rows=ROWS, eval_windows=None)
    moments = sum(x.size for x in jax.tree.leaves(trainer.state["opt_state"]) if x.ndim)  # not the step counts
    trained = sum(x.size for p, x in jax.tree_util.tree_flatten_with_path(trainer.state["params"])[0]
                  if p[0].key != "embed")
    assert moments == 2 * trained  # Adam's mu and nu for everything but the embedding
    trainer.run()
    after = trainer.state["params"]
    np.testing.assert_array_equal(np.asarray(after["embed"].value), np.asarray(start["embed"].value))
    assert not np.array_equal(np.asarray(after["layers"][0]["mlp"]["down"]["kernel"].value),
                              np.asarray(start["layers"][0]["mlp"]["down"]["kernel"].value))
