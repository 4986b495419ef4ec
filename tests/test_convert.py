"""GGUF / safetensors import and GGUF export, on tiny models (llama.cpp as the reference)."""

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
from flax import nnx
from typer.testing import CliRunner

from nano.checkpoint import flat_params, load_checkpoint, load_config, load_tokenizer, save_checkpoint
from nano.cli import app
from nano.config import get_preset
from nano.convert import convert, write_hf_safetensors
from nano.errors import NanoError
from nano.gguf_io import add_model_metadata, gguf_name_map, read_gguf, write_gguf
from nano.model import Transformer
from tests.conftest import kl_per_position

TINY = get_preset("tiny")
TINY_G2 = dataclasses.replace(TINY, name="tiny_g2", attn_pattern=2, qk_norm=False, attn_softcap=50.0,
                              final_softcap=30.0, rope_global_base=10_000.0)


def _tiny_model(config, seed=0):
    model = Transformer(config, rngs=nnx.Rngs(seed))
    # Non-trivial norm gains so a missed +1 or a swapped norm shows up.
    for path, leaf in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        if path[-1] == "scale":
            leaf.set_value(1.0 + 0.2 * np.random.default_rng(len(path)).standard_normal(leaf.shape).astype(np.float32))
    return model


@pytest.fixture(scope="module", params=[TINY, TINY_G2], ids=["gemma3", "gemma2"])
def tiny_gguf(request, tmp_path_factory, tiny_tokenizer):
    model = _tiny_model(request.param)
    path = tmp_path_factory.mktemp("gguf") / f"{request.param.name}.gguf"
    write_gguf(path, flat_params(model), model.config, tiny_tokenizer)
    return path, model


def _compare_fields(a, b):
    da, db = dataclasses.asdict(a), dataclasses.asdict(b)
    for k in ("name", "max_seq_len"):
        da.pop(k), db.pop(k)
    assert da == pytest.approx(db)


def test_gguf_round_trip_is_exact(tiny_gguf):
    path, model = tiny_gguf
    g = read_gguf(path)
    _compare_fields(g.config, model.config)
    want = flat_params(model)
    assert set(g.params) == set(want)
    for k, v in want.items():
        np.testing.assert_array_equal(g.params[k], v, err_msg=k)


def test_matches_llama_cpp(tiny_gguf, tiny_tokenizer):
    """Independent reference: llama.cpp runs the same weights (F32 GGUF); 40 tokens > window 8."""
    from benchmarks.harness.llamacpp import LlamaCpp

    path, model = tiny_gguf
    ref = LlamaCpp(path, window=64, threads=2)
    text = "the theory of the rest is that the cat sat on the mat; then it ran."
    ids = tiny_tokenizer.encode(text, add_bos=True)[:40]
    assert ref.tokenize(text)[:40] == ids
    ours = np.asarray(model(np.asarray([ids]))[0][0])
    theirs = ref.logits(ids)
    kl = kl_per_position(theirs, ours)
    assert kl.mean() < 1e-5, kl.mean()
    # Tolerance: ggml's GELU reads an fp16 lookup table, which moves logits by up to ~3e-3 here.
    np.testing.assert_allclose(ours, theirs, atol=5e-3)
    assert (ours.argmax(-1) == theirs.argmax(-1)).all()


def test_quantized_gguf_types(tmp_path, tiny_tokenizer):
    import gguf

    model = _tiny_model(TINY)
    path = write_gguf(tmp_path / "q.gguf", flat_params(model), TINY, tiny_tokenizer,
                      weight_type="q4_0", embed_type="q8_0")
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(path).tensors}
    assert types["token_embd.weight"] == "Q8_0" and types["blk.0.ffn_up.weight"] == "Q4_0"
    assert types["blk.0.attn_norm.weight"] == "F32"
    assert read_gguf(path).params["layers.0.mlp.up.kernel"].shape == (64, 128)


def test_convert_writes_a_loadable_checkpoint(tiny_gguf, tmp_path, tiny_tokenizer):
    path, model = tiny_gguf
    out = convert(path, tmp_path / "ckpt")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "meta.json", "model.safetensors", "tokenizer.model"]
    loaded = load_checkpoint(out)
    tokens = np.arange(1, 30)[None]
    np.testing.assert_array_equal(np.asarray(loaded(tokens)[0]), np.asarray(model(tokens)[0]))
    assert load_tokenizer(out).sha256 == tiny_tokenizer.sha256


def test_safetensors_import_round_trip(tmp_path, tiny_tokenizer):
    model = _tiny_model(TINY)
    hf = write_hf_safetensors(flat_params(model), TINY, tmp_path / "hf")
    tiny_tokenizer.save(hf / "tokenizer.model")
    out = convert(hf, tmp_path / "ckpt")
    got = flat_params(load_checkpoint(out))
    for k, v in flat_params(model).items():
        np.testing.assert_allclose(got[k], v, rtol=1e-6, atol=1e-6, err_msg=k)
    assert load_config(out).name == "tiny"


def test_save_checkpoint_refuses_to_clobber(tmp_path):
    model = _tiny_model(TINY)
    save_checkpoint(tmp_path / "c", model)
    with pytest.raises(NanoError, match="not empty; pass --overwrite"):
        save_checkpoint(tmp_path / "c", model)
    save_checkpoint(tmp_path / "c", model, overwrite=True)


# ---- bad input: one clear line naming the file and field, nothing left in --out ----------


def _write_raw_gguf(path: Path, arch: str, config, tensors: dict, tok_fields: dict):
    import gguf

    w = gguf.GGUFWriter(path, arch=arch)
    add_model_metadata(w, config)
    for k, v in tok_fields.items():
        if k == "tokenizer.ggml.tokens":
            w.add_token_list(v)
        elif k == "tokenizer.ggml.scores":
            w.add_token_scores(v)
        elif k == "tokenizer.ggml.token_type":
            w.add_token_types(v)
        elif k == "tokenizer.ggml.model":
            w.add_tokenizer_model(v)
    for name, arr in tensors.items():
        w.add_tensor(name, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _gguf_tensors(model):
    flat = flat_params(model)
    return {g: (np.ascontiguousarray(flat[n].T) if t else flat[n]) for g, (n, t) in gguf_name_map(model.config).items()}


def _bad_inputs(tmp: Path, tok) -> dict[str, tuple[Path, str]]:
    model = _tiny_model(TINY)
    tensors = _gguf_tensors(model)
    fields = tok.gguf_fields()
    good = write_gguf(tmp / "good.gguf", flat_params(model), TINY, tok)
    data = good.read_bytes()
    (tmp / "truncated.gguf").write_bytes(data[: len(data) // 2])
    (tmp / "text.gguf").write_text("this is not a model\n")
    missing = {k: v for k, v in tensors.items() if k != "blk.2.ffn_up.weight"}
    wrong = dict(tensors, **{"blk.1.attn_q.weight": tensors["blk.1.attn_q.weight"][:, :32]})
    short_vocab = dict(fields, **{k: fields[k][:500] for k in ("tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type")})
    return {
        "truncated": (tmp / "truncated.gguf", "not a valid GGUF file"),
        "not gguf": (tmp / "text.gguf", "not a valid GGUF file"),
        "unknown arch": (_write_raw_gguf(tmp / "llama.gguf", "llama", TINY, tensors, fields),
                         "unsupported architecture 'llama' (field general.architecture)"),
        "missing tensor": (_write_raw_gguf(tmp / "missing.gguf", "gemma3", TINY, missing, fields),
                           "missing tensor 'blk.2.ffn_up.weight'"),
        "shape mismatch": (_write_raw_gguf(tmp / "shape.gguf", "gemma3", TINY, wrong, fields),
                           "tensor 'blk.1.attn_q.weight' has shape (64, 32), metadata implies (64, 64)"),
        "vocab mismatch": (_write_raw_gguf(tmp / "vocab.gguf", "gemma3", TINY, tensors, short_vocab),
                           "tokenizer has 500 tokens (field tokenizer.ggml.tokens) but token_embd.weight has 512 rows"),
    }


def test_bad_inputs_give_one_clear_line(tmp_path, tiny_tokenizer):
    runner = CliRunner()
    for case, (path, message) in _bad_inputs(tmp_path, tiny_tokenizer).items():
        out = tmp_path / "out" / case.replace(" ", "_")
        result = runner.invoke(app, ["convert", str(path), "--out", str(out)])
        assert result.exit_code == 1, (case, result.output)
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), (case, result.output)
        assert str(path) in " ".join(result.output.split()) and message in " ".join(result.output.split()), (case, result.output)
        assert not out.exists()
    assert not [p for p in (tmp_path / "out").glob(".*")] if (tmp_path / "out").exists() else True


def test_missing_source_and_missing_config(tmp_path):
    with pytest.raises(NanoError, match=r"nope\.gguf: not found; pass a \.gguf file"):
        convert(tmp_path / "nope.gguf", tmp_path / "o")
    (tmp_path / "hf").mkdir()
    with pytest.raises(NanoError, match="no config.json"):
        convert(tmp_path / "hf", tmp_path / "o")
    shutil.rmtree(tmp_path / "hf")
