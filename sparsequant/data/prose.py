"""Turn docstrings and reStructuredText into plain English paragraphs.

The built-in corpus is made from the Python standard library's docstrings and documentation.
Both mix prose with code (doctests, literal blocks, signatures, tables). A 135M model trained or
calibrated on that mixture learns the code too, and benchmarks/history.md §10 shows how much a narrow
calibration domain costs on general English, so this module keeps only paragraphs that read like
prose.

All functions are pure and deterministic: the same input always gives the same paragraphs.
"""

from __future__ import annotations

import re

MIN_PARAGRAPH_CHARS = 40

# Directives whose body is code, markup or a table, never prose: drop the directive and its body.
# Every other directive (note, warning, function, class, versionchanged, ...) keeps its body,
# because in the library reference the prose describing an API lives inside `.. function::`.
_CODE_DIRECTIVES = frozenset(
    {
        "code-block", "code", "sourcecode", "highlight", "doctest", "testcode", "testoutput",
        "testsetup", "testcleanup", "productionlist", "literalinclude", "toctree", "csv-table",
        "table", "list-table", "raw", "image", "figure", "include", "grammar-snippet", "math",
        "miscnews", "availability", "audit-event", "audit-event-table", "impl-detail", "only",
        "program", "index", "tabularcolumns", "autosummary", "rubric", "cmdoption", "option",
        "c:macro", "c:var", "c:type", "c:member", "c:function", "c:struct", "c:enum",
        "c:enumerator",
        "opcode", "describe", "pdbcommand",
    }
)  # fmt: skip

_DIRECTIVE = re.compile(r"\.\.\s+([\w:-]+)::")
_FIELD_LINE = re.compile(r":[\w -]+:(\s|$)")  # directive options (":synopsis: ...") and field lists
_UNDERLINE = re.compile(r"([=\-~^\"'`#*+.:_<>])\1{2,}")  # section under/overlines, transitions
_BULLET = re.compile(r"(?:[-*+\u2022]|#\.|\d{1,3}[.)]|\(\d{1,3}\)|[a-z][.)])\s+")
_ROLE = re.compile(r":([\w:.-]+):`([^`]*)`")  # :func:`os.path.join` -> os.path.join
_TARGET = re.compile(r"`([^`<]*?)\s*<[^`>]*>`_{1,2}")  # `JSON <https://json.org>`_ -> JSON
_LINK = re.compile(r"`([^`]+)`_{1,2}")  # `section`_ -> section
_LITERAL = re.compile(r"``([^`]+)``")  # ``None`` -> None
_STRONG = re.compile(r"(?<![\w*])\*\*([^\s*](?:[^*]*?[^\s*])?)\*\*(?![\w*])")
_EMPHASIS = re.compile(r"(?<![\w*])\*([^\s*](?:[^*]*?[^\s*])?)\*(?![\w*])")
_FOOTNOTE = re.compile(r"\s*\[(?:#[\w-]*|\d+|\*)\]_")  # [#rfc-errata]_ and [1]_ carry no words
_ESCAPE = re.compile(r"\\([^\w\s])")
_SUBSTITUTION = re.compile(r"\|([\w -]+)\|")
_CODE_START = re.compile(
    r"(?:def|class|async def)\s+\w+\s*[(:]"
    r"|(?:import|from)\s+[\w.]+(?:\s+import\s+.+)?$"
    r"|(?:if|elif|while|for|with|try|except|else|finally)\b.*:$"
    r"|[$%#@]\s|\w+\s*=\s*\S+$|[\w.]+\([^)]*\)$"
)
# Characters that are rare in English prose but common in code, markup and tables.
_SYMBOLS = frozenset("=<>{}[]|\\/*#@$%^~`+&;")


# Roles Sphinx renders with a prefix: :issue:`12` reads as bpo-12.
_ROLE_PREFIX = {"issue": "bpo-", "gh": "gh-", "pep": "PEP ", "rfc": "RFC "}


def _role_text(match: re.Match[str]) -> str:
    role, text = match.group(1), match.group(2)
    if "<" in text and text.endswith(">"):  # :ref:`title <label>` -> title
        text = text[: text.index("<")].strip()
    # :meth:`~a.b.c` renders as c in Sphinx; keep the full name, drop the "~".
    return _ROLE_PREFIX.get(role, "") + text.lstrip("~!")


def strip_inline_markup(text: str) -> str:
    """Replace reST inline markup (roles, links, literals, emphasis) with its plain text.

    Args:
        text: One line or paragraph of reST.

    Returns:
        The text a reader of the rendered page would see, without markup characters.
    """
    text = _FOOTNOTE.sub("", text)
    text = _ROLE.sub(_role_text, text)
    text = _TARGET.sub(r"\1", text)
    text = _LINK.sub(r"\1", text)
    text = _LITERAL.sub(r"\1", text)
    text = _STRONG.sub(r"\1", text)
    text = _EMPHASIS.sub(r"\1", text)
    text = _SUBSTITUTION.sub(r"\1", text)
    text = text.replace("\\ ", "")  # reST's escaped space joins words, e.g. ``x``\ s
    return _ESCAPE.sub(r"\1", text)  # 10\*\*55 -> 10**55


def rst_to_text(source: str) -> str:
    """Remove reST structure that is not prose: code directives, literal blocks, titles, tables.

    Directive bodies that are prose (notes, API descriptions) are kept and dedented by the paragraph
    step that follows; literal blocks introduced by ``::`` are dropped.

    Args:
        source: A reST document or a docstring.

    Returns:
        Text with blank-line separated paragraphs, still holding inline markup.
    """
    out: list[str] = []
    skip_deeper_than: int | None = None  # drop blank lines and lines indented more than this
    for line in source.splitlines():
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        if skip_deeper_than is not None:
            if not stripped or indent > skip_deeper_than:
                continue
            skip_deeper_than = None
        if stripped == ".." or stripped.startswith(".. "):  # not "...": ellipses and doctests
            directive = _DIRECTIVE.match(stripped)
            if directive is None or directive.group(1) in _CODE_DIRECTIVES:
                skip_deeper_than = indent  # a comment, label, or code directive and its body
            out.append("")  # a directive always ends the paragraph before it
            continue
        if stripped.endswith("::"):
            # "Example::" reads as "Example:", a lone "::" reads as nothing; the indented block
            # after it is a literal (code) block.
            text = stripped[:-2].rstrip()
            out.append(line[:indent] + text + ":" if text else "")
            skip_deeper_than = indent
            continue
        if _UNDERLINE.fullmatch(stripped) or stripped.startswith(("+-", "+=", "|")):
            out.append("")
            continue
        out.append(line)
    return "\n".join(out)


def _blocks(text: str) -> list[list[str]]:
    """Split into paragraphs: blank lines separate them, and so does the start of a list item."""
    blocks: list[list[str]] = [[]]
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped:
            blocks.append([])
            continue
        if _BULLET.match(stripped) and blocks[-1]:
            blocks.append([])
        blocks[-1].append(stripped)
    return [block for block in blocks if block]


def is_prose(paragraph: str) -> bool:
    """Decide whether a whitespace-normalised paragraph reads like English prose.

    Args:
        paragraph: One paragraph on one line.

    Returns:
        True when it is long enough, mostly letters, and nearly free of code symbols.
    """
    if len(paragraph) < MIN_PARAGRAPH_CHARS or not paragraph.isprintable():
        return False  # isprintable: no control characters, no lone surrogates (from "\\udc80")
    words = paragraph.split()
    visible = len(paragraph) - len(words) + 1  # the paragraph has single spaces between words
    # map() over C-level methods: this runs on every paragraph of ~10 MB of text.
    letters = sum(map(str.isalpha, paragraph))
    symbols = sum(map(paragraph.count, _SYMBOLS))
    # "wordy" tokens are plain words with at most surrounding punctuation; identifiers such as
    # os.path.join or f(x) are not.
    wordy = sum(map(str.isalpha, (w.strip(".,;:!?\"'()") for w in words)))
    return (
        len(words) >= 6
        and letters >= 0.75 * visible
        and symbols <= 0.02 * visible
        and wordy >= 0.7 * len(words)
        and paragraph != paragraph.upper()  # all-caps banners and constants
    )


def prose_paragraphs(text: str, *, is_rst: bool = False) -> list[str]:
    """Extract the prose paragraphs of a docstring or reST document.

    Doctest lines (``>>>``, ``...``) end their paragraph, code-looking lines are dropped, whitespace
    is normalised to single spaces, and paragraphs that do not pass `is_prose` are discarded.

    Args:
        text: The docstring (already dedented, e.g. by `ast.get_docstring`) or reST source.
        is_rst: Also strip reST inline markup, which docstrings rarely use but reST always does.

    Returns:
        The kept paragraphs, each on a single line, in their original order.
    """
    paragraphs: list[str] = []
    for block in _blocks(rst_to_text(text)):
        kept: list[str] = []
        for line in block:
            if line.startswith((">>>", "...")):
                break  # the rest of the block is an interactive example and its output
            if _CODE_START.match(line):
                continue
            bullet = _BULLET.match(line) if not kept else None
            kept.append(line[bullet.end() :] if bullet else line)
        paragraph = " ".join(" ".join(kept).split())
        if is_rst:
            paragraph = " ".join(strip_inline_markup(paragraph).split())
        if is_prose(paragraph):
            paragraphs.append(paragraph)
    return paragraphs
