"""Fetch documentation from Debian packages without installing them: `apt-get download` + `dpkg-deb -x`."""

import subprocess
from dataclasses import dataclass
from pathlib import Path

from nano.atomic import atomic_dir
from nano.errors import NanoError
from nano.paths import cache_dir


@dataclass(frozen=True)
class DocSet:
    """Where a package keeps its text, under the filesystem root it was extracted to."""

    root: str  # relative to "/"
    license: str
    marker: str = "*"  # glob that must match below `root` for a copy to count as present
    exclude: tuple[str, ...] = ()  # fnmatch patterns, relative to `root`
    include: tuple[str, ...] = ()  # fnmatch patterns, relative to `root`: only these files (any suffix)
    records: str | None = None  # a line that separates records (fortune's "%"): read as a paragraph break


KNOWN_DOCS = {
    "python3.11-doc": DocSet("usr/share/doc/python3.11/html/_sources", "PSF-2.0", "*.rst.txt"),
    # Diagram pages, link indexes and the single-page copies of c3ref/, session/ and releaselog/.
    "sqlite3-doc": DocSet(
        "usr/share/doc/sqlite3",
        "public-domain",
        "*.html",
        exclude=(
            "syntax/*", "syntaxdiagrams.html", "requirements.html", "doc_*_crossref.html", "keyword_index.html",
            "sitemap.html", "doclist.html", "toc.html", "*/funclist.html", "*/objlist.html", "*/constlist.html",
            "capi3ref.html", "changes.html", "session.html",
        ),
    ),
    # Quotations, verse and anecdotes: prose of another kind than the manuals, for an out-of-domain
    # held-out set. The literary files only (no ASCII art, shell sessions or software jokes).
    "fortunes": DocSet(
        "usr/share/games/fortunes",
        "BSD-3-Clause (fortune-mod)",
        "people",
        include=(
            "art", "education", "food", "humorists", "kids", "law", "love", "medicine", "people", "pets",
            "platitudes", "politics", "science", "songs-poems", "sports", "tao", "wisdom", "work",
        ),
        records="%",
    ),
}


def docset(package: str) -> DocSet:
    return KNOWN_DOCS.get(package, DocSet(f"usr/share/doc/{package}", "see /usr/share/doc/<package>/copyright"))


def _cache(package: str) -> Path:
    return cache_dir() / "debian" / package


def find_debian_docs(package: str) -> Path | None:
    """The package's doc root if it is installed or already cached; never downloads."""
    docs = docset(package)
    for root in (Path("/") / docs.root, _cache(package) / "root" / docs.root):
        if root.is_dir() and any(p.is_file() for p in root.rglob(docs.marker)):
            return root
    return None


def debian_version(package: str) -> str:
    """Version of the docs `find_debian_docs` returns: the cached .deb's, else dpkg's, else 'unknown'."""
    root = find_debian_docs(package)
    stamp = _cache(package) / "VERSION"
    if root is not None and root.is_relative_to(_cache(package)) and stamp.is_file():
        return stamp.read_text().strip()
    result = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True)
    return result.stdout.strip() if result.returncode == 0 and result.stdout.strip() else "unknown"


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    except FileNotFoundError:
        raise NanoError(f"`{cmd[0]}` not found: Debian docs need apt-get and dpkg-deb (Debian/Ubuntu)") from None


def _last_line(result: subprocess.CompletedProcess) -> str:
    lines = [line for line in (result.stderr + result.stdout).splitlines() if line.strip()]
    return lines[-1].strip() if lines else f"exit status {result.returncode}"


def ensure_debian_docs(package: str) -> Path:
    """Doc root of `package`: installed copy, cached extraction, or download + extract into the cache."""
    if (root := find_debian_docs(package)) is not None:
        return root
    with atomic_dir(_cache(package), overwrite=True) as tmp:
        result = _run(["apt-get", "download", package], tmp)
        if result.returncode != 0:  # empty package lists on a fresh image: update once, retry
            update = _run(["apt-get", "update"], tmp)
            if update.returncode != 0:
                raise NanoError(
                    f"`apt-get download {package}` failed ({_last_line(result)}) and `apt-get update` failed "
                    f"({_last_line(update)}); run `sudo apt-get update` and retry"
                )
            result = _run(["apt-get", "download", package], tmp)
            if result.returncode != 0:
                raise NanoError(
                    f"`apt-get download {package}` failed: {_last_line(result)}; check the package name and network"
                )
        debs = sorted(tmp.glob("*.deb"))
        if not debs:
            raise NanoError(f"`apt-get download {package}` produced no .deb in {tmp}")
        version = _run(["dpkg-deb", "-f", str(debs[0]), "Version"], tmp)
        extract = _run(["dpkg-deb", "-x", str(debs[0]), str(tmp / "root")], tmp)
        if extract.returncode != 0:
            raise NanoError(f"`dpkg-deb -x {debs[0].name}` failed: {_last_line(extract)}")
        (tmp / "VERSION").write_text((version.stdout.strip() or "unknown") + "\n")
        debs[0].unlink()  # the extracted tree is all we need
    root = find_debian_docs(package)
    if root is None:
        raise NanoError(f"package {package} has no files under /{docset(package).root}; is it a documentation package?")
    return root
