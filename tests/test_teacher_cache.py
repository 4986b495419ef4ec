"""Teacher-target cache: target math, compressed format, resumable build, refusals."""

import dataclasses
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from typer.testing import CliRunner

from distill.targets import PAD_LOGPROB, TeacherTargets, chunked_targets, sampled_targets, topk_targets
from distill.teacher_cache import (LOGPROB_STEP, MANIFEST, TeacherCache, build_cache, decode_targets,
                                   encode_targets, full_order, row_inputs, teacher_fingerprint, teacher_targets,
                                   training_rows)
from nano.checkpoint import load_checkpoint, save_checkpoint
from nano.cli import app
from nano.config import get_preset
from nano.errors import NanoError
from nano.model import Transformer

SEQ, K, ROWS, PER = 32, 16, 20, 4  # tiny builds: 20 rows of 32 tokens, 5 shards of 4 rows


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    return x - np.logaddexp.reduce(x, axis=-1, keepdims=True)


def by_id(ids: np.ndarray, *values: np.ndarray) -> list[np.ndarray]:
    """Entries of each position sorted by id, so orders that differ only among ties compare."""
    o = np.argsort(ids, axis=-1, kind="stable")
    return [np.take_along_axis(a, o, -1) for a in (ids, *values)]


# ---- target math ------------------------------------------------------------------------------

def test_topk_matches_numpy():
    logits = np.random.default_rng(0).normal(size=(2, 3, 50)).astype(np.float32) * 3
    t = topk_targets(jnp.asarray(logits), 7)
    ref = log_softmax(logits)
    want = np.argsort(-logits, axis=-1)[..., :7]
    np.testing.assert_array_equal(t.ids, want)
    np.testing.assert_allclose(t.logprobs, np.take_along_axis(ref, want, -1), atol=1e-5)
    np.testing.assert_allclose(t.lse, np.logaddexp.reduce(logits.astype(np.float64), -1), atol=1e-5)
    np.testing.assert_allclose(np.asarray(t.weights).sum(-1), 1, atol=1e-6)
    assert np.all(np.diff(np.asarray(t.logprobs), axis=-1) <= 0)


def _sample(logits, k, seed, rows, positions):
    return jax.jit(sampled_targets, static_argnums=1)(jnp.asarray(logits), k, seed=seed,
                                                      rows=jnp.asarray(rows), positions=jnp.asarray(positions))


def test_sampled_weights_deterministic_and_independent_of_batching():
    logits = np.random.default_rng(1).normal(size=(2, 6, 40)).astype(np.float32) * 2
    logits[..., 5] = -1e30  # probability 0: must never be drawn
    rows = np.array([7, 123_456])
    a = _sample(logits, 8, 3, rows, np.arange(6))
    w = np.asarray(a.weights)
    np.testing.assert_allclose(w.sum(-1), 1, atol=1e-6)
    assert np.all(np.isin(w * 8, np.arange(9)))  # count / k
    assert not np.any((np.asarray(a.ids) == 5) & (w > 0))
    pad = w == 0
    assert np.all(np.asarray(a.ids)[pad] == 0) and np.all(np.asarray(a.logprobs)[pad] == PAD_LOGPROB)
    ref = log_softmax(logits)
    np.testing.assert_allclose(np.where(pad, 0, a.logprobs), np.where(pad, 0, np.take_along_axis(ref, np.asarray(a.ids), -1)), atol=1e-5)
    for x, y in zip(a, _sample(logits, 8, 3, rows, np.arange(6))):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a.ids, _sample(logits, 8, 4, rows, np.arange(6)).ids)
    # One row alone, positions 2..5 alone, and chunks of 4 vs 6 positions: the same draws.
    alone = _sample(logits[1:, 2:], 8, 3, rows[1:], np.arange(2, 6))
    np.testing.assert_array_equal(alone.ids, np.asarray(a.ids)[1:, 2:])
    np.testing.assert_array_equal(alone.weights, np.asarray(a.weights)[1:, 2:])
    chunked = chunked_targets(lambda h: h, jnp.asarray(logits), jnp.asarray(rows), k=8, scheme="sample", seed=3, chunk=4)
    for x, y in zip(chunked, a):
        np.testing.assert_array_equal(x, y)


def test_sampled_weights_are_unbiased():
    logits = np.random.default_rng(2).normal(size=(1, 1, 12)).astype(np.float32) * 1.5
    p = np.exp(log_softmax(logits))[0, 0]
    seeds = jnp.arange(4000)
    t = jax.jit(jax.vmap(lambda s: sampled_targets(jnp.asarray(logits), 8, seed=s, rows=jnp.zeros(1, jnp.int32),
                                                   positions=jnp.zeros(1, jnp.int32))))(seeds)
    ids, w = np.asarray(t.ids).reshape(len(seeds), 8), np.asarray(t.weights).reshape(len(seeds), 8)
    mean = np.zeros(12)
    np.add.at(mean, ids.ravel(), w.ravel())
    mean /= len(seeds)
    # One seed's estimate of p_i has std sqrt(p_i (1 - p_i) / 8); the mean of 4000 is within 5 sigma.
    sigma = np.sqrt(p * (1 - p) / 8 / len(seeds))
    assert np.all(np.abs(mean - p) <= 5 * sigma + 1e-4), (mean, p)


# ---- compressed format ------------------------------------------------------------------------

@pytest.mark.parametrize("scheme", ["topk", "sample"])
def test_codec_round_trip(scheme):
    V, k = 512, 64
    logits = jnp.asarray(np.random.default_rng(3).normal(size=(3, 40, V)).astype(np.float32) * 4)
    t = topk_targets(logits, k) if scheme == "topk" else \
        sampled_targets(logits, k, seed=0, rows=jnp.arange(3), positions=jnp.arange(40))
    t = TeacherTargets(*(np.asarray(a) for a in t))
    seen = np.random.default_rng(4).permutation(V)[:300].astype(np.uint32)
    order, rank = full_order(seen, V)
    blob = encode_targets(t, scheme=scheme, rank=rank)
    d = decode_targets(blob, scheme=scheme, order=order)
    print(f"\n{scheme}: {len(blob) / 120:.1f} bytes/token at k={k}, V={V} (random logits)")
    assert len(blob) / 120 < k * 2.5  # ~9 bits of id + ~8 bits of log-prob per entry, before xz
    ids, lp, w = by_id(t.ids.reshape(-1, k), t.logprobs.reshape(-1, k), t.weights.reshape(-1, k))
    did, dlp, dw = by_id(d.ids, d.logprobs, d.weights)
    valid = lp > PAD_LOGPROB / 2
    np.testing.assert_array_equal(did, ids)
    assert np.abs(dlp - lp)[valid].max() <= LOGPROB_STEP / 2 + 1e-6
    np.testing.assert_array_equal(dlp[~valid], np.float32(PAD_LOGPROB))
    np.testing.assert_array_equal(d.lse, t.lse.reshape(-1))
    if scheme == "sample":
        np.testing.assert_array_equal(dw, w)
    else:
        np.testing.assert_allclose(dw, w, atol=LOGPROB_STEP)
    # Canonical order: descending weight, then descending log-prob.
    assert np.all(np.diff(d.weights, axis=-1) <= 0)


# ---- build / read -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory, tiny_tokenizer):
    root = tmp_path_factory.mktemp("tc")
    save_checkpoint(root / "teacher", Transformer(get_preset("tiny"), rngs=nnx.Rngs(0)), tokenizer=tiny_tokenizer)
    data = root / "data"
    (data / "train").mkdir(parents=True)
    # Zipf-ish synthetic stream, plus a partial row at the end that must be dropped.
    stream = (np.random.default_rng(0).zipf(1.3, ROWS * SEQ + 7) % 508 + 4).astype(np.uint32)
    np.save(data / "train" / "tokens-00000.npy", stream)
    np.save(data / "train" / "doc_offsets.npy", np.array([0, len(stream)], np.int64))
    (data / "manifest.json").write_text(json.dumps({
        "tokenizer": {"sha256": tiny_tokenizer.sha256, "bos_id": tiny_tokenizer.bos_id},
        "splits": {"train": {"shards": ["tokens-00000.npy"], "tokens": len(stream)}}}))
    return root, data, stream


def _build(root, out, teacher="teacher", **kw):
    return build_cache(root / teacher, root / "data", out, **({"seq_len": SEQ, "k": K, "rows_per_shard": PER,
                                                                "batch_size": 3} | kw))


def _files(cache) -> dict[str, bytes]:
    """Every file of a cache directory (temp files included) with its bytes."""
    return {p.name: p.read_bytes() for p in sorted(cache.iterdir())}


def _shards(cache) -> list[int]:
    """Indices of the shard files written in `cache`."""
    return sorted(int(p.name[6:11]) for p in cache.glob("shard-*.bin"))


def test_training_rows():
    stream = np.arange(10, dtype=np.uint32)
    rows = training_rows(stream, 4)
    np.testing.assert_array_equal(rows, [[0, 1, 2, 3], [4, 5, 6, 7]])
    assert np.shares_memory(rows, stream)
    np.testing.assert_array_equal(row_inputs(rows, 2), [[2, 0, 1, 2], [2, 4, 5, 6]])


@pytest.mark.parametrize("scheme", ["topk", "sample"])
def test_cache_matches_teacher(tiny_setup, tiny_tokenizer, tmp_path, scheme):
    root, _, stream = tiny_setup
    manifest = _build(root, tmp_path / "c", scheme=scheme)
    assert manifest["complete"] and manifest["rows"]["total"] == ROWS and len(manifest["shards"]) == 5
    cache = TeacherCache.open(tmp_path / "c", tokenizer_sha256=tiny_tokenizer.sha256,
                              teacher_fingerprint=teacher_fingerprint(root / "teacher"))
    cache.check_data(stream)
    pick = np.array([13, 0, 19, 5])
    got = cache.targets(pick)
    want = teacher_targets(load_checkpoint(root / "teacher"),
                           jnp.asarray(row_inputs(training_rows(stream, SEQ)[pick], tiny_tokenizer.bos_id)),
                           jnp.asarray(pick, jnp.int32), jnp.int32(0), k=K, scheme=scheme, chunk=8)
    ids, lp, w = by_id(*(np.asarray(a) for a in want[:3]))
    gid, glp, gw = by_id(*got[:3])
    np.testing.assert_array_equal(gid, ids)
    valid = w > 0
    assert np.abs(glp - lp)[valid].max() <= LOGPROB_STEP / 2 + 1e-5
    np.testing.assert_allclose(gw, w, atol=LOGPROB_STEP if scheme == "topk" else 0)
    np.testing.assert_allclose(got.lse, want.lse, rtol=1e-6)
    with pytest.raises(NanoError, match="teacher cache was built on other tokens than this data"):
        cache.check_data(stream[::-1].copy())


def test_resume_after_interruption(tiny_setup, tmp_path):
    root = tiny_setup[0]
    seen = []

    def stop_after_two_shards(done, total):
        seen.append(done)
        if done >= 2 * PER:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _build(root, tmp_path / "a", progress=stop_after_two_shards)
    manifest = json.loads((tmp_path / "a" / MANIFEST).read_text())
    assert _shards(tmp_path / "a") == [0, 1] and manifest["shards"] == [] and not manifest["complete"]
    (tmp_path / "a" / ".shard-00002.bin.abc123.tmp").write_bytes(b"left by a SIGKILL")
    (tmp_path / "a" / ".manifest.json.def456.tmp").write_bytes(b"left by a SIGKILL")
    resumed = []
    _build(root, tmp_path / "a", progress=lambda d, t: resumed.append(d))
    assert resumed[0] == 2 * PER and resumed[-1] == ROWS  # started from the first missing shard
    _build(root, tmp_path / "b")
    assert _files(tmp_path / "a") == _files(tmp_path / "b")  # every byte, the manifest's too
    assert not [f for f in _files(tmp_path / "a") if f.endswith(".tmp")]
    assert json.loads((tmp_path / "a" / MANIFEST).read_text())["complete"]
    with pytest.raises(NanoError, match=r"existing teacher cache has a different targets \(.*'k': 16.*'k': 17"):
        build_cache(root / "teacher", root / "data", tmp_path / "a", seq_len=SEQ, k=K + 1, rows_per_shard=PER)


def test_refusals(tiny_setup, tiny_tokenizer, tmp_path):
    root = tiny_setup[0]
    _build(root, tmp_path / "c", max_rows=10)
    sha = tiny_tokenizer.sha256
    with pytest.raises(NanoError, match=f"teacher cache built with tokenizer {sha} but the student uses {'0' * 64}"):
        TeacherCache.open(tmp_path / "c", tokenizer_sha256="0" * 64)
    with pytest.raises(NanoError, match=f"teacher cache built from teacher .*, not tiny/sha256:{'0' * 64}"):
        TeacherCache.open(tmp_path / "c", tokenizer_sha256=sha, teacher_fingerprint="tiny/sha256:" + "0" * 64)
    with pytest.raises(NanoError, match=r"nothing/manifest\.json: missing; build the cache with `nano distill cache-teacher`"):
        TeacherCache.open(tmp_path / "nothing", tokenizer_sha256=sha)
    cache = TeacherCache.open(tmp_path / "c", tokenizer_sha256=sha)
    assert cache.num_rows == 10 and [e["rows"] for e in cache.manifest["shards"]] == [[0, 4], [4, 8], [8, 10]]
    shard = tmp_path / "c" / "shard-00001.bin"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x40
    shard.write_bytes(bytes(data))
    cache.targets([0, 9])  # other shards still read
    with pytest.raises(NanoError, match=r"shard-00001\.bin.*corrupt.*delete it.*cache-teacher"):
        cache.targets([5])
    shard.unlink()  # what the message says: delete it and re-run
    _build(root, tmp_path / "c", max_rows=10)
    assert TeacherCache.open(tmp_path / "c", tokenizer_sha256=sha).targets([5]).ids.shape == (1, SEQ, K)


# ---- several processes ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def single(tiny_setup, tmp_path_factory):
    """Every file of the top-k cache built by one process: what any split of the work must give."""
    out = tmp_path_factory.mktemp("single") / "c"
    _build(tiny_setup[0], out)
    return _files(out)


def test_two_processes_give_the_single_process_bytes(tiny_setup, tiny_tokenizer, single, tmp_path):
    root, sha = tiny_setup[0], tiny_tokenizer.sha256
    # One after the other: process 0, then process 1 finds every shard and writes the manifest.
    first = _build(root, tmp_path / "seq", process_id=0, num_processes=2)
    assert not first["complete"] and first["shards"] == [] and _shards(tmp_path / "seq") == [0, 2, 4]
    with pytest.raises(NanoError, match=r"seq: teacher cache incomplete: 2 of 5 shards missing \(shard-00001\.bin, "
                                        r"shard-00003\.bin\); other processes may still be building it"):
        TeacherCache.open(tmp_path / "seq", tokenizer_sha256=sha)
    assert _build(root, tmp_path / "seq", process_id=1, num_processes=2)["complete"]
    assert _files(tmp_path / "seq") == single
    # Interleaved: process 1 runs whole while process 0 is between its shards; 0 finishes last.
    inner = []

    def run_process_1(done, total):
        if done == PER and not inner:
            inner.append(_build(root, tmp_path / "mix", process_id=1, num_processes=2))

    assert _build(root, tmp_path / "mix", process_id=0, num_processes=2, progress=run_process_1)["complete"]
    assert not inner[0]["complete"] and _files(tmp_path / "mix") == single
    # A late re-run of either rewrites the same manifest: racing writers agree.
    _build(root, tmp_path / "mix", process_id=1, num_processes=2)
    assert _files(tmp_path / "mix") == single
    assert TeacherCache.open(tmp_path / "mix", tokenizer_sha256=sha).targets([5]).ids.shape == (1, SEQ, K)


def test_multi_process_resume(tiny_setup, single, wide_teacher, tmp_path):
    root, out = tiny_setup[0], tmp_path / "c"

    def killed_after_one_shard(done, total):
        if done >= PER:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _build(root, out, process_id=0, num_processes=2, progress=killed_after_one_shard)
    assert _shards(out) == [0]
    (out / ".shard-00002.bin.killed.tmp").write_bytes(b"left by a SIGKILL of process 0")
    (out / ".shard-00001.bin.inflight.tmp").write_bytes(b"process 1 may be writing this now")
    for change, name in [(dict(k=K + 1), "targets"), (dict(scheme="sample"), "targets"), (dict(seq_len=16), "rows"),
                         (dict(max_rows=8), "rows"), (dict(teacher="wide"), "teacher")]:
        with pytest.raises(NanoError, match=f"existing teacher cache has a different {name} "):
            _build(root, out, process_id=1, num_processes=2, **change)
    resumed = []
    _build(root, out, process_id=0, num_processes=2, progress=lambda d, t: resumed.append((d, t)))
    assert resumed[0] == (PER, 3 * PER) and resumed[-1] == (3 * PER, 3 * PER)  # shards 2 and 4 only
    assert _shards(out) == [0, 2, 4] and (out / ".shard-00001.bin.inflight.tmp").exists()
    assert not (out / ".shard-00002.bin.killed.tmp").exists()
    # Shards do not depend on the split of the work: another --num-processes may finish it, and
    # a run without process options labels whatever is left (and sweeps every temp file).
    assert not _build(root, out, process_id=1, num_processes=3)["complete"]  # shards 1 and 4
    assert _shards(out) == [0, 1, 2, 4]
    assert _build(root, out)["complete"]
    assert _files(out) == single


def test_multi_process_refusals(tiny_setup, tiny_tokenizer, single, tmp_path):
    root = tiny_setup[0]
    for kw, why in [(dict(num_processes=0), r"num_processes=0 \(at least 1\)"),
                    (dict(process_id=2, num_processes=2), r"process_id=2 \(0\.\.1 for num_processes=2\)"),
                    (dict(process_id=-1), r"process_id=-1 \(0\.\.0 for num_processes=1\)")]:
        with pytest.raises(NanoError, match=f"build_cache: invalid {why}"):
            _build(root, tmp_path / "x", **kw)
    out = tmp_path / "c"
    out.mkdir()
    for name, data in single.items():
        (out / name).write_bytes(data)
    manifest = json.loads(single[MANIFEST])
    (out / MANIFEST).write_text(json.dumps(manifest | {"shards": [], "complete": False}))
    with pytest.raises(NanoError, match=r"every shard is written but manifest\.json does not list them yet"):
        TeacherCache.open(out, tokenizer_sha256=tiny_tokenizer.sha256)
    (out / MANIFEST).unlink()
    with pytest.raises(NanoError, match=r"c: holds teacher-cache shards but no manifest\.json.*delete the directory"):
        _build(root, out, process_id=1, num_processes=2)


# ---- a teacher with more logits than its tokenizer has tokens ----------------------------------

@pytest.fixture(scope="module")
def wide_teacher(tiny_setup, tiny_tokenizer):
    """The tiny teacher with 3 padding logits past its 512-token tokenizer (as Gemma 3 4B: 262,208
    logits, 262,144 tokens), made loud enough to take top-k places if they were kept."""
    root = tiny_setup[0]
    model = Transformer(dataclasses.replace(get_preset("tiny"), vocab_size=512 + 3), rngs=nnx.Rngs(0))
    model.embed[...] = model.embed[...].at[512:].multiply(40.0)
    save_checkpoint(root / "wide", model, tokenizer=tiny_tokenizer)
    return model


@pytest.mark.parametrize("scheme", ["topk", "sample"])
def test_padding_logits_are_not_cached(tiny_setup, tiny_tokenizer, wide_teacher, tmp_path, scheme):
    root, _, stream = tiny_setup
    manifest = _build(root, tmp_path / "c", scheme=scheme, teacher="wide", max_rows=4)
    assert manifest["vocab_size"] == 512
    got = TeacherCache.open(tmp_path / "c", tokenizer_sha256=tiny_tokenizer.sha256).targets([1, 3])
    inputs = row_inputs(training_rows(stream, SEQ)[[1, 3]], tiny_tokenizer.bos_id)
    logits = np.asarray(wide_teacher(jnp.asarray(inputs))[0], np.float64)  # (2, SEQ, 515)
    assert np.any(np.argsort(-logits, -1)[..., :K] >= 512)  # the padding would have been cached
    ref = log_softmax(logits[..., :512])
    np.testing.assert_allclose(got.lse, np.logaddexp.reduce(logits[..., :512], -1), rtol=1e-5)
    valid = got.weights > 0
    assert np.all(got.ids < 512) and np.all(valid.sum(-1) >= 1)
    np.testing.assert_allclose(got.weights.sum(-1), 1, atol=1e-5)
    assert np.abs(got.logprobs - np.take_along_axis(ref, got.ids, -1))[valid].max() <= LOGPROB_STEP / 2 + 1e-4
    if scheme == "topk":
        ids, _ = by_id(np.argsort(-ref, -1)[..., :K], ref[..., :K])
        np.testing.assert_array_equal(by_id(got.ids, got.logprobs)[0], ids)


def test_teacher_with_fewer_logits_than_tokens_is_refused(tiny_setup, tiny_tokenizer, tmp_path):
    narrow = tmp_path / "narrow"
    save_checkpoint(narrow, Transformer(dataclasses.replace(get_preset("tiny"), vocab_size=509), rngs=nnx.Rngs(0)),
                    tokenizer=tiny_tokenizer)
    with pytest.raises(NanoError, match="narrow: the teacher has 509 logits but its tokenizer 512 tokens"):
        build_cache(narrow, tiny_setup[1], tmp_path / "c", seq_len=SEQ, k=K)


# ---- the command line ---------------------------------------------------------------------------

ROWS4 = dict(seq_len=4, k=K, batch_size=3)  # rows of 4 tokens: 160 rows, 3 shards of the default 64


@pytest.fixture(scope="module")
def single_rows4(tiny_setup, tmp_path_factory):
    """Every file of the ROWS4 cache built by one process (the CLI has no --rows-per-shard)."""
    root, out = tiny_setup[0], tmp_path_factory.mktemp("single4") / "c"
    build_cache(root / "teacher", root / "data", out, **ROWS4)
    return _files(out)


def _cli_args(root, out) -> list[str]:
    return ["distill", "cache-teacher", "--teacher", str(root / "teacher"), "--data", str(root / "data"),
            "--out", str(out), *(f"--{n.replace('_', '-')}={v}" for n, v in ROWS4.items())]


def test_cli_processes_from_slurm_and_options(tiny_setup, single_rows4, tmp_path, monkeypatch):
    root = tiny_setup[0]
    runner = CliRunner()
    base = _cli_args(root, tmp_path / "c")
    monkeypatch.setenv("SLURM_NTASKS", "2")
    monkeypatch.setenv("SLURM_PROCID", "1")
    first = runner.invoke(app, base)
    assert first.exit_code == 0, first.output
    assert "process 1 of 2" in first.output and "2 shards of other processes still missing" in first.output
    assert _shards(tmp_path / "c") == [1]
    last = runner.invoke(app, [*base, "--process-id", "0"])  # --num-processes still from SLURM_NTASKS
    assert last.exit_code == 0, last.output
    assert "bytes/token" in last.output
    assert _files(tmp_path / "c") == single_rows4
    cases = [(["--num-processes", "0"], {}, "--num-processes 0: the number of processes must be at least 1"),
             (["--num-processes", "2", "--process-id", "2"], {},
              "--process-id 2 is out of range: process ids run 0..1 for --num-processes 2"),
             ([], {"SLURM_PROCID": "5"}, "$SLURM_PROCID 5 is out of range: process ids run 0..1 for $SLURM_NTASKS 2"),
             ([], {"SLURM_NTASKS": "two"}, "$SLURM_NTASKS='two' is not an integer; pass --num-processes")]
    for extra, env, message in cases:
        with monkeypatch.context() as m:
            for name, value in env.items():
                m.setenv(name, value)
            result = runner.invoke(app, [*base, *extra])
        assert result.exit_code == 1 and message in result.output, (extra, env, result.output)
        assert len(result.output.strip().splitlines()) == 1, result.output


def test_cli_two_concurrent_processes(tiny_setup, single_rows4, tmp_path):
    """Two real OS processes started together on one cache (~10 s: each imports JAX)."""
    cmd = [sys.executable, "-m", "nano.cli", *_cli_args(tiny_setup[0], tmp_path / "c"), "--num-processes", "2"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    procs = [subprocess.Popen([*cmd, "--process-id", str(i)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for i in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert any("bytes/token" in o for o in outputs)  # at least the last one wrote the manifest
    assert _files(tmp_path / "c") == single_rows4


# ---- the real teacher -------------------------------------------------------------------------

@pytest.mark.slow
def test_real_teacher_bytes_per_token(teacher_ckpt, teacher_tokenizer, prepared_data, tmp_path):
    """4 rows x 512 tokens of Python docs through Gemma 3 270M: <= 300 bytes/token at k=128."""
    manifest = build_cache(teacher_ckpt, prepared_data, tmp_path / "c", max_rows=4, rows_per_shard=4, batch_size=2)
    shard_bytes = sum(e["bytes"] for e in manifest["shards"])
    per_token = shard_bytes / (4 * 512)
    fixed = manifest["vocab_order"]["bytes"] + (tmp_path / "c" / MANIFEST).stat().st_size
    print(f"\nk=128 top-k: {per_token:.1f} bytes/token in shards (+{fixed} bytes per cache)")
    assert per_token <= 300
    cache = TeacherCache.open(tmp_path / "c", tokenizer_sha256=teacher_tokenizer.sha256)
    t = cache.targets([3])
    assert t.ids.shape == (1, 512, 128) and np.all(np.diff(t.logprobs, axis=-1) <= 0)
    np.testing.assert_allclose(t.weights.sum(-1), 1, atol=1e-5)
