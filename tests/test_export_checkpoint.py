"""export_checkpoint on tiny checkpoints: a quantized one keeps its exact codes and runs as its
dequantized model, the .litertlm bundle holds the file, tokenizer and metadata, LiteRT-LM itself
generates nano.generate's greedy tokens, and bad input is refused before anything is written."""

from pathlib import Path

import litert_lm  # pinned (requirements.txt): a missing wheel fails here instead of skipping
import numpy as np
import pytest
from flax import nnx
from litert_lm_builder.runtime.proto import llm_metadata_pb2
from tensorflow.lite.python.convert_phase import ConverterError

from benchmarks.harness.litert import extract_tflite, read_layout
from export import checkpoint as export_ckpt
from export.checkpoint import export_checkpoint
from export.litertlm import read_section, read_sections
from export.runtime import LiteRTModel, litertlm_generate
from export.tflite import read_qtensors
from nano.checkpoint import TOKENIZER, flat_params, load_checkpoint, model_from_flat, save_checkpoint
from nano.config import get_preset
from nano.errors import NanoError
from nano.generate import generate
from nano.model import Transformer
from nano.qcheckpoint import read_quantized
from quantize.recipe import Recipe, TensorSpec
from quantize.run import quantize_checkpoint
from tests.conftest import PROMPT, max_diff, reference, run_litert

TINY = get_preset("tiny")
RTN4 = TensorSpec(method="rtn", bits=4, group=32)  # rtn: no calibration data; embed stays int8/channel


@pytest.fixture(scope="module")
def quantized_export(tmp_path_factory, tiny_ckpt):
    root = tmp_path_factory.mktemp("xq")
    ckpt = root / "q"
    quantize_checkpoint(tiny_ckpt, ckpt, recipe=Recipe(default=RTN4))
    return ckpt, export_checkpoint(ckpt, root / "q.tflite", prefill_lens=(4, 16),
                                   litertlm=True)


def test_quantized_codes_are_stored_bit_exactly(quantized_export):
    ckpt, summary = quantized_export
    _, want, _ = read_quantized(ckpt)
    got = read_qtensors(summary["tflite"])
    assert sorted(got) == sorted(want) and summary["quantized_tensors"] == len(want)
    assert {(qt.bits, qt.group) for qt in want.values()} == {(4, 32), (8, None)}  # kernels, embedding
    for name, qt in want.items():
        assert (got[name].bits, got[name].group) == (qt.bits, qt.group), name
        np.testing.assert_array_equal(got[name].q, qt.q, err_msg=name)
        np.testing.assert_array_equal(got[name].scale, qt.scale, err_msg=name)
    assert (summary["seq_len"], summary["prefill_lens"], summary["max_tokens"]) == (64, [4, 16], 64)


def test_quantized_export_runs_as_the_dequantized_model(quantized_export, tiny_ckpt):
    ckpt, summary = quantized_export
    ref = reference(load_checkpoint(ckpt), PROMPT)  # load_checkpoint dequantizes
    # Bound and reason as in tests/test_export.py (LiteRT's int8 activations); it must stay well
    # below what quantizing did at all, or misplaced codes could pass.
    tol = 0.3
    assert max_diff(ref, reference(load_checkpoint(tiny_ckpt), PROMPT)) > 3 * tol
    assert max_diff(run_litert(summary["tflite"], PROMPT, ref), ref) <= tol


def test_litertlm_bundle_holds_model_tokenizer_and_metadata(quantized_export, tiny_tokenizer):
    ckpt, summary = quantized_export
    path = summary["litertlm"]
    assert path.endswith("q.litertlm") and summary["litertlm_bytes"] > summary["tflite_bytes"]
    sections = {s.kind: s for s in read_sections(path)}
    assert sorted(sections) == ["LlmMetadataProto", "SP_Tokenizer", "TFLiteModel"]
    assert sections["TFLiteModel"].model_type == "tf_lite_prefill_decode"
    with open(summary["tflite"], "rb") as f:
        assert read_section(path, sections["TFLiteModel"]) == f.read()
    assert read_section(path, sections["SP_Tokenizer"]) == (ckpt / TOKENIZER).read_bytes()
    meta = llm_metadata_pb2.LlmMetadata.FromString(read_section(path, sections["LlmMetadataProto"]))
    assert list(meta.start_token.token_ids.ids) == [tiny_tokenizer.bos_id]
    assert [list(t.token_ids.ids) for t in meta.stop_tokens] == [[i] for i in tiny_tokenizer.stop_ids()]
    assert meta.max_num_tokens == 64


@pytest.mark.parametrize("ring", [False, True], ids=["full", "ring"])
def test_litert_lm_generates_nano_greedy_tokens(tmp_path, tiny_tokenizer, ring):
    tok = tiny_tokenizer
    # LiteRT-LM returns text only. Zero the embedding rows of every token that is not one
    # character (merges, bytes, specials, unused): their logits are then exactly 0, below the
    # best single-character token, so each generated character is one token id. A small embedding
    # keeps the tied random model from repeating its input token (seed 2: varied output that
    # depends on the BOS).
    params = {k: np.array(v) for k, v in flat_params(Transformer(TINY, rngs=nnx.Rngs(2))).items()}
    single = [i for i in range(TINY.vocab_size) if len(p := tok.id_to_piece(i)) == 1 and p != "\u2581"
              and tok.decode([i]) == p and not p.isspace()]
    params["embed"][np.setdiff1d(np.arange(TINY.vocab_size), single)] = 0.0
    params["embed"] *= 0.1
    model = model_from_flat(TINY, params, source="test")
    ckpt = save_checkpoint(tmp_path / "tiny", model, tokenizer=tok)
    summary = export_checkpoint(ckpt, tmp_path / "m.tflite", prefill_lens=(2, 8), litertlm=True, ring=ring)
    # the .tflite keeps rings of `window` positions on local layers when asked; the bundle always
    # full caches (LiteRT-LM reads the context length from layer 0's cache)
    bundled = extract_tflite(summary["litertlm"], tmp_path / "bundled.tflite")
    assert read_layout(bundled).seq_len == read_layout(summary["tflite"]).seq_len == 64
    lengths = {kind: LiteRTModel(path)._caches["kv_cache_k_0"][2] for kind, path in
               (("tflite", summary["tflite"]), ("bundle", bundled))}
    assert lengths == {"tflite": TINY.window if ring else 64, "bundle": 64} and summary["ring_kv"] is ring

    engine = litert_lm.Engine(summary["litertlm"], backend=litert_lm.Backend.CPU(thread_count=2),
                              activation_data_type=litert_lm.ActivationDataType.FLOAT32)
    assert engine.bos_token_id == tok.bos_id and engine.eos_token_ids == [[i] for i in tok.stop_ids()]
    for text in ("the rat ate", "the held rat number 3 ate the oat 7 at noon."):  # prefill_8 and prefill_2 calls
        ids = tok.encode(text)
        assert engine.tokenize(text) == ids  # the bundled tokenizer segments like Nano's
        want = list(generate(model, [tok.bos_id] + ids, max_new_tokens=16, stop_ids=tok.stop_ids()))
        session = engine.create_session(apply_prompt_template=False, max_output_tokens=16,
                                        sampler_config=litert_lm.SamplerConfig(top_k=1))
        session.run_prefill([text])  # LiteRT-LM prepends the start token (BOS)
        got = [tok.piece_to_id(c) for c in session.run_decode().texts[0]]
        session.close()
        assert len(set(want)) > 4 and got == want
        # what `nano generate BUNDLE.litertlm` streams (default activations): the same text
        assert "".join(litertlm_generate(summary["litertlm"], text, max_tokens=16)) == tok.decode(want)
    engine.close()


def test_bad_bundles_are_refused_in_one_line(quantized_export, tmp_path):
    _, summary = quantized_export
    bundle = Path(summary["litertlm"])
    truncated, junk = tmp_path / "cut.litertlm", tmp_path / "junk.litertlm"
    truncated.write_bytes(bundle.read_bytes()[:40_000])
    junk.write_text("not a bundle")
    for path, why in ((tmp_path / "missing.litertlm", "no such .litertlm"), (truncated, "truncated"),
                      (junk, "not a readable .litertlm")):
        with pytest.raises(NanoError, match=why):
            litertlm_generate(path, "the rat", max_tokens=4)
    with pytest.raises(NanoError, match="max_tokens 0"):
        litertlm_generate(bundle, "the rat", max_tokens=0)
    with pytest.raises(NanoError, match="holds 64 .*larger --seq-len"):  # refused before LiteRT-LM prefills
        litertlm_generate(bundle, "the rat ate " * 40, max_tokens=4)


def test_bad_input_is_refused_before_writing(tmp_path, tiny_ckpt, monkeypatch):
    asym, int8_grouped = tmp_path / "asym", tmp_path / "int8g"
    quantize_checkpoint(tiny_ckpt, asym, recipe=Recipe(default=TensorSpec(method="rtn", bits=4, group=32,
                                                                          symmetric=False)))
    quantize_checkpoint(tiny_ckpt, int8_grouped, recipe=Recipe(default=TensorSpec(method="rtn", bits=8, group=32)))
    no_tokenizer = save_checkpoint(tmp_path / "notok", Transformer(TINY, rngs=nnx.Rngs(0)))
    out = tmp_path / "x.tflite"
    cases = {
        "symmetric": (asym, {}),
        "8 bits per channel": (int8_grouped, {}),
        "tokenizer.model": (no_tokenizer, {"litertlm": True}),
        "seq_len 65": (tiny_ckpt, {"seq_len": 65}),
        "prefill length 65": (tiny_ckpt, {"prefill_lens": (65,)}),
        "max_tokens 65": (tiny_ckpt, {"max_tokens": 65}),
        "must end in .tflite": (tiny_ckpt, {"out": tmp_path / "x.bin"}),
    }
    for why, (ckpt, kw) in cases.items():
        with pytest.raises(NanoError, match=why):
            export_checkpoint(ckpt, kw.pop("out", out), **kw)

    def reject(*a, **k):
        raise ConverterError("'tfl.some_op' op is neither a custom op nor a flex op")

    monkeypatch.setattr(export_ckpt, "total_ram", lambda: 2**20)  # tiny needs ~1 GiB (the conversion)
    with pytest.raises(NanoError, match="GiB of RAM"):
        export_checkpoint(tiny_ckpt, out)
    monkeypatch.undo()
    monkeypatch.setattr(export_ckpt, "export_params", reject)
    with pytest.raises(NanoError, match="cannot export model 'tiny'.*tfl.some_op"):
        export_checkpoint(tiny_ckpt, out)
    assert not list(tmp_path.glob("x.*")) and not list(tmp_path.glob(".x.*"))


# ---- the split embedding (`--embed mixed`): frequent tokens' rows at int8, the rest at int4 ----

@pytest.fixture(scope="module")
def split_export(tmp_path_factory, tiny_ckpt, tiny_data):
    root = tmp_path_factory.mktemp("xs")
    ckpt = root / "s"
    embed = {"method": "rtn", "bits": 4, "group": 32, "hot_rows": 64}
    quantize_checkpoint(tiny_ckpt, ckpt, recipe=Recipe(default=RTN4, overrides=(("embed", embed),)),
                        calib=tiny_data, calib_rows=4, calib_len=32)
    return ckpt, export_checkpoint(ckpt, root / "s.tflite", prefill_lens=(4, 16), litertlm=True)


def test_split_embedding_codes_are_stored_bit_exactly_and_run(split_export, tiny_ckpt, tiny_tokenizer):
    from nano.qtensor import SplitQTensor

    ckpt, summary = split_export
    _, want, _ = read_quantized(ckpt)
    split = want.pop("embed")
    assert isinstance(split, SplitQTensor) and len(split.ids) == 64
    got = read_qtensors(summary["tflite"])
    assert sorted(got) == sorted([*want, "embed.hot", "embed.cold"])
    for name, qt in [*want.items(), ("embed.hot", split.hot), ("embed.cold", split.cold)]:
        assert (got[name].bits, got[name].group) == (qt.bits, qt.group), name
        np.testing.assert_array_equal(got[name].q, qt.q, err_msg=name)
        np.testing.assert_array_equal(got[name].scale, qt.scale, err_msg=name)
    assert (split.hot.bits, split.hot.group, split.cold.bits, split.cold.group) == (8, None, 4, 32)
    # a prompt reading rows of both tables; the logits must come back in vocabulary order
    hot, cold = split.ids.tolist(), split.cold_ids.tolist()
    prompt = [tiny_tokenizer.bos_id, hot[0], cold[3], hot[9], cold[40], cold[41]]
    ref = reference(load_checkpoint(ckpt), prompt)
    tol = 0.3  # as test_quantized_export_runs_as_the_dequantized_model
    assert max_diff(ref, reference(load_checkpoint(tiny_ckpt), prompt)) > 3 * tol
    assert max_diff(run_litert(summary["tflite"], prompt, ref), ref) <= tol
    text = "".join(litertlm_generate(summary["litertlm"], "the rat", max_tokens=8))  # LiteRT-LM runs it too
    assert isinstance(text, str)


def test_split_embedding_has_no_gguf_form(split_export, tmp_path):
    from export.gguf import export_gguf

    ckpt, _ = split_export
    with pytest.raises(NanoError, match="no GGUF form.*--embed int4"):
        export_gguf(ckpt, tmp_path / "s.gguf")
    assert not list(tmp_path.iterdir())
