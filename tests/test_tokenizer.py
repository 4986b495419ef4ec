"""Tokenizer: hand-checked tiny vocabularies, bad input, and exact agreement with llama.cpp on
the real Gemma 3 270M vocabulary."""

import sysconfig
from pathlib import Path

import gguf
import llama_cpp  # pinned (requirements.txt): a missing wheel fails here instead of skipping
import pytest

from nano.errors import NanoError
from nano.tokenizer import Tokenizer

# ---- a tiny vocabulary whose BPE merges are easy to follow by hand ----------------------

SPECIALS = [("<pad>", 0.0, 3), ("<eos>", 0.0, 3), ("<bos>", 0.0, 3), ("<unk>", 0.0, 3)]
BYTES = [(f"<0x{b:02X}>", 0.0, 6) for b in range(256)]  # ids 4..259
WORDS = ["▁", "h", "e", "l", "o", "w", "r", "d", "ld", "he", "ll", "hell", "hello", "▁w", "or", "▁wor", "▁world"]
PIECES = SPECIALS + BYTES + [(w, -float(i), 1) for i, w in enumerate(WORDS)]  # earlier = merged first
ID = {p: i for i, (p, _, _) in enumerate(PIECES)}


def byte(b: int) -> int:
    return 4 + b


def tiny(**kw) -> Tokenizer:
    return Tokenizer.from_pieces(PIECES, bos_id=2, eos_id=1, unk_id=3, pad_id=0, **kw)


def tiny_gguf_fields(extra_user_defined: list[str]) -> dict:
    """The tiny vocabulary as GGUF metadata, plus user-defined tokens written GGUF-style."""
    pieces = PIECES + [(t, 0.0, 4) for t in extra_user_defined]
    return {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": [p for p, _, _ in pieces],
        "tokenizer.ggml.scores": [s for _, s, _ in pieces],
        "tokenizer.ggml.token_type": [t for _, _, t in pieces],
        "tokenizer.ggml.bos_token_id": 2,
        "tokenizer.ggml.eos_token_id": 1,
        "tokenizer.ggml.unknown_token_id": 3,
        "tokenizer.ggml.padding_token_id": 0,
        "tokenizer.ggml.add_bos_token": True,
        "tokenizer.ggml.add_space_prefix": False,
    }


def test_tiny_vocab_exact_ids():
    tok = tiny()
    assert (tok.vocab_size, tok.bos_id, tok.eos_id, tok.unk_id, tok.pad_id) == (len(PIECES), 2, 1, 3, 0)
    # 'ld' merges first, then ▁w, or, ▁wor, ▁world; 'hello' via he, ll, hell.
    assert tok.encode("hello world") == [ID["hello"], ID["▁world"]]
    assert tok.encode("hello world", add_bos=True, add_eos=True) == [2, ID["hello"], ID["▁world"], 1]
    assert tok.encode("hold") == [ID["h"], ID["o"], ID["ld"]]
    # 'é' (UTF-8 C3 A9) is not a piece: byte fallback, not <unk>.
    assert tok.encode("hello é") == [ID["hello"], ID["▁"], byte(0xC3), byte(0xA9)]
    assert tok.decode(tok.encode("hello é")) == "hello é"
    assert tok.decode([2, ID["hello"], 1]) == "hello"  # control pieces decode to nothing
    assert tok.encode_batch(["hello world", "hold"]) == [tok.encode("hello world"), tok.encode("hold")]
    assert tok.id_to_piece(ID["▁world"]) == "▁world" and tok.piece_to_id("▁world") == ID["▁world"]
    assert tok.piece_to_id("not-a-piece") == tok.unk_id
    assert tok.stop_ids() == [1]


def test_tiny_save_load_round_trip(tmp_path):
    tok = tiny(add_bos_default=False)
    tok.save(tmp_path / "tok.model")
    back = Tokenizer.load(tmp_path / "tok.model")
    assert back.sha256 == tok.sha256
    assert back.add_bos_default is False
    for text in ["hello world", "hello é", "hold  wor\n"]:
        assert back.encode(text, add_bos=True) == tok.encode(text, add_bos=True)
    assert [p.name for p in tmp_path.iterdir()] == ["tok.model"]  # atomic write left no temp file
    assert tiny(add_bos_default=True).sha256 != tok.sha256  # the GGUF facts are part of the identity


def test_user_defined_tokens_with_spaces_and_llama_cpp_eog_spelling():
    fields = tiny_gguf_fields(["  ", "</s>", "<tag>"])
    tok = Tokenizer.from_gguf_fields(fields, source="tiny.gguf")
    two_spaces, close_s, tag = len(PIECES), len(PIECES) + 1, len(PIECES) + 2
    # GGUF writes added tokens with real spaces; they must still match text.
    assert tok.encode("hello  world") == [ID["hello"], two_spaces, ID["w"], ID["or"], ID["ld"]]
    assert tok.encode("<tag>") == [tag]
    # ...but, as in llama.cpp, only real spaces: a literal '▁' beside a space is not an added token.
    assert tok.encode("hello ▁world") == [ID["hello"], ID["▁"], ID["▁world"]]
    assert tok.encode_batch(["hello ▁world", "hello  world"])[0] == [ID["hello"], ID["▁"], ID["▁world"]]
    # llama.cpp forces tokens spelled like end-of-generation markers to CONTROL: text never makes them.
    assert close_s not in tok.encode("hello</s>")
    # Export restores the GGUF originals exactly, and round-trips to the same identity.
    out = tok.gguf_fields()
    assert out["tokenizer.ggml.tokens"] == fields["tokenizer.ggml.tokens"]
    assert out["tokenizer.ggml.token_type"] == fields["tokenizer.ggml.token_type"]
    assert out["tokenizer.ggml.padding_token_id"] == 0 and out["tokenizer.ggml.add_space_prefix"] is False
    assert Tokenizer.from_gguf_fields(out, source="again").sha256 == tok.sha256


def test_gguf_writer_round_trip(tmp_path):
    tok = Tokenizer.from_gguf_fields(tiny_gguf_fields(["  ", "</s>"]), source="tiny")
    path = tmp_path / "tiny.gguf"
    _write_gguf(path, tok)
    back = Tokenizer.from_gguf(path)
    assert back.sha256 == tok.sha256
    types = {k: [t.name for t in f.types] for k, f in gguf.GGUFReader(path).fields.items()}
    # llama.cpp rejects ids stored with the wrong integer type.
    assert types["tokenizer.ggml.bos_token_id"] == ["UINT32"]
    assert types["tokenizer.ggml.token_type"] == ["ARRAY", "INT32"]
    assert types["tokenizer.ggml.scores"] == ["ARRAY", "FLOAT32"]


def _write_gguf(path: Path, tok: Tokenizer | None = None, model: str | None = None) -> None:
    w = gguf.GGUFWriter(path, arch="gemma3")
    if tok is not None:
        tok.write_gguf(w)
    if model is not None:
        w.add_tokenizer_model(model)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


# ---- bad input: one-line NanoError naming the file/field --------------------------------


def test_not_a_gguf_file(tmp_path):
    bad = tmp_path / "notes.gguf"
    bad.write_text("just some text, not a model\n")
    with pytest.raises(NanoError, match="notes.gguf.*not a readable GGUF") as err:
        Tokenizer.from_gguf(bad)
    assert "\n" not in str(err.value)
    with pytest.raises(NanoError, match="missing.gguf.*not found"):
        Tokenizer.from_gguf(tmp_path / "missing.gguf")


def test_wrong_tokenizer_model(tmp_path):
    path = tmp_path / "bpe.gguf"
    _write_gguf(path, model="gpt2")
    with pytest.raises(NanoError, match=r"bpe\.gguf: tokenizer\.ggml\.model is 'gpt2'"):
        Tokenizer.from_gguf(path)


def test_bad_fields():
    fields = tiny_gguf_fields([])
    short = dict(fields, **{"tokenizer.ggml.scores": fields["tokenizer.ggml.scores"][:-1]})
    with pytest.raises(NanoError, match=r"x\.gguf: tokenizer\.ggml\.scores has 276 entries but tokenizer\.ggml\.tokens has 277"):
        Tokenizer.from_gguf_fields(short, source="x.gguf")
    missing = {k: v for k, v in fields.items() if k != "tokenizer.ggml.token_type"}
    with pytest.raises(NanoError, match=r"x\.gguf: GGUF field tokenizer\.ggml\.token_type is missing"):
        Tokenizer.from_gguf_fields(missing, source="x.gguf")
    with pytest.raises(NanoError, match=r"x\.gguf: bos id 999 is outside"):
        Tokenizer.from_gguf_fields(dict(fields, **{"tokenizer.ggml.bos_token_id": 999}), source="x.gguf")


def test_corrupt_or_missing_model_file(tmp_path):
    bad = tmp_path / "tok.model"
    bad.write_bytes(b"\xff\xfe garbage \x00\x01" * 10)
    with pytest.raises(NanoError, match=r"tok\.model: not a (usable )?SentencePiece model"):
        Tokenizer.load(bad)
    with pytest.raises(NanoError, match="nope.model.*cannot read"):
        Tokenizer.load(tmp_path / "nope.model")


# ---- the real teacher vocabulary against llama.cpp ---------------------------------------

EDGE_CASES = [
    "",
    " ",
    "Hello, world!",
    "  two leading spaces",
    "trailing spaces   ",
    "tabs\tin\t\tthe middle\t",
    "multiple     spaces    between   words",
    "\n",
    "line one\nline two\n\n\nafter three newlines\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\nend",
    " " * 40 + "x" + "\t" * 20,
    "\r\nWindows line endings\r\n\r\n",
    "def f(x):\n    if x:\n        return {'a': [1, 2, 3]}\n\treturn None  # mixed indent\n",
    "class A:\n    \"\"\"Doc.\"\"\"\n\n    def __init__(self) -> None:\n        self.x = 1_000_000\n",
    "SELECT name FROM sqlite_master WHERE type='table' ORDER BY name;",
    "<start_of_turn>user\nHi there<end_of_turn>\n<start_of_turn>model\n",
    "<bos><eos><pad><unk><mask>[multimodal]<unused0><start_of_image>",
    "<p>Price: <s>100</s> 80</p> x.</s> <table><tr><td>a</td></tr></table>",
    "<0x41> <0x00> literal byte-token spellings",
    "😀🎉 👩‍👩‍👧‍👦 🏳️‍🌈 emoji and ZWJ sequences",
    "日本語のテキスト、中文文本，한국어 텍스트",
    "Ünïcödé café naïve résumé Ångström",
    "e\u0301 a\u0308 o\u0302\u0323 combining marks; \u0915\u094d\u0937 Devanagari conjunct",
    "مرحبا بالعالم — שלום עולם — Привет, мир — Γειά σου κόσμε",
    "ﬁ ligature, ＦＵＬＬＷＩＤＴＨ, ①②③, ½ — no NFKC here",
    "\u200b zero width space, \ufeff BOM, \u00a0 nbsp, \u2028 line sep",
    "control chars \x00 \x01\x02\x7f and \x1b[31mANSI\x1b[0m",
    "▁ literal meta symbol ▁▁ and ▁word",  # SentencePiece's own space marker, typed literally
    "a ▁ b▁  c  ▁▁   ▁",
    "sparkline ▁▂▃▄▅▆▇█ ▁ ▁▁",
    "∑∫√∞≠≤ ∀x∈ℝ: x² ≥ 0, 3.14159e-10, 0xDEADBEEF, 1,234,567.89",
    "a" * 300,
    "https://docs.python.org/3/library/sqlite3.html#sqlite3.Connection.execute?x=1&y=2",
]


def _real_documents(max_chars: int = 1_500_000) -> list[tuple[str, str]]:
    """Text any fresh machine has: the Python standard library's sources (code, docstrings,
    some non-ASCII), plus Debian's Python/SQLite HTML docs where installed."""
    stdlib = sorted(Path(sysconfig.get_paths()["stdlib"]).rglob("*.py"))
    picks = stdlib[:: max(1, len(stdlib) // 150)]
    for root, pattern in (("/usr/share/doc/python3.11/html/_sources", "*.rst.txt"), ("/usr/share/doc/sqlite3", "*.html")):
        found = sorted(Path(root).rglob(pattern)) if Path(root).is_dir() else []
        picks += found[:: max(1, len(found) // 60)] if found else []
    docs, total = [], 0
    for path in picks:
        text = path.read_bytes().decode("utf-8", errors="replace")[:60_000]
        if total + len(text) > max_chars:
            break
        docs.append((str(path), text))
        total += len(text)
    return docs


@pytest.fixture(scope="module")
def gemma_tokenizer(teacher_gguf) -> Tokenizer:
    return Tokenizer.from_gguf(teacher_gguf)  # ~10 s: GGUFReader parses 262k strings


@pytest.fixture(scope="module")
def llama(teacher_gguf):
    return llama_cpp.Llama(model_path=str(teacher_gguf), vocab_only=True, verbose=False)


@pytest.mark.slow
def test_gemma_special_ids(gemma_tokenizer):
    tok = gemma_tokenizer
    assert (tok.vocab_size, tok.bos_id, tok.eos_id, tok.unk_id, tok.pad_id) == (262144, 2, 1, 3, 0)
    assert tok.add_bos_default is True and tok.add_eos_default is False
    assert [tok.id_to_piece(i) for i in tok.stop_ids()] == ["<eos>", "<end_of_turn>"]
    assert tok.encode("Hi", add_bos=True)[0] == 2


@pytest.mark.slow
def test_gemma_gguf_fields_round_trip(gemma_tokenizer, tmp_path):
    fields = gemma_tokenizer.gguf_fields()
    assert Tokenizer.from_gguf_fields(fields, source="round trip").sha256 == gemma_tokenizer.sha256
    # The two entries SentencePiece needs changed (<unk> must be UNKNOWN; llama.cpp never matches
    # '</s>' in text) still export as the GGUF had them.
    assert [fields["tokenizer.ggml.token_type"][i] for i in (3, 212)] == [3, 4]
    # A checkpoint stores the .model file; re-exporting from it must give the same GGUF metadata.
    gemma_tokenizer.save(tmp_path / "tokenizer.model")
    loaded = Tokenizer.load(tmp_path / "tokenizer.model")
    assert loaded.sha256 == gemma_tokenizer.sha256
    assert loaded.gguf_fields() == fields


@pytest.mark.slow
def test_gemma_vocab_matches_llama_cpp(gemma_tokenizer, llama):
    """The exported tokens/scores are the strings llama.cpp loaded from the original GGUF."""
    vocab = llama_cpp.llama_model_get_vocab(llama.model)
    fields = gemma_tokenizer.gguf_fields()
    n = llama_cpp.llama_vocab_n_tokens(vocab)
    assert n == len(fields["tokenizer.ggml.tokens"])
    texts = [llama_cpp.llama_vocab_get_text(vocab, i).decode("utf-8") for i in range(n)]
    assert texts == fields["tokenizer.ggml.tokens"]
    assert [llama_cpp.llama_vocab_get_score(vocab, i) for i in range(n)] == fields["tokenizer.ggml.scores"]


@pytest.mark.slow
def test_gemma_edge_cases_match_llama_cpp(gemma_tokenizer, llama):
    for text in EDGE_CASES:
        ours = gemma_tokenizer.encode(text, add_bos=True)
        assert ours == llama.tokenize(text.encode(), add_bos=True, special=False), repr(text)
        if "\u2581" not in text:  # both tokenizers read a literal '▁' as a space
            assert gemma_tokenizer.decode(ours) == text, repr(text)
    assert gemma_tokenizer.encode_batch(EDGE_CASES, add_bos=True) == [gemma_tokenizer.encode(t, add_bos=True) for t in EDGE_CASES]


@pytest.mark.slow
def test_gemma_documents_match_llama_cpp(gemma_tokenizer, llama):
    docs = _real_documents()
    assert len(docs) >= 50, "expected the Python standard library sources to be readable"
    ours = gemma_tokenizer.encode_batch([text for _, text in docs], add_bos=True)
    mismatched = [
        name for (name, text), ids in zip(docs, ours)
        if ids != llama.tokenize(text.encode(), add_bos=True, special=False)  # one document at a time
    ]
    n_tokens = sum(map(len, ours))
    assert n_tokens > 200_000
    assert not mismatched, f"{len(mismatched)}/{len(docs)} documents differ from llama.cpp, e.g. {mismatched[:3]}"
