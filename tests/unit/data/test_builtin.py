"""The built-in corpus: prose extraction, deterministic train/held-out split, and the cache."""

from __future__ import annotations

import hashlib
import platform
import sysconfig
import textwrap
from pathlib import Path

import pytest

from sparsequant.data import builtin
from sparsequant.data.builtin import build_corpus, builtin_corpus, builtin_corpus_info
from sparsequant.data.cache import user_cache_dir
from sparsequant.data.prose import is_prose, prose_paragraphs, strip_inline_markup
from sparsequant.errors import ConfigError

STDLIB = Path(sysconfig.get_paths()["stdlib"])
PROSE = "This sentence is plain English prose, long enough to be kept by the filter"


@pytest.fixture(scope="session")
def real_corpus():
    """The corpus of this interpreter without the optional reST docs (same on every machine)."""
    return build_corpus(STDLIB, None)


def paragraphs(text: str) -> list[str]:
    return [p for p in text.replace("\n\n", "\n").split("\n") if p]


def test_real_corpus_is_deterministic(real_corpus):
    texts, info = build_corpus(STDLIB, None)
    assert info == real_corpus[1]
    assert texts == real_corpus[0]


def test_real_corpus_splits_are_disjoint_prose_of_useful_size(real_corpus):
    texts, info = real_corpus
    train, heldout = paragraphs(texts["train"]), paragraphs(texts["heldout"])
    assert len(texts["train"]) > 500_000 and len(texts["heldout"]) > 20_000
    assert 0.02 < len(texts["heldout"]) / (len(texts["train"]) + len(texts["heldout"])) < 0.2
    assert set(train).isdisjoint(heldout)
    assert len(set(train)) == len(train)  # repeated paragraphs are kept once
    assert all(is_prose(p) and not p.startswith(">>>") for p in train + heldout)
    for split in ("train", "heldout"):
        assert info["sha256"][split] == hashlib.sha256(texts[split].encode()).hexdigest()
        assert info["chars"][split] == len(texts[split])
    assert info["python_version"] == platform.python_version()
    assert [s["name"] for s in info["sources"]] == ["stdlib-docstrings", "pydoc-topics"]


def write(path: Path, source: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(source))


@pytest.fixture
def fake_stdlib(tmp_path) -> Path:
    """A small stand-in for the stdlib: one module per source id, plus directories to skip."""
    root = tmp_path / "lib"
    write(root / "alpha.py", f'''
        """Alpha module. {PROSE}.

        >>> alpha()
        3

        Example::

            for this in that: print("a literal block that must not be kept at all")
        """

        class Thing:
            """Thing class. {PROSE}."""

            def method(self):
                """Thing method. {PROSE}."""


        def function():
            """Alpha function. {PROSE}."""
    ''')
    write(root / "beta.py", f'"""Alpha module. {PROSE}.\n\nBeta module. {PROSE}."""')
    write(root / "broken.py", '"""Broken module. It does not parse, so it is skipped."""\ndef (:')
    write(root / "test" / "test_alpha.py", f'"""Tests module. {PROSE}."""')
    write(root / "idlelib" / "editor.py", f'"""Idle module. {PROSE}."""')
    for i in range(60):
        write(root / "pkg" / f"mod{i:02d}.py", f'"""Module number {i}. {PROSE}."""')
    write(root / "pydoc_data" / "topics.py", f"topics = {{'assert': 'Assert topic. {PROSE}.'}}\n")
    return root


@pytest.fixture
def fake_docs(tmp_path) -> Path:
    write(tmp_path / "docs" / "library" / "alpha.rst.txt", f"""
        :mod:`alpha` --- the alpha module
        =================================

        .. function:: function()

           Docs function. {PROSE}, see :func:`~alpha.function` and ``None``.

        .. code-block:: python

           print("a code block that is dropped, {PROSE}")
    """)
    return tmp_path / "docs"


def test_fake_stdlib_docstrings_and_topics(fake_stdlib):
    texts, info = build_corpus(fake_stdlib, None)
    both = texts["train"] + "\n\n" + texts["heldout"]
    assert [s["name"] for s in info["sources"]] == ["stdlib-docstrings", "pydoc-topics"]
    documents = texts["train"].split("\n\n")
    # Each docstring is one document, in source order; beta repeats alpha's paragraph, kept once.
    assert [d.split(".")[0] for d in documents[:5]] == [
        "Alpha module", "Thing class", "Thing method", "Alpha function", "Beta module",
    ]  # fmt: skip
    assert both.count("Alpha module") == 1
    assert "Assert topic" in both
    for dropped in ("alpha()", "literal block", "Broken", "Tests module", "Idle module"):
        assert dropped not in both


def test_fake_stdlib_split_follows_the_path_hash(fake_stdlib):
    texts, _ = build_corpus(fake_stdlib, None)
    heldout = set()
    for i in range(60):
        digest = hashlib.sha256(f"stdlib/pkg/mod{i:02d}.py".encode()).digest()
        if int.from_bytes(digest[:8], "big") % 100 < 5:
            heldout.add(i)
    assert 0 < len(heldout) < 10  # the hash really splits these 60 modules
    for i in range(60):
        assert (f"Module number {i}." in texts["heldout"]) == (i in heldout)
        assert (f"Module number {i}." in texts["train"]) == (i not in heldout)


def test_fake_docs_replace_the_topics(fake_stdlib, fake_docs):
    texts, info = build_corpus(fake_stdlib, fake_docs)
    both = texts["train"] + texts["heldout"]
    assert [s["name"] for s in info["sources"]] == ["stdlib-docstrings", "python-docs-rst"]
    assert f"Docs function. {PROSE}, see alpha.function and None." in both
    assert "Assert topic" not in both and "code block" not in both and "====" not in both


def test_prose_paragraphs_of_rst():
    source = textwrap.dedent(f"""
        Title
        =====

        .. note::
           Note body. {PROSE}.

        Intro with *emphasis* and a `link <https://x.y>`_ [#f]_ then :issue:`12`, {PROSE}::

            x = {{"a literal": "block"}}

        * First item of a list, {PROSE}.
        * Second item of a list, {PROSE}.

        .. a comment that is never shown, {PROSE}
    """)
    assert prose_paragraphs(source, is_rst=True) == [
        f"Note body. {PROSE}.",
        f"Intro with emphasis and a link then bpo-12, {PROSE}:",
        f"First item of a list, {PROSE}.",
        f"Second item of a list, {PROSE}.",
    ]


@pytest.mark.parametrize(
    ("paragraph", "kept"),
    [
        (PROSE + ".", True),
        ("Too short to keep.", False),
        ("result = compute(values[i], {key: 1}) | other & mask >> 2 # with enough words", False),
        ("THIS IS AN ALL CAPS BANNER THAT SHOULD NOT BE KEPT AT ALL", False),
        (PROSE + " \udc80.", False),
    ],
)
def test_is_prose(paragraph, kept):
    assert is_prose(paragraph) is kept


def test_strip_inline_markup_keeps_python_stars():
    text = r"Takes *args and **kwargs, :pep:`8`, 10\*\*3"
    assert strip_inline_markup(text) == "Takes *args and **kwargs, PEP 8, 10**3"


@pytest.fixture
def cache_env(monkeypatch, tmp_path, fake_stdlib):
    """Point the cache at tmp_path and make building cheap (the fake stdlib), counting builds."""
    builds = []

    def fake_build(stdlib_dir, docs_dir):
        builds.append(docs_dir)
        return build_corpus(fake_stdlib, docs_dir)

    monkeypatch.setenv("SPARSEQUANT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("SPARSEQUANT_PYTHON_DOCS", raising=False)
    monkeypatch.setattr(builtin, "DEBIAN_DOCS", str(tmp_path / "no-docs"))  # as if not installed
    monkeypatch.setattr(builtin, "build_corpus", fake_build)
    builtin._load.cache_clear()
    yield builds
    builtin._load.cache_clear()


def test_corpus_is_cached_atomically_and_rebuilt_when_altered(cache_env, tmp_path, fake_stdlib):
    expected, info = build_corpus(fake_stdlib, None)
    assert builtin_corpus("train") == expected["train"] and len(cache_env) == 1
    (entry,) = (tmp_path / "cache" / "corpus").iterdir()
    assert f"v{builtin.CORPUS_FORMAT_VERSION}" in entry.name
    assert platform.python_version() in entry.name and "nodocs" in entry.name
    assert sorted(p.name for p in entry.iterdir()) == ["heldout.txt", "info.json", "train.txt"]

    builtin._load.cache_clear()  # a new process: reads the files, does not rebuild
    assert builtin_corpus("heldout") == expected["heldout"] and len(cache_env) == 1
    assert builtin_corpus_info() == info

    (entry / "train.txt").write_text("tampered")
    builtin._load.cache_clear()
    assert builtin_corpus("train") == expected["train"] and len(cache_env) == 2


def test_info_is_a_copy(cache_env):
    builtin_corpus_info()["sources"].clear()
    assert builtin_corpus_info()["sources"]


def test_docs_dir_override(cache_env, monkeypatch, fake_docs, tmp_path):
    monkeypatch.setenv("SPARSEQUANT_PYTHON_DOCS", str(fake_docs))
    assert "Docs function" in builtin_corpus("train") + builtin_corpus("heldout")
    assert cache_env == [fake_docs]
    assert "-docs-" in next((tmp_path / "cache" / "corpus").iterdir()).name
    monkeypatch.setenv("SPARSEQUANT_PYTHON_DOCS", str(tmp_path / "absent"))
    with pytest.raises(ConfigError, match="SPARSEQUANT_PYTHON_DOCS"):
        builtin_corpus("train")


def test_unknown_split():
    with pytest.raises(ConfigError, match="unknown split 'test'"):
        builtin_corpus("test")


def test_user_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("SPARSEQUANT_CACHE", str(tmp_path / "a"))
    assert user_cache_dir() == tmp_path / "a"
    monkeypatch.delenv("SPARSEQUANT_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert user_cache_dir() == tmp_path / "xdg" / "sparsequant"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert user_cache_dir() == Path.home() / ".cache" / "sparsequant"
