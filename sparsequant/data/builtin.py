"""The built-in English corpus, made locally from the running interpreter's own documentation.

Our machines cannot download data sets, yet training and calibration need English text
(sparsequant/eval/perplexity.py). Every Python installation carries some, and nothing has to be imported to read it:

1. the docstrings of the standard library's ``.py`` files, read with `ast`;
2. the reST sources of the Python documentation, when installed (Debian: ``python3.X-doc``,
   under ``/usr/share/doc/python3.X/html/_sources``; elsewhere point ``$SPARSEQUANT_PYTHON_DOCS``
   at them);
3. otherwise the language reference topics in ``pydoc_data/topics.py``. They are the reference
   manual rendered as text, so with the reST sources present they would only add near-duplicates
   that could land on both sides of the train/held-out split.

Only prose paragraphs are kept (`sparsequant.data.prose`). Each docstring, topic or reST file is one
document; its paragraphs are joined with one newline and documents with a blank line. A document
goes to the held-out split when the hash of its source file path says so (about 5 %), and a
paragraph that occurs twice is kept only the first time, so the two splits never share a paragraph.

The text is built once per interpreter and cached under `user_cache_dir`. `builtin_corpus_info`
records what went in, so a manifest can say exactly which text a number was measured on.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import logging
import os
import platform
import sys
import sysconfig
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from sparsequant.data.cache import read_texts, sha256_text, user_cache_dir, write_texts
from sparsequant.data.prose import prose_paragraphs
from sparsequant.errors import ConfigError

logger = logging.getLogger(__name__)

CORPUS_FORMAT_VERSION = 1  # bump whenever the extraction or cleaning changes the text
HELDOUT_PERCENT = 5
SPLITS = ("train", "heldout")
Split = Literal["train", "heldout"]

# Tests, tools with their own data files, and packages that hold no English prose.
_SKIP_DIRS = frozenset(
    {
        "test", "tests", "idle_test", "idlelib", "lib2to3", "site-packages", "dist-packages",
        "encodings", "__pycache__", "turtledemo", "lib-dynload", "ensurepip", "__phello__",
    }
)  # fmt: skip
# Where Debian's python3.X-doc package puts the documentation's reST sources.
DEBIAN_DOCS = "/usr/share/doc/python{major}.{minor}/html/_sources"
_DOC_NODES = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


def python_docs_dir() -> Path | None:
    """Find the reST sources of this Python version's documentation, if installed.

    Returns:
        The ``_sources`` directory, or None when the documentation is not installed.

    Raises:
        ConfigError: ``$SPARSEQUANT_PYTHON_DOCS`` is set but is not a directory.
    """
    override = os.environ.get("SPARSEQUANT_PYTHON_DOCS")
    if override:
        if not Path(override).is_dir():
            raise ConfigError(
                f"$SPARSEQUANT_PYTHON_DOCS={override!r} is not a directory. To resolve, point it "
                "at the html/_sources directory of the Python documentation, or unset it."
            )
        return Path(override)
    major, minor = sys.version_info[:2]
    default = Path(DEBIAN_DOCS.format(major=major, minor=minor))
    return default if default.is_dir() else None


def _stdlib_files(stdlib: Path) -> list[Path]:
    files: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(stdlib):
        # Sorting in place makes os.walk itself visit directories in a fixed order.
        dirnames[:] = sorted(
            d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("config-")
        )
        files.extend(Path(dirpath, f) for f in sorted(filenames) if f.endswith(".py"))
    return files


def _docstrings(tree: ast.Module) -> Iterator[str]:
    """Yield docstrings in source order (depth first over statements only, so no deep recursion)."""
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, _DOC_NODES) and (doc := ast.get_docstring(node, clean=True)):
            yield doc
        stack.extend(reversed([c for c in ast.iter_child_nodes(node) if isinstance(c, ast.stmt)]))


def _topics(tree: ast.Module) -> Iterator[tuple[str, str]]:
    """Yield (name, text) from ``topics = {...}`` in pydoc_data/topics.py, without importing it."""
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "topics" for t in node.targets)
            and isinstance(node.value, ast.Dict)
        ):
            for key, value in zip(node.value.keys, node.value.values):
                if isinstance(key, ast.Constant) and isinstance(value, ast.Constant):
                    if isinstance(key.value, str) and isinstance(value.value, str):
                        yield key.value, value.value


def _parse(path: Path) -> ast.Module | None:
    try:
        return ast.parse(path.read_bytes(), filename=str(path))
    except (SyntaxError, ValueError, OSError) as exc:  # e.g. a file written for another Python
        logger.debug("built-in corpus: skipping %s (%s)", path, exc)
        return None


def _is_heldout(source_id: str) -> bool:
    # A hash of the source's path, not a random draw: the split is the same on every machine and
    # a source never changes sides when other files are added or removed.
    digest = hashlib.sha256(source_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % 100 < HELDOUT_PERCENT


def build_corpus(stdlib_dir: Path, docs_dir: Path | None) -> tuple[dict[str, str], dict[str, Any]]:
    """Build the corpus from scratch (no cache). Deterministic for the same input files.

    Args:
        stdlib_dir: The standard library directory, ``sysconfig.get_paths()["stdlib"]``.
        docs_dir: The documentation's reST ``_sources`` directory, or None to do without it.

    Returns:
        ``({"train": text, "heldout": text}, info)``, info as `builtin_corpus_info` returns it.
    """
    documents: list[tuple[str, list[str]]] = []  # (source id, paragraphs)
    sources: list[dict[str, Any]] = []
    files = _stdlib_files(stdlib_dir)
    topics_file: Path | None = None
    for path in files:
        source_id = "stdlib/" + path.relative_to(stdlib_dir).as_posix()
        if source_id == "stdlib/pydoc_data/topics.py":
            topics_file = path
        if tree := _parse(path):
            documents.extend((source_id, prose_paragraphs(doc)) for doc in _docstrings(tree))
    sources.append({"name": "stdlib-docstrings", "path": str(stdlib_dir), "files": len(files)})
    if docs_dir is not None:
        doc_files = sorted(
            docs_dir.rglob("*.txt"), key=lambda p: p.relative_to(docs_dir).as_posix()
        )
        for path in doc_files:
            text = path.read_text(encoding="utf-8", errors="replace")
            source_id = "docs/" + path.relative_to(docs_dir).as_posix()
            documents.append((source_id, prose_paragraphs(text, is_rst=True)))
        sources.append({"name": "python-docs-rst", "path": str(docs_dir), "files": len(doc_files)})
    elif topics_file is not None and (tree := _parse(topics_file)):
        topics = list(_topics(tree))
        documents.extend((f"topics/{name}", prose_paragraphs(text)) for name, text in topics)
        sources.append({"name": "pydoc-topics", "path": str(topics_file), "topics": len(topics)})

    seen: set[str] = set()
    parts: dict[str, list[str]] = {split: [] for split in SPLITS}
    for source_id, paragraphs in documents:
        fresh = []  # paragraphs not seen before: the first occurrence wins
        for paragraph in paragraphs:
            if paragraph not in seen:
                seen.add(paragraph)
                fresh.append(paragraph)
        if fresh:
            parts["heldout" if _is_heldout(source_id) else "train"].append("\n".join(fresh))
    texts = {split: "\n\n".join(docs) for split, docs in parts.items()}
    info = {
        "format_version": CORPUS_FORMAT_VERSION,
        "python_version": platform.python_version(),
        "python_implementation": sys.implementation.name,
        "sources": sources,
        "num_files": sum(s.get("files", 1) for s in sources),
        "heldout_percent": HELDOUT_PERCENT,
        "documents": {split: len(parts[split]) for split in SPLITS},
        "chars": {split: len(texts[split]) for split in SPLITS},
        "sha256": {split: sha256_text(texts[split]) for split in SPLITS},
    }
    return texts, info


@functools.lru_cache(maxsize=4)
def _load(directory: Path, stdlib_dir: Path, docs_dir: Path | None) -> tuple[dict, dict]:
    cached = read_texts(directory, SPLITS, CORPUS_FORMAT_VERSION)
    if cached is not None:
        return cached
    start = time.perf_counter()
    texts, info = build_corpus(stdlib_dir, docs_dir)
    logger.info(
        "built-in corpus built in %.1f s: %d train / %d held-out chars from %s",
        time.perf_counter() - start,
        info["chars"]["train"],
        info["chars"]["heldout"],
        ", ".join(s["name"] for s in info["sources"]),
    )
    write_texts(directory, texts, info)
    return texts, info


def _corpus() -> tuple[dict[str, str], dict[str, Any]]:
    stdlib_dir = Path(sysconfig.get_paths()["stdlib"])
    docs_dir = python_docs_dir()
    # The key holds everything the text depends on: a new Python, a newly installed documentation
    # package, or a new cleaning version each get their own cache entry.
    where = hashlib.sha256(f"{stdlib_dir}\0{docs_dir or ''}".encode()).hexdigest()[:12]
    key = (
        f"builtin-v{CORPUS_FORMAT_VERSION}-{sys.implementation.name}{platform.python_version()}"
        f"-{'docs' if docs_dir else 'nodocs'}-{where}"
    )
    return _load(user_cache_dir() / "corpus" / key, stdlib_dir, docs_dir)


def builtin_corpus(split: Split) -> str:
    """Return one split of the built-in English corpus, building and caching it on first use.

    Args:
        split: ``"train"`` (about 95 % of the sources) or ``"heldout"`` (the rest).

    Returns:
        The text: documents separated by a blank line, paragraphs by a newline.

    Raises:
        ConfigError: ``split`` is not one of ``train`` and ``heldout``.
    """
    if split not in SPLITS:
        raise ConfigError(
            f"built-in corpus: unknown split {split!r}. To resolve, use 'train' or 'heldout'."
        )
    return _corpus()[0][split]


def builtin_corpus_info() -> dict[str, Any]:
    """Describe the built-in corpus exactly enough for a manifest to pin it.

    Returns:
        A JSON-ready dict: ``format_version``, ``python_version``, ``python_implementation``,
        ``sources`` (which sources were used, with their paths and file counts), ``num_files``,
        ``heldout_percent``, and per split ``documents``, ``chars`` and ``sha256``.
    """
    return json.loads(json.dumps(_corpus()[1]))  # a deep copy: callers may edit their dict


def builtin_input(split: str) -> dict[str, Any]:
    """The identity record (sparsequant.identity) of one split of the built-in corpus: its digest and size
    differ between machines (python3.X-doc), so a result made from another machine's corpus is not reused."""
    info = builtin_corpus_info()
    return {"kind": "builtin", "split": split, "sha256": info["sha256"][split], "chars": info["chars"][split],
            "sources": [s["name"] for s in info["sources"]], "format_version": info["format_version"]}
