"""export/: a tiny random model exported to .tflite runs in LiteRT's Interpreter like the JAX
model (prefill over several prefill_<T> signatures + 8 decode steps with the KV cache fed back),
with builtin ops only and an EMBEDDING_LOOKUP; int4/int8 weights are stored bit-exactly and run as
the dequantized model; the prefill calls are LiteRT-LM's choice."""

import dataclasses

import ml_dtypes
import numpy as np
import pytest
import tensorflow as tf
from ai_edge_litert import schema_py_generated as schema
from ai_edge_litert.tools import flatbuffer_utils
from flax import nnx

from export import flatbuffer
from export.runtime import LiteRTModel, plan_prefill
from export.tflite import default_lengths, export_tflite, parse_prefill_lens, read_qtensors
from nano.checkpoint import flat_params, model_from_flat
from nano.config import get_preset
from nano.errors import NanoError
from nano.model import Transformer
from nano.qtensor import dequantize
from quantize.int4 import quantize
from tests.conftest import PROMPT, max_diff, reference, run_litert

TINY = get_preset("tiny")  # Gemma 3 style: QK-norm, GQA 4/2, window 8, 5 local + 1 global
# Gemma 2 style; small caps so both tanh soft-caps are far from linear on a random model.
TINY_G2 = dataclasses.replace(TINY, name="tiny_g2", qk_norm=False, attn_pattern=2,
                              attn_softcap=2.0, final_softcap=3.0)


def quantized(model, group, *, embed_bits=4):
    """QTensors for every kernel and the embedding; blockwise scales rounded to bf16 (LiteRT stores them so)."""
    qts = {}
    for name, w in flat_params(model).items():
        if name == "embed" or name.endswith(".kernel"):
            bits = embed_bits if name == "embed" else 4
            qt = quantize(w.T if name == "embed" else w, bits=bits, group=None if bits == 8 else group)
            if qt.group is not None:
                qt = dataclasses.replace(qt, scale=qt.scale.astype(ml_dtypes.bfloat16).astype(np.float32))
            q = qt.q.copy()
            q[0, 0] = -(2 ** (bits - 1))  # legal, never made by round-to-nearest (GPTQ/MSE may)
            qts[name] = dataclasses.replace(qt, q=q)
    return qts


def dequantized_model(model, qts):
    params = flat_params(model)
    for name, qt in qts.items():
        params[name] = dequantize(qt).T if name == "embed" else dequantize(qt)
    return model_from_flat(model.config, params, source="test")


@pytest.fixture(scope="module", params=[(TINY, False), (TINY_G2, False), (TINY, True), (TINY_G2, True)],
                ids=["gemma3", "gemma2", "gemma3-ring", "gemma2-ring"])
def float_export(request, tmp_path_factory):
    config, ring = request.param
    model = Transformer(config, rngs=nnx.Rngs(0))
    path = export_tflite(model, tmp_path_factory.mktemp("ring" if ring else "full") / "model.tflite",
                         prefill_lens=(16, 4), ring=ring)
    return model, path


def test_float_logits_match_jax(float_export):
    model, path = float_export
    ref = reference(model, PROMPT)  # prefill_4 twice, the second padded
    assert max_diff(run_litert(path, PROMPT, ref), ref) <= 1e-4


def test_prompt_over_several_signatures_and_the_window(float_export):
    model, path = float_export
    prompt = [int(t) for t in np.random.default_rng(1).integers(0, model.config.vocab_size, 37)]
    ref = reference(model, prompt, steps=3)  # prefill_16 twice, prefill_4 twice (1 real token); window 8
    assert max_diff(run_litert(path, prompt, ref), ref) <= 1e-4


def test_long_decode_wraps_the_ring(float_export):
    """37 prompt tokens (a padded last chunk) and 24 decode steps: 7 turns of an 8-slot ring."""
    model, path = float_export
    prompt = [int(t) for t in np.random.default_rng(2).integers(0, model.config.vocab_size, 37)]
    ref = reference(model, prompt, steps=24)
    assert max_diff(run_litert(path, prompt, ref), ref) <= 1e-4


def test_second_prompt_after_decode_up_to_the_cache_end(float_export):
    """A prompt at position 40: prefill_16 and prefill_4 (3 real tokens), then, with 5 positions
    left, 4 tokens through prefill_4 and the last one through decode; logits as JAX's."""
    model, path = float_export
    rng = np.random.default_rng(2)
    first, second = (rng.integers(0, model.config.vocab_size, n).tolist() for n in (37, 24))
    lm = LiteRTModel(path)
    lm.prefill(first)
    for t in (5, 6, 7):
        lm.decode(t)
    assert lm.pos == 40
    got = lm.prefill(second[:19]), lm.prefill(second[19:])
    assert lm.pos == lm.seq_len == 64
    want = reference(model, first + [5, 6, 7] + second, steps=0)[0]
    want_mid = reference(model, first + [5, 6, 7] + second[:19], steps=0)[0]
    assert max_diff(got, (want_mid, want)) <= 1e-4


def test_plan_prefill_is_litert_lm_cpu_choice():
    """Longest signature first, full chunks only, the remainder padded in the shortest signature
    (LiteRT-LM's CPU GetOptimizedPrefillWorkGroups); signatures longer than the room are skipped."""
    lens = (8, 64, 128, 512)
    assert plan_prefill(lens, 512, 1024) == [(512, 512)]
    assert plan_prefill(lens, 128, 1024) == [(128, 128)]
    assert plan_prefill(lens, 20, 1024) == [(8, 8), (8, 8), (8, 4)]
    assert plan_prefill(lens, 600, 1024) == [(512, 512), (64, 64), (8, 8), (8, 8), (8, 8)]
    assert plan_prefill(lens, 1, 1024) == [(8, 1)]
    assert plan_prefill((32, 128, 512), 768, 2048) == [(512, 512), (128, 128), (128, 128)]  # LiteRT-LM's tests
    assert plan_prefill((128, 1024), 512, 2048) == [(128, 128)] * 4
    assert plan_prefill(lens, 100, 70) == [(64, 64)]  # 6 positions left: 6 tokens go to decode
    assert plan_prefill(lens, 30, 30) == [(8, 8)] * 3
    assert plan_prefill(lens, 62, 64) == [(8, 8)] * 7 + [(8, 6)]  # prefill_64 covers 62 but pads 2
    assert plan_prefill((16,), 5, 5) == []


def test_graph_ops_signatures_and_one_embedding(float_export):
    model, path = float_export
    c = model.config
    tfl = flatbuffer.load(path.read_bytes())
    ops = flatbuffer.op_names(tfl)
    assert "EMBEDDING_LOOKUP" in ops and "FULLY_CONNECTED" in ops
    assert not ops & {"GATHER_ND", "GATHER", "CUSTOM", "DEQUANTIZE"}
    embed_bytes = c.vocab_size * c.d_model * 4
    sizes = [len(b.data) for b in tfl.buffers if b.data is not None]
    assert sizes.count(embed_bytes) == 1  # lookup and tied head share it; no soft-cap copy
    # prefill and decode read one set of weights: the file holds one float copy of the model
    n_params = sum(v.size for v in flat_params(model).values())
    assert sum(sizes) < 1.05 * 4 * n_params
    fc = [i for i, code in enumerate(tfl.operatorCodes)
          if flatbuffer_utils.get_builtin_code_from_operator_code(code) == schema.BuiltinOperator.FULLY_CONNECTED]
    weights = [sorted(sg.tensors[op.inputs[1]].buffer for op in sg.operators if op.opcodeIndex in fc)
               for sg in tfl.subgraphs]
    assert len(set(weights[0])) == 7 * c.num_layers + 1  # 7 kernels a layer, head
    assert len(tfl.subgraphs) == 3 and all(w == weights[0] for w in weights)  # one copy for all signatures
    m = LiteRTModel(path)
    ring = path.parent.name.startswith("ring")
    # dim 2: LiteRT-LM's context length; with a ring, local layers hold `window` positions
    lengths = [c.max_seq_len if c.is_global(i) or not ring else c.window for i in range(c.num_layers)]
    assert m.prefill_sigs == {4: "prefill_4", 16: "prefill_16"}
    assert sorted(m.interpreter.get_signature_list()) == ["decode", "prefill_16", "prefill_4"]
    for name, T in (("prefill_4", 4), ("prefill_16", 16), ("decode", 1)):
        runner = m.interpreter.get_signature_runner(name)
        ins, outs = runner.get_input_details(), runner.get_output_details()
        caches = [f"kv_cache_{kv}_{i}" for i in range(c.num_layers) for kv in "kv"]
        assert sorted(ins) == sorted(["tokens", "input_pos", *caches])  # weights are constants, not inputs
        assert list(ins["tokens"]["shape"]) == [1, T] and list(ins["input_pos"]["shape"]) == [T]
        assert list(outs["logits"]["shape"]) == [1, 1, c.vocab_size]
        for i in range(c.num_layers):
            for kv in "kv":
                cache = [1, c.num_kv_heads, lengths[i], c.head_dim]
                assert list(ins[f"kv_cache_{kv}_{i}"]["shape"]) == cache
                assert list(outs[f"kv_cache_{kv}_{i}"]["shape"]) == cache
    assert m.seq_len == c.max_seq_len


@pytest.mark.parametrize("group, embed_bits", [(32, 4), (None, 8)], ids=["int4-g32", "int4-channel+int8-embed"])
def test_quantized_export(tmp_path, group, embed_bits):
    model = Transformer(TINY, rngs=nnx.Rngs(0))
    qts = quantized(model, group, embed_bits=embed_bits)
    path = export_tflite(model, tmp_path / "q.tflite", prefill_lens=(16,), qtensors=qts)

    # The file holds exactly the given codes and scales, as INT4/INT8 tensors without DEQUANTIZE.
    back = read_qtensors(path)
    assert sorted(back) == sorted(qts)
    for name, qt in qts.items():
        b = back[name]
        assert (b.bits, b.group) == (qt.bits, qt.group)
        np.testing.assert_array_equal(b.q, qt.q)
        np.testing.assert_array_equal(b.scale, qt.scale)
    tfl = flatbuffer.load(path.read_bytes())
    assert "DEQUANTIZE" not in flatbuffer.op_names(tfl)
    stored = sum(len(b.data) for b in tfl.buffers if b.data is not None)
    assert stored < 0.3 * 4 * sum(v.size for v in flat_params(model).values())  # no float copies left

    # It computes the dequantized model up to LiteRT's on-the-fly int8 quantization of
    # activations (measured ~0.1 on logits of magnitude ~5). The bound must stay well below the
    # effect of quantizing the weights at all, or a misplaced code or scale could pass.
    ref = reference(dequantized_model(model, qts), PROMPT)
    got = run_litert(path, PROMPT, ref)
    tol = 0.3
    assert max_diff(ref, reference(model, PROMPT)) > 3 * tol
    assert max_diff(got, ref) <= tol
    for g, r in zip(got, ref):  # greedy tokens agree wherever the reference is not a near tie
        top2 = np.sort(r)[-2:]
        if top2[1] - top2[0] > 2 * tol:
            assert np.argmax(g) == np.argmax(r)


BAD_ARGUMENTS = {  # case: (qtensors or None, keyword arguments, what the refusal says)
    "not a kernel": ("layers.0.attn.q", {}, r"'layers\.0\.attn\.q' is not a kernel or the embedding"),
    "shape": ("layers.0.attn.k.kernel", {}, r"layers\.0\.attn\.k\.kernel: QTensor codes have shape \(64, 64\), "
                                            r"expected \(64, 32\)"),
    "asymmetric": ("asymmetric", {}, r"layers\.0\.attn\.q\.kernel: asymmetric QTensor"),
    "bfloat16": ("unrounded scales", {}, r"layers\.0\.attn\.q\.kernel: \d+ group scale\(s\) are not exactly "
                                         r"representable in bfloat16"),
    "seq_len": (None, {"seq_len": 4096}, r"seq_len 4096 must be in \[1, 64\]"),
    "prefill length": (None, {"prefill_lens": (8, 65)}, r"prefill length 65 must be in \[1, seq_len=64\]; "
                                                          r"pass smaller --prefill-lens"),
    "prefill length 0": (None, {"prefill_lens": (0,)}, r"prefill length 0 must be in \[1, seq_len=64\]"),
    "no prefill length": (None, {"prefill_lens": ()}, r"prefill_lens is empty; give one or more lengths"),
    "prefill length twice": (None, {"prefill_lens": (8, 16, 8)}, r"prefill length 8 is given twice"),
}


@pytest.mark.parametrize("case", list(BAD_ARGUMENTS))
def test_bad_arguments(tmp_path, case):
    model = Transformer(TINY, rngs=nnx.Rngs(0))
    w = flat_params(model)["layers.0.attn.q.kernel"]
    qt = quantize(w, bits=4, group=32)
    qtensors = {
        "layers.0.attn.q": {"layers.0.attn.q": qt},
        "layers.0.attn.k.kernel": {"layers.0.attn.k.kernel": qt},
        "asymmetric": {"layers.0.attn.q.kernel": quantize(w, bits=4, group=32, symmetric=False)},
        "unrounded scales": {"layers.0.attn.q.kernel": dataclasses.replace(qt, scale=qt.scale * np.float32(1.001))},
        None: None,
    }
    which, kw, message = BAD_ARGUMENTS[case]
    with pytest.raises(NanoError, match=message):
        export_tflite(model, tmp_path / "x.tflite", qtensors=qtensors[which], **kw)
    assert not list(tmp_path.iterdir())


def test_prefill_lens_parsing_and_defaults():
    assert parse_prefill_lens("8, 64,128,") == (8, 64, 128)
    for text in ("8,x", "8.5", "64;128"):
        with pytest.raises(NanoError, match=r"--prefill-lens .*: give integers like 8,64,128"):
            parse_prefill_lens(text)
    assert default_lengths(TINY) == (64, (8, 64))  # 128 capped at seq_len 64
    assert default_lengths(TINY, 16, (16, 4)) == (16, (4, 16))
    assert default_lengths(dataclasses.replace(TINY, max_seq_len=4096)) == (1024, (8, 64, 128))


def test_a_tflite_without_prefill_and_decode_signatures_is_refused(tmp_path):
    add = tf.function(lambda x: {"y": x + 1.0}, input_signature=[tf.TensorSpec([2], tf.float32)])
    converter = tf.lite.TFLiteConverter.from_concrete_functions([add.get_concrete_function()], add)
    plain = tmp_path / "plain.tflite"
    plain.write_bytes(converter.convert())
    with pytest.raises(NanoError, match=r"plain\.tflite: no prefill_<T> / decode signatures \(has none\); "
                                        r"export it with export_tflite"):
        LiteRTModel(plain)
