"""`nano quantize` on a tiny model: the checkpoint format round trip, calibration moments,
AWQ folding, the recipe, loading by eval/generate, and bad input. The real-teacher figures are
in benchmarks/quantize.py."""

import hashlib
import json
import shutil

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from typer.testing import CliRunner

from nano.checkpoint import flat_params, load_checkpoint
from nano.cli import app
from nano.data.shards import TokenSplit, eval_windows
from nano.errors import NanoError
from nano.eval import evaluate
from nano.generate import generate
from nano.qcheckpoint import decode, encode, read_quantized, tensor_bytes
from nano.qtensor import dequantize
from quantize.calibrate import Activations
from quantize.int4 import quantize
from quantize.pipeline import _fold, quantize_model
from quantize.recipe import Recipe, TensorSpec
from quantize.run import calibration_tokens, quantize_checkpoint
from tests.conftest import make_tiny_tokenizer

runner = CliRunner()


def digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


# ---- the file format ----

@pytest.mark.parametrize("bits,group,symmetric", [(4, 32, True), (4, None, True), (4, 16, False),
                                                  (8, None, True), (8, 32, False)])
def test_encode_decode_is_bit_exact(bits, group, symmetric):
    rng = np.random.default_rng(bits)
    w = rng.standard_normal((64, 24)).astype(np.float32)
    w[:32, 3] = 0.0  # an all-zero group
    qt = quantize(w, bits=bits, group=group, symmetric=symmetric, scale_dtype=ml_dtypes.bfloat16)
    tensors = encode("layers.0.attn.q.kernel", qt)
    q = tensors["layers.0.attn.q.kernel.q"]
    assert q.shape == ((24, 32) if bits == 4 else (24, 64))  # (out, in/2): one row per output channel
    assert tensors["layers.0.attn.q.kernel.scale"].dtype == ml_dtypes.bfloat16
    entry = {"bits": bits, "group": group, "symmetric": symmetric, "matrix_shape": [64, 24]}
    back = decode("layers.0.attn.q.kernel", tensors, entry)
    np.testing.assert_array_equal(back.q, qt.q)
    np.testing.assert_array_equal(back.scale, qt.scale)
    if not symmetric:
        np.testing.assert_array_equal(back.zero, qt.zero)
    np.testing.assert_array_equal(dequantize(back), dequantize(qt))
    assert np.all(dequantize(back)[:32, 3] == 0.0)


def test_nibble_order_in_the_file():
    w = np.zeros((32, 2), np.float32)
    w[0, 0], w[1, 0], w[2, 0] = 7.0, -7.0, 1.0  # codes 7, -7, 1 for output channel 0
    tensors = encode("x.kernel", quantize(w, bits=4, group=32))
    row = tensors["x.kernel.q"][0]
    assert row[0] == 0x97 and row[1] == 0x01  # low nibble = input 0; -7 = 0x9 two's complement


def test_encode_refuses_scales_a_bf16_file_cannot_hold():
    qt = quantize(np.random.default_rng(0).standard_normal((32, 4)).astype(np.float32) * 1.2345, bits=4, group=32)
    with pytest.raises(NanoError, match="bfloat16"):
        encode("x.kernel", qt)


# ---- calibration and folding ----

def test_calibration_moments_match_numpy(tiny_ckpt, tiny_data, tiny_tokenizer):
    model = load_checkpoint(tiny_ckpt)
    tokens, info = calibration_tokens(tiny_data, tiny_tokenizer, rows=3, length=16)
    assert tokens.shape == (3, 16) and np.all(tokens[:, 0] == tiny_tokenizer.bos_id) and info["rows"] == 3
    acts = Activations(model, tokens, batch=2)
    stats = acts.block_stats(model.layers[0])
    x = model.layers[0].pre_attn_norm(model.embed_tokens(jnp.asarray(tokens)))
    x = np.asarray(x, np.float64).reshape(-1, 64)
    np.testing.assert_allclose(stats["qkv"].gram, x.T @ x, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(stats["qkv"].abs_mean, np.abs(x).mean(0), rtol=1e-5)
    assert stats["qkv"].n == 48 and set(stats) == {"qkv", "o", "gate_up", "down"}
    acts.advance(model.layers[0])
    h, _ = model.layers[0](model.embed_tokens(jnp.asarray(tokens)), jnp.arange(16), None, 0)
    np.testing.assert_allclose(acts.x, np.asarray(h), atol=1e-5)


@pytest.mark.parametrize("site", ["qkv", "o", "gate_up", "down"])
def test_awq_folding_keeps_the_function(tiny_ckpt, site):
    model = load_checkpoint(tiny_ckpt)
    tokens = jnp.asarray(np.random.default_rng(0).integers(4, 512, (1, 12)))
    before = np.asarray(model(tokens)[0])
    c = model.config
    width = {"qkv": c.d_model, "gate_up": c.d_model, "o": c.num_heads * c.head_dim, "down": c.ffn_dim}[site]
    s = np.random.default_rng(1).uniform(0.5, 2.0, width)
    if site == "o":  # query heads sharing a KV head share a scale (what the search produces)
        s = np.repeat(s.reshape(c.num_kv_heads, -1, c.head_dim)[:, :1], c.num_heads // c.num_kv_heads, 1).reshape(-1)
    _fold(model, "layers.2.", site, s)
    np.testing.assert_allclose(np.asarray(model(tokens)[0]), before, atol=2e-4)


# ---- the whole pipeline ----

@pytest.mark.parametrize("method", ["rtn", "mse", "gptq", "awq"])
def test_quantize_checkpoint_round_trip(tiny_ckpt, tiny_data, tmp_path, method):
    before = digest(tiny_ckpt)
    out = tmp_path / "q"
    recipe = Recipe(default=TensorSpec(method=method, bits=4, group=32))
    summary = quantize_checkpoint(tiny_ckpt, out, recipe=recipe, calib=tiny_data, calib_rows=4, calib_len=32)
    assert digest(tiny_ckpt) == before  # the input is only read
    floats, qtensors, manifest = read_quantized(out)
    assert len(qtensors) == 6 * 7 + 1 and set(floats) == {k for k in flat_params(load_checkpoint(tiny_ckpt))
                                                          if k.endswith(".scale")}
    assert qtensors["embed"].bits == 8 and qtensors["embed"].group is None
    assert qtensors["layers.0.mlp.down.kernel"].bits == 4 and qtensors["layers.0.mlp.down.kernel"].group == 32
    for qt in qtensors.values():  # every scale is exactly a bfloat16
        np.testing.assert_array_equal(qt.scale.astype(ml_dtypes.bfloat16).astype(np.float32), qt.scale)
    assert summary["totals"]["linear_bits_per_weight"] == 4.5  # 4 + 16/32
    assert manifest["recipe"]["method"] == method and manifest["source"]["checkpoint"] == str(tiny_ckpt)
    assert (manifest["calibration"] is None) == (method in ("rtn", "mse"))
    # what eval/generate load is exactly the dequantized codes
    loaded = flat_params(load_checkpoint(out))
    np.testing.assert_array_equal(loaded["layers.3.attn.k.kernel"], dequantize(qtensors["layers.3.attn.k.kernel"]))
    np.testing.assert_array_equal(loaded["embed"], dequantize(qtensors["embed"]).T)
    if method in ("gptq", "awq"):
        rows = summary["report"]
        assert all(r["output_rel_err"] is not None for n, r in rows.items() if n != "embed")


def test_gptq_beats_rtn_on_calibration_outputs(tiny_ckpt, tiny_data, tiny_tokenizer):
    tokens, _ = calibration_tokens(tiny_data, tiny_tokenizer, rows=8, length=32)
    errs = {}
    for method in ("rtn", "gptq"):
        model = load_checkpoint(tiny_ckpt)
        # rtn needs no activations; give it gptq's so its output error is measured the same way
        recipe = Recipe(default=TensorSpec(method=method, bits=4, group=32), overrides=(("embed", None),),
                        clip_steps=1)
        if method == "rtn":
            recipe = Recipe(default=TensorSpec(method="gptq", bits=4, group=32), damp=1e9, act_order=False,
                            overrides=(("embed", None),), clip_steps=1)  # huge damping: H ~ I, GPTQ == RTN
        errs[method] = quantize_model(model, recipe, tokens).report
    worse = [n for n in errs["rtn"] if errs["gptq"][n]["output_rel_err"] > errs["rtn"][n]["output_rel_err"]]
    assert not worse, worse


def test_recipe_overrides_and_float(tiny_ckpt, tmp_path):
    recipe = Recipe.from_dict({"method": "mse", "bits": 4, "group": 16,
                               "overrides": {"embed": "float", "layers.*.mlp.down.kernel": {"bits": 8, "group": None},
                                             "layers.5.*": "float"}})
    assert recipe.spec_for("embed") is None and recipe.spec_for("layers.5.attn.q.kernel") is None
    assert recipe.spec_for("layers.1.mlp.down.kernel") == TensorSpec(method="mse", bits=8, group=None)
    assert recipe.spec_for("layers.1.attn.q.kernel") == TensorSpec(method="mse", bits=4, group=16)
    quantize_checkpoint(tiny_ckpt, tmp_path / "q", recipe=recipe)
    floats, qtensors, _ = read_quantized(tmp_path / "q")
    assert "embed" in floats and "layers.5.attn.q.kernel" in floats and "layers.4.attn.q.kernel" in qtensors
    assert qtensors["layers.1.mlp.down.kernel"].bits == 8
    orig = flat_params(load_checkpoint(tiny_ckpt))
    np.testing.assert_array_equal(floats["embed"], orig["embed"])


@pytest.mark.parametrize("data,error", [
    ({"method": "gptx"}, "method 'gptx' is unknown"),
    ({"bits": 3}, "bits 3 is not supported"),
    ({"overrides": {"embed": {"bitz": 8}}}, "unknown field 'bitz'"),
    ({"groups": 32}, "unknown field 'groups'"),
])
def test_recipe_errors(data, error):
    with pytest.raises(NanoError, match=error):
        Recipe.from_dict(data)


# ---- the CLI ----

def test_cli_quantize_then_eval_and_generate(tiny_ckpt, tiny_data, tiny_tokenizer, tmp_path):
    out = tmp_path / "q"
    result = runner.invoke(app, ["quantize", str(tiny_ckpt), "--out", str(out), "--method", "gptq", "--group", "16",
                                 "--calib", str(tiny_data), "--calib-rows", "4", "--calib-len", "32",
                                 "--eval-windows", "0", "--embed", "int4"])
    assert result.exit_code == 0, result.output
    assert "layers.5.mlp.down.kernel" in result.output and "bits/weight" in result.output
    assert "wrote" in result.output
    manifest = json.loads((out / "quantization.json").read_text())
    assert manifest["tensors"]["embed"]["bits"] == 4 and manifest["recipe"]["group"] == 16
    assert manifest["recipe"]["method"] == "gptq" and manifest["calibration"] is not None
    quantized = load_checkpoint(out)  # the dequantized codes: what eval and generate must run

    report = tmp_path / "eval.json"
    result = runner.invoke(app, ["eval", str(out), "--data", str(tiny_data), "--window", "32", "--windows", "2",
                                 "--json", str(report)])
    assert result.exit_code == 0, result.output
    assert "perplexity" in result.output
    row = json.loads(report.read_text())
    held = TokenSplit.open(tiny_data, "heldout")
    want = evaluate(quantized, eval_windows(held.tokens, window=32, bos_id=tiny_tokenizer.bos_id, max_windows=2))
    assert row["checkpoint"] == str(out) and (row["windows"], row["scored_tokens"]) == (2, 2 * 31)
    assert row["perplexity"] == pytest.approx(want.perplexity, rel=1e-5)

    result = runner.invoke(app, ["generate", str(out), "--prompt", "the rat", "--max-tokens", "4"])
    assert result.exit_code == 0, result.output
    stops = tiny_tokenizer.stop_ids()
    ids = []
    for t in generate(quantized, tiny_tokenizer.encode("the rat", add_bos=True), max_new_tokens=4, stop_ids=stops):
        if t in stops:
            break
        ids.append(t)
    assert result.output == "the rat" + tiny_tokenizer.decode(ids) + "\n"  # the quantized model's greedy text


def test_cli_quantize_bad_input(tiny_ckpt, tiny_data, tmp_path):
    before = digest(tiny_ckpt)
    q = tmp_path / "q"
    ok = runner.invoke(app, ["quantize", str(tiny_ckpt), "--out", str(q), "--method", "rtn", "--eval-windows", "0"])
    assert ok.exit_code == 0, ok.output
    assert "wrote" in ok.output and "bits/weight" in ok.output
    _, qtensors, manifest = read_quantized(q)
    assert manifest["recipe"]["method"] == "rtn" and manifest["calibration"] is None  # rtn: no default data read
    assert len(qtensors) == 6 * 7 + 1
    cases = [
        (["quantize", str(q), "--out", str(tmp_path / "qq"), "--method", "rtn", "--eval-windows", "0"],
         "already quantized"),
        (["quantize", str(tiny_ckpt), "--out", str(tmp_path / "g"), "--method", "rtn", "--group", "48",
          "--eval-windows", "0"], "group 48 does not divide the input width 64"),
        (["quantize", str(tiny_ckpt), "--out", str(tmp_path / "b"), "--embed", "int2", "--eval-windows", "0"],
         "--embed 'int2'"),
        (["quantize", str(tiny_ckpt), "--out", str(tiny_ckpt), "--method", "rtn", "--eval-windows", "0"],
         "is the input checkpoint"),
        (["quantize", str(tiny_ckpt), "--out", str(tmp_path / "m"), "--calib", str(tmp_path / "nope"),
          "--eval-windows", "0"], "not found"),
    ]
    for args, message in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == 1 and message in result.output, (args, result.output)
        assert "Traceback" not in result.output
        assert args[3] == str(tiny_ckpt) or not (tmp_path / args[3]).exists(), args  # nothing written
    # calibration text tokenized by another vocabulary
    other = tmp_path / "other"
    shutil.copytree(tiny_ckpt, other)
    make_tiny_tokenizer(vocab_size=500).save(other / "tokenizer.model")
    cfg = json.loads((other / "config.json").read_text())
    result = runner.invoke(app, ["quantize", str(other), "--out", str(tmp_path / "t"), "--calib", str(tiny_data),
                                 "--eval-windows", "0"])
    assert result.exit_code == 1 and "tokenized with tokenizer" in result.output, result.output
    assert not (tmp_path / "t").exists()
    assert digest(tiny_ckpt) == before and cfg["vocab_size"] == 512


def test_calibration_from_a_text_file(tiny_ckpt, tmp_path, tiny_tokenizer):
    text = tmp_path / "calib.txt"
    text.write_text("the oat is at the inn. " * 40)
    tokens, info = calibration_tokens(text, tiny_tokenizer, rows=2, length=16)
    assert tokens.shape == (2, 16) and info["text"] == str(text)
    text.write_text("the oat is at the inn.")
    with pytest.raises(NanoError, match="fewer than one 512-token row"):
        calibration_tokens(text, tiny_tokenizer, rows=2, length=512)


# ---- the calibrated 4-bit embedding (GPTQ'd as the tied LM head) ----

EMBED_ONLY = (("layers.*", None), ("embed", {"method": "gptq", "bits": 4, "group": 32}))


def test_embed_gptq_with_identity_hessian_is_rtn(tiny_ckpt, tiny_data, tiny_tokenizer, monkeypatch):
    """The embedding is solved as embed.T (in = d_model, out = vocab) with the head's Hessian; with
    that Hessian exactly the identity (no damping, min-max scales) it is round-to-nearest bit for bit."""
    from quantize.stats import InputStats

    def identity(self, model):
        st = InputStats(model.config.d_model)
        st.add_moments(np.eye(st.width) * 5.0, np.ones(st.width), 10)  # H = 2 * gram / n = I
        return st

    monkeypatch.setattr(Activations, "head_stats", identity)
    tokens, _ = calibration_tokens(tiny_data, tiny_tokenizer, rows=2, length=32)
    model = load_checkpoint(tiny_ckpt)
    embed = np.asarray(model.embed[...], np.float32).copy()
    recipe = Recipe(default=TensorSpec(method="gptq", bits=4, group=32), overrides=EMBED_ONLY, damp=0.0,
                    clip_steps=1)
    got = quantize_model(model, recipe, tokens).qtensors["embed"]
    want = quantize(embed.T, bits=4, group=32, scale_dtype=ml_dtypes.bfloat16)
    np.testing.assert_array_equal(got.q, want.q)
    np.testing.assert_array_equal(got.scale, want.scale)
    np.testing.assert_array_equal(np.asarray(model.embed[...]), dequantize(want).T)  # both roles read it


def test_embed_gptq_beats_mse_on_the_head_inputs(tiny_ckpt, tiny_data, tiny_tokenizer):
    tokens, _ = calibration_tokens(tiny_data, tiny_tokenizer, rows=8, length=32)
    float_model = load_checkpoint(tiny_ckpt)
    acts = Activations(float_model, tokens)
    for block in float_model.layers:
        acts.advance(block)
    head = acts.head_stats(float_model)  # the layers stay float here, so these are the head's inputs
    embed = np.asarray(float_model.embed[...], np.float32).T
    errs, reported = {}, {}
    for method in ("mse", "gptq"):
        recipe = Recipe(default=TensorSpec(method="gptq", bits=4, group=32),
                        overrides=(("layers.*", None), ("embed", {"method": method, "bits": 4, "group": 32})))
        result = quantize_model(load_checkpoint(tiny_ckpt), recipe, tokens)
        errs[method] = head.output_error(embed, dequantize(result.qtensors["embed"]))
        reported[method] = result.report["embed"]["output_rel_err"]
    assert reported["mse"] is None  # uncalibrated: quantized first, before any activation exists
    assert reported["gptq"] == pytest.approx(errs["gptq"], rel=1e-6)  # solved on exactly these moments
    assert errs["gptq"] < 0.8 * errs["mse"], errs


def test_cli_embed_int4_is_calibrated_and_bits_are_exact(tiny_ckpt, tiny_data, tmp_path):
    out = tmp_path / "q"
    result = runner.invoke(app, ["quantize", str(tiny_ckpt), "--out", str(out), "--method", "rtn",
                                 "--calib", str(tiny_data), "--calib-rows", "4", "--calib-len", "32",
                                 "--eval-windows", "0", "--embed", "int4"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "quantization.json").read_text())
    assert manifest["tensors"]["embed"] == {**manifest["tensors"]["embed"], "bits": 4, "group": 32, "method": "gptq"}
    assert manifest["calibration"] is not None  # rtn layers, but the embedding reads the head's inputs
    floats, qtensors, _ = read_quantized(out)
    n_float = sum(a.size for a in floats.values())
    n_quant = sum(qt.q.size for qt in qtensors.values())
    # every matrix int4 g32 with bf16 scales: 4 + 16/32 bits; norm gains float32
    assert manifest["totals"]["bits_per_weight"] == (4.5 * n_quant + 32 * n_float) / (n_quant + n_float)
    vocab, d = qtensors["embed"].q.shape[1], qtensors["embed"].q.shape[0]
    assert 8 * tensor_bytes("embed", qtensors["embed"]) == 4.5 * vocab * d
    mse = runner.invoke(app, ["quantize", str(tiny_ckpt), "--out", str(tmp_path / "m"), "--method", "rtn",
                              "--eval-windows", "0", "--embed", "int4-mse"])
    assert mse.exit_code == 0, mse.output
    manifest = json.loads((tmp_path / "m" / "quantization.json").read_text())
    assert manifest["tensors"]["embed"]["method"] == "mse" and manifest["calibration"] is None


# ---- the embedding first ----

def test_embed_first_is_solved_on_the_float_models_head_inputs(tiny_ckpt, tiny_data, tiny_tokenizer):
    """`embed_first`: the embedding's codes are GPTQ on the float model's final hidden states, and the
    layers are then calibrated on its quantized lookups (= quantizing them in a model whose embedding
    already holds those values)."""
    from quantize.tied import solve_tied, token_counts

    tokens, _ = calibration_tokens(tiny_data, tiny_tokenizer, rows=4, length=32)
    embed_int4 = ("embed", {"method": "gptq", "bits": 4, "group": 32})
    recipe = Recipe(default=TensorSpec(method="gptq", bits=4, group=32), overrides=(embed_int4,), embed_first=True)
    got = quantize_model(load_checkpoint(tiny_ckpt), recipe, tokens)

    float_model = load_checkpoint(tiny_ckpt)
    h, _ = float_model.hidden(jnp.asarray(tokens))
    from quantize.stats import InputStats
    head = InputStats(h.shape[-1])
    head.add_batch(np.asarray(h))
    w = np.asarray(float_model.embed[...], np.float32).T
    want = solve_tied(head, w, token_counts(tokens, w.shape[1]), lookup=0.0, damp=recipe.damp, bits=4, group=32,
                      clip_steps=recipe.clip_steps, scale_dtype=ml_dtypes.bfloat16)
    np.testing.assert_array_equal(got.qtensors["embed"].q, want.q)
    np.testing.assert_array_equal(got.qtensors["embed"].scale, want.scale)

    float_model.embed[...] = jnp.asarray(dequantize(want).T)
    layers = quantize_model(float_model, Recipe(default=TensorSpec(method="gptq", bits=4, group=32),
                                                overrides=(("embed", None),)), tokens).qtensors
    for name, qt in layers.items():
        np.testing.assert_array_equal(got.qtensors[name].q, qt.q, err_msg=name)


# ---- the split embedding: the most frequent tokens' rows at int8 ----

def test_embed_mixed_fits_the_bits_of_int4_group_32():
    from quantize.recipe import embed_mixed

    spec = embed_mixed(262144, 640)
    assert spec == {"method": "gptq", "bits": 4, "group": 64, "hot_rows": 17133}  # Gemma 3 270M
    k, V, d = spec["hot_rows"], 262144, 640
    row = 8 * d + 16 + 32 - (4 + 16 / 64) * d  # an int8 row (bf16 scale, int32 id) over an int4 g64 one
    bits = k * (8 * d + 16 + 32) + (V - k) * (4 + 16 / 64) * d
    assert bits <= 4.5 * V * d < bits + row  # one more int8 row would not fit


def test_hot_rows_are_the_most_frequent_tokens_each_part_its_own_solve(tiny_ckpt, tiny_data, tiny_tokenizer, tmp_path):
    """The hot rows are the k most frequent tokens of the whole calibration text; hot and cold parts
    are the GPTQ solves of their own columns on the same head moments; the checkpoint stores and
    loads them exactly, and counts their bits."""
    from nano.qtensor import SplitQTensor
    from quantize.run import calibration_text
    from quantize.stats import InputStats
    from quantize.tied import hot_ids, solve_tied

    tokens, _, counts = calibration_text(tiny_data, tiny_tokenizer, rows=4, length=32)
    embed = {"method": "gptq", "bits": 4, "group": 32, "hot_rows": 100}
    recipe = Recipe(default=TensorSpec(method="gptq", bits=4, group=32), overrides=(("embed", embed),),
                    embed_first=True)
    got = quantize_model(load_checkpoint(tiny_ckpt), recipe, tokens, frequencies=counts)
    split = got.qtensors["embed"]
    assert isinstance(split, SplitQTensor)
    ids = hot_ids(counts, 100)
    np.testing.assert_array_equal(split.ids, ids)
    assert counts[ids].min() >= np.delete(counts, ids).max()
    float_model = load_checkpoint(tiny_ckpt)
    h, _ = float_model.hidden(jnp.asarray(tokens))
    head = InputStats(h.shape[-1])
    head.add_batch(np.asarray(h))
    w = np.asarray(float_model.embed[...], np.float32).T
    kw = dict(lookup=0.0, damp=recipe.damp, clip_steps=recipe.clip_steps, scale_dtype=ml_dtypes.bfloat16)
    for part, cols, bits, group in ((split.hot, ids, 8, None), (split.cold, split.cold_ids, 4, 32)):
        want = solve_tied(head, w[:, cols], counts[cols], bits=bits, group=group, **kw)
        np.testing.assert_array_equal(part.q, want.q)
        np.testing.assert_array_equal(part.scale, want.scale)

    out = quantize_checkpoint(tiny_ckpt, tmp_path / "q", recipe=recipe, calib=tiny_data, calib_rows=4, calib_len=32)
    floats, qtensors, manifest = read_quantized(tmp_path / "q")
    back = qtensors["embed"]
    np.testing.assert_array_equal(back.ids, split.ids)
    for a, b in ((back.hot, split.hot), (back.cold, split.cold)):
        np.testing.assert_array_equal(a.q, b.q)
        np.testing.assert_array_equal(a.scale, b.scale)
    assert "embed" not in floats and not any(k.startswith("embed.") for k in floats)
    np.testing.assert_array_equal(np.asarray(load_checkpoint(tmp_path / "q").embed[...]), dequantize(split).T)
    entry = manifest["tensors"]["embed"]
    assert entry["hot"] == {"rows": 100, "bits": 8, "group": None, "symmetric": True}
    V, d = w.shape[1], w.shape[0]
    assert 8 * tensor_bytes("embed", split) == 100 * (8 * d + 16) + (V - 100) * 4.5 * d + 32 * 100  # + int32 ids
    assert out["report"]["embed"]["params"] == V * d


def test_hot_rows_are_refused_off_the_embedding_or_past_the_vocabulary(tiny_ckpt, tiny_data, tiny_tokenizer):
    tokens, _ = calibration_tokens(tiny_data, tiny_tokenizer, rows=2, length=32)
    for over, why in ((("layers.*", {"hot_rows": 4}), "hot_rows is for the tied embedding"),
                      (("embed", {"method": "rtn", "hot_rows": 512}), "must be below the vocabulary")):
        with pytest.raises(NanoError, match=why):
            quantize_model(load_checkpoint(tiny_ckpt), Recipe(default=TensorSpec(method="rtn"), overrides=(over,)), tokens)
    with pytest.raises(NanoError, match="hot_rows -1"):
        Recipe.from_dict({"overrides": {"embed": {"hot_rows": -1}}})


# ---- streaming: one block in memory at a time ----

def test_open_streamed_reads_the_checkpoint_block_by_block(tiny_ckpt, tmp_path):
    from nano.checkpoint import TensorFile, open_streamed

    full = flat_params(load_checkpoint(tiny_ckpt))
    model, blocks = open_streamed(tiny_ckpt)
    assert np.array_equal(np.asarray(model.embed[...]), full["embed"])
    kernel = model.layers[2].mlp.down.kernel
    assert isinstance(kernel.value, jax.ShapeDtypeStruct)
    blocks.load(model, 2)
    np.testing.assert_array_equal(np.asarray(model.layers[2].mlp.down.kernel[...]), full["layers.2.mlp.down.kernel"])
    blocks.unload(model, 2)
    assert isinstance(model.layers[2].mlp.down.kernel.value, jax.ShapeDtypeStruct)
    f = TensorFile(tiny_ckpt / "model.safetensors")
    assert set(f.names()) == set(full) and f.shape("embed") == full["embed"].shape


def test_streamed_quantization_equals_in_memory(tiny_ckpt, tiny_data, tiny_tokenizer):
    """quantize_checkpoint without held-out eval streams the blocks; the codes are the in-memory
    model's bit for bit (AWQ folds, GPTQ, and GPTQ with the embedding first)."""
    from nano.checkpoint import open_streamed

    tokens, _ = calibration_tokens(tiny_data, tiny_tokenizer, rows=4, length=32)
    embed_int4 = (("embed", {"method": "gptq", "bits": 4, "group": 32}),)
    for recipe in (Recipe(default=TensorSpec(method="gptq", bits=4, group=32)),
                   Recipe(default=TensorSpec(method="awq", bits=4, group=32)),
                   Recipe(default=TensorSpec(method="gptq", bits=4, group=32), overrides=embed_int4,
                          embed_first=True)):
        ref = quantize_model(load_checkpoint(tiny_ckpt), recipe, tokens)
        model, blocks = open_streamed(tiny_ckpt)
        got = quantize_model(model, recipe, tokens, blocks=blocks)
        assert set(got.qtensors) == set(ref.qtensors) and set(got.floats) == set(ref.floats)
        for name, qt in ref.qtensors.items():
            np.testing.assert_array_equal(got.qtensors[name].q, qt.q, err_msg=name)
            np.testing.assert_array_equal(got.qtensors[name].scale, qt.scale, err_msg=name)
        for name, a in ref.floats.items():
            np.testing.assert_array_equal(got.floats[name], a, err_msg=name)
