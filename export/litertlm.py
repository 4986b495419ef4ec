"""`.litertlm` bundles: LiteRT-LM's one-file format holding the prefill/decode .tflite, the
SentencePiece model and the LlmMetadata proto (start/stop tokens, context length) that LiteRT-LM
needs to drive them. Written with litert-lm-builder; `read_sections` lists what a bundle holds."""

import dataclasses
import io
import struct
import tempfile
from collections.abc import Sequence
from pathlib import Path

from litert_lm_builder import litertlm_builder as builder
from litert_lm_builder import litertlm_core, litertlm_peek
from litert_lm_builder.runtime.proto import llm_metadata_pb2, llm_model_type_pb2, token_pb2

from nano.atomic import atomic_file
from nano.errors import NanoError


def _token(i: int) -> token_pb2.TokenUnion:
    return token_pb2.TokenUnion(token_ids=token_pb2.TokenIds(ids=[int(i)]))


def llm_metadata(*, start_id: int, stop_ids: Sequence[int], max_tokens: int) -> llm_metadata_pb2.LlmMetadata:
    """Metadata for a plain text model: no chat template (generic model type), so LiteRT-LM feeds
    the prompt as given after the start token. Thinking and function calling are mandatory fields."""
    if not stop_ids:
        raise NanoError("litertlm: no stop token; the tokenizer needs an eos id")
    return llm_metadata_pb2.LlmMetadata(
        start_token=_token(start_id), stop_tokens=[_token(i) for i in stop_ids],
        max_num_tokens=int(max_tokens),
        llm_model_type=llm_model_type_pb2.LlmModelType(generic_model=llm_model_type_pb2.GenericModel()),
        supports_thinking=False, supports_function_calling=False)


def write_litertlm(out: str | Path, *, tflite: str | Path, tokenizer: str | Path,
                   metadata: llm_metadata_pb2.LlmMetadata, name: str | None = None) -> Path:
    """Bundle `tflite` (prefill+decode signatures) and the SentencePiece `tokenizer` file into `out`."""
    for path, what in ((tflite, ".tflite"), (tokenizer, "tokenizer")):
        if not Path(path).is_file():
            raise NanoError(f"litertlm: {what} {path} not found; export the model / copy tokenizer.model first")
    b = builder.LitertLmFileBuilder()
    if name:
        b.add_system_metadata(builder.Metadata(key="model_name", value=name, dtype=builder.DType.STRING))
    b.add_tflite_model(str(tflite), builder.TfLiteModelType.PREFILL_DECODE)
    b.add_sentencepiece_tokenizer(str(tokenizer))
    with tempfile.TemporaryDirectory() as tmp:  # the builder takes the metadata as a file
        meta = Path(tmp) / "llm_metadata.pb"
        meta.write_bytes(metadata.SerializeToString())
        b.add_llm_metadata(str(meta))
        with atomic_file(out) as f:  # build() seeks back to write the header last
            b.build(f, validate_metadata=True)
    return Path(out)


@dataclasses.dataclass(frozen=True)
class Section:
    kind: str  # litert-lm's AnySectionDataType name: TFLiteModel, SP_Tokenizer, LlmMetadataProto
    model_type: str | None  # e.g. tf_lite_prefill_decode
    begin: int  # byte range in the file
    end: int


def read_sections(path: str | Path) -> list[Section]:
    """The sections of a .litertlm file, from its header; a damaged or truncated file is a NanoError."""
    fix = "re-export it with `nano export --litertlm`"
    try:
        header = litertlm_peek.read_litertlm_header(str(path), io.StringIO())
        out = []
        objects = header.SectionMetadata()
        for i in range(objects.ObjectsLength() if objects else 0):
            obj = objects.Objects(i)
            items = [litertlm_peek.kvp_to_dict(obj.Items(j)) for j in range(obj.ItemsLength())]
            model_type = next((it["value"] for it in items if it["key"] == "model_type"), None)
            out.append(Section(litertlm_core.any_section_data_type_to_string(obj.DataType()), model_type,
                               obj.BeginOffset(), obj.EndOffset()))
    except (OSError, ValueError, struct.error, IndexError) as e:
        raise NanoError(f"{path}: not a readable .litertlm bundle ({e}); {fix}") from None
    size = Path(path).stat().st_size
    if any(s.end > size for s in out):
        raise NanoError(f"{path}: truncated .litertlm bundle ({size} bytes, sections end at "
                        f"{max(s.end for s in out)}); {fix}")
    return out


def read_section(path: str | Path, section: Section) -> bytes:
    with open(path, "rb") as f:
        f.seek(section.begin)
        return f.read(section.end - section.begin)

