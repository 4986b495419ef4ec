"""The teacher's SentencePiece tokenizer, rebuilt exactly from GGUF metadata.

A GGUF with tokenizer.ggml.model='llama' carries the SentencePiece vocabulary (pieces, scores,
types) but not the .model file. Rebuilt as a byte-fallback BPE model with an identity normalizer
it reproduces llama.cpp's token ids exactly (tests/test_tokenizer.py checks this on real text).

GGUF facts SentencePiece has no field for (add_bos/add_eos, and the few token strings/types that
had to change to segment like llama.cpp) ride along in the .model file as one extension field, so
save/load keeps them and `gguf_fields()` re-exports the original metadata byte for byte.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import sentencepiece as spm
from google.protobuf import unknown_fields
from google.protobuf.message import DecodeError
from sentencepiece import sentencepiece_model_pb2 as spm_pb2

from nano.atomic import atomic_file
from nano.errors import NanoError

_P = "tokenizer.ggml."
MODEL, PRE, TOKENS, SCORES, TYPES = (_P + k for k in ("model", "pre", "tokens", "scores", "token_type"))
BOS, EOS, UNK, PAD = (_P + k for k in ("bos_token_id", "eos_token_id", "unknown_token_id", "padding_token_id"))
ADD_BOS, ADD_EOS, ADD_SPACE = (_P + k for k in ("add_bos_token", "add_eos_token", "add_space_prefix"))

# GGUF token types use SentencePiece's numbering (llama.cpp copied it).
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
_SPACE, _META = " ", "\u2581"  # SentencePiece stores spaces as U+2581 ('▁')

# llama.cpp picks end-of-generation tokens by spelling and forces them to CONTROL at load
# (llama-vocab.cpp), so plain text never matches them even where the GGUF says USER_DEFINED.
# Gemma 3 hits this with its HTML tag token '</s>'.
_LLAMA_CPP_EOG_SPELLINGS = frozenset({
    "</s>", "<end_of_turn>", "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>",
    "<|endoftext|>", "<|eom_id|>", "<EOT>", "_<EOT>", "<|end_of_text|>", "<end_of_utterance>",
})

# Between a literal '▁' and a neighbouring space or '▁' (see Tokenizer._segments).
_LITERAL_META_EDGE = re.compile("(?<=\u2581)(?=[ \u2581])|(?<=[ \u2581])(?=\u2581)")

# ModelProto reserves field numbers >= 200 for third-party extensions; SentencePiece ignores them.
_NANO_FIELD = 20_517


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


def read_gguf_tokenizer_fields(reader: Any) -> dict[str, Any]:
    """Plain values for every `tokenizer.*` key of a `gguf.GGUFReader`.

    String arrays become list[str]; numeric arrays become one numpy array (the reader keeps one
    1-element view per entry, so concatenating is far faster than `contents()` for 262k tokens).
    """
    from gguf import GGUFValueType

    out: dict[str, Any] = {}
    for name, field in reader.fields.items():
        if not name.startswith("tokenizer."):
            continue
        types = field.types
        nested = (GGUFValueType.STRING, GGUFValueType.ARRAY)
        if len(types) == 2 and types[0] == GGUFValueType.ARRAY and types[1] not in nested:
            parts = [field.parts[i] for i in field.data]
            out[name] = np.concatenate(parts) if parts else np.empty(0, dtype=np.float32)
        else:
            out[name] = field.contents()
    return out


def _piece(token: str, score: float, kind: int) -> tuple[str, float, int]:
    """One GGUF vocabulary entry as the SentencePiece piece that segments text like llama.cpp."""
    if kind != USER_DEFINED:
        return token, score, kind
    if token in _LLAMA_CPP_EOG_SPELLINGS:
        return token, score, CONTROL
    # Added (user-defined) tokens are stored with real spaces; SentencePiece matches on '▁'.
    return token.replace(_SPACE, _META), score, kind


def _gguf_token(piece: str, kind: int) -> str:
    return piece.replace(_META, _SPACE) if kind == USER_DEFINED else piece


class Tokenizer:
    """A SentencePiece BPE processor that encodes exactly like llama.cpp does for the same GGUF."""

    def __init__(self, model: bytes, *, source: str) -> None:
        """`model`: a serialized SentencePiece ModelProto (what `save` writes)."""
        try:
            proto = spm_pb2.ModelProto.FromString(model)
        except DecodeError as exc:
            raise NanoError(f"{source}: not a SentencePiece model ({_one_line(exc)}); pass a .model file written by Tokenizer.save") from exc
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.LoadFromSerializedProto(model)
        except (RuntimeError, OSError, ValueError) as exc:
            raise NanoError(f"{source}: not a usable SentencePiece model ({_one_line(exc)}); rebuild it from the teacher GGUF") from exc
        self._model = model
        meta = _read_meta(proto, source)
        # llama.cpp matches added tokens on the raw text and SentencePiece on the escaped text, so a
        # literal '▁' next to a space can match Gemma's added space-run tokens only in SentencePiece.
        # Cutting the text there is exact as long as no mergeable piece contains '▁▁'.
        ud_space = any(p.type == USER_DEFINED and _META in p.piece for p in proto.pieces)
        self._cut_literal_meta = ud_space and not any(p.type != USER_DEFINED and _META * 2 in p.piece for p in proto.pieces)
        spec = proto.trainer_spec
        self.vocab_size: int = self._sp.get_piece_size()
        self.bos_id: int = spec.bos_id
        self.eos_id: int = spec.eos_id
        self.unk_id: int = spec.unk_id
        self.pad_id: int = spec.pad_id
        for name, i in (("bos", self.bos_id), ("eos", self.eos_id), ("unk", self.unk_id), ("pad", self.pad_id)):
            if i >= self.vocab_size:
                raise NanoError(f"{source}: {name} id {i} is outside the {self.vocab_size}-piece vocabulary; fix trainer_spec.{name}_id")
        # SentencePiece's own convention when the file carries no GGUF facts: llama.cpp's SPM defaults.
        self.add_bos_default: bool = bool(meta.get("add_bos", True))
        self.add_eos_default: bool = bool(meta.get("add_eos", False))

    # ---- construction -------------------------------------------------------------------

    @classmethod
    def from_pieces(
        cls,
        pieces: Sequence[tuple[str, float, int]],
        *,
        bos_id: int,
        eos_id: int,
        unk_id: int,
        pad_id: int = -1,
        add_bos_default: bool = True,
        add_eos_default: bool = False,
        add_space_prefix: bool = False,
        source: str = "<pieces>",
        gguf_tokens: Sequence[str] | None = None,
        gguf_types: Sequence[int] | None = None,
    ) -> Tokenizer:
        """Build from SentencePiece pieces (spaces written as '▁'), score, type (1..6).

        The piece at `unk_id` becomes UNKNOWN (SentencePiece needs exactly one; GGUFs often mark
        <unk> CONTROL). `gguf_tokens`/`gguf_types`: the original GGUF values, kept for export.
        """
        n = len(pieces)
        for name, i, optional in (("bos", bos_id, False), ("eos", eos_id, False), ("unk", unk_id, False), ("pad", pad_id, True)):
            if not (0 <= i < n or (optional and i == -1)):
                raise NanoError(f"{source}: {name} id {i} is outside the {n}-token vocabulary; fix the {name} id")
        m = spm_pb2.ModelProto()
        for i, (piece, score, kind) in enumerate(pieces):
            kind = UNKNOWN if i == unk_id else int(kind)
            if kind == UNKNOWN and i != unk_id:
                raise NanoError(f"{source}: token {i} {piece!r} has type UNKNOWN but the unk id is {unk_id}; only one unknown token is allowed")
            if not NORMAL <= kind <= BYTE:
                raise NanoError(f"{source}: token {i} {piece!r} has type {kind}; token types must be 1..6")
            m.pieces.add(piece=piece, score=float(score), type=kind)
        spec = m.trainer_spec
        spec.model_type = spm_pb2.TrainerSpec.BPE
        spec.vocab_size = n
        spec.byte_fallback = True
        spec.unk_id, spec.bos_id, spec.eos_id, spec.pad_id = unk_id, bos_id, eos_id, pad_id
        # SentencePiece resolves bos/eos/... by piece string, not by the ids above.
        spec.unk_piece, spec.bos_piece, spec.eos_piece = pieces[unk_id][0], pieces[bos_id][0], pieces[eos_id][0]
        if pad_id >= 0:
            spec.pad_piece = pieces[pad_id][0]
        for norm in (m.normalizer_spec, m.denormalizer_spec):
            norm.name = "identity"
            norm.add_dummy_prefix = add_space_prefix
            norm.remove_extra_whitespaces = False
            norm.escape_whitespaces = True
        # Only what the pieces cannot say: the file stays small and the hash stays meaningful.
        meta: dict[str, Any] = {"add_bos": bool(add_bos_default), "add_eos": bool(add_eos_default)}
        for key, given, derive in (
            ("gguf_types", gguf_types, lambda p: int(p.type)),
            ("gguf_tokens", gguf_tokens, lambda p: _gguf_token(p.piece, p.type)),
        ):
            if given is not None:
                if len(given) != n:
                    raise NanoError(f"{source}: {key} has {len(given)} entries for {n} pieces; pass one per piece")
                diff = {str(i): v for i, (p, v) in enumerate(zip(m.pieces, given)) if derive(p) != v}
                if diff:
                    meta[key] = diff
        payload = json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()
        model = m.SerializeToString(deterministic=True) + _varint(_NANO_FIELD << 3 | 2) + _varint(len(payload)) + payload
        return cls(model, source=source)

    @classmethod
    def from_gguf_fields(cls, fields: Mapping[str, Any], *, source: str) -> Tokenizer:
        """Build from GGUF tokenizer.ggml.* values (as from `read_gguf_tokenizer_fields`)."""

        def need(key: str) -> Any:
            if key not in fields:
                raise NanoError(f"{source}: GGUF field {key} is missing; use a GGUF exported with its tokenizer (llama.cpp convert_hf_to_gguf.py)")
            return fields[key]

        model = need(MODEL)
        if model != "llama":
            raise NanoError(f"{source}: {MODEL} is {model!r} but only 'llama' (SentencePiece) tokenizers are supported; use a Gemma-family GGUF")
        tokens = [t.decode("utf-8", errors="replace") if isinstance(t, bytes | bytearray) else str(t) for t in need(TOKENS)]
        values = {}
        for key, dtype in ((SCORES, np.float32), (TYPES, np.int64)):
            try:
                values[key] = np.asarray(need(key), dtype=dtype).reshape(-1).tolist()
            except (TypeError, ValueError) as exc:
                raise NanoError(f"{source}: {key} is not a numeric array ({_one_line(exc)}); re-export the GGUF") from exc
        scores, types = values[SCORES], values[TYPES]
        for key, values in ((SCORES, scores), (TYPES, types)):
            if len(values) != len(tokens):
                raise NanoError(f"{source}: {key} has {len(values)} entries but {TOKENS} has {len(tokens)}; the GGUF vocabulary is inconsistent, re-export it")
        if UNK in fields:
            unk_id = int(fields[UNK])
        elif types.count(UNKNOWN) == 1:
            unk_id = types.index(UNKNOWN)
        else:
            raise NanoError(f"{source}: GGUF field {UNK} is missing and no single token has type UNKNOWN; add {UNK}")
        return cls.from_pieces(
            [_piece(tok, score, kind) for tok, score, kind in zip(tokens, scores, types)],
            bos_id=int(need(BOS)),
            eos_id=int(need(EOS)),
            unk_id=unk_id,
            pad_id=int(fields.get(PAD, -1)),
            add_bos_default=bool(fields.get(ADD_BOS, True)),  # llama.cpp's defaults for SPM vocabularies
            add_eos_default=bool(fields.get(ADD_EOS, False)),
            add_space_prefix=bool(fields.get(ADD_SPACE, True)),
            source=source,
            gguf_tokens=tokens,
            gguf_types=types,
        )

    @classmethod
    def from_gguf(cls, path: str | Path) -> Tokenizer:
        """Read the tokenizer of a GGUF model file (~10 s for a 262k vocabulary)."""
        import gguf

        path = Path(path)
        if not path.is_file():
            raise NanoError(f"{path}: GGUF file not found; pass the path of a .gguf model")
        try:
            fields = read_gguf_tokenizer_fields(gguf.GGUFReader(path))
        except Exception as exc:  # the reader raises assorted types on foreign or truncated files
            raise NanoError(f"{path}: not a readable GGUF file ({_one_line(exc)}); pass a .gguf model such as gemma-3-270m-q4_k_m.gguf") from exc
        return cls.from_gguf_fields(fields, source=str(path))

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        """Load a SentencePiece .model file (normally one written by `save`)."""
        path = Path(path)
        try:
            model = path.read_bytes()
        except OSError as exc:
            raise NanoError(f"{path}: cannot read tokenizer model ({_one_line(exc)}); pass a .model file written by Tokenizer.save") from exc
        return cls(model, source=str(path))

    def save(self, path: str | Path) -> None:
        with atomic_file(path) as f:
            f.write(self._model)

    # ---- use ----------------------------------------------------------------------------

    def _segments(self, text: str) -> list[str]:
        """Pieces of `text` that SentencePiece encodes exactly like llama.cpp encodes the whole."""
        if not self._cut_literal_meta or _META not in text:
            return [text]
        return [seg for seg in _LITERAL_META_EDGE.split(text) if seg]

    def encode(self, text: str, *, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        segments = self._segments(text)
        if len(segments) == 1:
            return self._sp.encode(text, add_bos=add_bos, add_eos=add_eos)
        return self._join(self._sp.encode(segments), add_bos, add_eos)

    def encode_batch(self, texts: Iterable[str], *, add_bos: bool = False, add_eos: bool = False, num_threads: int = -1) -> list[list[int]]:
        """Encode many documents on SentencePiece's thread pool (num_threads=-1: all cores)."""
        per_text = [self._segments(t) for t in texts]
        if all(len(segs) == 1 for segs in per_text):
            return self._sp.encode([segs[0] for segs in per_text], add_bos=add_bos, add_eos=add_eos, num_threads=num_threads)
        flat = self._sp.encode([s for segs in per_text for s in segs], num_threads=num_threads)
        out, k = [], 0
        for segs in per_text:
            out.append(self._join(flat[k : k + len(segs)], add_bos, add_eos))
            k += len(segs)
        return out

    def _join(self, ids: list[list[int]], add_bos: bool, add_eos: bool) -> list[int]:
        out = [self.bos_id] if add_bos and self.bos_id >= 0 else []
        for row in ids:
            out += row
        if add_eos and self.eos_id >= 0:
            out.append(self.eos_id)
        return out

    def decode(self, ids: Iterable[int]) -> str:
        return self._sp.decode([int(i) for i in ids])

    def id_to_piece(self, i: int) -> str:
        return self._sp.id_to_piece(int(i))

    def piece_to_id(self, piece: str) -> int:
        """The id of `piece`, or unk_id when it is not in the vocabulary."""
        return self._sp.piece_to_id(piece)

    def stop_ids(self) -> list[int]:
        """Ids that end generation: eos, plus Gemma's chat-turn terminator when present."""
        ids = [self.eos_id]
        eot = self._sp.piece_to_id("<end_of_turn>")
        if self._sp.id_to_piece(eot) == "<end_of_turn>" and eot not in ids:
            ids.append(eot)
        return ids

    @property
    def sha256(self) -> str:
        """Identity of vocabulary, segmentation rules and GGUF facts, for data manifests and caches."""
        return hashlib.sha256(self._model).hexdigest()

    # ---- export -------------------------------------------------------------------------

    def gguf_fields(self) -> dict[str, Any]:
        """The tokenizer.ggml.* values llama.cpp expects; inverse of `from_gguf_fields`."""
        m = spm_pb2.ModelProto.FromString(self._model)
        meta = _read_meta(m, "<tokenizer>")
        types = [int(p.type) for p in m.pieces]
        tokens = [_gguf_token(p.piece, p.type) for p in m.pieces]
        for i, v in meta.get("gguf_types", {}).items():
            types[int(i)] = int(v)
        for i, v in meta.get("gguf_tokens", {}).items():
            tokens[int(i)] = v
        fields: dict[str, Any] = {
            MODEL: "llama",
            PRE: "default",
            TOKENS: tokens,
            SCORES: [p.score for p in m.pieces],
            TYPES: types,
            BOS: self.bos_id,
            EOS: self.eos_id,
            UNK: self.unk_id,
            ADD_BOS: self.add_bos_default,
            ADD_EOS: self.add_eos_default,
            ADD_SPACE: m.normalizer_spec.add_dummy_prefix,
        }
        if self.pad_id >= 0:
            fields[PAD] = self.pad_id
        return fields

    def write_gguf(self, writer: Any) -> None:
        """Add `gguf_fields()` to a `gguf.GGUFWriter` with the value types llama.cpp checks (uint32 ids, int32 types)."""
        f = self.gguf_fields()
        writer.add_tokenizer_model(f[MODEL])
        writer.add_tokenizer_pre(f[PRE])
        writer.add_token_list(f[TOKENS])
        writer.add_token_scores(f[SCORES])
        writer.add_token_types(f[TYPES])
        writer.add_bos_token_id(f[BOS])
        writer.add_eos_token_id(f[EOS])
        writer.add_unk_token_id(f[UNK])
        if PAD in f:
            writer.add_pad_token_id(f[PAD])
        writer.add_add_bos_token(f[ADD_BOS])
        writer.add_add_eos_token(f[ADD_EOS])
        writer.add_add_space_prefix(f[ADD_SPACE])


def _read_meta(proto: spm_pb2.ModelProto, source: str) -> dict[str, Any]:
    """Nano's extension field of a parsed ModelProto; {} for plain SentencePiece files."""
    for field in unknown_fields.UnknownFieldSet(proto):
        if field.field_number == _NANO_FIELD and field.wire_type == 2:
            try:
                meta = json.loads(field.data)
            except ValueError as exc:
                raise NanoError(f"{source}: damaged Nano metadata in the tokenizer model ({_one_line(exc)}); rebuild it from the teacher GGUF") from exc
            if isinstance(meta, dict):
                return meta
            raise NanoError(f"{source}: damaged Nano metadata in the tokenizer model (not a JSON object); rebuild it from the teacher GGUF")
    return {}
