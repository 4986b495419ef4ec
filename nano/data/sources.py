"""Text sources (Debian doc package, folder of text files, JSONL) → cleaned documents."""

import fnmatch
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from nano.data.clean import html_to_text, records_to_text, rst_to_text
from nano.data.debian import debian_version, docset, ensure_debian_docs
from nano.errors import NanoError

Kind = Literal["debian", "folder", "jsonl"]
KINDS: tuple[Kind, ...] = ("debian", "folder", "jsonl")
TEXT_SUFFIXES = (".txt", ".md", ".rst", ".html", ".htm")


@dataclass(frozen=True)
class Source:
    """`kind:path` — for 'debian' the path is the package name."""

    kind: Kind
    path: str
    license: str | None = None  # None: the Debian table's, else "unspecified"

    @classmethod
    def parse(cls, spec: str) -> "Source":
        """`debian:python3.11-doc`, `folder:/path`, `jsonl:/path/file.jsonl`."""
        kind, sep, path = spec.partition(":")
        if not sep or kind not in KINDS or not path:
            raise NanoError(f"bad source {spec!r}: expected one of debian:PACKAGE, folder:DIR, jsonl:FILE")
        return cls(kind, path if kind == "debian" else str(Path(path).expanduser()))  # type: ignore[arg-type]

    def __str__(self) -> str:
        return f"{self.kind}:{self.path}"


DEFAULT_SOURCES: dict[str, list[Source]] = {
    "train": [Source("debian", "python3.11-doc")],
    "heldout": [Source("debian", "sqlite3-doc")],
}


@dataclass(frozen=True)
class Document:
    name: str  # "<source>/<relative path>" or "<file>:<line>"
    text: str


def file_to_text(path: Path, records: str | None = None) -> str:
    """One file → plain text, by suffix: reST and HTML are cleaned, .txt/.md kept as they are;
    with `records`, a file of records separated by that line (fortune's "%")."""
    raw = path.read_bytes().decode("utf-8", errors="replace").replace("\r\n", "\n")
    if records is not None:
        return records_to_text(raw, records)
    name = path.name.lower()
    if name.endswith((".rst", ".rst.txt")):
        return rst_to_text(raw)
    if name.endswith((".html", ".htm")):
        return html_to_text(raw)
    return raw.strip("\n")


def _folder_files(root: Path, exclude: tuple[str, ...] = (), include: tuple[str, ...] = ()) -> list[Path]:
    """Text files below `root` by suffix, or, with `include`, exactly the files those patterns match."""
    files = []
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        wanted = any(fnmatch.fnmatch(rel, x) for x in include) if include else p.name.lower().endswith(TEXT_SUFFIXES)
        if p.is_file() and wanted and not any(fnmatch.fnmatch(rel, x) for x in exclude):
            files.append(p)
    return files


def describe(source: Source) -> dict:
    """The manifest entry for a source (Debian sources carry the package version)."""
    entry = {"spec": str(source), "kind": source.kind}
    if source.kind == "debian":
        entry |= {"package": source.path, "version": debian_version(source.path)}
        entry["license"] = source.license or docset(source.path).license
    else:
        entry |= {"path": source.path, "license": source.license or "unspecified"}
    return entry


def read_documents(source: Source, progress: Callable[[int, int], None] | None = None) -> Iterator[Document]:
    """Cleaned documents of `source`, in a deterministic order; `progress(done, total)` per file/line."""
    if source.kind == "jsonl":
        path = Path(source.path)
        if not path.is_file():
            raise NanoError(f"{path}: JSONL source not found")
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        for n, line in enumerate(lines, 1):
            if line.strip():
                try:
                    text = json.loads(line)["text"]
                    if not isinstance(text, str):
                        raise TypeError
                except (ValueError, KeyError, TypeError):
                    raise NanoError(f'{path}:{n}: expected a JSON object {{"text": "..."}} per line') from None
                yield Document(f"{path}:{n}", text.replace("\r\n", "\n").strip("\n"))
            if progress:
                progress(n, len(lines))
        return
    if source.kind == "debian":
        root, docs = ensure_debian_docs(source.path), docset(source.path)
        exclude, include, records = docs.exclude, docs.include, docs.records
    else:
        root, exclude, include, records = Path(source.path), (), (), None
        if not root.is_dir():
            raise NanoError(f"{root}: folder source not found")
    files = _folder_files(root, exclude, include)
    for n, path in enumerate(files, 1):
        yield Document(f"{source}/{path.relative_to(root).as_posix()}", file_to_text(path, records))
        if progress:
            progress(n, len(files))
