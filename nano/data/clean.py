"""Markup → plain text: reStructuredText (Python docs), HTML (SQLite docs) and record files
(fortunes). Pure functions."""

import re
from html.parser import HTMLParser

# --- reStructuredText -------------------------------------------------------------------------

# Directives whose whole block is metadata, markup plumbing or a grammar (not prose).
_RST_DROP = {
    "index", "module", "currentmodule", "moduleauthor", "sectionauthor", "highlight", "toctree",
    "include", "literalinclude", "tabularcolumns", "testsetup", "testcleanup", "audit-event",
    "audit-event-table", "image", "figure", "only", "raw", "contents", "program", "miscnews",
    "limited-api-list", "productionlist", "availability", "default-role", "role", "meta",
}
# Directives whose body is code: kept verbatim, indented by four spaces.
_RST_CODE = {"code-block", "code", "sourcecode", "doctest", "testcode", "testoutput", "parsed-literal"}
# Admonitions whose arguments are prose (a title or the note itself).
_RST_TITLED = {
    "note", "warning", "seealso", "rubric", "topic", "sidebar", "admonition", "important", "caution",
    "tip", "hint", "attention", "danger", "error", "epigraph", "impl-detail",
}
# Object descriptions (`.. function:: f(x)`): the signature is kept as a line of text.
_RST_SIGNATURES = {
    "function", "method", "class", "attribute", "data", "exception", "decorator", "decoratormethod",
    "classmethod", "staticmethod", "abstractmethod", "coroutinefunction", "coroutinemethod",
    "awaitablefunction", "awaitablemethod", "member", "type", "var", "macro", "struct", "union",
    "enum", "enumerator", "object", "describe", "cmdoption", "option", "envvar", "opcode", "pdbcommand",
}

_EXPLICIT = re.compile(r"^\.\.(?:\s|$)")
_DIRECTIVE = re.compile(r"^\.\.\s+([\w:.+-]+?)::(?:\s+(.*))?$")
_FOOTNOTE = re.compile(r"^\.\.\s+\[[^\]\s]+\](?:\s+(.*))?$")
_OPTION = re.compile(r"^:[\w.-]+:(?:\s|$)")
_ADORNMENT = re.compile(r"^([!-/:-@\[-`{-~])\1{2,}$")  # section under/overlines, transitions
_BULLET = re.compile(r"\s*(?:[-*+]|\d+[.)]|#\.|\(\w+\))\s+")
_TABLE_BORDER = re.compile(r"^(?:\+[-=+]+\+|=+(?:\s+=+)+)$")
_INLINE = re.compile(
    r"``(?P<lit>.+?)``(?!\w)"
    r"|(?::(?P<role>[\w:.+-]+):)?`(?P<text>[^`]+)`(?::[\w:.+-]+:)?(?:__?)?(?!\w)",
    re.S,
)
_STRONG = re.compile(r"(?<![\w\\*])\*\*(?=\S)(.+?)(?<=\S)\*\*(?![\w*])", re.S)
_EMPHASIS = re.compile(r"(?<![\w\\*])\*(?=[^\s*])(.+?)(?<=[^\s\\])\*(?![\w*])", re.S)
_SUBSTITUTION = re.compile(r" ?(?<![\w|])\|(?=\S)[^|\n]+(?<=\S)\|(?:__?)?(?![\w|])")
_FOOTNOTE_REF = re.compile(r" ?\[(?:#[\w-]*|\d+|\*)\]_")


def rst_to_text(src: str) -> str:
    """reST source → prose with code blocks as indented text; markup, directives and comments removed."""
    lines = [line.rstrip() for line in src.replace("\r\n", "\n").expandtabs(8).split("\n")]
    text = "\n".join(line.rstrip() for line in _rst_block(lines))
    return re.sub(r"\n{3,}", "\n\n", text).strip("\n")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _block_end(lines: list[str], start: int, indent: int) -> int:
    """Index of the first non-blank line at or after `start` indented `indent` or less."""
    while start < len(lines) and (not lines[start].strip() or _indent(lines[start]) > indent):
        start += 1
    return start


def _dedent(lines: list[str]) -> list[str]:
    cut = min((_indent(line) for line in lines if line.strip()), default=0)
    return [line[cut:] for line in lines]


def _rst_block(lines: list[str]) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(lines):
        stripped, ind = lines[i].strip(), _indent(lines[i])
        if not stripped:
            out.append("")
            i += 1
        elif _EXPLICIT.match(stripped):
            end = _block_end(lines, i + 1, ind)
            out += [" " * ind + line if line else "" for line in _rst_explicit(stripped, lines[i + 1 : end])]
            i = end
        elif _ADORNMENT.match(stripped) or _TABLE_BORDER.match(stripped):
            i += 1
        else:
            end = i
            while end < len(lines) and lines[end].strip() and not _EXPLICIT.match(lines[end].strip()):
                end += 1
            para = [
                re.sub(r"(?<=\S) {2,}(?=\S)", " ", line) if line.lstrip().startswith("|") else line  # table row
                for line in lines[i:end]
                if not (_ADORNMENT.match(line.strip()) or _TABLE_BORDER.match(line.strip()))
            ]
            i = end
            if stripped.startswith(">>>"):  # doctest block: code, verbatim
                out += para
                continue
            text = "\n".join(para).rstrip()
            if text.endswith("::"):  # "Para::" → "Para:", "Para ::" → "Para", "::" → nothing
                text = text[:-2].rstrip() if text[:-2].endswith((" ", "\n")) or not text[:-2].strip() else text[:-1]
                last = para[-1]  # the literal block is indented past the line that introduces it
                bullet = _BULLET.match(last) if len(para) == 1 else None
                end = _block_end(lines, i, bullet.end() if bullet else _indent(last))
                out += ([*_rst_inline(text).split("\n"), ""] if text.strip() else []) + lines[i:end]
                i = end
            else:
                out += _rst_inline(text).split("\n")
    return out


def _rst_explicit(first: str, body: list[str]) -> list[str]:
    """One explicit-markup block (directive, footnote, comment, target) → lines at indent 0."""
    body = _dedent(body)
    if m := _DIRECTIVE.match(first):
        name, args = m.group(1), (m.group(2) or "").strip()
        base = name.rsplit(":", 1)[-1]  # c:function → function
        if name in _RST_DROP or base in _RST_DROP:
            return []
        head = [args] if args and base in _RST_SIGNATURES else [_rst_inline(args)] if args and base in _RST_TITLED else []
        while head and base in _RST_SIGNATURES and body and body[0].strip() and not _OPTION.match(body[0]):
            head.append(body.pop(0).strip())  # further signatures of an overloaded object
        while body and _OPTION.match(body[0]):  # directive options come right after the line
            body = body[1:]
        if base in _RST_CODE:
            return ["", *("    " + line if line else "" for line in body), ""]
        return ["", *head, *_rst_block(body), ""]
    if m := _FOOTNOTE.match(first):
        return ["", *_rst_block([m.group(1) or "", *body]), ""]
    return []  # comment, hyperlink target or substitution definition


def _rst_inline(text: str) -> str:
    """Inline markup → text: roles, links, literals, emphasis, escapes, substitution refs."""
    parts, pos = [], 0
    for m in _INLINE.finditer(text):
        parts.append(_rst_plain(text[pos : m.start()]))
        parts.append(m.group("lit") if m.group("lit") is not None else _rst_role(m.group("role"), m.group("text")))
        pos = m.end()
    parts.append(_rst_plain(text[pos:]))
    return "".join(parts)


def _rst_role(role: str | None, text: str) -> str:
    if text.rstrip().endswith(">") and "<" in text:  # `title <target>` → title
        title, target = text[: text.rindex("<")].strip(), text[text.rindex("<") + 1 : text.rindex(">")]
        text = title or target
    text = text.strip().lstrip("!")
    if text.startswith("~"):  # ~a.b.c → c
        text = text[1:].rsplit(".", 1)[-1]
    if role in ("pep", "rfc"):
        return f"{role.upper()} {text}"
    return text


def _rst_plain(text: str) -> str:
    text = _FOOTNOTE_REF.sub("", text)
    text = _SUBSTITUTION.sub("", text)
    text = _STRONG.sub(r"\1", text)
    text = _EMPHASIS.sub(r"\1", text)
    text = text.replace("\\ ", "")
    return re.sub(r"\\(.)", r"\1", text)


# --- HTML -------------------------------------------------------------------------------------

_HTML_SKIP_TAGS = {
    "head", "script", "style", "svg", "math", "nav", "header", "footer", "form", "select", "button",
    "noscript", "iframe", "object", "template", "canvas", "map",
}
# class / id tokens of navigation, menus, tables of contents and diagram containers.
_HTML_SKIP_CLASSES = {
    "menu", "mainmenu", "submenu", "searchmenu", "tagline", "nav", "navbar", "navigation", "breadcrumb",
    "breadcrumbs", "toc", "fancy_toc", "toc_sub", "sphinxsidebar", "related", "footer", "header",
    "imgcontainer", "bnf", "railroad", "diagram", "skip-link",
}
_HTML_VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
_HTML_PARAGRAPH = {
    "p", "div", "pre", "table", "blockquote", "ul", "ol", "dl", "h1", "h2", "h3", "h4", "h5", "h6",
    "section", "article", "main", "aside", "center", "figure", "hr", "title", "caption", "details",
}
_HTML_LINE = {"li", "tr", "dt", "dd", "br", "summary"}


class _TextExtractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.skip: tuple[str, int] | None = None  # (tag being skipped, nesting depth of that tag)
        self.pre = 0
        self.pre_start = False  # a newline right after <pre> is not content
        self.bullet = False  # "- " goes before the first text of a list item

    def _break(self, newlines: int) -> None:
        if not self.out:
            return
        tail = "".join(self.out[-3:])
        have = len(tail) - len(tail.rstrip("\n"))
        if have < newlines:
            self.out.append("\n" * (newlines - have))

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self.skip:
            if tag == self.skip[0]:
                self.skip = (tag, self.skip[1] + 1)
            return
        attr = dict(attrs)
        names = set((attr.get("class") or "").split()) | {attr.get("id") or ""}
        if tag not in _HTML_VOID and (
            tag in _HTML_SKIP_TAGS or names & _HTML_SKIP_CLASSES or attr.get("role") == "navigation"
        ):
            self.skip = (tag, 1)
            return
        if tag in _HTML_PARAGRAPH:
            self._break(2)
        elif tag in _HTML_LINE:
            self._break(1)
        if tag == "sup":  # 2<sup>48</sup> → 2^48
            self.out.append("^")
        elif tag == "li":
            self.bullet = True
        elif tag in ("td", "th") and self.out and not self.out[-1].endswith(("\n", " ")):
            self.out.append(" ")
        if tag == "pre":
            self.pre += 1
            self.pre_start = True

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if not self.skip and tag in _HTML_VOID:
            self.handle_starttag(tag, attrs)

    def handle_endtag(self, tag: str) -> None:
        if self.skip:
            if tag == self.skip[0]:
                self.skip = (tag, self.skip[1] - 1) if self.skip[1] > 1 else None
            return
        if tag == "pre":
            self.pre = max(0, self.pre - 1)
        if tag in _HTML_PARAGRAPH:
            self._break(2)
        elif tag in _HTML_LINE:
            self._break(1)

    def handle_data(self, data: str) -> None:
        if self.skip or not data:
            return
        if self.pre:
            if self.pre_start and data.startswith("\n"):
                data = data[1:]
            self.pre_start = False
        else:
            data = re.sub(r"\s+", " ", data)
            if not self.out or self.out[-1].endswith(("\n", " ")):
                data = data.lstrip(" ")
        if data and self.bullet:
            self.out.append("- ")
            self.bullet = False
        if data:
            self.out.append(data)


def html_to_text(src: str) -> str:
    """HTML page → headings, paragraphs, list items ("- ") and <pre> code; chrome and diagrams dropped."""
    parser = _TextExtractor()
    parser.feed(src)
    parser.close()
    text = "\n".join(line.rstrip() for line in "".join(parser.out).split("\n"))
    return re.sub(r"\n{3,}", "\n\n", text).strip("\n")


# --- record files ---------------------------------------------------------------------------------


def records_to_text(src: str, separator: str) -> str:
    """Records separated by lines that are exactly `separator` (fortune's "%") → paragraphs."""
    records = re.split(rf"^{re.escape(separator)}[ \t]*$", src.replace("\r\n", "\n"), flags=re.M)
    return "\n\n".join(r.strip("\n").rstrip() for r in records if r.strip())
