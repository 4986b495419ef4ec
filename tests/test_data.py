"""nano.data: markup cleaning, prepare() (dedup, shards, atomicity, resume), shard reading, eval windows."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

from distill.teacher_cache import training_rows
from nano.data import Source, TokenSplit, eval_windows, prepare
from nano.data.clean import html_to_text, records_to_text, rst_to_text
from nano.data.sources import read_documents
from nano.data.stream import TokenRows, TokenStream
from nano.errors import NanoError


class ByteTokenizer:
    """UTF-8 bytes → ids 3..258; 0 pad, 1 EOS, 2 BOS."""

    eos_id, bos_id, vocab_size = 1, 2, 259

    def __init__(self, sha256: str = "fake-bytes-v1") -> None:
        self.sha256 = sha256
        self.batches = 0

    def encode(self, text: str) -> list[int]:
        return (np.frombuffer(text.encode(), dtype=np.uint8).astype(np.uint32) + 3).tolist()

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        self.batches += 1
        return [self.encode(t) for t in texts]

    def decode(self, ids) -> str:
        return bytes(int(i) - 3 for i in ids).decode()


# --- cleaning ---------------------------------------------------------------------------------


def test_rst_directives_roles_code_and_comments():
    src = """Title
=====

.. _label:

.. function:: frob(x, *, y=None)
   :noindex:

   Frobnicate *x* with :func:`~pkg.mod.helper` and :class:`the base <pkg.Base>`,
   see :pep:`8` and `docs <https://example.org>`_.  Use ``a|b``\\ s.

   .. versionadded:: 3.9

   Example::

      >>> frob(1)
      2

.. note:: Really |version| **important**.

.. index:: single: frob

.. code-block:: python
   :caption: demo

   print("hi")

.. This is a comment
   spanning lines.

Tail paragraph ::

    literal *not* :func:`touched`



"""
    assert rst_to_text(src) == (
        "Title\n\n"
        "frob(x, *, y=None)\n\n"
        "Frobnicate x with helper and the base,\nsee PEP 8 and docs.  Use a|bs.\n\n"
        "Example:\n\n   >>> frob(1)\n   2\n\n"
        "Really important.\n\n"
        '    print("hi")\n\n'
        "Tail paragraph\n\n    literal *not* :func:`touched`"
    )


def test_rst_literal_block_inside_list_item_ends_at_item_text():
    src = "- Hash lists, e.g.::\n\n     d = {}\n\n  would raise :exc:`KeyError`.\n"
    assert rst_to_text(src) == "- Hash lists, e.g.:\n\n     d = {}\n\n  would raise KeyError."


def test_html_drops_menus_scripts_svg_and_keeps_text():
    src = """<html><head><title>T</title><style>p{}</style></head><body>
<div class="menu mainmenu"><ul><li><a href=x>Home</a></li></ul></div>
<script>var x = 1;</script>
<h1>Intro &amp; more</h1>
<p>Some   <b>bold</b>
text&nbsp;here.</p>
<div class="imgcontainer"><div><svg><text>SELECT</text></svg></div></div>
<svg><text>diagram</text></svg>
<ul><li>one<li>two</ul>
<div class="codeblock"><pre>
SELECT *
  FROM t;
</pre></div>
<p>2<sup>48</sup> bytes</p>
<footer>page footer</footer>
</body></html>"""
    assert html_to_text(src) == "Intro & more\n\nSome bold text here.\n\n- one\n- two\n\nSELECT *\n  FROM t;\n\n2^48 bytes"


# --- prepare ----------------------------------------------------------------------------------

SHARED = "The shared paragraph appears in both splits and must be removed from the training split entirely."
WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau upsilon"
OTHER = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen"


@pytest.fixture
def corpus(tmp_path: Path) -> dict[str, list[Source]]:
    folder = tmp_path / "train_docs"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text(f"First training document. {WORDS}\n\n{SHARED}\n")
    (folder / "sub" / "b.md").write_text(f"First   training document. {WORDS}\n\n{SHARED}")  # same after whitespace norm
    (folder / "c.rst").write_text(f"Heading\n=======\n\nSecond document with :func:`role` text. {WORDS}\n")
    (folder / "tiny.txt").write_text("too short to keep")
    (folder / "ignored.bin").write_bytes(b"\x00\x01")
    jsonl = tmp_path / "heldout.jsonl"
    jsonl.write_text(
        json.dumps({"text": f"Held-out one. {OTHER}\n\n{SHARED}"}) + "\n\n" + json.dumps({"text": f"Held-out two. {OTHER} end"}) + "\n"
    )
    return {"train": [Source.parse(f"folder:{folder}")], "heldout": [Source.parse(f"jsonl:{jsonl}")]}


def test_records_become_paragraphs():
    src = "A friend is a present.\n\t\t-- R. L. Stevenson\n%\n\n%\r\nTwo\nlines  \n% \nlast"
    assert records_to_text(src, "%") == "A friend is a present.\n\t\t-- R. L. Stevenson\n\nTwo\nlines\n\nlast"
    assert records_to_text("50% off\n%", "%") == "50% off"  # only a line that is the separator splits


def test_prepare_folder_and_jsonl(tmp_path: Path, corpus):
    tok = ByteTokenizer()
    stages = []
    out = tmp_path / "data"
    m = prepare(out, tok, sources=corpus, progress=lambda s, d, t: stages.append(s))
    assert tok.batches > 0 and any(s.startswith("tokenize") for s in stages)
    train, held = m.splits["train"], m.splits["heldout"]
    assert (train["documents"], held["documents"]) == (2, 2)
    assert train["dedup"] == {
        "tiny_documents_dropped": 1,
        "duplicate_documents_dropped": 1,
        "boilerplate_paragraphs_dropped": 0,
        "paragraphs_dropped": 1,
        "paragraph_bytes_dropped": len(SHARED),
        "documents_emptied": 0,
    }
    assert train["sources"][0]["kind"] == "folder" and train["sources"][0]["documents"] == 2
    assert m.tokenizer["sha256"] == "fake-bytes-v1" and train["tokenizer_sha256"] == "fake-bytes-v1"
    assert m.overlap["heldout"]["in_train"] == 0  # the shared paragraph was the only overlap
    assert json.loads((out / "manifest.json").read_text()) == m.to_dict()

    ts = TokenSplit.open(out, "train")
    docs = [tok.decode(ts.tokens[a : b - 1]) for a, b in zip(ts.doc_offsets[:-1], ts.doc_offsets[1:])]
    assert docs == [f"First training document. {WORDS}", f"Heading\n\nSecond document with role text. {WORDS}"]
    assert all(ts.tokens[b - 1] == tok.eos_id for b in ts.doc_offsets[1:])
    assert ts.num_tokens == train["tokens"] == sum(len(d.encode()) + 1 for d in docs)
    assert train["text_bytes"] == sum(len(d.encode()) for d in docs)
    held_split = TokenSplit.open(out, "heldout")
    assert tok.decode(held_split.tokens[: held_split.doc_offsets[1] - 1]) == f"Held-out one. {OTHER}\n\n{SHARED}"

    # Re-running with the same tokenizer is a no-op that returns the stored manifest.
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    again = prepare(out, ByteTokenizer(), sources=corpus, progress=lambda *a: pytest.fail("should not run"))
    assert again == m and {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before

    with pytest.raises(NanoError, match="another tokenizer"):
        prepare(out, ByteTokenizer("other"), sources=corpus)
    assert prepare(out, ByteTokenizer("other"), sources=corpus, overwrite=True).tokenizer["sha256"] == "other"


def test_prepare_small_shards_straddle_documents(tmp_path: Path, corpus):
    m = prepare(tmp_path / "data", ByteTokenizer(), sources=corpus, shard_tokens=64)
    ts = TokenSplit.open(tmp_path / "data", "train")
    assert len(m.splits["train"]["shards"]) == -(-ts.num_tokens // 64) > 2
    assert ts.doc_offsets[-1] == ts.num_tokens == m.splits["train"]["tokens"]
    assert ts.tokens[ts.doc_offsets[1] - 1] == ByteTokenizer.eos_id


def test_prepare_drops_boilerplate_paragraphs(tmp_path: Path):
    footer = "See also the lists of objects, constants and functions."
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text("".join(json.dumps({"text": f"Document {i}: {WORDS}\n\n{footer}"}) + "\n" for i in range(12)))
    m = prepare(tmp_path / "data", ByteTokenizer(), sources={"train": [f"jsonl:{jsonl}"]})
    assert m.splits["train"]["dedup"]["boilerplate_paragraphs_dropped"] == 12 and m.splits["train"]["documents"] == 12
    ts = TokenSplit.open(tmp_path / "data", "train")
    assert ByteTokenizer().decode(ts.tokens[: ts.doc_offsets[1] - 1]) == f"Document 0: {WORDS}"


def test_interrupted_prepare_leaves_nothing(tmp_path: Path, corpus):
    def boom(stage, done, total):
        if stage.startswith("tokenize"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        prepare(tmp_path / "data", ByteTokenizer(), sources=corpus, progress=boom)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["heldout.jsonl", "train_docs"]


def test_prepare_errors(tmp_path: Path, corpus):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(NanoError, match=f"folder:{empty}"):
        prepare(tmp_path / "out", ByteTokenizer(), sources={"train": [Source("folder", str(empty))]})
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"txt": 1}\n')
    with pytest.raises(NanoError, match="bad.jsonl:2"):
        prepare(tmp_path / "out", ByteTokenizer(), sources={"train": [f"jsonl:{bad}"]})
    with pytest.raises(NanoError, match="expected one of"):
        Source.parse("web:https://example.org")
    assert not (tmp_path / "out").exists()
    (tmp_path / "occupied").mkdir()
    (tmp_path / "occupied" / "keep.txt").write_text("x")
    with pytest.raises(NanoError, match="occupied: output directory exists and is not empty"):
        prepare(tmp_path / "occupied", ByteTokenizer(), sources=corpus)


# --- reading ----------------------------------------------------------------------------------


def test_token_split_errors(tmp_path: Path, corpus):
    out = tmp_path / "data"
    prepare(out, ByteTokenizer(), sources=corpus)
    ts = TokenSplit.open(out, "train")
    ts.check_tokenizer("fake-bytes-v1")
    with pytest.raises(NanoError, match="tokenized with tokenizer fake-bytes-v1 but the model uses abc"):
        ts.check_tokenizer("abc")
    with pytest.raises(NanoError, match="no split 'valid'"):
        TokenSplit.open(out, "valid")
    (out / "train" / "tokens-00000.npy").write_bytes(b"garbage")
    with pytest.raises(NanoError, match="tokens-00000.npy"):
        TokenSplit.open(out, "train")
    os.remove(out / "heldout" / "doc_offsets.npy")
    with pytest.raises(NanoError, match="doc_offsets.npy: missing"):
        TokenSplit.open(out, "heldout")
    with pytest.raises(NanoError, match="manifest.json: missing"):
        TokenSplit.open(tmp_path, "train")


def test_eval_windows():
    tokens = np.arange(10, 20, dtype=np.uint32)  # 10 tokens → three chunks of 3, one token left over
    np.testing.assert_array_equal(
        eval_windows(tokens, window=4, bos_id=2),
        [[2, 10, 11, 12], [2, 13, 14, 15], [2, 16, 17, 18]],
    )
    np.testing.assert_array_equal(eval_windows(tokens, window=4, bos_id=2, max_windows=2), [[2, 10, 11, 12], [2, 16, 17, 18]])
    np.testing.assert_array_equal(eval_windows(np.arange(30), window=3, bos_id=0, max_windows=3)[:, 1], [0, 14, 28])
    assert eval_windows(tokens, window=12, bos_id=2).shape == (0, 12)
    assert eval_windows(tokens, window=4, bos_id=2).dtype == np.int32


def test_token_stream_reads_across_shards_like_the_concatenation():
    shards = [np.arange(0, 5, dtype=np.uint32), np.zeros(0, np.uint32), np.arange(5, 12, dtype=np.uint32),
              np.arange(12, 13, dtype=np.uint32), np.arange(13, 20, dtype=np.uint32)]
    whole = np.concatenate(shards)
    stream = TokenStream(shards)
    assert len(stream) == 20 and stream.dtype == np.uint32
    for a in range(-21, 22):
        for b in range(-21, 22):
            np.testing.assert_array_equal(stream[a:b], whole[a:b])
    assert [int(stream[i]) for i in range(-20, 20)] == whole[np.arange(-20, 20)].tolist()
    assert np.shares_memory(stream[6:10], shards[2])  # inside one shard: a view, no copy
    with pytest.raises(IndexError, match="out of range"):
        stream[20]
    with pytest.raises(IndexError, match="step 1"):
        stream[::2]
    rows = TokenRows(stream, 4)
    np.testing.assert_array_equal(rows.take([1, 3]), [[4, 5, 6, 7], [12, 13, 14, 15]])  # across 0|empty|2 and 2|3|4
    for seq_len in (1, 3, 4, 6, 7, 20, 21):
        rows, want = TokenRows(stream, seq_len), training_rows(whole, seq_len)
        every = np.arange(len(want))[::-1]
        assert len(rows) == len(want) and rows.take(every).dtype == np.int32
        np.testing.assert_array_equal(rows.take(every), want[every])
    rows = TokenRows(stream, 3)
    assert len(rows.head(2)) == 2 and len(rows.head(99)) == 6
    np.testing.assert_array_equal(rows.head(2).take([1]), [[3, 4, 5]])
    with pytest.raises(IndexError, match=r"row index out of range 0\.\.1"):
        rows.head(2).take([2])
    assert rows.take([]).shape == (0, 3)
    np.testing.assert_array_equal(TokenRows.from_array(whole.reshape(4, 5)).take([2]), [[10, 11, 12, 13, 14]])
    with pytest.raises(NanoError, match="seq_len=0 tokens: seq_len must be at least 1"):
        TokenRows(stream, 0)


def test_split_rows_read_memmapped_shards_on_demand(tmp_path: Path, corpus):
    out = tmp_path / "data"
    m = prepare(out, ByteTokenizer(), sources=corpus, shard_tokens=64)
    ts = TokenSplit.open(out, "train")
    files = [out / "train" / name for name in m.splits["train"]["shards"]]
    assert len(files) > 2 and [Path(s.filename) for s in ts.tokens.shards] == files
    assert all(isinstance(s, np.memmap) and len(s) == len(np.load(f)) for s, f in zip(ts.tokens.shards, files))
    whole = np.concatenate([np.load(f) for f in files])
    rows = TokenRows(ts.tokens, 50)  # 50 does not divide 64: rows straddle shards
    assert rows.stream is ts.tokens and len(rows) == len(whole) // 50  # holds the memmaps, no copy of the split
    got = rows.take([3, 0, 3])
    assert got.shape == (3, 50) and got.dtype == np.int32
    np.testing.assert_array_equal(got, training_rows(whole, 50)[[3, 0, 3]])
    np.testing.assert_array_equal(eval_windows(ts.tokens, window=51, bos_id=2, max_windows=3),
                                  eval_windows(whole, window=51, bos_id=2, max_windows=3))


# --- Debian (the default sources) ---------------------------------------------------------------


def test_debian_docs(tmp_path: Path, debian_docs_in_test_cache, nano_cache):
    m = prepare(tmp_path / "data", ByteTokenizer())  # the default sources: debian:python3.11-doc / sqlite3-doc
    assert all(p.is_symlink() for p in nano_cache.glob("debian/*"))  # read the shared docs, fetched nothing
    train, held = m.splits["train"], m.splits["heldout"]
    assert train["sources"][0]["package"] == "python3.11-doc" and train["sources"][0]["license"] == "PSF-2.0"
    assert train["documents"] > 400 and held["documents"] > 500
    assert train["text_bytes"] > 5_000_000 and held["text_bytes"] > 2_000_000
    assert m.overlap["heldout"]["rate"] < 0.01
    ts = TokenSplit.open(tmp_path / "data", "heldout")
    text = ByteTokenizer().decode(ts.tokens[: ts.doc_offsets[1] - 1])
    assert "<svg" not in text and "function toggle" not in text


def test_debian_record_files_take_only_the_included_files(nano_cache):
    """`debian:fortunes` (the out-of-domain held-out): suffixless record files, only the literary ones."""
    root = nano_cache / "debian" / "fortunes" / "root" / "usr/share/games/fortunes"
    root.mkdir(parents=True)
    (root / "people").write_text("A bore talks.\n%\nA city is lonesome.\n")
    (root / "people.dat").write_bytes(b"\x00\x02")  # fortune's index, not text
    (root / "computers").write_text("Real programmers...\n")  # not in the list
    docs = list(read_documents(Source.parse("debian:fortunes")))
    assert [(d.name, d.text) for d in docs] == [("debian:fortunes/people", "A bore talks.\n\nA city is lonesome.")]
