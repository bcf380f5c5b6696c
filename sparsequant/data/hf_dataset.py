"""Text from a Hugging Face dataset that is already on this machine; nothing is downloaded.

``datasets:NAME[:CONFIG]`` reads a dataset from the local HF cache (``HF_DATASETS_OFFLINE``
semantics), or a directory written by ``Dataset.save_to_disk`` when NAME is one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sparsequant.errors import ConfigError


@contextlib.contextmanager
def _offline(datasets: Any) -> Iterator[None]:
    # datasets reads HF_DATASETS_OFFLINE once, at import. Set its flag for this call only, so a
    # dataset that is not cached fails at once instead of waiting on network timeouts.
    previous = datasets.config.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE = previous


def _load(spec: str, base_dir: Path) -> dict[str, Any]:
    import datasets  # heavy; only this source needs it

    name, _, config = spec.partition(":")
    local = Path(name).expanduser()
    local = local if local.is_absolute() else base_dir / local
    try:
        if local.is_dir():
            loaded = datasets.load_from_disk(str(local))
        else:
            with _offline(datasets):
                loaded = datasets.load_dataset(name, config or None)
    except (OSError, ValueError) as exc:  # DatasetNotFoundError and ConnectionError are OSErrors
        raise ConfigError(
            f"data source 'datasets:{spec}': not found in the local HF cache ({exc}). To resolve, "
            "load it once on a machine with network and copy ~/.cache/huggingface/datasets, or "
            "export it to a .jsonl file."
        ) from exc
    return {"train": loaded} if isinstance(loaded, datasets.Dataset) else dict(loaded)


def dataset_fingerprint(spec: str, base_dir: Path) -> dict[str, Any]:
    """{"kind": "dataset", "sha256": ...} from the fingerprints `datasets` gives each split's cached data.

    `datasets` keeps the fingerprint (a hash of the data files and the transforms applied) in the private
    `_fingerprint`; there is no public accessor, and hashing the arrow files ourselves would read GBs.
    """
    import hashlib
    import json

    splits = _load(spec, base_dir)
    prints = {name: getattr(split, "_fingerprint", None) for name, split in sorted(splits.items())}
    digest = hashlib.sha256(json.dumps(prints, sort_keys=True).encode()).hexdigest()
    return {"kind": "dataset", "sha256": digest, "splits": sorted(splits)}


def dataset_text(
    spec: str,
    split: str,
    text_field: str,
    max_chars: int | None,
    base_dir: Path,
    heldout_fraction: float,
) -> str:
    """Join the non-empty ``text_field`` values of one split with blank lines.

    Held-out text is the dataset's ``validation`` split, else the last ``heldout_fraction`` of the
    ``train`` rows. Never the ``test`` split: that is where published perplexities are measured.

    Args:
        spec: ``NAME`` or ``NAME:CONFIG`` (the source without its ``datasets:`` prefix).
        split: ``"train"`` or ``"heldout"``.
        text_field: The column holding the text.
        max_chars: Stop reading rows once this many characters are collected (None: all rows).
        base_dir: Directory that a relative ``save_to_disk`` path starts from.
        heldout_fraction: Share of train rows held out when there is no validation split.

    Returns:
        The text, one document per row.

    Raises:
        ConfigError: The dataset is not available locally, has no train split, or lacks the column.
    """
    splits = _load(spec, base_dir)
    if "train" not in splits:
        raise ConfigError(f"datasets:{spec} has no 'train' split (has {sorted(splits)}).")
    train = splits["train"]
    if text_field not in train.column_names:
        raise ConfigError(
            f"datasets:{spec}: no column {text_field!r} (columns: {train.column_names}). "
            "To resolve, set text_field."
        )
    if "validation" in splits:
        rows = train if split == "train" else splits["validation"]
    else:
        cut = len(train) - max(1, round(len(train) * heldout_fraction))
        rows = train.select(range(cut) if split == "train" else range(cut, len(train)))
    texts: list[str] = []
    size = 0
    for batch in rows.iter(batch_size=1024):
        fresh = [t.strip() for t in batch[text_field] if isinstance(t, str) and t.strip()]
        texts.extend(fresh)
        size += sum(map(len, fresh))
        if max_chars is not None and size >= max_chars:
            break  # do not materialise a whole large corpus to keep its first few MB
    return "\n\n".join(texts)
