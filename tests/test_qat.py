"""Quantization-aware training's grid (quantize/qat.py): exact forward, STE/LSQ gradients, and a
round trip from a quantized checkpoint back to the same codes."""

import json
import shutil

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from flax import nnx
from typer.testing import CliRunner

from distill.train import TrainConfig, start_run

from nano.checkpoint import flat_params, load_checkpoint
from nano.cli import app
from nano.errors import NanoError
from nano.qcheckpoint import read_quantized, save_quantized
from nano.qtensor import QTensor, dequantize
from quantize import qat
from quantize.recipe import Recipe, TensorSpec
from quantize.run import quantize_checkpoint
from tests.conftest import make_tiny_tokenizer


def bf16(x):
    return np.asarray(x, np.float32).astype(ml_dtypes.bfloat16).astype(np.float32)


def test_on_grid_weights_come_back_exactly():
    rng = np.random.default_rng(0)
    q = rng.integers(-8, 8, size=(64, 5)).astype(np.int8)
    scale = bf16(rng.uniform(0.01, 0.1, size=(2, 5)))  # two groups of 32 rows
    w = dequantize(QTensor(q=q, scale=scale, zero=None, bits=4, group=32))
    np.testing.assert_array_equal(np.asarray(qat.fake_quant(jnp.asarray(w), jnp.asarray(scale), bits=4)), w)
    back = qat.codes(w, scale, bits=4, group=32)
    np.testing.assert_array_equal(back.q, q)
    np.testing.assert_array_equal(back.scale, scale)


def test_stored_codes_are_the_forward_bit_for_bit():
    rng = np.random.default_rng(1)
    w = rng.normal(size=(64, 7)).astype(np.float32)
    scale = rng.uniform(0.05, 0.4, size=(4, 7)).astype(np.float32)  # not bf16: rounded in both
    scale[1, 2] = 0.0  # an all-zero group's scale
    forward = np.asarray(qat.fake_quant(jnp.asarray(w), jnp.asarray(scale), bits=4))
    stored = qat.codes(w, scale, bits=4, group=16)
    np.testing.assert_array_equal(dequantize(stored), forward)
    assert stored.q.min() >= -8 and stored.q.max() <= 7
    assert not forward[16:32, 2].any() and not stored.q[16:32, 2].any()


def test_straight_through_and_lsq_gradients_on_a_tiny_group():
    w = jnp.asarray([[0.26], [1.0]], jnp.float32)  # codes 2.6 -> 3 inside, 10 -> 7 clipped
    scale = jnp.asarray([[0.1]], jnp.float32)
    s = float(bf16(0.1))
    loss = lambda w, s_: jnp.sum(qat.fake_quant(w, s_, bits=4))
    gw, gs = jax.grad(loss, argnums=(0, 1))(w, scale)
    np.testing.assert_array_equal(np.asarray(gw), [[1.0], [0.0]])  # STE inside, nothing when clipped
    np.testing.assert_allclose(np.asarray(gs), [[(3 - 0.26 / s) + 7]], rtol=1e-6)  # LSQ: round(x)-x, + qmax


def test_start_apply_finish_round_trips_a_quantized_checkpoint(tiny_ckpt, tmp_path):
    out = tmp_path / "q"
    recipe = Recipe(default=TensorSpec(method="rtn", bits=4, group=32),
                    overrides=(("embed", {"method": "rtn", "bits": 8, "group": None}),))
    quantize_checkpoint(tiny_ckpt, out, recipe=recipe)
    _, want, _ = read_quantized(out)
    scales, grid = qat.start(out)
    assert grid["embed"] == {"bits": 8, "group": None} and grid["layers.0.mlp.down.kernel"] == {"bits": 4, "group": 32}
    model = load_checkpoint(out)  # the dequantized codes: the latent weights QAT starts from
    graphdef, params = nnx.split(model, nnx.Param)
    faked = nnx.merge(graphdef, qat.apply(params, jax.tree.map(jnp.asarray, scales), grid))
    np.testing.assert_array_equal(flat_params(faked)["layers.1.attn.o.kernel"],
                                  flat_params(model)["layers.1.attn.o.kernel"])  # step 0 is the checkpoint
    floats, qtensors = qat.finish(flat_params(model), scales, grid)
    assert set(qtensors) == set(want) and set(floats) == {n for n in flat_params(model) if n not in grid}
    for name, qt in want.items():
        np.testing.assert_array_equal(qtensors[name].q, qt.q)
        np.testing.assert_array_equal(qtensors[name].scale, qt.scale)


def test_a_split_embedding_trains_on_both_grids_and_round_trips(tiny_ckpt, tiny_data, tmp_path):
    out = tmp_path / "q"
    recipe = Recipe(default=TensorSpec(method="rtn", bits=4, group=32),
                    overrides=(("embed", {"method": "rtn", "bits": 4, "group": 32, "hot_rows": 50}),))
    quantize_checkpoint(tiny_ckpt, out, recipe=recipe, calib=tiny_data, calib_rows=2, calib_len=32)
    _, want, _ = read_quantized(out)
    scales, grid = qat.start(out)
    assert set(scales["embed"]) == {"hot", "cold"} and grid["embed"]["hot"]["bits"] == 8
    model = load_checkpoint(out)
    graphdef, params = nnx.split(model, nnx.Param)
    faked = nnx.merge(graphdef, qat.apply(params, jax.tree.map(jnp.asarray, scales), grid))
    np.testing.assert_array_equal(flat_params(faked)["embed"], flat_params(model)["embed"])  # step 0: both grids
    _, qtensors = qat.finish(flat_params(model), scales, grid)
    got, split = qtensors["embed"], want["embed"]
    np.testing.assert_array_equal(got.ids, split.ids)
    for a, b in ((got.hot, split.hot), (got.cold, split.cold)):
        np.testing.assert_array_equal(a.q, b.q)
        np.testing.assert_array_equal(a.scale, b.scale)
    # the scales get gradients through the columns they own
    def loss(sc):
        f = nnx.merge(graphdef, qat.apply(params, sc, grid))
        return jnp.sum(f.embed[...] ** 2)
    g = jax.grad(loss)(jax.tree.map(jnp.asarray, scales))
    assert float(jnp.abs(g["embed"]["hot"]).sum()) > 0 and float(jnp.abs(g["embed"]["cold"]).sum()) > 0


def test_asymmetric_checkpoints_are_refused(tiny_ckpt, tmp_path):
    q = np.zeros((64, 64), np.int8)
    qt = QTensor(q=q, scale=np.ones((2, 64), np.float32), zero=np.zeros((2, 64), np.float32), bits=4, group=32)
    model = load_checkpoint(tiny_ckpt)
    out = save_quantized(tmp_path / "asym", config=model.config, float_params={},
                         qtensors={"layers.0.attn.o.kernel": qt}, tensor_info={}, manifest={})
    with pytest.raises(NanoError, match="layers.0.attn.o.kernel.*asymmetric.*symmetric"):
        qat.start(out)


def test_nest_and_flatten_are_inverse():
    flat = {"embed": 1, "layers.0.attn.q.kernel": 2, "layers.10.mlp.up.kernel": 3}
    assert qat.nest(flat)["layers"]["0"]["attn"]["q"]["kernel"] == 2
    assert qat.flatten(qat.nest(flat)) == flat


def test_view_lr_scales_only_the_views_updates():
    """`view_lr` multiplies the optimizer's updates of a WeightView's arrays (QAT's scales) and
    leaves the weights' updates as they are."""
    from distill.train import optimizer

    params = {"weights": {"w": jnp.ones((2, 2))}, "view": {"s": jnp.ones(2)}}
    grads = {"weights": {"w": jnp.full((2, 2), 0.5)}, "view": {"s": jnp.full(2, -0.5)}}

    def updates(view_lr):  # of the second step: the first has lr 0 (warmup)
        tx = optimizer(TrainConfig(lr=1e-2, warmup_steps=1, weight_decay=0.0, view_lr=view_lr))
        _, state = tx.update(grads, tx.init(params), params)
        return tx.update(grads, state, params)[0]

    one, quarter = updates(1.0), updates(0.25)
    np.testing.assert_array_equal(quarter["weights"]["w"], one["weights"]["w"])
    np.testing.assert_allclose(quarter["view"]["s"], 0.25 * one["view"]["s"], rtol=1e-6)
    assert float(one["view"]["s"][0]) > 0 > float(one["weights"]["w"][0, 0])  # steps against the gradients
    with pytest.raises(NanoError, match="view_lr"):
        TrainConfig(view_lr=-1.0)


# ---- `nano distill --qat`: training through the grid, then an ordinary quantized checkpoint ----

QAT_RUN = {"seq_len": 32, "batch_size": 4, "tokens": 4 * 32 * 4, "lr": 1e-3, "warmup_steps": 1,
           "checkpoint_every": 2, "eval_every": 2, "eval_windows": 2, "eval_window": 64}


@pytest.fixture(scope="module")
def qat_setup(tmp_path_factory, tiny_ckpt, tiny_data):
    root = tmp_path_factory.mktemp("qat")
    quantize_checkpoint(tiny_ckpt, root / "q", recipe=Recipe(default=TensorSpec(method="rtn", bits=4, group=32)))
    config = root / "run.json"
    config.write_text(json.dumps(QAT_RUN))
    return root, root / "q", config


def _qat_run(out, init, teacher, data, *, resume=False, **kw):
    from nano.cli import _qat

    cfg = TrainConfig(**{**QAT_RUN, **kw}, teacher=str(teacher), data=str(data), init=str(init), qat=True)
    view, write = _qat(cfg)
    return start_run(cfg, out, resume=resume, view=view), write


def test_qat_writes_the_codes_its_last_forward_used(qat_setup, tiny_ckpt, tiny_data, tmp_path):
    root, init, _ = qat_setup
    run, write = _qat_run(tmp_path / "run", init, tiny_ckpt, tiny_data)
    run.train(write_student=write)
    trained = flat_params(run.trainer.student_for_eval())
    student = tmp_path / "run" / "student"
    _, qtensors, manifest = read_quantized(student)
    loaded = flat_params(load_checkpoint(student))
    for name in loaded:  # what `nano eval`/`generate` load is exactly the trained quantized forward
        np.testing.assert_array_equal(loaded[name], trained[name], err_msg=name)
    _, start_codes, _ = read_quantized(init)
    moved = [n for n, qt in qtensors.items() if not np.array_equal(qt.q, start_codes[n].q)]
    assert moved, "training changed no code"
    assert manifest["qat"]["init"] == str(init) and manifest["recipe"]["method"] == "rtn"
    assert {e["method"] for e in manifest["tensors"].values()} == {"qat"}
    curve = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(curve) == 4 and all("heldout_ppl" in r for r in curve[1::2])

    from export.checkpoint import export_checkpoint
    from export.tflite import read_qtensors

    summary = export_checkpoint(student, tmp_path / "s.tflite", prefill_lens=(4,))
    exported = read_qtensors(summary["tflite"])
    for name, qt in qtensors.items():  # into the .tflite bit for bit
        np.testing.assert_array_equal(exported[name].q, qt.q, err_msg=name)
        np.testing.assert_array_equal(exported[name].scale, qt.scale, err_msg=name)


def test_qat_with_a_frozen_embedding_keeps_its_codes_and_scales(qat_setup, tiny_ckpt, tiny_data, tmp_path):
    """--freeze-embed with --qat: the embedding's latent table and its scales stay as they start, so
    its codes are the checkpoint's; every other tensor still trains."""
    root, init, _ = qat_setup
    run, write = _qat_run(tmp_path / "run", init, tiny_ckpt, tiny_data, freeze_embed=True)
    run.train(write_student=write)
    _, start_codes, _ = read_quantized(init)
    _, trained, _ = read_quantized(tmp_path / "run" / "student")
    np.testing.assert_array_equal(trained["embed"].q, start_codes["embed"].q)
    np.testing.assert_array_equal(trained["embed"].scale, start_codes["embed"].scale)
    assert any(not np.array_equal(qt.q, start_codes[n].q) for n, qt in trained.items() if n != "embed")


def test_a_killed_qat_run_resumes_exactly(qat_setup, tiny_ckpt, tiny_data, tmp_path):
    root, init, _ = qat_setup
    full, write = _qat_run(tmp_path / "full", init, tiny_ckpt, tiny_data)
    full.train(write_student=write)

    class Killed(Exception):
        pass

    def kill_after_checkpoint(step, steps, record):
        if step == 2:
            raise Killed

    cut, _ = _qat_run(tmp_path / "cut", init, tiny_ckpt, tiny_data)
    with pytest.raises(Killed):
        cut.train(kill_after_checkpoint)
    resumed, write = _qat_run(tmp_path / "cut", init, tiny_ckpt, tiny_data, resume=True)
    assert resumed.start == 2
    resumed.train(write_student=write)
    curve = lambda out: [(r["step"], r["loss"]) for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())]
    assert curve(tmp_path / "cut") == curve(tmp_path / "full")
    for (_, a), (_, b) in zip(sorted(read_quantized(tmp_path / "cut" / "student")[1].items()),
                              sorted(read_quantized(tmp_path / "full" / "student")[1].items())):
        np.testing.assert_array_equal(a.q, b.q)
        np.testing.assert_array_equal(a.scale, b.scale)


def test_qat_bad_input_is_one_line(qat_setup, tiny_ckpt, tiny_data, tmp_path):
    root, init, config = qat_setup
    runner = CliRunner()
    base = ["distill", "--teacher", str(tiny_ckpt), "--data", str(tiny_data), "--config", str(config),
            "--out", str(tmp_path / "o"), "--qat"]
    int8_grouped, other_tok = root / "int8g", tmp_path / "other-tokenizer"
    if not int8_grouped.exists():
        quantize_checkpoint(tiny_ckpt, int8_grouped, recipe=Recipe(default=TensorSpec(method="rtn", bits=8, group=32)))
    shutil.copytree(init, other_tok)
    make_tiny_tokenizer(vocab_size=500).save(other_tok / "tokenizer.model")  # the grid of `init`, another tokenizer
    meta = json.loads((other_tok / "meta.json").read_text())
    (other_tok / "meta.json").write_text(json.dumps({**meta, "tokenizer_sha256": "another"}))
    cases = [([], "qat needs init"),
             (["--init", str(tiny_ckpt)], "not a quantized checkpoint (no quantization.json)"),
             (["--init", str(int8_grouped)], "`nano export` cannot write its grid"),
             (["--init", str(other_tok)], "differs from the teacher's")]
    for extra, message in cases:
        result = runner.invoke(app, [*base, *extra])
        assert result.exit_code == 1 and message in " ".join(result.output.split()), (extra, result.output)
        assert not (tmp_path / "o").exists()
