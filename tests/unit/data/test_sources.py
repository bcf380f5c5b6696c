"""DataConfig validation and load_text over .txt, .jsonl, datasets and the built-in corpus."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from sparsequant.data import sources
from sparsequant.data.sources import (
    DataConfig,
    load_chat_records,
    load_text,
    split_train_heldout,
)
from sparsequant.errors import ConfigError

PARAGRAPHS = [f"Paragraph {i} says something about sparse weights and masks." for i in range(60)]
TEXT = "\n\n".join(PARAGRAPHS) + "\n"


def write_jsonl(path, lines):
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return path


def test_defaults_validate():
    cfg = DataConfig()
    assert (cfg.source, cfg.split, cfg.text_field, cfg.block_size, cfg.max_chars) == (
        "builtin", "train", "text", 256, None,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("block_size", 4),
        ("split", "test"),
        ("source", "corpus.csv"),
        ("source", "datasets:"),
        ("max_chars", 0),
        ("text_field", ""),
        ("unknown_key", 1),
    ],
)
def test_bad_config_names_the_field(field, value):
    with pytest.raises(ValidationError, match=field):
        DataConfig(**{field: value})


@pytest.mark.parametrize("source", ["builtin", "a.txt", "dir/b.jsonl", "datasets:wikitext:raw"])
def test_known_sources_validate(source):
    assert DataConfig(source=source).source == source


def test_txt_splits_are_disjoint_and_cover_the_text(tmp_path):
    (tmp_path / "corpus.txt").write_text(TEXT)
    train = load_text(DataConfig(source="corpus.txt"), tmp_path)  # relative to base_dir
    heldout = load_text(DataConfig(source="corpus.txt", split="heldout"), tmp_path)
    assert train + "\n\n" + heldout == TEXT.strip()
    assert set(train.split("\n\n")).isdisjoint(heldout.split("\n\n"))
    assert 0.03 < len(heldout) / len(TEXT) < 0.08


def test_split_falls_back_to_lines_then_words():
    lines = "\n".join(PARAGRAPHS)
    train, heldout = split_train_heldout(lines)
    assert train + "\n" + heldout == lines and heldout
    train, heldout = split_train_heldout("one two three four five six seven")
    assert (train, heldout) == ("one two three four five six", "seven")


def test_max_chars_cuts_at_a_paragraph(tmp_path):
    (tmp_path / "corpus.txt").write_text(TEXT)
    text = load_text(DataConfig(source="corpus.txt", max_chars=300), tmp_path)
    assert len(text) <= 300
    assert text.split("\n\n") == PARAGRAPHS[: len(text.split("\n\n"))]


def test_missing_file_names_the_path_and_the_fix(tmp_path):
    with pytest.raises(ConfigError, match=r"nope\.txt does not exist.*source: builtin"):
        load_text(DataConfig(source="nope.txt"), tmp_path)


@pytest.mark.parametrize(
    ("content", "match"),
    [("", "holds no text"), ("   \n\n  \n", "holds no text"), ("tiny", "too short")],
)
def test_empty_or_tiny_txt(tmp_path, content, match):
    (tmp_path / "t.txt").write_text(content)
    with pytest.raises(ConfigError, match=match):
        load_text(DataConfig(source="t.txt", split="heldout"), tmp_path)


def test_non_utf8_file(tmp_path):
    (tmp_path / "t.txt").write_bytes(b"caf\xe9 " * 50)
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_text(DataConfig(source="t.txt"), tmp_path)


def test_jsonl_text_records(tmp_path):
    write_jsonl(tmp_path / "d.jsonl", [{"text": p} for p in PARAGRAPHS] + ["", {"text": "  "}])
    train = load_text(DataConfig(source="d.jsonl"), tmp_path)
    heldout = load_text(DataConfig(source="d.jsonl", split="heldout"), tmp_path)
    assert train.split("\n\n") + heldout.split("\n\n") == PARAGRAPHS


def test_jsonl_custom_text_field(tmp_path):
    write_jsonl(tmp_path / "d.jsonl", [{"body": p} for p in PARAGRAPHS])
    assert load_text(DataConfig(source="d.jsonl", text_field="body"), tmp_path).startswith("Para")


@pytest.mark.parametrize(
    ("bad_line", "match"),
    [
        ('{"text": "unterminated', r"d\.jsonl:3: not valid JSON"),
        ("[1, 2]", r"d\.jsonl:3: expected a JSON object, got list"),
        ({"title": "x"}, r"d\.jsonl:3: record has neither 'text' nor 'messages'.*\['title'\]"),
        ({"text": 5}, r"d\.jsonl:3: field 'text' is a int"),
        ({"messages": [{"role": "user", "content": "hi"}]}, r"d\.jsonl:3: .*load_chat_records"),
    ],
)
def test_bad_jsonl_names_the_line(tmp_path, bad_line, match):
    write_jsonl(tmp_path / "d.jsonl", [{"text": "a"}, {"text": "b"}, bad_line, {"text": "c"}])
    with pytest.raises(ConfigError, match=match):
        load_text(DataConfig(source="d.jsonl"), tmp_path)


def test_load_chat_records(tmp_path):
    chats = [[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]] * 3
    path = write_jsonl(tmp_path / "chat.jsonl", [{"messages": m} for m in chats])
    assert load_chat_records(path) == chats
    write_jsonl(path, [{"messages": chats[0]}, {"messages": [{"content": "no role"}]}])
    with pytest.raises(ConfigError, match=r"chat\.jsonl:2: expected 'messages'"):
        load_chat_records(path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_chat_records(tmp_path / "absent.jsonl")


def test_builtin_source_reads_the_builtin_corpus(monkeypatch, tmp_path):
    monkeypatch.setattr(sources, "builtin_corpus", lambda split: f"the {split} text " * 10)
    assert load_text(DataConfig(split="heldout"), tmp_path).startswith("the heldout text")
    assert load_text(DataConfig(max_chars=30), tmp_path) == "the train text the train text"


def test_datasets_saved_to_disk(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = {"text": PARAGRAPHS[:40], "n": list(range(40))}
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows)}).save_to_disk(tmp_path / "ds")
    train = load_text(DataConfig(source="datasets:ds"), tmp_path)
    heldout = load_text(DataConfig(source="datasets:ds", split="heldout"), tmp_path)
    assert train.split("\n\n") == PARAGRAPHS[:38] and heldout.split("\n\n") == PARAGRAPHS[38:40]

    validation = datasets.Dataset.from_dict({"text": ["held out text, a validation row."]})
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows), "validation": validation}
                         ).save_to_disk(tmp_path / "dv")  # fmt: skip
    assert load_text(DataConfig(source="datasets:dv"), tmp_path).split("\n\n") == PARAGRAPHS[:40]
    assert load_text(DataConfig(source="datasets:dv", split="heldout"), tmp_path).startswith("held")
    with pytest.raises(ConfigError, match=r"no column 'body' \(columns: \['text', 'n'\]\)"):
        load_text(DataConfig(source="datasets:ds", text_field="body"), tmp_path)


def test_datasets_not_cached_fails_fast(monkeypatch, tmp_path):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf"))
    before = datasets.config.HF_HUB_OFFLINE
    with pytest.raises(ConfigError, match="not found in the local HF cache.*jsonl"):
        load_text(DataConfig(source="datasets:surely-not-cached-xyz"), tmp_path)
    assert datasets.config.HF_HUB_OFFLINE == before  # the offline switch is restored
