"""`nano prune` (distill/prune) on the tiny model: exact identities, top-k selection, the
embedding-scale and norm compensation, block removal keeping layer types, every refusal, the
CLI's files, and `nano distill --init`."""

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from typer.testing import CliRunner

from distill.prune import PruneTargets, prune_checkpoint
from distill.prune.blocks import calibration_nll
from distill.prune.run import prune_model
from distill.prune.slicing import top_heads, top_k
from distill.prune.targets import check_targets
from nano.checkpoint import flat_params, load_checkpoint, load_config, model_from_flat, save_checkpoint
from nano.cli import app
from nano.config import ModelConfig, get_preset
from nano.errors import NanoError
from nano.model import Transformer

TINY = get_preset("tiny")
TOKENS = np.array([[2, 17, 300, 42, 7, 99, 5, 260, 261, 400, 3, 8]], np.int32)


def _calib(rows: int = 4, length: int = 16) -> np.ndarray:
    x = np.random.default_rng(0).integers(4, 512, (rows, length)).astype(np.int32)
    x[:, 0] = 2
    return x


def _logits(model) -> np.ndarray:
    return np.asarray(model(jnp.asarray(TOKENS))[0])


def _tree_hash(path: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(path.rglob("*")):
        h.update(str(f.relative_to(path)).encode())
        if f.is_file():
            h.update(f.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def model():
    return Transformer(TINY, rngs=nnx.Rngs(0))


def _prune(model, *, refit=False, norm_correction=True, **targets):
    return prune_model(model, check_targets(model.config, PruneTargets(**targets)), _calib(),
                       refit=refit, norm_correction=norm_correction)


def test_full_shape_is_the_identity_bit_for_bit(model):
    pruned, report = _prune(model, d_model=64, ffn_dim=128, num_heads=4, num_layers=6, refit=True)
    assert report == {}
    np.testing.assert_array_equal(_logits(pruned), _logits(model))


def test_pruning_dead_ffn_neurons_leaves_logits_unchanged_exactly(model):
    flat = flat_params(model)
    for i in range(TINY.num_layers):
        flat[f"layers.{i}.mlp.down.kernel"] = flat[f"layers.{i}.mlp.down.kernel"].copy()
        flat[f"layers.{i}.mlp.down.kernel"][64:] = 0.0  # neurons 64..127 write nothing: importance 0
    dead = model_from_flat(TINY, flat, source="test")
    pruned, report = _prune(dead, ffn_dim=64)
    assert report["ffn"]["kept"] == [list(range(64))] * TINY.num_layers
    assert all(max(imp[64:]) == 0.0 and min(imp[:64]) > 0 for imp in report["ffn"]["importance"])
    assert pruned.config.ffn_dim == 64
    np.testing.assert_array_equal(_logits(pruned), _logits(dead))


def test_kept_units_are_the_top_k_by_importance(model):
    _, report = _prune(model, ffn_dim=40, num_heads=2, d_model=48)
    for imp, kept in zip(report["ffn"]["importance"], report["ffn"]["kept"]):
        assert sorted(kept) == sorted(np.argsort(imp)[::-1][:40].tolist())
    for imp, kept in zip(report["heads"]["importance"], report["heads"]["kept"]):  # one per KV group of 2
        assert kept == [int(np.argmax(imp[:2])), 2 + int(np.argmax(imp[2:]))]
    imp = report["channels"]["importance"]
    assert sorted(report["channels"]["kept"]) == sorted(np.argsort(imp)[::-1][:48].tolist())
    assert top_k(np.array([1.0, 3.0, 3.0, 0.5]), 2).tolist() == [1, 2]
    assert top_heads(np.array([1.0, 2.0, 5.0, 4.0]), 2, 2).tolist() == [1, 2]


def _dead_channels(model, dead: slice):
    """The model with embedding channels `dead` carrying nothing: zero in the embedding and in
    every projection writing to or reading from the residual stream."""
    flat = {k: v.copy() for k, v in flat_params(model).items()}
    flat["embed"][:, dead] = 0.0
    for name in flat:
        if name.endswith(("q.kernel", "k.kernel", "v.kernel", "gate.kernel", "up.kernel")):
            flat[name][dead] = 0.0
        elif name.endswith(("o.kernel", "down.kernel")):
            flat[name][:, dead] = 0.0
    return model_from_flat(TINY, flat, source="test")


def test_dropping_dead_channels_keeps_the_function_with_embed_scale_and_norm_compensation(model):
    dead = _dead_channels(model, slice(48, 64))
    pruned, report = _prune(dead, d_model=48)
    assert report["channels"]["kept"] == list(range(48))
    assert report["channels"]["embed_scale"] == pytest.approx((64 / 48) ** 0.5)
    # sqrt(48) * (embedding * sqrt(64/48)) is the original input; RMS over 48 live channels
    # instead of 64 is undone by the norm gains (energy share 1, d/d' = 64/48).
    assert all(v == pytest.approx((64 / 48) ** 0.5) for v in report["channels"]["norm_correction"].values())
    np.testing.assert_allclose(_logits(pruned), _logits(dead), atol=2e-5, rtol=1e-5)
    uncorrected, _ = _prune(dead, d_model=48, norm_correction=False)
    assert np.abs(_logits(uncorrected) - _logits(dead)).max() > 1e-2


def test_refit_reduces_the_error_of_pruned_neurons_and_heads(model):
    ref = _logits(model)
    err = {refit: np.abs(_logits(_prune(model, ffn_dim=48, num_heads=2, refit=refit)[0]) - ref).mean()
           for refit in (False, True)}
    assert err[True] < err[False]


def test_blocks_keep_their_type_and_match_skipping_them(model):
    pruned, report = _prune(model, drop_layers=(1, 2))
    c = pruned.config
    assert c.num_layers == 4 and c.global_layers == (3,) and [c.is_global(i) for i in range(4)] == [False] * 3 + [True]
    assert report["blocks"] == {"removed": [1, 2], "kept": [0, 3, 4, 5], "global_layers": [3],
                                "greedy_calibration_nll": []}
    calib = _calib()
    assert calibration_nll(pruned, calib, [0, 1, 2, 3]) == calibration_nll(model, calib, [0, 3, 4, 5])
    greedy, rep = _prune(model, num_layers=2)
    assert 5 in rep["blocks"]["kept"] and len(rep["blocks"]["greedy_calibration_nll"]) == 4
    assert 5 not in rep["blocks"]["greedy_calibration_nll"][0]  # the only global layer is never a candidate
    first = rep["blocks"]["greedy_calibration_nll"][0]
    assert rep["blocks"]["removed"][0] == int(min(first, key=first.get))
    assert greedy.config.global_layers == (1,)


def test_global_layers_round_trip_and_refusals(tmp_path, model):
    pruned, _ = _prune(model, drop_layers=(0,))
    assert pruned.config.global_layers == (4,)
    save_checkpoint(tmp_path / "p", pruned)
    assert load_config(tmp_path / "p") == pruned.config
    np.testing.assert_array_equal(_logits(load_checkpoint(tmp_path / "p")), _logits(pruned))
    with pytest.raises(NanoError, match="global_layers"):
        dataclasses.replace(TINY, global_layers=(7,))
    from nano.gguf_io import write_gguf

    with pytest.raises(NanoError, match=r"global layers \[4\]"):
        write_gguf(tmp_path / "x.gguf", flat_params(pruned), pruned.config, None)
    assert not (tmp_path / "x.gguf").exists()
    assert ModelConfig.from_dict(json.loads(pruned.config.to_json())).global_layers == (4,)


@pytest.mark.parametrize("targets, message", [
    (dict(num_heads=3), "--heads 3 is not a multiple of the source's 2 KV heads"),
    (dict(ffn_dim=256), "--ffn 256 is larger than the source's 128"),
    (dict(d_model=65), "--d-model 65 is larger than the source's 64"),
    (dict(num_layers=0), "--layers 0: keep at least 1"),
    (dict(drop_layers=(5,)), "--drop-layers removes every global layer"),
    (dict(drop_layers=(6,)), "--drop-layers 6: the source has layers 0..5"),
    (dict(drop_layers=(1,), num_layers=3), "--layers 3 disagrees with --drop-layers"),
])
def test_bad_targets_are_refused_before_any_work(tiny_ckpt, tiny_data, tmp_path, targets, message):
    before = _tree_hash(tiny_ckpt)
    with pytest.raises(NanoError, match=message):
        prune_checkpoint(tiny_ckpt, tmp_path / "out", targets=PruneTargets(**targets), data=tiny_data)
    assert _tree_hash(tiny_ckpt) == before and not (tmp_path / "out").exists()


def test_quantized_input_and_preset_mismatch_are_refused(tiny_ckpt, tiny_data, tmp_path):
    q = tmp_path / "q"
    shutil.copytree(tiny_ckpt, q)
    (q / "quantization.json").write_text("{}")
    with pytest.raises(NanoError, match="is a quantized checkpoint"):
        prune_checkpoint(q, tmp_path / "out", targets=PruneTargets(ffn_dim=64), data=tiny_data)
    with pytest.raises(NanoError, match="--out .* is the input checkpoint"):
        prune_checkpoint(tiny_ckpt, tiny_ckpt, targets=PruneTargets(ffn_dim=64), data=tiny_data, overwrite=True)
    with pytest.raises(NanoError, match="--preset student_20m: its head_dim is 64 but the source's is 16"):
        PruneTargets.from_preset("student_20m", TINY)
    assert PruneTargets.from_preset("tiny", TINY) == PruneTargets(d_model=64, ffn_dim=128, num_heads=4, num_layers=6)
    assert not (tmp_path / "out").exists()


def test_cli_writes_a_loadable_checkpoint_and_prune_json(tiny_ckpt, tiny_data, tmp_path):
    before = _tree_hash(tiny_ckpt)
    out = tmp_path / "pruned"
    args = ["prune", str(tiny_ckpt), "--out", str(out), "--data", str(tiny_data), "--ffn", "64", "--heads", "2",
            "--d-model", "48", "--layers", "5", "--calib-rows", "2", "--calib-len", "32", "--eval-windows", "2"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "meta.json", "model.safetensors", "prune.json",
                                                     "tokenizer.model"]
    doc = json.loads((out / "prune.json").read_text())
    assert doc["targets"] == {"d_model": 48, "ffn_dim": 64, "num_heads": 2, "num_layers": 5}
    assert doc["heldout"]["ppl_before"] > 0 and doc["heldout"]["ppl_after"] > 0 and doc["heldout"]["windows"] == 2
    assert set(doc) >= {"blocks", "ffn", "heads", "channels", "params", "calibration"}
    c = load_config(out)
    assert (c.d_model, c.ffn_dim, c.num_heads, c.num_layers, c.name) == (48, 64, 2, 5, "tiny_pruned")
    assert np.isfinite(_logits(load_checkpoint(out))).all()
    assert _tree_hash(tiny_ckpt) == before
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 1 and "exists and is not empty" in again.output
    bad = CliRunner().invoke(app, [*args[:3], str(tmp_path / "other"), "--data", str(tiny_data), "--heads", "3"])
    assert bad.exit_code == 1 and "not a multiple of the source's 2 KV heads" in " ".join(bad.output.split())


def test_distill_init_starts_from_a_checkpoint(tiny_ckpt, tiny_data, tmp_path, tiny_tokenizer):
    pruned = tmp_path / "pruned"
    assert CliRunner().invoke(app, ["prune", str(tiny_ckpt), "--out", str(pruned), "--data", str(tiny_data),
                                    "--ffn", "64", "--calib-len", "32", "--eval-windows", "0"]).exit_code == 0
    from distill.train import TrainConfig, start_run

    cfg = TrainConfig(init=str(pruned), teacher=str(tiny_ckpt), data=str(tiny_data), seq_len=16, batch_size=2,
                      tokens=32, eval_windows=0, checkpoint_every=100)
    run = start_run(cfg, tmp_path / "run")
    start = run.trainer.student_for_eval()
    np.testing.assert_array_equal(_logits(start), _logits(load_checkpoint(pruned)))  # the step-0 student is the checkpoint
    run.train()
    student = load_checkpoint(tmp_path / "run" / "student")
    assert student.config == load_config(pruned)


def test_distill_init_refuses_another_vocabulary_or_tokenizer(tiny_ckpt, tiny_data, tmp_path):
    from tests.conftest import make_tiny_tokenizer

    other_vocab = save_checkpoint(tmp_path / "v", Transformer(dataclasses.replace(TINY, vocab_size=300), rngs=nnx.Rngs(1)),
                                  tokenizer=make_tiny_tokenizer(300))
    other_tok = save_checkpoint(tmp_path / "t", Transformer(TINY, rngs=nnx.Rngs(1)))  # no tokenizer
    runner = CliRunner()
    base = ["distill", "--teacher", str(tiny_ckpt), "--data", str(tiny_data), "--seq-len", "16", "--batch-size", "2",
            "--tokens", "32"]
    for init, message in [(other_vocab, "its vocabulary has 300 tokens but the teacher's tokenizer has 512"),
                          (other_tok, "its tokenizer (none) differs from the teacher's")]:
        out = tmp_path / f"run-{init.name}"
        result = runner.invoke(app, [*base, "--init", str(init), "--out", str(out)])
        assert result.exit_code == 1 and message in " ".join(result.output.split()), result.output
        assert not out.exists()
    both = runner.invoke(app, [*base, "--init", str(other_tok), "--student", "tiny", "--out", str(tmp_path / "b")])
    assert both.exit_code == 1 and "not both" in both.output


def test_irregular_layer_types_survive_the_hugging_face_round_trip(tmp_path, tiny_tokenizer):
    from nano.convert import convert, write_hf_safetensors

    config = dataclasses.replace(TINY, global_layers=(1,))  # not every k-th layer: explicit
    hf = write_hf_safetensors(flat_params(Transformer(config, rngs=nnx.Rngs(0))), config, tmp_path / "hf")
    assert json.loads((hf / "config.json").read_text())["layer_types"][:3] == ["sliding_attention", "full_attention", "sliding_attention"]
    tiny_tokenizer.save(hf / "tokenizer.model")
    back = load_config(convert(hf, tmp_path / "ckpt"))
    assert back.global_layers == (1,) and [back.is_global(i) for i in range(6)] == [False, True] + [False] * 4
