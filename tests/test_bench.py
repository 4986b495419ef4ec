"""benchmarks/bench*: the `nano bench` harness on a tiny random model: the JSON it returns, the
CompiledModel runner's in-place KV cache against the Interpreter, the bandwidth figure, the
adb error, and bad input. Timings are only checked to be positive: the machine is shared."""

import dataclasses
import json
import os
import stat

import numpy as np
import pytest
from flax import nnx

from benchmarks.harness import android as bench_android
from benchmarks.harness.core import memory_bandwidth
from benchmarks.harness.litert import CompiledLM, read_layout
from benchmarks.harness.run import _model_files, format_report, plot, run_bench
from export.litertlm import llm_metadata, write_litertlm
from export.runtime import LiteRTModel
from export.tflite import export_tflite
from nano.checkpoint import flat_params
from nano.config import get_preset
from nano.errors import NanoError
from nano.gguf_io import write_gguf
from nano.model import Transformer

TINY = get_preset("tiny")  # seq_len 64


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_tokenizer):
    root = tmp_path_factory.mktemp("bench")
    model = Transformer(TINY, rngs=nnx.Rngs(0))
    tflite = export_tflite(model, root / "tiny.tflite", prefill_lens=(4, 16))
    tiny_tokenizer.save(root / "tokenizer.model")
    meta = llm_metadata(start_id=tiny_tokenizer.bos_id, stop_ids=tiny_tokenizer.stop_ids(), max_tokens=64)
    bundle = write_litertlm(root / "tiny.litertlm", tflite=tflite, tokenizer=root / "tokenizer.model", metadata=meta)
    gguf = write_gguf(root / "tiny-q4_0.gguf", flat_params(model), TINY, tiny_tokenizer, weight_type="q4_0")
    return {"root": root, "tflite": tflite, "litertlm": bundle, "gguf": gguf}


def test_run_bench_reports_every_runtime(files):
    r = run_bench(files["tflite"], threads=2, prompt_lens=(8, 20), decode_tokens=6, repeats=1,
                  compare_llamacpp=files["gguf"], bandwidth_mib=16)
    json.dumps(r)  # JSON-ready as is
    assert r["model"]["seq_len"] == 64 and r["model"]["vocab"] == TINY.vocab_size
    assert list(r["model"]["prefill_lens"]) == [4, 16] and list(r["model"]["prefill_sigs"]) == ["prefill_4", "prefill_16"]
    assert r["model"]["litertlm"] == str(files["litertlm"])  # the bundle beside the .tflite is found
    assert r["machine"]["bandwidth_gb_s"] > 0 and r["settings"]["threads"] == 2
    prov = r["provenance"]  # traceable: which code, when, on what CPU, next to which llama.cpp build
    assert len(prov["git_sha"]) == 40 and prov["date"] and prov["machine"]["cpu"] and prov["command"]
    assert "llama-cpp-python" in prov["versions"] and "AVX" in prov["llama_cpp_system_info"]
    assert set(r["runtimes"]) == {"litert_compiled", "litert_lm", "llama_cpp"}
    for name, e in r["runtimes"].items():
        assert [row["prompt_len"] for row in e["rows"]] == [8, 20], name
        assert e["peak_rss_bytes"] >= e["baseline_rss_bytes"] > 0 and e["file_bytes"] > 0
        for row in e["rows"]:
            assert row["ttft_ms"] > 0 and row["prefill_tok_s"] > 0 and row["decode_tok_s"] > 0
            assert 0 < row["fraction_of_limit"] and row["bandwidth_limit_tok_s"] > 0
    for name in ("litert_compiled", "llama_cpp"):
        for row in r["runtimes"][name]["rows"]:
            assert row["decode_ms_p90"] >= row["decode_ms_median"] and row["decode_steps"] == 6
    compiled = r["runtimes"]["litert_compiled"]
    assert compiled["load_s_warm"] > 0 and compiled["load_s_cold"] > 0
    assert compiled["peak_rss_first_load_bytes"] > 0
    rss = compiled["rss_at_end_bytes"]  # the model file and the packed weights are mapped, named apart
    assert set(rss) == {"model_file", "weight_cache", "libraries", "anonymous"} and rss["model_file"] > 0
    assert compiled["model_rss_over_file"] == pytest.approx(
        (compiled["peak_rss_bytes"] - compiled["baseline_rss_bytes"]) / compiled["file_bytes"])
    assert r["runtimes"]["llama_cpp"]["weight_bytes"] < r["runtimes"]["litert_compiled"]["weight_bytes"]
    speedups = r["speedup_vs_llama_cpp"]
    assert set(speedups) == {"litert_compiled", "litert_lm"}
    assert all(s["decode"] > 0 and s["ttft"] > 0 for rows in speedups.values() for s in rows)
    assert "litert_compiled vs llama.cpp" in format_report(r)
    png = plot(r, files["root"] / "bench.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compiled_model_keeps_the_kv_cache_in_place(files):
    """Same tokens, same logits as the Interpreter's copy-in/copy-out runner over every prefill
    signature: 11 tokens (prefill_4 x3), 60 (prefill_16 x3, prefill_4 x3), and 50 + 13 (the last
    token of the 13 through decode, 2 positions before the cache end), then decode to the end."""
    ref, lm = LiteRTModel(files["tflite"]), CompiledLM(files["tflite"], threads=2)
    assert lm.prefill_sigs == ref.prefill_sigs == {4: "prefill_4", 16: "prefill_16"}
    rng = np.random.default_rng(1)
    for lens in ((11,), (60,), (50, 13)):
        ref.reset()
        lm.reset()
        want, got = [], []
        for n in lens:
            prompt = rng.integers(4, TINY.vocab_size, n).tolist()
            want.append(ref.prefill(prompt))
            got.append(lm.prefill(prompt))
        while ref.pos < ref.seq_len and len(want) < 13:
            token = int(np.argmax(want[-1]))
            want.append(ref.decode(token))
            got.append(lm.decode(token))
        np.testing.assert_allclose(np.stack(got), np.stack(want), rtol=0, atol=1e-5)
    with pytest.raises(NanoError, match="context full"):
        lm.decode(1)
    lm.close()


def test_compiled_model_runs_the_ring_export_like_the_full_cache(files, tmp_path):
    """CompiledModel on the ring export (8-slot local caches) gives the full-cache model's logits
    through a 60-token prompt and decoding to the last position, and its layout says so."""
    model = Transformer(TINY, rngs=nnx.Rngs(0))  # the model of `files`
    ring = export_tflite(model, tmp_path / "ring.tflite", prefill_lens=(4, 16), ring=True)
    layout, full = read_layout(ring), read_layout(files["tflite"])
    assert layout.seq_len == 64 and layout == dataclasses.replace(full, cache_lens=(8,) * 5 + (64,))
    assert full.cache_lens == (64,) * 6
    # the ideal decode reads each ring no further than its window: K and V, 2 heads x 16 dims, f32
    assert layout.kv_bytes_read(20) == 2 * 2 * 16 * 4 * (5 * 8 + 20)
    assert full.kv_bytes_read(20) == 2 * 2 * 16 * 4 * 6 * 20 == full.kv_bytes_per_position * 20
    ref, lm = LiteRTModel(files["tflite"]), CompiledLM(ring, threads=2)
    prompt = np.random.default_rng(2).integers(4, TINY.vocab_size, 50).tolist()
    want, got = [ref.prefill(prompt)], [lm.prefill(prompt)]
    while ref.pos < ref.seq_len:
        token = int(np.argmax(want[-1]))
        want.append(ref.decode(token))
        got.append(lm.decode(token))
    np.testing.assert_allclose(np.stack(got), np.stack(want), rtol=0, atol=1e-5)
    lm.close()


@pytest.mark.parametrize("ring", [False, True], ids=["full", "ring"])
def test_a_context_no_longer_than_the_window_is_updated_in_place(tmp_path, ring):
    """seq_len == window: every cache holds the whole context, so CompiledModel may pass each as
    input and output at once (as LiteRT-LM does) and still gives the Interpreter's logits."""
    model = Transformer(TINY, rngs=nnx.Rngs(0))
    path = export_tflite(model, tmp_path / "short.tflite", seq_len=TINY.window, prefill_lens=(4,), ring=ring)
    ref, lm = LiteRTModel(path), CompiledLM(path, threads=2)
    assert lm._spare == {}  # no ring: nothing double-buffered
    want, got = [ref.prefill([5, 6, 7, 8, 9])], [lm.prefill([5, 6, 7, 8, 9])]
    while ref.pos < ref.seq_len:
        token = int(np.argmax(want[-1]))
        want.append(ref.decode(token))
        got.append(lm.decode(token))
    np.testing.assert_allclose(np.stack(got), np.stack(want), rtol=0, atol=1e-5)
    lm.close()


def test_litertlm_input_runs_its_own_tflite(files, tmp_path):
    tflite, bundle = _model_files(files["litertlm"], tmp_path)
    assert bundle == files["litertlm"] and tflite.read_bytes() == files["tflite"].read_bytes()


def test_memory_bandwidth_is_positive():
    bw = memory_bandwidth(threads=2, mib=8, runs=2)
    assert bw["bandwidth_gb_s"] == max(bw["read_gb_s"], bw["copy_gb_s"]) > 0


def test_no_adb_device_is_a_clear_error(files, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no adb at all
    with pytest.raises(NanoError, match=r"no adb device: adb is not on PATH; install platform-tools"):
        run_bench(files["tflite"], prompt_lens=(8,), decode_tokens=2, repeats=1, android=True)
    adb = tmp_path / "adb"  # adb present, nothing attached (an unauthorized phone does not count)
    adb.write_text("#!/bin/sh\nprintf 'List of devices attached\\nR5CT1 unauthorized\\n\\n'\n")
    adb.chmod(adb.stat().st_mode | stat.S_IEXEC)
    with pytest.raises(NanoError, match=r"no adb device attached .*connect a device .*start an emulator"):
        bench_android.pick_device()


def test_litert_lm_phone_output_is_parsed():
    text = ("BenchmarkInfo:\n  Time to first token: 0.12 s\n    Prefill Turn 1: Processed 128 tokens in 80ms duration.\n"
            "      Prefill Speed: 1600.50 tokens/sec.\n    Decode Turn 1: Processed 128 tokens in 1.6s duration.\n"
            "      Decode Speed: 80.25 tokens/sec.\n")
    assert bench_android.parse_litert_lm(text) == {"ttft_ms": 120.0, "prefill_tok_s": 1600.5, "decode_tok_s": 80.25}
    with pytest.raises(NanoError, match="no benchmark speeds"):
        bench_android.parse_litert_lm("Segmentation fault")


def test_bad_input_is_refused(files, tmp_path):
    import tensorflow as tf  # already loaded by the export fixture

    add = tf.function(lambda x: {"y": x + 1.0}, input_signature=[tf.TensorSpec([2], tf.float32)])
    converter = tf.lite.TFLiteConverter.from_concrete_functions([add.get_concrete_function()], add)
    plain = tmp_path / "plain.tflite"
    plain.write_bytes(converter.convert())
    junk = tmp_path / "junk.tflite"
    junk.write_bytes(b"not a flatbuffer at all")
    cases = {
        "no such model file": dict(model_path=tmp_path / "missing.tflite"),
        "not a .tflite flatbuffer": dict(model_path=junk),
        "no prefill_<T> / decode signatures": dict(model_path=plain),
        "expected a .tflite or .litertlm": dict(model_path=files["gguf"]),
        "exceeds the KV cache of 64 positions": dict(model_path=files["tflite"], prompt_lens=(60,), decode_tokens=8),
        "no such GGUF file": dict(model_path=files["tflite"], compare_llamacpp=tmp_path / "missing.gguf"),
        "prompt_lens": dict(model_path=files["tflite"], prompt_lens=()),
        "repeats must be >= 1": dict(model_path=files["tflite"], repeats=0),
    }
    for message, kwargs in cases.items():
        with pytest.raises(NanoError, match=message):
            run_bench(**kwargs)
    with pytest.raises(NanoError, match="no prefill_<T> / decode signatures"):
        read_layout(plain)
    bad_gguf = tmp_path / "bad.gguf"  # fails inside llama.cpp's child process: the message comes back
    bad_gguf.write_bytes(b"GGUF" + os.urandom(64))
    with pytest.raises(NanoError, match="llama.cpp cannot load it"):
        run_bench(files["tflite"], prompt_lens=(8,), decode_tokens=2, repeats=1, compare_llamacpp=bad_gguf,
                  bandwidth_mib=8)


def _loaded_at_start(module: str) -> dict:
    """Runs in a child process: was `module` imported before this call (and the baseline RSS)?"""
    import sys

    return {"loaded": module in sys.modules}


@pytest.mark.parametrize("preload", [(), ("llama_cpp",)])
def test_memory_baseline_is_taken_after_the_runtime_libraries_load(tmp_path, preload):
    from benchmarks.harness.core import run_child

    r = run_child("probe", _loaded_at_start, "llama_cpp", log_dir=tmp_path, preload=preload)
    assert r["loaded"] is bool(preload)
    assert 0 < r["baseline_rss_bytes"] <= r["peak_rss_bytes"]
